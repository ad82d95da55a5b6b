"""Prepared data: contract tables + leave-one-out split + sampled candidates, in one folder or prefix.

Layout under OUT: interactions/items/train/valid/test/candidates ``.parquet`` and ``meta.json``,
written last: a folder without ``meta.json`` is an unfinished write and is refused.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from reasonrec import storage
from reasonrec.data import schemas, split
from reasonrec.data.loaders import RawDataset
from reasonrec.data.vocab import Vocab

TABLES = ("interactions", "items", "train", "valid", "test", "candidates")


@dataclass
class Sequences:
    """Per-user item-index sequences in CSR form (time order)."""

    user_ids: np.ndarray  # (U,) object
    offsets: np.ndarray  # (U + 1,) int64
    items: np.ndarray  # (N,) int64, 1-based item indices

    @classmethod
    def from_table(cls, table: pa.Table, item_vocab: Vocab) -> "Sequences":
        table = split.sort_interactions(table)
        pos, _ = split.positions(table)
        starts = np.flatnonzero(pos == 0)
        users = table.column("user_id").to_numpy(zero_copy_only=False)[starts]
        offsets = np.concatenate([starts, [table.num_rows]]).astype(np.int64)
        return cls(users, offsets, item_vocab.index(table.column("item_id")))

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def __len__(self) -> int:
        return len(self.user_ids)

    def padded(self, rows: np.ndarray, max_len: int) -> np.ndarray:
        """Last ``max_len`` items of each selected user, left-padded with 0, width = longest selected."""
        lengths = np.minimum(self.lengths[rows], max_len)
        width = max(int(lengths.max(initial=0)), 1)
        out = np.zeros((len(rows), width), dtype=np.int64)
        col = np.arange(width)[None, :] - (width - lengths)[:, None]  # index into each tail, <0 = pad
        src = (self.offsets[rows + 1] - lengths)[:, None] + col
        mask = col >= 0
        out[mask] = self.items[src[mask]]
        return out

    def concat(self, other_items: np.ndarray) -> "Sequences":
        """Append one item to every user (e.g. the validation item before testing)."""
        lengths = self.lengths + 1
        offsets = np.concatenate([[0], np.cumsum(lengths)])
        items = np.empty(offsets[-1], dtype=np.int64)
        is_new = np.zeros(offsets[-1], dtype=bool)
        is_new[offsets[1:] - 1] = True
        items[~is_new] = self.items
        items[is_new] = other_items
        return Sequences(self.user_ids, offsets, items)

    def select(self, rows: np.ndarray) -> "Sequences":
        lengths = self.lengths[rows]
        offsets = np.concatenate([[0], np.cumsum(lengths)])
        starts = np.repeat(self.offsets[rows], lengths)
        within = np.arange(offsets[-1]) - np.repeat(offsets[:-1], lengths)
        return Sequences(self.user_ids[rows], offsets, self.items[starts + within])


@dataclass
class EvalSet:
    """Users to evaluate: their visible history, the held-out item and (direct task) the candidate list."""

    history: Sequences
    target: np.ndarray  # (U,) item index
    candidates: np.ndarray | None  # (U, 1 + n_neg) item indices, positive first; -1 pads short lists


def prepare(raw: RawDataset, out_uri: str, *, min_len: int = 3, n_negatives: int = 99, seed: int = 12345) -> dict:
    interactions = split.sort_interactions(raw.interactions)
    items = _complete_items(raw.items, interactions)
    parts = split.leave_one_out(interactions, min_len=min_len)
    catalogue = items.column("item_id").to_numpy(zero_copy_only=False)
    candidates = pa.concat_tables([
        split.sample_candidates(interactions, parts[name], catalogue, name, n_negatives=n_negatives, seed=seed)
        for name in ("valid", "test")
    ])
    meta = {
        "dataset": raw.name,
        "users": pc.count_distinct(interactions.column("user_id")).as_py(),
        "items": items.num_rows,
        "interactions": interactions.num_rows,
        "evaluated_users": parts["test"].num_rows,
        "min_len": min_len,
        "n_negatives": n_negatives,
        "seed": seed,
        "fingerprint": _fingerprint(interactions),
    }
    storage.delete(storage.join(out_uri, "meta.json"))
    tables = {"interactions": interactions, "items": items, **parts, "candidates": candidates}
    for name, table in tables.items():
        storage.write_parquet(table, storage.join(out_uri, f"{name}.parquet"))
    storage.write_json(storage.join(out_uri, "meta.json"), meta)
    return meta


def _complete_items(items: pa.Table, interactions: pa.Table) -> pa.Table:
    """Every interacted item gets a row; unknown ones have no metadata."""
    dup = pc.count_distinct(items.column("item_id")).as_py()
    if dup != items.num_rows:
        raise ValueError(f"items: {items.num_rows - dup} duplicate item_id row(s)")
    missing = pc.filter(pc.unique(interactions.column("item_id")),
                        pc.invert(pc.is_in(pc.unique(interactions.column("item_id")), items.column("item_id"))))
    if len(missing):
        extra = schemas.conform(pa.table({"item_id": missing}), schemas.ITEMS, "items")
        items = pa.concat_tables([items, extra])
    return items


def _fingerprint(interactions: pa.Table) -> str:
    keys = interactions.select(["user_id", "item_id", "ts"]).combine_chunks()
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, keys.schema) as writer:
        writer.write_table(keys)
    return storage.sha256(sink.getvalue().to_pybytes())[:16]


class PreparedData:
    """Read side of a prepared folder; tables are loaded lazily and cached."""

    def __init__(self, uri: str):
        self.uri = uri
        meta_uri = storage.join(uri, "meta.json")
        if not storage.exists(meta_uri):
            raise FileNotFoundError(f"{uri}: not a prepared dataset (no meta.json; run `reasonrec prepare`)")
        self.meta = storage.read_json(meta_uri)

    def table(self, name: str) -> pa.Table:
        if name not in TABLES:
            raise KeyError(name)
        if name not in self._tables:
            self._tables[name] = storage.read_parquet(storage.join(self.uri, f"{name}.parquet"))
        return self._tables[name]

    @cached_property
    def _tables(self) -> dict:
        return {}

    @cached_property
    def item_vocab(self) -> Vocab:
        return Vocab(self.table("items").column("item_id").to_numpy(zero_copy_only=False), offset=1)

    @property
    def n_items(self) -> int:
        return len(self.item_vocab)

    @cached_property
    def train(self) -> Sequences:
        return Sequences.from_table(self.table("train"), self.item_vocab)

    @cached_property
    def train_and_valid(self) -> Sequences:
        """Everything before each user's test item: what the deployed tools are refitted on."""
        return Sequences.from_table(pa.concat_tables([self.table("train"), self.table("valid")]), self.item_vocab)

    def eval_set(self, name: str) -> EvalSet:
        """``valid``: history = train; ``test``: history = train + the validation item."""
        if name not in ("valid", "test"):
            raise ValueError(f"unknown split {name!r}; use valid or test")
        targets = self.table(name).sort_by("user_id")
        users = targets.column("user_id").to_numpy(zero_copy_only=False)
        rows = Vocab(self.train.user_ids).index(users)
        history = self.train.select(rows)
        if name == "test":
            valid = self.table("valid").sort_by("user_id")
            history = history.concat(self.item_vocab.index(valid.column("item_id")))
        cand = self.table("candidates").filter(pc.equal(pc.field("split"), name)).sort_by("user_id")
        negatives = cand.column("negatives").combine_chunks()
        n_neg = int(pc.max(pc.list_value_length(negatives)).as_py() or 0)
        matrix = np.full((len(users), 1 + n_neg), -1, dtype=np.int64)
        matrix[:, 0] = self.item_vocab.index(cand.column("positive"))
        lengths = np.asarray(pc.list_value_length(negatives))
        row = np.repeat(np.arange(len(users)), lengths)
        col = 1 + np.arange(lengths.sum()) - np.repeat(np.cumsum(lengths) - lengths, lengths)
        matrix[row, col] = self.item_vocab.index(negatives.flatten())
        return EvalSet(history=history, target=self.item_vocab.index(targets.column("item_id")), candidates=matrix)
