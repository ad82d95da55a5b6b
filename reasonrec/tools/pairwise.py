"""Shared training for user-embedding models: BPR over (user, positive, uniformly sampled negative)."""
from __future__ import annotations

import dataclasses
from typing import Iterator

import numpy as np
import torch
import torch.nn.functional as F

from reasonrec.data.prepared import Sequences
from reasonrec.tools.base import Tool, ToolConfig


@dataclasses.dataclass
class PairwiseConfig(ToolConfig):
    batch_size: int = 4096
    lr: float = 1e-2
    epochs: int = 100
    eval_every: int = 5
    patience: int = 3
    val_task: str = "direct"
    refit: bool = True
    negatives: int = 4  # sampled negatives per positive
    reg: float = 1e-3  # L2 on the ego embeddings used in each batch


class PairwiseTool(Tool):
    """Subclasses own ``user_emb``/``item_emb`` and implement ``embeddings() -> (user_table, item_table)``
    (the tables scores are computed from); item row 0 is padding."""

    Config = PairwiseConfig

    def embeddings(self) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def training_batches(self, train: Sequences, rng: np.random.Generator) -> Iterator[dict]:
        users = torch.from_numpy(self.users.index(np.repeat(train.user_ids, train.lengths)))
        items = torch.from_numpy(train.items)
        order = torch.from_numpy(rng.permutation(len(items)))
        for lo in range(0, len(order), self.config.batch_size):
            idx = order[lo:lo + self.config.batch_size]
            neg = torch.from_numpy(rng.integers(1, self.n_items + 1, size=(len(idx), self.config.negatives)))
            yield {"users": users[idx], "pos": items[idx], "neg": neg}

    def forward(self, batch: dict) -> torch.Tensor:
        user_table, item_table = self.embeddings()
        u = user_table[batch["users"]]
        pos = (u * item_table[batch["pos"]]).sum(-1, keepdim=True)
        neg = torch.einsum("bd,bnd->bn", u, item_table[batch["neg"]])
        return -F.logsigmoid(pos - neg).mean() + self.regularizer(batch)

    def regularizer(self, batch: dict) -> torch.Tensor:
        used = [self.user_emb(batch["users"]), self.item_emb(batch["pos"]), self.item_emb(batch["neg"])]
        return self.config.reg * sum(e.pow(2).sum() for e in used) / len(batch["users"])

    def user_vectors(self, history: Sequences) -> torch.Tensor:
        return self._vectors(self.embeddings()[0], history)

    def item_table(self) -> torch.Tensor:
        return self.embeddings()[1]

    def score(self, history: Sequences) -> torch.Tensor:
        # One call of embeddings(): while LightGCN trains, each call propagates over the whole graph.
        user_table, item_table = self.embeddings()
        return self._vectors(user_table, history) @ item_table.T

    def _vectors(self, user_table: torch.Tensor, history: Sequences) -> torch.Tensor:
        rows, known = self.user_rows(history)
        # Users unseen in training have no embedding: they get the zero vector (ties, broken by the caller).
        return user_table[rows] * known[:, None]
