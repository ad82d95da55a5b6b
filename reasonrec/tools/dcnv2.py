"""DCNv2 (Wang et al., 2021): an explicit cross network beside a deep network, over the concatenated fields.

Cross layer l: x_{l+1} = x_0 * (W_l x_l + b_l) + x_l with a full-rank W_l (the paper's "DCN-M"), in parallel with an
MLP; the two outputs are concatenated into the logit (the parallel structure, BARS' default).
"""
from __future__ import annotations

import dataclasses

import torch
from torch import nn

from reasonrec.tools.base import register
from reasonrec.tools.ctr import FIELDS, CTRConfig, CTRTool, mlp


@dataclasses.dataclass
class DCNv2Config(CTRConfig):
    cross_layers: int = 3


@register
class DCNv2(CTRTool):
    name = "dcnv2"
    Config = DCNv2Config

    def __init__(self, config: DCNv2Config, n_items: int, user_ids=None):
        super().__init__(config, n_items, user_ids)
        width = len(FIELDS) * config.dim
        self.cross = nn.ModuleList(nn.Linear(width, width) for _ in range(config.cross_layers))
        self.deep = mlp((width, *config.hidden), config.dropout)
        self.out = nn.Linear(width + config.hidden[-1], 1)

    def head(self, fields: torch.Tensor) -> torch.Tensor:
        x0 = fields.flatten(1)
        x = x0
        for layer in self.cross:
            x = x0 * layer(x) + x
        return self.out(torch.cat([x, self.deep(x0)], dim=1)).squeeze(1)
