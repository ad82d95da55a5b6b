"""NextItNet (Yuan et al., 2019): a stack of dilated causal convolutions over the item sequence.

Residual blocks of two causal 1-D convolutions (kernel 3, dilations d and 2d; the paper's 1, 2, 4, 8, repeated), each
read through layer norm and ReLU. Causal by construction, it trains with the next-item loss at every position.

The norm and ReLU come before each convolution (pre-norm), not after it as in the paper's figure: after it, every
block adds a unit-scale normalised output to the residual stream and the item embedding it starts from is drowned
out (measured on Beauty, full ranking, test HR@5: 0.0277 post-norm whatever the dilations or dropout, pre-norm in
docs/results.md).
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


class ResidualBlock(nn.Module):
    def __init__(self, dim: int, kernel: int, dilation: int, dropout: float):
        super().__init__()
        self.kernel, self.dilation = kernel, dilation
        self.conv1 = nn.Conv1d(dim, dim, kernel, dilation=dilation)
        self.conv2 = nn.Conv1d(dim, dim, kernel, dilation=2 * dilation)
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.drop = nn.Dropout(dropout)

    def causal(self, conv: nn.Conv1d, x: torch.Tensor) -> torch.Tensor:
        """(B, L, dim) -> (B, L, dim), each position reading itself and earlier ones only.

        One matmul gives every tap's output at every position; each is then added where it lands (tap i of k reads
        d * (k - 1 - i) positions back). Same result as ``conv`` over the left-padded, transposed input, at half its
        time on CPU: Conv1d's padding and two transposes copied the sequence three times (docs/results.md)."""
        b, length, dim = x.shape
        kernel, step = conv.kernel_size[0], conv.dilation[0]
        weight = conv.weight.permute(1, 2, 0).reshape(dim, kernel * conv.out_channels)  # (in, tap-major out)
        taps = (x.reshape(-1, dim) @ weight).view(b, length, kernel, conv.out_channels)
        out = taps[:, :, -1] + conv.bias
        for i in range(kernel - 1):
            shift = step * (kernel - 1 - i)
            if shift < length:  # a tap that reaches before the sequence reads only the causal padding
                out[:, shift:] += taps[:, :length - shift, i]
        return out

    def forward(self, x: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
        # Each convolution's input is zeroed at padding positions (the norm would give them its bias), so no real
        # position reads the left padding.
        h = self.causal(self.conv1, F.relu(self.norm1(x)) * real)
        h = self.causal(self.conv2, self.drop(F.relu(self.norm2(h))) * real)
        return x + self.drop(h)

    def last(self, x: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
        """``forward`` at the last position alone, (B, 1, dim) (inference): the second convolution reads the first
        one's output at ``kernel`` positions, each of which reads the block's input at ``kernel`` positions; only
        those are normalised and convolved."""
        b, _, dim = x.shape
        k, oldest_first = self.kernel, torch.arange(self.kernel - 1, -1, -1)
        taps = x.shape[1] - 1 - self.conv2.dilation[0] * oldest_first  # what conv2 reads
        reads = (taps[:, None] - self.conv1.dilation[0] * oldest_first).reshape(-1)  # what conv1 reads there
        h = _windows_conv(self.conv1, (F.relu(self.norm1(_at(x, reads))) * _at(real, reads)).view(b, k, k * dim))
        h = F.relu(self.norm2(h)) * _at(real, taps)  # zero before the sequence, as the causal padding is
        return x[:, -1:] + _windows_conv(self.conv2, h.reshape(b, 1, k * dim))


def _at(x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """``x`` (B, L, d) at ``positions``, zero where a position lies before the sequence (the causal left padding)."""
    return x[:, positions.clamp(min=0)] * (positions >= 0).to(x.dtype)[None, :, None]


def _windows_conv(conv: nn.Conv1d, windows: torch.Tensor) -> torch.Tensor:
    """``conv``'s output from what it reads at each output position, its ``kernel`` inputs oldest first laid end to
    end: (B, P, kernel * in) -> (B, P, out)."""
    return F.linear(windows, conv.weight.permute(0, 2, 1).reshape(conv.out_channels, -1), conv.bias)


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
        # A user's scores do not depend on how much left padding the batch adds: every convolution reads its input
        # zeroed at padding positions (ResidualBlock), so what the residual stream holds there never reaches a real
        # position; it is zeroed once at the end, for the padding rows' own outputs.
        real = (seq > 0)[..., None].float()
        # The padding row of the table is initialised like the others: zero it here.
        x = self.drop(self.item_emb(seq) * self.config.dim ** 0.5) * real
        for block in self.blocks:
            x = block(x, real)
        return self.norm(x * real)

    def encode_last(self, seq: torch.Tensor) -> torch.Tensor:
        # Scoring reads the last position only: the final block computes what that position reads, nothing else.
        real = (seq > 0)[..., None].float()
        x = self.item_emb(seq) * self.config.dim ** 0.5 * real
        for block in self.blocks[:-1]:
            x = block(x, real)
        return self.norm(self.blocks[-1].last(x, real) * real[:, -1:])[:, -1]
