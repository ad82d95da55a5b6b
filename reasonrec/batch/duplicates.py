"""The duplicate scan: which request rows repeat an earlier request (same user_id and task; explain: and item_id),
earlier meaning in shard then row order.

It is a map and a reduce, so that it can run where the data is: ``shard_keys`` reads one shard's keys and splits
them into buckets by a hash of the key; ``repeats`` finds the repeated rows of one bucket (every copy of a key is in
the same bucket). ``find`` runs both in this process; ``actors.duplicates`` runs them as Ray tasks, so that no
driver holds every key of a night's input, only the repeated rows.
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from reasonrec import storage

KEY = ["user_id", "task", "item"]
KEYS = pa.schema([("user_id", pa.string()), ("task", pa.string()), ("item", pa.string()), ("order", pa.int64()),
                  ("row", pa.int64())])  # order: the shard's place in the listing


def _keys(uri: str, order: int, answered_tasks: tuple[str, ...], max_k: int) -> pa.Table:
    """The shard's request keys that count: rows that pass the checks on user_id, task and k, so that a malformed
    first copy does not shadow a good one (it is quarantined for its own fault). A shard that cannot be read or
    lacks the columns gives none: ``shards.read_shard`` quarantines it."""
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
        return KEYS.empty_table()
    ok = pc.and_(pc.and_(pc.equal(pc.utf8_trim_whitespace(user), user), pc.greater(pc.utf8_length(user), 0)),
                 pc.and_(pc.is_in(task, pa.array(answered_tasks)),
                         pc.and_(pc.greater_equal(k, 1), pc.less_equal(k, max_k))))
    rows = pa.table([user, task, pc.fill_null(item, ""), pa.array(np.full(table.num_rows, order), pa.int64()),
                     pa.array(np.arange(table.num_rows), pa.int64())], schema=KEYS)
    return rows.filter(pc.fill_null(ok, False))


def shard_keys(uri: str, order: int, answered_tasks: tuple[str, ...], max_k: int, buckets: int) -> list[pa.Table]:
    """Map: the shard's keys, split into ``buckets`` tables by a hash of the key."""
    import pandas as pd

    keys = _keys(uri, order, answered_tasks, max_k)
    if buckets == 1:
        return [keys]
    joined = pc.binary_join_element_wise(*(keys.column(c) for c in KEY), "\x1f").to_numpy(zero_copy_only=False)
    bucket = (pd.util.hash_array(joined) % np.uint64(buckets)).astype(np.int64)
    order_ = np.argsort(bucket, kind="stable")
    bounds = np.searchsorted(bucket[order_], np.arange(buckets + 1))
    keys = keys.take(order_)
    return [keys.slice(lo, hi - lo) for lo, hi in zip(bounds[:-1], bounds[1:])]


def repeats(parts: list[pa.Table]) -> pa.Table:
    """Reduce: the rows of one bucket whose key an earlier row holds, with that first row: (order, row,
    first_order, first_row)."""
    frame = pa.concat_tables([KEYS.empty_table(), *parts]).to_pandas().sort_values(["order", "row"], kind="stable")
    first = frame.groupby(KEY, sort=False)[["order", "row"]].transform("first")
    repeated = frame.duplicated(KEY, keep="first").to_numpy()
    return pa.table({"order": frame["order"].to_numpy()[repeated], "row": frame["row"].to_numpy()[repeated],
                     "first_order": first["order"].to_numpy()[repeated],
                     "first_row": first["row"].to_numpy()[repeated]})


def as_map(shards: list[str], found: pa.Table) -> dict[str, dict[int, str]]:
    """Per shard, each repeated row mapped to its first copy (``shard#row``), the form ``read_shard`` takes."""
    out: dict[str, dict[int, str]] = {}
    for order, row, first_order, first_row in zip(*(found.column(c).to_numpy() for c in
                                                    ("order", "row", "first_order", "first_row"))):
        out.setdefault(shards[order], {})[int(row)] = f"{shards[first_order]}#{first_row}"
    return out


def find(shards: list[str], answered_tasks: tuple[str, ...], max_k: int) -> dict[str, dict[int, str]]:
    """The scan in this process (shard reads on threads): per shard, each repeated row mapped to its first copy."""
    with ThreadPoolExecutor(16) as pool:
        parts = list(pool.map(lambda i: shard_keys(shards[i], i, answered_tasks, max_k, 1)[0], range(len(shards))))
    return as_map(shards, repeats(parts))
