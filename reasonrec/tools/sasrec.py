"""SASRec (Kang & McAuley, 2018): causal self-attention over the item sequence."""
from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F
from torch import nn

from reasonrec.tools.base import register
from reasonrec.tools.sequential import SequentialConfig, SequentialTool


@dataclasses.dataclass
class SASRecConfig(SequentialConfig):
    layers: int = 2
    heads: int = 1


class Block(nn.Module):
    def __init__(self, dim: int, heads: int, dropout: float):
        super().__init__()
        self.heads, self.dropout = heads, dropout
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.ffn = nn.Sequential(nn.Linear(dim, dim), nn.GELU(), nn.Dropout(dropout), nn.Linear(dim, dim))
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, allowed: torch.Tensor, last_only: bool = False) -> torch.Tensor:
        """``last_only``: the output at the last position alone, (B, 1, dim); its query still reads every key."""
        b, length, dim = x.shape
        h = self.norm1(x)
        if last_only:  # keys and values at every position, the query at the last one only
            x, allowed = x[:, -1:], allowed[:, :, -1:]
            q = F.linear(h[:, -1:], self.qkv.weight[:dim], self.qkv.bias[:dim]).view(b, 1, self.heads, -1)
            q = q.transpose(1, 2)
            k, v = F.linear(h, self.qkv.weight[dim:], self.qkv.bias[dim:]).view(b, length, 2, self.heads, -1) \
                .permute(2, 0, 3, 1, 4)
        else:
            q, k, v = self.qkv(h).view(b, length, 3, self.heads, dim // self.heads).permute(2, 0, 3, 1, 4)
        attn = attend(q, k, v, allowed, self.dropout if self.training else None)
        x = x + self.drop(self.proj(attn.transpose(1, 2).reshape(b, -1, dim)))
        return x + self.drop(self.ffn(self.norm2(x)))


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, allowed: torch.Tensor,
           dropout: float | None) -> torch.Tensor:
    """Scaled dot-product attention, (B, H, Lq, d). Training (``dropout`` given) runs torch's fused kernel;
    scoring, whose sequences are a few items long (Beauty: ~8), the plain product: on CPU the fused kernel costs
    2-4x as much at such lengths (docs/results.md)."""
    if dropout is not None:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=allowed, dropout_p=dropout)
    scores = (q @ k.transpose(-1, -2)).mul_(q.shape[-1] ** -0.5).masked_fill_(~allowed, float("-inf"))
    return scores.softmax(dim=-1) @ v


@register
class SASRec(SequentialTool):
    name = "sasrec"
    Config = SASRecConfig

    def __init__(self, config: SASRecConfig, n_items: int, user_ids=None):
        super().__init__(config, n_items, user_ids)
        self.item_emb = nn.Embedding(n_items + 1, config.dim, padding_idx=0)
        self.pos_emb = nn.Embedding(config.max_len, config.dim)
        self.blocks = nn.ModuleList(Block(config.dim, config.heads, config.dropout) for _ in range(config.layers))
        self.norm = nn.LayerNorm(config.dim)
        self.drop = nn.Dropout(config.dropout)
        nn.init.normal_(self.item_emb.weight, std=0.02)
        nn.init.normal_(self.pos_emb.weight, std=0.02)

    def encode(self, seq: torch.Tensor, last_only: bool = False) -> torch.Tensor:
        b, length = seq.shape
        # Positions count back from the most recent item, so left padding does not shift them.
        from_end = torch.arange(length - 1, -1, -1).clamp(max=self.config.max_len - 1)
        x = self.drop(self.item_emb(seq) * self.config.dim ** 0.5 + self.pos_emb(from_end))
        real = seq > 0
        causal = torch.ones(length, length, dtype=torch.bool).tril()
        # Padding positions may attend to themselves only, so no softmax row is empty.
        allowed = (causal & real[:, None, :]) | torch.eye(length, dtype=torch.bool)
        allowed = allowed[:, None]
        for i, block in enumerate(self.blocks):
            x = block(x, allowed, last_only=last_only and i == len(self.blocks) - 1)
        return self.norm(x)

    def encode_last(self, seq: torch.Tensor) -> torch.Tensor:
        # Scoring reads the last position only: the final block computes nothing else.
        return self.encode(seq, last_only=True)[:, -1]
