"""GRU4Rec (Hidasi et al., 2016) with the full-softmax next-item loss of later work (Hidasi & Czapp, 2023)."""
from __future__ import annotations

import dataclasses

import torch
from torch import nn

from reasonrec.tools.base import register
from reasonrec.tools.sequential import SequentialConfig, SequentialTool


@dataclasses.dataclass
class GRU4RecConfig(SequentialConfig):
    layers: int = 1
    dropout: float = 0.3


@register
class GRU4Rec(SequentialTool):
    name = "gru4rec"
    Config = GRU4RecConfig

    def __init__(self, config: GRU4RecConfig, n_items: int, user_ids=None):
        super().__init__(config, n_items, user_ids)
        self.item_emb = nn.Embedding(n_items + 1, config.dim, padding_idx=0)
        self.gru = nn.GRU(config.dim, config.dim, num_layers=config.layers, batch_first=True)
        self.out = nn.Linear(config.dim, config.dim)
        self.drop = nn.Dropout(config.dropout)
        nn.init.normal_(self.item_emb.weight, std=0.02)

    def encode(self, seq: torch.Tensor) -> torch.Tensor:
        # Left padding: the GRU reads zeros first, and its state at the last column is the user's.
        hidden, _ = self.gru(self.drop(self.item_emb(seq)))
        return self.out(self.drop(hidden))
