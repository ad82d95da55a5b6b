"""Shared training/scoring for next-item models: full-softmax cross-entropy at every position."""
from __future__ import annotations

import dataclasses
from typing import Iterator

import numpy as np
import torch
import torch.nn.functional as F

from reasonrec.data.prepared import Sequences
from reasonrec.tools.base import Tool, ToolConfig


@dataclasses.dataclass
class SequentialConfig(ToolConfig):
    max_len: int = 50
    dropout: float = 0.5


# Users encoded together at scoring time: a chunk holds up to this many positions (users x its longest history),
# so short histories go in big chunks (each chunk costs ~1 ms of fixed per-op overhead) and long ones in small
# chunks (attention grows with length squared). Measured on Beauty: see docs/results.md.
SCORE_TOKENS = 2048


class SequentialTool(Tool):
    """Subclasses implement ``encode(seq) -> (B, L, dim)`` over left-padded item sequences."""

    Config = SequentialConfig

    def encode(self, seq: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def item_table(self) -> torch.Tensor:
        return self.item_emb.weight

    def training_batches(self, train: Sequences, rng: np.random.Generator) -> Iterator[dict]:
        rows = np.flatnonzero(train.lengths >= 2)
        rng.shuffle(rows)
        # Batches of similar lengths (sorted within large shuffled windows) keep the padded grid small.
        size = self.config.batch_size
        window = size * 64
        for lo in range(0, len(rows), window):
            chunk = rows[lo:lo + window]
            rows[lo:lo + window] = chunk[np.argsort(train.lengths[chunk], kind="stable")]
        batches = [rows[lo:lo + size] for lo in range(0, len(rows), size)]
        for i in rng.permutation(len(batches)):
            seq = torch.from_numpy(train.padded(batches[i], self.config.max_len + 1))
            yield {"inputs": seq[:, :-1], "targets": seq[:, 1:]}

    def forward(self, batch: dict) -> torch.Tensor:
        inputs, targets = batch["inputs"], batch["targets"]
        hidden = self.encode(inputs)
        mask = (inputs > 0) & (targets > 0)
        # Logits only where a target exists: on sparse data this skips most of the padded grid.
        logits = hidden[mask] @ self.item_table()[1:].T
        return F.cross_entropy(logits, targets[mask] - 1)

    def encode_last(self, seq: torch.Tensor) -> torch.Tensor:
        """The last position's hidden state, (B, dim): all that scoring needs; models may skip the rest."""
        return self.encode(seq)[:, -1]

    def user_vectors(self, history: Sequences) -> torch.Tensor:
        # Users are encoded in chunks of similar history length, each padded only to its own longest: one long
        # history no longer pads a whole batch to max_len. Exact, since no model here reads the left padding
        # (tests/unit/test_tools.py).
        lengths = np.maximum(np.minimum(history.lengths, self.config.max_len), 1)
        order = np.argsort(lengths, kind="stable")
        last = [self.encode_last(torch.from_numpy(history.padded(order[lo:hi], self.config.max_len)))
                for lo, hi in chunks(lengths[order], SCORE_TOKENS)]
        if not last:
            return torch.zeros(0, self.config.dim)
        return torch.cat(last)[torch.from_numpy(np.argsort(order))]


def chunks(lengths: np.ndarray, tokens: int) -> list[tuple[int, int]]:
    """[lo, hi) ranges over ascending ``lengths``, each as many rows as fit ``tokens`` when padded to its last
    (longest) length, and at least one row."""
    out, lo = [], 0
    while lo < len(lengths):
        # The largest hi with (hi - lo) * lengths[hi - 1] <= tokens: that product grows with hi.
        fits, too_many = lo + 1, len(lengths) + 1
        while too_many - fits > 1:
            mid = (fits + too_many) // 2
            fits, too_many = (mid, too_many) if (mid - lo) * lengths[mid - 1] <= tokens else (fits, mid)
        out.append((lo, fits))
        lo = fits
    return out
