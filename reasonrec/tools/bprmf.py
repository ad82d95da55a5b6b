"""BPR-MF (Rendle et al., 2009): matrix factorisation trained with the pairwise BPR loss."""
from __future__ import annotations

import dataclasses

import torch
from torch import nn

from reasonrec.tools.base import register
from reasonrec.tools.pairwise import PairwiseConfig, PairwiseTool


@dataclasses.dataclass
class BPRMFConfig(PairwiseConfig):
    reg: float = 1e-3  # L2 on the embeddings used in each batch


@register
class BPRMF(PairwiseTool):
    name = "bprmf"
    Config = BPRMFConfig

    def __init__(self, config: BPRMFConfig, n_items: int, user_ids=None):
        super().__init__(config, n_items, user_ids)
        self.user_emb = nn.Embedding(max(len(self.users), 1), config.dim)
        self.item_emb = nn.Embedding(n_items + 1, config.dim, padding_idx=0)
        nn.init.normal_(self.user_emb.weight, std=0.1)
        nn.init.normal_(self.item_emb.weight, std=0.1)

    def embeddings(self):
        return self.user_emb.weight, self.item_emb.weight

    def regularizer(self, batch: dict) -> torch.Tensor:
        used = [self.user_emb(batch["users"]), self.item_emb(batch["pos"]), self.item_emb(batch["neg"])]
        return self.config.reg * sum(e.pow(2).sum() for e in used) / len(batch["users"])
