"""Popularity: items ranked by training interaction count; the floor every tool must beat."""
from __future__ import annotations

import numpy as np
import torch

from reasonrec.data.prepared import Sequences
from reasonrec.tools.base import Tool, register


@register
class Popularity(Tool):
    name = "pop"
    trainable = False

    def __init__(self, config, n_items: int, user_ids=None):
        super().__init__(config, n_items, user_ids)
        self.register_buffer("counts", torch.zeros(n_items + 1))

    def attach(self, train: Sequences) -> None:
        self.counts.copy_(torch.from_numpy(np.bincount(train.items, minlength=self.n_items + 1).astype(np.float32)))

    # Every user's "vector" is the number 1 and every item's its count: the product is the count, exactly.
    def user_vectors(self, history: Sequences) -> torch.Tensor:
        return torch.ones(len(history), 1)

    def item_table(self) -> torch.Tensor:
        return self.counts[:, None]
