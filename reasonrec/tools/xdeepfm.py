"""xDeepFM (Lian et al., 2018): a linear part, a compressed interaction network (CIN) and a deep network.

The CIN builds vector-wise interactions of bounded degree: layer k's feature maps are weighted sums of the
Hadamard products of layer k-1's maps with the input fields, sum-pooled over the embedding dimension into the logit.
"""
from __future__ import annotations

import dataclasses

import torch
from torch import nn

from reasonrec.tools.base import register
from reasonrec.tools.ctr import FIELDS, CTRConfig, CTRTool, mlp


@dataclasses.dataclass
class XDeepFMConfig(CTRConfig):
    cin: tuple[int, ...] = (64, 64)  # feature maps per CIN layer


@register
class XDeepFM(CTRTool):
    name = "xdeepfm"
    Config = XDeepFMConfig

    def __init__(self, config: XDeepFMConfig, n_items: int, user_ids=None):
        super().__init__(config, n_items, user_ids)
        fields = len(FIELDS)
        self.linear = nn.Linear(fields * config.dim, 1)
        sizes = (fields, *config.cin)
        # A 1x1 convolution over the (maps x fields) products is the CIN's weighted sum, per embedding coordinate.
        self.cin = nn.ModuleList(nn.Conv1d(sizes[i] * fields, sizes[i + 1], 1) for i in range(len(config.cin)))
        self.cin_out = nn.Linear(sum(config.cin), 1)
        self.deep = mlp((fields * config.dim, *config.hidden), config.dropout)
        self.deep_out = nn.Linear(config.hidden[-1], 1)

    def head(self, fields: torch.Tensor) -> torch.Tensor:
        b, m, d = fields.shape
        x0, x, pooled = fields, fields, []
        for layer in self.cin:
            products = (x[:, :, None, :] * x0[:, None, :, :]).reshape(b, -1, d)  # (B, H_k-1 * m, d)
            x = torch.relu(layer(products))  # (B, H_k, d)
            pooled.append(x.sum(dim=2))
        flat = fields.flatten(1)
        logit = self.linear(flat) + self.cin_out(torch.cat(pooled, dim=1)) + self.deep_out(self.deep(flat))
        return logit.squeeze(1)
