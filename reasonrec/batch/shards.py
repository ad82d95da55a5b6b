"""Reading request shards into the stream (``stream.STREAM``): listing, counting rows from the footers, reading
and conforming a shard, and marking requests that repeat an earlier one.

A shard that cannot be read, or lacks a required column, becomes rejected rows (one per row its footer announces)
rather than failing the job; a storage error is raised instead (it is not the input's fault, a rerun resumes).
"""
from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from reasonrec import storage
from reasonrec.batch.columns import to_numpy
from reasonrec.batch.stream import STREAM, reject
from reasonrec.data import schemas

INT32_VALUES = {pa.int8(), pa.int16(), pa.int32(), pa.uint8(), pa.uint16()}  # integer types whose values all fit k


def list_shards(uri: str) -> list[str]:
    """A single parquet file, or every ``*.parquet`` below a prefix."""
    if uri.endswith(".parquet"):
        if not storage.exists(uri):
            raise FileNotFoundError(f"{uri}: no such request shard")
        return [uri]
    shards = [storage.join(uri, rel) for rel in storage.list_files(uri) if rel.endswith(".parquet")]
    if not shards:
        raise FileNotFoundError(f"{uri}: no request shards (*.parquet)")
    return shards


FOOTER_READ = 64 * 1024  # bytes read from a shard's end to count its rows: most footers fit


def rows_in_shard(uri: str) -> int:
    """Rows a shard holds according to its footer; an unreadable shard counts as one (quarantined) row, as
    ``read_shard`` makes it. A storage error is raised (after the filesystem's retries), never taken for a corrupt
    footer: that miscounted a shard whose footer read failed once, and the run could not commit."""
    tail = storage.read_tail(uri, FOOTER_READ)
    footer = int.from_bytes(tail[-8:-4], "little") + 8 if tail[-4:] == b"PAR1" else 0  # length field + magic
    if footer > len(tail):
        tail = storage.read_tail(uri, footer)
    rows = _footer_rows(tail)
    return 1 if rows is None else rows


def read_shard(uri: str, skip: np.ndarray | None = None, duplicate_of: dict | None = None) -> pa.Table:
    """The shard's rows in ``STREAM`` form, less the rows in ``skip`` (answered by the run this one resumes).

    Bytes that are not a readable parquet file become quarantine rows; a storage error (after the filesystem's
    retries) is raised: it fails the job, it is not the input's fault. ``duplicate_of`` maps a row to the first
    row with its (user_id, task), and the row is rejected as a duplicate.
    """
    data = storage.read_bytes(uri)
    try:
        table = pq.read_table(pa.BufferReader(data))
    except (OSError, pa.ArrowException) as e:
        rows = _footer_rows(data)
        reason = f"shard unreadable: {e}"
        if rows is None:
            out = _rejected(uri, np.array([-1]), [json.dumps({"shard": uri})], reason, "read")
        else:
            out = _rejected(uri, np.arange(rows), [json.dumps({"shard": uri, "row": i}) for i in range(rows)],
                            reason, "read")
    else:
        out = conform(table, uri)
        if duplicate_of:
            out = _reject_duplicates(out, duplicate_of)
    if skip is not None and len(skip):
        out = out.filter(pc.invert(pc.is_in(out.column("row"), pa.array(skip, pa.int64()))))
    return out


def _footer_rows(data: bytes) -> int | None:
    """Rows a parquet file's footer announces (the data may still be corrupt), or None without a footer."""
    try:
        return pq.ParquetFile(pa.BufferReader(data)).metadata.num_rows
    except (OSError, pa.ArrowException):
        return None


def _reject_duplicates(table: pa.Table, duplicate_of: dict[int, str]) -> pa.Table:
    import pandas as pd

    pos = pd.Index(np.fromiter(duplicate_of, dtype=np.int64)).get_indexer(to_numpy(table.column("row")))
    rows = np.flatnonzero(pos >= 0)
    firsts = np.array(list(duplicate_of.values()), dtype=object)[pos[rows]]
    reasons = np.char.add("duplicate: this (user_id, task) is already requested at ", firsts.astype(str))
    return reject(table, rows, reasons, "read")


def conform(table: pa.Table, shard: str) -> pa.Table:
    """Cast a shard to the requests schema; a missing required column or an uncastable column rejects every row."""
    k_type = table.schema.field("k").type if "k" in table.column_names else None
    if k_type is not None and pa.types.is_integer(k_type) and k_type not in INT32_VALUES:
        # An out-of-range k is one bad row, not a bad shard: null it here, the validator names it.
        k = table.column("k")
        fits = pc.and_(pc.greater_equal(k, -(2**31)), pc.less(k, 2**31))
        table = table.set_column(table.schema.get_field_index("k"), "k", pc.if_else(fits, k, pa.scalar(None, k.type)))
    rows = np.arange(table.num_rows)
    try:
        requests = schemas.conform(table, schemas.REQUESTS, shard, required=schemas.REQUIRED_REQUEST_COLUMNS)
    except ValueError as e:
        raw = [json.dumps(r, default=str) for r in table.to_pylist()]
        return _rejected(shard, rows, raw, str(e), "read")
    n = table.num_rows
    return pa.Table.from_arrays(requests.columns + [
        pa.array(np.full(n, shard), pa.string()), pa.array(rows, pa.int64()),
        pa.nulls(n, pa.string()), pa.nulls(n, pa.string()), pa.nulls(n, pa.string()),
    ], schema=STREAM)


def _rejected(shard: str, rows: np.ndarray, raw: list[str], reason: str, stage: str) -> pa.Table:
    n = len(rows)
    columns = {f.name: pa.nulls(n, f.type) for f in schemas.REQUESTS}
    columns.update(shard=pa.array(np.full(n, shard), pa.string()), row=pa.array(rows, pa.int64()),
                   raw=pa.array(raw, pa.string()), error=pa.array(np.full(n, reason), pa.string()),
                   stage=pa.array(np.full(n, stage), pa.string()))
    return pa.table(columns, schema=STREAM)
