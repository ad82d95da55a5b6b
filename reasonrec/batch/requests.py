"""Request shards: writing them from prepared data, reading them back, validating every row.

Inside the nightly job a request row travels with four bookkeeping columns (``STREAM``): the shard and row it
came from, and ``error``/``stage``, set by the first stage that rejects it. Rejected rows keep flowing to the
sink, which writes them to quarantine: nothing is dropped on the way.
"""
from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from reasonrec import storage
from reasonrec.batch.columns import as_mask, list_parts, nulls, to_numpy
from reasonrec.data import schemas
from reasonrec.data.prepared import PreparedData, Sequences
from reasonrec.data.vocab import Vocab

MAX_USER_ID_CHARS = 256
INT32_VALUES = {pa.int8(), pa.int16(), pa.int32(), pa.uint8(), pa.uint16()}  # integer types whose values all fit k

STREAM = pa.schema([
    *schemas.REQUESTS,
    pa.field("shard", pa.string()),
    pa.field("row", pa.int64()),
    pa.field("raw", pa.string()),  # the input row as JSON, kept only when it could not be conformed
    pa.field("error", pa.string()),
    pa.field("stage", pa.string()),
])


# -- writing -------------------------------------------------------------------------------------------------

def list_array(offsets: np.ndarray, values) -> pa.ListArray:
    return pa.ListArray.from_arrays(pa.array(offsets, pa.int32()), pa.array(values, pa.string()))


def requests_for_split(data: PreparedData, split: str, task: str, k: int, seed: int = 0) -> pa.Table:
    """One request per evaluated user of ``split``, with the history that split's evaluation sees.

    Direct requests carry the split's 1 + N candidates, shuffled per user so that position gives nothing away.
    """
    evalset = data.eval_set(split)
    history = evalset.history
    columns = {
        "user_id": pa.array(history.user_ids, pa.string()),
        "task": pa.array(np.full(len(history), task), pa.string()),
        "candidates": pa.nulls(len(history), pa.list_(pa.string())),
        "k": pa.array(np.full(len(history), k), pa.int32()),
        "history": list_array(history.offsets, data.item_vocab.lookup(history.items)),
    }
    if task in ("direct", "ctr"):
        cand = evalset.candidates
        order = np.argsort(np.random.default_rng(seed).random(cand.shape), axis=1)
        cand = np.take_along_axis(cand, order, axis=1)
        present = cand > 0
        offsets = np.concatenate([[0], np.cumsum(present.sum(axis=1))])
        columns["candidates"] = list_array(offsets, data.item_vocab.lookup(cand[present]))
    return pa.table(columns, schema=schemas.REQUESTS)


def write_requests(table: pa.Table, out_uri: str, shard_rows: int = 5000) -> list[str]:
    """Write ``table`` as ``part-NNNNN.parquet`` shards under ``out_uri`` (an existing set is replaced)."""
    storage.delete(out_uri)
    uris = []
    for i, lo in enumerate(range(0, max(table.num_rows, 1), shard_rows)):
        uri = storage.join(out_uri, f"part-{i:05d}.parquet")
        storage.write_parquet(table.slice(lo, shard_rows), uri)
        uris.append(uri)
    return uris


# -- reading -------------------------------------------------------------------------------------------------

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
    """Per shard, each row whose (user_id, task) an earlier row (in shard then row order) already asks for, mapped
    to that first row (``shard#row``). Only rows that pass the checks on user_id, task and k count, so that a
    malformed first copy does not shadow a good one (it is quarantined for its own fault). Shards that cannot be
    read or lack the columns are left to ``read_shard``."""
    from concurrent.futures import ThreadPoolExecutor

    def keys(uri: str) -> pa.Table | None:
        data = storage.read_bytes(uri)
        try:
            table = pq.read_table(pa.BufferReader(data), columns=["user_id", "task", "k"])
            user, task, k = (pc.cast(table.column(c), t) for c, t in
                             (("user_id", pa.string()), ("task", pa.string()), ("k", pa.int64())))
        except (OSError, pa.ArrowException, KeyError):
            return None
        ok = pc.and_(pc.and_(pc.equal(pc.utf8_trim_whitespace(user), user), pc.greater(pc.utf8_length(user), 0)),
                     pc.and_(pc.is_in(task, pa.array(answered_tasks)),
                             pc.and_(pc.greater_equal(k, 1), pc.less_equal(k, max_k))))
        rows = pa.table({"user_id": user, "task": task, "shard": pa.array(np.full(table.num_rows, uri), pa.string()),
                         "row": pa.array(np.arange(table.num_rows), pa.int64())})
        return rows.filter(pc.fill_null(ok, False))

    with ThreadPoolExecutor(16) as pool:
        tables = [t for t in pool.map(keys, shards) if t is not None]
    if not tables:
        return {}
    frame = pa.concat_tables(tables).to_pandas()
    repeated = frame.duplicated(["user_id", "task"], keep="first")
    if not repeated.any():
        return {}
    first = frame[~repeated].set_index(["user_id", "task"])
    later = frame[repeated]
    origin = first.loc[list(zip(later["user_id"], later["task"]))]
    source = (origin["shard"] + "#" + origin["row"].astype(str)).to_numpy()
    out: dict[str, dict[int, str]] = {}
    for shard, row, src in zip(later["shard"], later["row"], source):
        out.setdefault(shard, {})[int(row)] = src
    return out


