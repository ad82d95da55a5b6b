"""New arrivals in the user's categories: the last places of the VLM's listing (docs/deliberator.md, issue 19).

The tools rank by what they learned from interactions, so an item first bought near the end of the training log, or
never, sits low in their vote whatever it is. The VLM reads titles and images, but it is only ever shown the
shortlist. So a listing keeps the vote's best ``n - places`` items and gives its last ``places`` to the newest items
of the catalogue (the ``share`` first bought last in the training log, never-bought ones first) that match the user's
history best: attribute overlap (``categories`` of the items table), each attribute weighted by its rarity, so that
one every item has (e.g. the dataset's top category) counts for nothing. Ties go to the newer item.

Training (R-VIT listings), fit-planner, the nightly job and Serve list the same places: finetune-vlm writes the first
purchase time of every item (``FILE``) into the bundle beside the VLM that was tuned on them.
"""
from __future__ import annotations

import numpy as np
import pyarrow as pa
from scipy import sparse

from reasonrec.batch.columns import list_parts, strings
from reasonrec.data.sequences import Sequences
from reasonrec.data.vocab import Vocab

FILE = "arrivals.parquet"
SHARE = 0.15  # the newest share of the catalogue the places are filled from


def first_bought(interactions: pa.Table) -> pa.Table:
    """(item_id, first_ts) of every item in ``interactions``: when the log first shows it bought."""
    return interactions.group_by("item_id").aggregate([("ts", "min")]).rename_columns(["item_id", "first_ts"])


class Arrivals:
    def __init__(self, items: pa.Table, first: pa.Table, vocab: Vocab, share: float = SHARE):
        """``items``: the catalogue (item_id, categories); ``first``: ``first_bought`` of the training log."""
        size = len(vocab) + 1
        when = np.full(size, np.inf)  # never bought: the newest of all
        known = vocab.index(first.column("item_id"))
        when[known[known > 0]] = first.column("first_ts").to_numpy().astype(np.float64)[known > 0]
        when[0] = -np.inf  # padding is never picked
        count = max(1, int(round(share * (size - 1))))
        self.newest = np.argsort(-when, kind="stable")[:count]  # newest first
        self.position = np.full(size, -1)
        self.position[self.newest] = np.arange(count)
        self.attrs = _attribute_weights(items, vocab, size)
        self.typical = np.asarray(self.attrs.mean(axis=0)).ravel()  # per attribute, the catalogue's mean weight

    @classmethod
    def from_bundle(cls, bundle, vocab: Vocab) -> "Arrivals":
        import io

        import pyarrow.parquet as pq

        items, first = (pq.read_table(io.BytesIO(bundle.read(rel))) for rel in ("catalogue.parquet", FILE))
        return cls(items, first, vocab, bundle.manifest["vlm"]["arrivals"]["share"])

    def pick(self, history: Sequences, places: int, taken: np.ndarray,
             candidates: np.ndarray | None = None) -> np.ndarray:
        """(rows, places) item indices, best first, -1 where fewer qualify: new arrivals the row's history has not
        got and ``taken`` (rows, m) does not hold, from the row's ``candidates`` (rows, c) when given (-1 padding)."""
        rows = len(history)
        # The history's attributes beyond the catalogue's average: an attribute at its base rate is no taste.
        profile = _history_matrix(history, self.attrs.shape[0]) @ self.attrs  # (rows, attrs), sparse
        newest = self.attrs[self.newest]
        match = (profile @ newest.T).toarray() - newest @ self.typical  # (rows, newest)
        match -= 1e-6 * np.arange(len(self.newest)) / len(self.newest)  # of two equal matches, the newer first
        if candidates is not None:  # only the row's own candidates may be listed
            allowed = np.zeros_like(match, dtype=bool)
            pos = self.position[np.maximum(candidates, 0)]
            r, c = np.nonzero((pos >= 0) & (candidates > 0))
            allowed[r, pos[r, c]] = True
            match = np.where(allowed, match, -np.inf)
        row = np.arange(rows)
        owner = np.concatenate([np.repeat(row, history.lengths), np.repeat(row, taken.shape[1])])
        item = np.concatenate([history.items, taken.reshape(-1)])
        pos = self.position[np.maximum(item, 0)]
        hit = (pos >= 0) & (item > 0)
        match[owner[hit], pos[hit]] = -np.inf  # what the row has bought or already lists
        best = np.argsort(-match, axis=1, kind="stable")[:, :places]
        picked = self.newest[best]
        return np.where(np.isfinite(np.take_along_axis(match, best, axis=1)), picked, -1)


def with_arrivals(shortlist: np.ndarray, picks: np.ndarray) -> np.ndarray:
    """The shortlist with its last ``picks.shape[1]`` places given to the picks (a -1 pick keeps the vote's item)."""
    out = shortlist.copy()
    f = picks.shape[1]
    if f:
        tail = out[:, -f:]
        out[:, -f:] = np.where(picks >= 0, picks, tail)
    return out


def _history_matrix(history: Sequences, size: int) -> sparse.csr_matrix:
    """(rows, items) each row's history as a distribution (every purchase counts once)."""
    lengths = history.lengths
    rows = np.repeat(np.arange(len(history)), lengths)
    weights = np.repeat(1.0 / np.maximum(lengths, 1), lengths)
    return sparse.csr_matrix((weights, (rows, history.items)), shape=(len(history), size))


def _attribute_weights(items: pa.Table, vocab: Vocab, size: int) -> sparse.csr_matrix:
    """(items, attributes): an item's attributes, each weighted by log(items / items with it), row-normalised."""
    index = vocab.index(items.column("item_id"))
    lengths, flat = list_parts(items.column("categories"))
    names = strings(flat)
    owner = np.repeat(index, lengths)
    keep = (owner > 0) & (names != "")
    codes, inverse = np.unique(names[keep], return_inverse=True)
    cells = sparse.csr_matrix((np.ones(int(keep.sum())), (owner[keep], inverse)), shape=(size, len(codes)))
    cells.data[:] = 1.0  # an attribute listed twice counts once
    having = np.asarray((cells > 0).sum(axis=0)).ravel()
    weighted = cells @ sparse.diags(np.log(max(len(index), 1) / np.maximum(having, 1)))
    norm = np.sqrt(np.asarray(weighted.multiply(weighted).sum(axis=1)).ravel())
    return sparse.diags(1.0 / np.where(norm > 0, norm, 1.0)) @ weighted
