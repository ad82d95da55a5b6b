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


def duplicate_rows(shards: list[str], answered_tasks: tuple[str, ...], max_k: int) -> dict[str, dict[int, str]]:
    """Per shard, each row whose (user_id, task) (explain: and item_id) an earlier row (in shard then row order)
    already asks for, mapped to that first row (``shard#row``). Only rows that pass the checks on user_id, task and
    k count, so that a malformed first copy does not shadow a good one (it is quarantined for its own fault).
    Shards that cannot be read or lack the columns are left to ``read_shard``."""
    from concurrent.futures import ThreadPoolExecutor

    def keys(uri: str) -> pa.Table | None:
        data = storage.read_bytes(uri)
        try:
            names = pq.ParquetFile(pa.BufferReader(data)).schema_arrow.names
            table = pq.read_table(pa.BufferReader(data), columns=["user_id", "task", "k"] + (
                ["item_id"] if "item_id" in names else []))
            user, task, k = (pc.cast(table.column(c), t) for c, t in
                             (("user_id", pa.string()), ("task", pa.string()), ("k", pa.int64())))
            # An explain request is one per (user, item): the item is part of its key.
            item = (pc.if_else(pc.equal(task, "explain"), pc.cast(table.column("item_id"), pa.string()), "")
                    if "item_id" in names else pa.array(np.full(table.num_rows, ""), pa.string()))
        except (OSError, pa.ArrowException, KeyError):
            return None
        ok = pc.and_(pc.and_(pc.equal(pc.utf8_trim_whitespace(user), user), pc.greater(pc.utf8_length(user), 0)),
                     pc.and_(pc.is_in(task, pa.array(answered_tasks)),
                             pc.and_(pc.greater_equal(k, 1), pc.less_equal(k, max_k))))
        rows = pa.table({"user_id": user, "task": task, "item": pc.fill_null(item, ""),
                         "shard": pa.array(np.full(table.num_rows, uri), pa.string()),
                         "row": pa.array(np.arange(table.num_rows), pa.int64())})
        return rows.filter(pc.fill_null(ok, False))

    with ThreadPoolExecutor(16) as pool:
        tables = [t for t in pool.map(keys, shards) if t is not None]
    if not tables:
        return {}
    frame = pa.concat_tables(tables).to_pandas()
    key = ["user_id", "task", "item"]
    repeated = frame.duplicated(key, keep="first")
    if not repeated.any():
        return {}
    first = frame[~repeated].set_index(key)
    later = frame[repeated]
    origin = first.loc[list(zip(later["user_id"], later["task"], later["item"]))]
    source = (origin["shard"] + "#" + origin["row"].astype(str)).to_numpy()
    out: dict[str, dict[int, str]] = {}
    for shard, row, src in zip(later["shard"], later["row"], source):
        out.setdefault(shard, {})[int(row)] = src
    return out


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