def _reject_duplicates(table: pa.Table, duplicate_of: dict[int, str]) -> pa.Table:
    import pandas as pd

    pos = pd.Index(np.fromiter(duplicate_of, dtype=np.int64)).get_indexer(to_numpy(table.column("row")))
    hit = pc.and_(pa.array(pos >= 0), table.column("error").is_null())
    if not pc.any(hit).as_py():
        return table
    firsts = np.array(list(duplicate_of.values()), dtype=object)
    first = pa.array(np.where(pos >= 0, firsts[pos], None), pa.string())
    reason = pc.binary_join_element_wise("duplicate: this (user_id, task) is already requested at ", first, "")
    error = pc.if_else(hit, reason, table.column("error"))
    stage = pc.if_else(hit, "read", table.column("stage"))
    table = table.set_column(table.schema.get_field_index("error"), "error", error)
    return table.set_column(table.schema.get_field_index("stage"), "stage", stage)


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


# -- validating ----------------------------------------------------------------------------------------------

class Validator:
    """Row checks, vectorised over a batch; the first failed check of a row names its field."""

    def __init__(self, catalogue: Vocab, max_k: int, answered_tasks: tuple[str, ...], max_history: int = 10_000):
        self.catalogue = catalogue
        self.max_k = max_k
        self.max_history = max_history
        self.answered_tasks = answered_tasks
        self._tasks, self._answered = pa.array(schemas.TASKS), pa.array(answered_tasks, pa.string())
        self._ranking_tasks = pa.array(["direct", "ctr"])

    def __call__(self, batch: pa.Table) -> pa.Table:
        n = batch.num_rows
        reasons = np.full(n, None, dtype=object)
        pending = nulls(batch.column("error"))  # not rejected yet

        def reject(mask: np.ndarray, describe) -> None:
            rows = np.flatnonzero(mask & pending)
            for row in rows:  # only rejected rows, never the whole batch
                reasons[row] = describe(row)
            pending[rows] = False

        user = batch.column("user_id")
        stripped = pc.utf8_trim_whitespace(user)
        reject(nulls(user), lambda r: "user_id: null")
        reject(as_mask(pc.equal(pc.utf8_length(stripped), 0)), lambda r: "user_id: empty")
        reject(as_mask(pc.not_equal(stripped, user)), lambda r: f"user_id: {_v(user, r)} has surrounding whitespace")
        reject(as_mask(pc.greater(pc.utf8_length(user), MAX_USER_ID_CHARS)),
               lambda r: f"user_id: longer than {MAX_USER_ID_CHARS} characters")
        reject(as_mask(pc.invert(pc.utf8_is_printable(user))), lambda r: f"user_id: {_v(user, r)} is not printable")

        task = batch.column("task")
        reject(~as_mask(pc.is_in(task, self._tasks)),
               lambda r: f"task: unknown {_v(task, r)}; expected one of {list(schemas.TASKS)}")
        reject(~as_mask(pc.is_in(task, self._answered)),
               lambda r: f"task: {_v(task, r)} is not answered by this job (it answers {list(self.answered_tasks)})")

        k = batch.column("k")
        in_range = pc.and_(pc.greater_equal(k, 1), pc.less_equal(k, self.max_k))
        reject(~as_mask(in_range), lambda r: f"k: {_v(k, r)} out of range [1, {self.max_k}]")

        n_history = list_parts(batch.column("history"))[0]
        reject(n_history > self.max_history,
               lambda r: f"history: {n_history[r]} items, more than max_history {self.max_history}")

        candidates = batch.column("candidates")
        n_cand, items = list_parts(candidates)
        reject(as_mask(pc.is_in(task, self._ranking_tasks)) & (n_cand == 0),
               lambda r: f"candidates: task {_v(task, r)} needs a list")
        unknown = self._unknown_candidates(n_cand, items)
        reject(unknown > 0, lambda r: f"candidates: {unknown[r]} not in the catalogue, e.g. "
                                      f"{self._first_unknown(candidates, r)!r}")

        if np.equal(reasons, None).all():
            return batch
        error = pc.coalesce(batch.column("error"), pa.array(reasons, pa.string()))
        stage = pc.if_else(pc.and_(batch.column("error").is_null(), error.is_valid()), "validate", batch.column("stage"))
        batch = batch.set_column(batch.schema.get_field_index("error"), "error", error)
        return batch.set_column(batch.schema.get_field_index("stage"), "stage", stage)

    def _unknown_candidates(self, lengths: np.ndarray, items: pa.Array) -> np.ndarray:
        if not lengths.any():
            return np.zeros(len(lengths), dtype=np.int64)
        bad = self.catalogue.index(items) < 0
        return np.bincount(np.repeat(np.arange(len(lengths)), lengths)[bad], minlength=len(lengths))

    def _first_unknown(self, candidates: pa.ChunkedArray, row: int) -> str:
        values = candidates[row].as_py()
        return next(v for v, i in zip(values, self.catalogue.index(values)) if i < 0)


def history_indices(batch: pa.Table, vocab: Vocab) -> tuple[np.ndarray, np.ndarray]:
    """Per row the history length, and the flat item indices (-1 for items not in the catalogue)."""
    lengths, items = list_parts(batch.column("history"))
    return lengths, vocab.index(items)


def history_sequences(batch: pa.Table, vocab: Vocab) -> Sequences:
    """The batch's histories as tool input; items the catalogue does not know are left out."""
    lengths, items = history_indices(batch, vocab)
    known = items > 0
    rows = np.repeat(np.arange(len(lengths)), lengths)
    kept = np.bincount(rows[known], minlength=len(lengths))
    offsets = np.concatenate([[0], np.cumsum(kept)]).astype(np.int64)
    return Sequences(to_numpy(batch.column("user_id")), offsets, items[known])


def _v(column: pa.ChunkedArray, row: int):
    return repr(column[row].as_py())
