"""Writing request shards from prepared data: one request per evaluated user and task of a split."""
from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from reasonrec import storage
from reasonrec.data import schemas
from reasonrec.data.prepared import PreparedData


def list_array(offsets: np.ndarray, values) -> pa.ListArray:
    return pa.ListArray.from_arrays(pa.array(offsets, pa.int32()), pa.array(values, pa.string()))


def requests_for_split(data: PreparedData, split: str, task: str, k: int, seed: int = 0) -> pa.Table:
    """One request per evaluated user of ``split``, with the history that split's evaluation sees.

    Direct requests carry the split's 1 + N candidates, ctr requests the split's CTR rows of the user (the click and
    its sampled non-clicks, ``reasonrec.data.ctr``), each shuffled per user so that position gives nothing away.
    """
    evalset = data.eval_set(split)
    history = evalset.history
    columns = {
        "user_id": pa.array(history.user_ids, pa.string()),
        "task": pa.array(np.full(len(history), task), pa.string()),
        "candidates": pa.nulls(len(history), pa.list_(pa.string())),
        "k": pa.array(np.full(len(history), k), pa.int32()),
        "history": list_array(history.offsets, data.item_vocab.lookup(history.items)),
        "item_id": pa.nulls(len(history), pa.string()),
        "rating": pa.nulls(len(history), pa.float32()),
    }
    if task in ("direct", "ctr"):
        cand = evalset.candidates if task == "direct" else ctr_candidates(data, split, history.user_ids)
        order = np.argsort(np.random.default_rng(seed).random(cand.shape), axis=1)
        cand = np.take_along_axis(cand, order, axis=1)
        present = cand > 0
        offsets = np.concatenate([[0], np.cumsum(present.sum(axis=1))])
        columns["candidates"] = list_array(offsets, data.item_vocab.lookup(cand[present]))
    return pa.table(columns, schema=schemas.REQUESTS)


def explain_requests(data: PreparedData, split: str) -> pa.Table:
    """One explain request per review of ``split`` (``reasonrec.data.explain``): the user, the purchases before it,
    the item and its star rating."""
    rows, history = data.explain_rows(split)
    n = rows.num_rows
    if n == 0:
        raise ValueError(f"{data.uri}: no reviews for split {split!r}: explain requests need a dataset with review "
                         "text (interactions.review)")
    return pa.table({
        "user_id": rows.column("user_id"), "task": pa.array(np.full(n, "explain"), pa.string()),
        "candidates": pa.nulls(n, pa.list_(pa.string())), "k": pa.array(np.ones(n), pa.int32()),
        "history": list_array(history.offsets, data.item_vocab.lookup(history.items)),
        "item_id": rows.column("item_id"), "rating": rows.column("rating"),
    }, schema=schemas.REQUESTS)


def ctr_candidates(data: PreparedData, split: str, users: np.ndarray) -> np.ndarray:
    """(users, candidates) item indices of each user's CTR rows of ``split``, click first; -1 pads."""
    from reasonrec.data.vocab import Vocab

    rows = data.table("ctr").filter(pc.equal(pc.field("split"), split))
    owner = Vocab(users).index(rows.column("user_id"))
    items = data.item_vocab.index(rows.column("item_id"))
    label = rows.column("label").to_numpy()
    order = np.lexsort((-label, owner))  # by user, the click first
    owner, items = owner[order], items[order]
    keep = owner >= 0
    owner, items = owner[keep], items[keep]
    counts = np.bincount(owner, minlength=len(users))
    out = np.full((len(users), max(int(counts.max(initial=0)), 1)), -1, dtype=np.int64)
    out[owner, np.arange(len(owner)) - np.repeat(np.cumsum(counts) - counts, counts)] = items
    return out


def make_requests(data: PreparedData, split: str = "test", tasks: tuple[str, ...] = ("sequential", "direct"),
                  k: int = 10, users: int = 0, seed: int = 0) -> pa.Table:
    """Requests for every task of ``tasks``; ``users``: the same seeded sample of that many users for every task."""
    tables = [explain_requests(data, split) if task == "explain" else requests_for_split(data, split, task, k,
                                                                                            seed=seed)
              for task in tasks]
    if users:
        ids = tables[0].column("user_id").to_numpy(zero_copy_only=False)
        keep = pa.array(sorted(set(ids[np.random.default_rng(seed).permutation(len(ids))[:users]])), pa.string())
        tables = [t.filter(pc.is_in(t.column("user_id"), keep)) for t in tables]
    return pa.concat_tables(tables)


def write_requests(table: pa.Table, out_uri: str, shard_rows: int = 5000) -> list[str]:
    """Write ``table`` as ``part-NNNNN.parquet`` shards under ``out_uri`` (an existing set is replaced)."""
    storage.delete(out_uri)
    uris = []
    for i, lo in enumerate(range(0, max(table.num_rows, 1), shard_rows)):
        uri = storage.join(out_uri, f"part-{i:05d}.parquet")
        storage.write_parquet(table.slice(lo, shard_rows), uri)
        uris.append(uri)
    return uris
