"""CTR prediction data (paper Appendix A): purchases are clicks, four sampled non-purchases per click, every
evaluated user in train, validation and test.

The split follows the leave-one-out boundaries, so that no CTR model ever trains on an item the sequential or direct
evaluation holds out: a user's leave-one-out training purchases are CTR-train clicks, the validation item the
CTR-validation click, the test item the CTR-test click (about 8:1:1 of the rows for Beauty's mean of 8.9 purchases;
(n-2):1:1 for a user with n). Each row carries ``prefix``: how many of the user's purchases, in time order, precede
it; the row's history is those purchases. Negatives are items the user never purchased, uniform, 4 per click, and
share their click's split and prefix.

The CTR tools read the rows through ``CTRSet`` (per row: history, item, label) and the catalogue through
``ItemFeatures`` (attributes, brand, price bucket per item: the BARS-style fields where the data has them).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from reasonrec.batch.columns import list_parts, padded, strings
from reasonrec.data import split
from reasonrec.data.sequences import Sequences
from reasonrec.data.vocab import Vocab

NEGATIVES = 4
SCHEMA = pa.schema([
    pa.field("user_id", pa.string(), nullable=False),
    pa.field("item_id", pa.string(), nullable=False),
    pa.field("label", pa.int8(), nullable=False),
    pa.field("split", pa.string(), nullable=False),
    pa.field("prefix", pa.int32(), nullable=False),  # purchases before this row: its history
])


def sample_ctr(interactions: pa.Table, catalogue: np.ndarray, min_len: int = 3, negatives: int = NEGATIVES,
               seed: int = 12345) -> pa.Table:
    """The CTR rows of every user with at least ``min_len`` purchases (the users leave-one-out evaluates)."""
    table = split.sort_interactions(interactions)
    pos, length = split.positions(table)
    keep = length >= min_len
    users = table.column("user_id").to_numpy(zero_copy_only=False)[keep]
    items = Vocab(catalogue).index(table.column("item_id"))[keep]
    pos, length = pos[keep], length[keep]
    from_end = length - 1 - pos
    part = np.where(from_end == 0, "test", np.where(from_end == 1, "valid", "train")).astype(object)
    clicks = len(users)
    if negatives >= len(catalogue):
        raise ValueError(f"CTR: {negatives} negatives per click need more than {len(catalogue)} items")
    _check_room(users, items, len(catalogue), negatives)
    negative_items = _unseen(users, items, len(catalogue), clicks, negatives, np.random.default_rng(seed))
    per_click = negatives + 1
    row_items = np.concatenate([items[:, None], negative_items], axis=1).reshape(-1)
    labels = np.tile(np.array([1] + [0] * negatives, dtype=np.int8), clicks)
    return pa.table({
        "user_id": pa.array(np.repeat(users, per_click), pa.string()),
        "item_id": pa.array(catalogue[row_items], pa.string()),
        "label": pa.array(labels, pa.int8()),
        "split": pa.array(np.repeat(part, per_click), pa.string()),
        "prefix": pa.array(np.repeat(pos, per_click).astype(np.int32), pa.int32()),
    }, schema=SCHEMA)


def _check_room(users: np.ndarray, items: np.ndarray, n_items: int, negatives: int) -> None:
    """Every user needs ``negatives`` items it never purchased (else the sampler below would never finish)."""
    names, code = np.unique(users, return_inverse=True)
    distinct = np.bincount(np.unique(code * n_items + items) // n_items, minlength=len(names))
    short = np.flatnonzero(n_items - distinct < negatives)
    if len(short):
        user = names[short[0]]
        raise ValueError(f"CTR: user_id {user!r} purchased {distinct[short[0]]} of the {n_items} items: fewer than "
                         f"{negatives} unpurchased items for its negatives ({len(short)} such users)")


def _unseen(users: np.ndarray, items: np.ndarray, n_items: int, clicks: int, negatives: int,
            rng: np.random.Generator) -> np.ndarray:
    """(clicks, negatives) item positions a click's user never purchased, distinct within a click's row."""
    user_code = Vocab(np.unique(users)).index(users)
    seen = np.unique(user_code * n_items + items)  # every (user, item) purchase as one key
    out = np.full((clicks, negatives), -1, dtype=np.int64)
    todo = np.arange(clicks)
    while len(todo):  # rejection sampling: on real data a couple of rounds, each vectorised
        draw = rng.integers(0, n_items, size=(len(todo), 2 * negatives))
        bad = np.isin(user_code[todo, None] * n_items + draw, seen)
        # keep the first occurrence of each item within a row
        order = np.sort(draw, axis=1)
        first = np.concatenate([np.ones((len(todo), 1), bool), order[:, 1:] != order[:, :-1]], axis=1)
        unique = np.zeros_like(bad)
        np.put_along_axis(unique, np.argsort(draw, axis=1, kind="stable"), first, axis=1)
        good = ~bad & unique
        done = good.sum(axis=1) >= negatives
        picked = np.argsort(~good, axis=1, kind="stable")[:, :negatives]
        out[todo[done]] = np.take_along_axis(draw, picked, axis=1)[done]
        todo = todo[~done]
    return out


@dataclass
class ItemFeatures:
    """Per item index (0 = padding): up to ``attrs.shape[1]`` attribute indices, a brand and a price bucket (0 =
    unknown), from the items table."""

    attrs: np.ndarray  # (n_items + 1, A) int64
    brand: np.ndarray  # (n_items + 1,) int64
    price: np.ndarray  # (n_items + 1,) int64
    n_attrs: int
    n_brands: int
    n_prices: int

    @classmethod
    def from_items(cls, items: pa.Table, vocab: Vocab, max_attrs: int = 8, price_buckets: int = 10):
        index = vocab.index(items.column("item_id"))
        size = len(vocab) + 1
        lengths, flat = list_parts(items.column("categories"))
        attr_vocab = Vocab(np.unique(flat.to_numpy(zero_copy_only=False).astype(str)), offset=1)
        attrs = np.zeros((size, max_attrs), dtype=np.int64)
        attrs[index] = np.maximum(padded(items.column("categories"), max_attrs, fill=0, to=attr_vocab.index), 0)
        brands = strings(items.column("brand"))
        brand_vocab = Vocab(np.unique(brands[brands != ""]), offset=1)
        brand = np.zeros(size, dtype=np.int64)
        brand[index] = np.maximum(brand_vocab.index(brands), 0)
        price = np.zeros(size, dtype=np.int64)
        values = items.column("price").to_numpy(zero_copy_only=False).astype(np.float64)
        known = np.isfinite(values)
        if known.any():
            edges = np.quantile(values[known], np.linspace(0, 1, price_buckets + 1)[1:-1])
            price[index[known]] = 1 + np.searchsorted(edges, values[known], side="right")
        return cls(attrs, brand, price, len(attr_vocab), len(brand_vocab), price_buckets if known.any() else 0)


@dataclass
class CTRSet:
    """CTR rows for the tools: per row the history (purchases before it), the item and the click label."""

    history: Sequences  # one entry per row
    items: np.ndarray  # (R,) item index
    labels: np.ndarray  # (R,) float32 0/1
    features: ItemFeatures | None = None  # the catalogue's, for the tools' item fields

    def __len__(self) -> int:
        return len(self.items)

    def select(self, rows: np.ndarray) -> "CTRSet":
        return CTRSet(self.history.select(rows), self.items[rows], self.labels[rows], self.features)
