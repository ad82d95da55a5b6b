"""Prepared data: contract tables + leave-one-out split + sampled candidates + CTR rows, in one folder or prefix.

Layout under OUT: interactions/items/train/valid/test/candidates/ctr ``.parquet`` and ``meta.json``,
written last: a folder without ``meta.json`` is an unfinished write and is refused.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from reasonrec import storage
from reasonrec.data import ctr, explain, schemas, split
from reasonrec.data.loaders import RawDataset
from reasonrec.data.sequences import Sequences
from reasonrec.data.vocab import Vocab

TABLES = ("interactions", "items", "train", "valid", "test", "candidates", "ctr", "explain")


@dataclass
class EvalSet:
    """Users to evaluate: their visible history, the held-out item and (direct task) the candidate list."""

    history: Sequences
    target: np.ndarray  # (U,) item index
    candidates: np.ndarray | None  # (U, 1 + n_neg) item indices, positive first; -1 pads short lists


def prepare(raw: RawDataset, out_uri: str, *, min_len: int = 3, n_negatives: int = 99, seed: int = 12345,
            cut: int | None = None, domains: list[str] | None = None) -> dict:
    """``cut`` (epoch seconds): the time split (train before it, test after it) instead of leave-one-out;
    ``domains``: the domain names of a combined dataset (``reasonrec.data.domains``), for per-domain metrics."""
    everything = split.sort_interactions(raw.interactions)
    items = _complete_items(raw.items, everything)
    if cut is None:
        interactions, parts = everything, split.leave_one_out(everything, min_len=min_len)
        clicked = interactions
    else:  # the interactions after the cut that are not a test item are no part of the prepared data
        interactions, parts = split.time_split(everything, cut, min_len=min_len)
        clicked = interactions.filter(pc.is_in(interactions.column("user_id"), parts["test"].column("user_id")))
    catalogue = items.column("item_id").to_numpy(zero_copy_only=False)
    candidates = pa.concat_tables([  # negatives: never interacted with, after the cut included
        split.sample_candidates(everything, parts[name], catalogue, name, n_negatives=n_negatives, seed=seed)
        for name in ("valid", "test")
    ])
    clicks = ctr.sample_ctr(clicked, catalogue, min_len=min_len, seed=seed)
    explanations = explain.sample_explain(parts["train"], seed=seed)
    meta = {
        "dataset": raw.name,
        "users": pc.count_distinct(interactions.column("user_id")).as_py(),
        "items": items.num_rows,
        "interactions": interactions.num_rows,
        "evaluated_users": parts["test"].num_rows,
        "min_len": min_len,
        "n_negatives": n_negatives,
        "seed": seed,
        "split": "leave-one-out" if cut is None else "time",
        **({"cut": int(cut)} if cut is not None else {}),
        **({"domains": list(domains)} if domains else {}),
        "fingerprint": _fingerprint(interactions),
        "explain_rows": _counts(explanations),
        "ctr_rows": {name: int(n) for name, n in zip(*np.unique(clicks.column("split").to_numpy(zero_copy_only=False),
                                                                 return_counts=True))},
    }
    storage.delete(storage.join(out_uri, "meta.json"))
    tables = {"interactions": interactions, "items": items, **parts, "candidates": candidates, "ctr": clicks,
              "explain": explanations}
    for name, table in tables.items():
        storage.write_parquet(table, storage.join(out_uri, f"{name}.parquet"))
    storage.write_json(storage.join(out_uri, "meta.json"), meta)
    return meta


def _counts(rows: pa.Table) -> dict:
    names, counts = np.unique(rows.column("split").to_numpy(zero_copy_only=False), return_counts=True)
    return {name: int(n) for name, n in zip(names, counts)}


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
            try:
                self._tables[name] = storage.read_parquet(storage.join(self.uri, f"{name}.parquet"))
            except FileNotFoundError:
                raise FileNotFoundError(f"{self.uri}: no {name}.parquet (prepared by an older version: run "
                                        "`reasonrec prepare` again)") from None
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

    @cached_property
    def item_features(self) -> ctr.ItemFeatures:
        return ctr.ItemFeatures.from_items(self.table("items"), self.item_vocab)

    def ctr_set(self, name: str) -> ctr.CTRSet:
        """The CTR rows of split ``name`` (train, valid, test), each with the history its prefix gives."""
        rows = self.table("ctr").filter(pc.equal(pc.field("split"), name))
        if rows.num_rows == 0:
            raise ValueError(f"{self.uri}: no CTR rows for split {name!r}")
        return ctr.CTRSet(self.before(rows), self.item_vocab.index(rows.column("item_id")),
                          rows.column("label").to_numpy().astype(np.float32), self.item_features)

    def explain_rows(self, name: str) -> tuple[pa.Table, Sequences]:
        """The explanation rows of split ``name`` (train, valid, test) and each one's history (the purchases
        before it). Empty for a dataset without reviews."""
        try:
            rows = self.table("explain")
        except FileNotFoundError:
            rows = explain.SCHEMA.empty_table()
        rows = rows.filter(pc.equal(pc.field("split"), name))
        return rows, self.before(rows)

    def before(self, rows: pa.Table) -> Sequences:
        """Per row (``user_id``, ``prefix``), the user's first ``prefix`` purchases in time order."""
        everything = self.purchases
        user = Vocab(everything.user_ids).index(rows.column("user_id"))
        prefix = rows.column("prefix").to_numpy().astype(np.int64)
        offsets = np.concatenate([[0], np.cumsum(prefix)])
        starts = np.repeat(everything.offsets[user], prefix)
        within = np.arange(offsets[-1]) - np.repeat(offsets[:-1], prefix)
        return Sequences(rows.column("user_id").to_numpy(zero_copy_only=False), offsets,
                         everything.items[starts + within])

    @cached_property
    def purchases(self) -> Sequences:
        """Every user's purchases in time order (train + valid + test)."""
        return Sequences.from_table(self.table("interactions"), self.item_vocab)
