"""Per-user item sequences in CSR form: what the tools read."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from reasonrec.data import split
from reasonrec.data.vocab import Vocab


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
