"""NextItNet (Yuan et al., 2019): a stack of dilated causal convolutions over the item sequence.

Residual blocks of two causal 1-D convolutions (kernel 3, dilations d and 2d; the paper's 1, 2, 4, 8, repeated), each
followed by layer norm and ReLU. Causal by construction, it trains with the next-item loss at every position.
"""
from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F
from torch import nn

from reasonrec.tools.base import register
from reasonrec.tools.sequential import SequentialConfig, SequentialTool


@dataclasses.dataclass
class NextItNetConfig(SequentialConfig):
    dilations: tuple[int, ...] = (1, 4, 1, 4)  # each block convolves at d then 2d: receptive field 1 + 2*sum(3d)
    kernel: int = 3
    dropout: float = 0.2


class ResidualBlock(nn.Module):
    def __init__(self, dim: int, kernel: int, dilation: int, dropout: float):
        super().__init__()
        self.kernel, self.dilation = kernel, dilation
        self.conv1 = nn.Conv1d(dim, dim, kernel, dilation=dilation)
        self.conv2 = nn.Conv1d(dim, dim, kernel, dilation=2 * dilation)
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.drop = nn.Dropout(dropout)

    def causal(self, conv: nn.Conv1d, x: torch.Tensor) -> torch.Tensor:
        """(B, L, dim) -> (B, L, dim), each position reading itself and earlier ones only."""
        reach = (self.kernel - 1) * conv.dilation[0]
        return conv(F.pad(x.transpose(1, 2), (reach, 0))).transpose(1, 2)

    def forward(self, x: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.norm1(self.causal(self.conv1, x))) * real
        h = F.relu(self.norm2(self.causal(self.conv2, self.drop(h)))) * real
        return x + self.drop(h)


@register
class NextItNet(SequentialTool):
    name = "nextitnet"
    Config = NextItNetConfig

    def __init__(self, config: NextItNetConfig, n_items: int, user_ids=None):
        super().__init__(config, n_items, user_ids)
        self.item_emb = nn.Embedding(n_items + 1, config.dim, padding_idx=0)
        self.blocks = nn.ModuleList(ResidualBlock(config.dim, config.kernel, d, config.dropout)
                                    for d in config.dilations)
        self.norm = nn.LayerNorm(config.dim)
        self.drop = nn.Dropout(config.dropout)
        nn.init.normal_(self.item_emb.weight, std=0.02)

    def encode(self, seq: torch.Tensor) -> torch.Tensor:
        # Padding rows are kept at zero after every block: a user's scores do not depend on how much left padding the
        # batch adds (the convolutions would otherwise carry the normalised bias of padding into real positions).
        real = (seq > 0)[..., None].float()
        # The padding row of the table is initialised like the others: zero it here.
        x = self.drop(self.item_emb(seq) * self.config.dim ** 0.5) * real
        for block in self.blocks:
            x = block(x, real) * real
        return self.norm(x)
