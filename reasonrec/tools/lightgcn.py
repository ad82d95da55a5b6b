"""LightGCN (He et al., 2020): BPR-trained embeddings smoothed over the user-item graph."""
from __future__ import annotations

import dataclasses

import numpy as np
import torch
from torch import nn

from reasonrec.data.prepared import Sequences
from reasonrec.tools.base import register
from reasonrec.tools.pairwise import PairwiseConfig, PairwiseTool


@dataclasses.dataclass
class LightGCNConfig(PairwiseConfig):
    layers: int = 3
    reg: float = 1e-4


@register
class LightGCN(PairwiseTool):
    name = "lightgcn"
    Config = LightGCNConfig

    def __init__(self, config: LightGCNConfig, n_items: int, user_ids=None):
        super().__init__(config, n_items, user_ids)
        n_users = max(len(self.users), 1)
        self.user_emb = nn.Embedding(n_users, config.dim)
        self.item_emb = nn.Embedding(n_items + 1, config.dim, padding_idx=0)
        nn.init.normal_(self.user_emb.weight, std=0.1)
        nn.init.normal_(self.item_emb.weight, std=0.1)
        # Propagated tables, saved with the model so that scoring needs no graph.
        self.register_buffer("user_final", torch.zeros(n_users, config.dim))
        self.register_buffer("item_final", torch.zeros(n_items + 1, config.dim))
        self.graph: torch.Tensor | None = None

    def attach(self, train: Sequences) -> None:
        n_users = len(self.users)
        users = self.users.index(np.repeat(train.user_ids, train.lengths))
        items = n_users + train.items  # node ids: users, then item indices (0 = padding, isolated)
        rows = np.concatenate([users, items])
        cols = np.concatenate([items, users])
        n = n_users + self.n_items + 1
        degree = np.bincount(rows, minlength=n).astype(np.float32)
        inv_sqrt = np.zeros(n, dtype=np.float32)
        np.power(degree, -0.5, out=inv_sqrt, where=degree > 0)
        values = inv_sqrt[rows] * inv_sqrt[cols]
        self.graph = torch.sparse_coo_tensor(np.stack([rows, cols]), values, (n, n)).coalesce().to_sparse_csr()

    def propagate(self) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.cat([self.user_emb.weight, self.item_emb.weight])
        total = x
        for _ in range(self.config.layers):
            x = self.graph @ x
            total = total + x
        total = total / (self.config.layers + 1)
        return total[: len(self.users)], total[len(self.users):]

    def embeddings(self):
        if self.graph is not None:  # still training: the ego embeddings are moving
            return self.propagate()
        return self.user_final, self.item_final

    def finalize(self) -> None:
        with torch.no_grad():
            users, items = self.propagate()
            self.user_final.copy_(users)
            self.item_final.copy_(items)
        self.graph = None

