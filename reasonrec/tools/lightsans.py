"""LightSANs (Fan et al., 2021): self-attention over ``k`` latent interests instead of every earlier item, with the
position attention decoupled from the item attention.

Each position's keys and values are pooled into ``k`` interests (item-to-interest aggregation: a softmax over the
positions, per interest), and the query attends to those ``k`` interests: linear in the sequence length. The paper
pools over the whole sequence and trains on the last position; here each position pools over its own prefix (a
running softmax), so the model is causal and trains with the next-item loss at every position, as SASRec does here
(one forward pass per sequence instead of one per prefix; docs/design-notes.md).
"""
from __future__ import annotations

import dataclasses

import torch
from torch import nn

from reasonrec.tools.base import register
from reasonrec.tools.sequential import SequentialConfig, SequentialTool


@dataclasses.dataclass
class LightSANsConfig(SequentialConfig):
    layers: int = 2
    heads: int = 1
    interests: int = 5  # k: the latent interests each position's prefix is pooled into


LOGIT_BOUND = 30.0  # aggregation scores are clipped to +-30: exp of their differences stays a normal float32


def pool_weights(logits: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
    """exp(a_s - max a) of the aggregation scores ``logits`` (B, H, L, k), padding 0: the maximum over the sequence
    is a common factor of any prefix softmax's numerator and denominator."""
    logits = logits.clamp(-LOGIT_BOUND, LOGIT_BOUND).masked_fill(~real[:, None, :, None], float("-inf"))
    return torch.exp(logits - logits.amax(dim=2, keepdim=True).nan_to_num(neginf=0.0))


def prefix_pool(x: torch.Tensor, logits: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
    """For every position t: each interest's softmax-weighted mean of ``x`` over positions s <= t.

    ``x`` (B, H, L, d), ``logits`` (B, H, L, k) the aggregation scores, ``real`` (B, L) real items (padding weighs
    nothing); returns (B, H, L, k, d): the softmax of every prefix at once, by cumulative sums."""
    weights = pool_weights(logits, real)
    num = torch.cumsum(weights[..., None] * x[:, :, :, None, :], dim=2)  # (B, H, L, k, d)
    den = torch.cumsum(weights, dim=2)[..., None]
    return num / den.clamp(min=1e-30)


def whole_pool(x: torch.Tensor, logits: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
    """``prefix_pool`` at the last position only, (B, H, 1, k, d): one sum over the sequence instead of a running
    one (the last position's prefix is the whole sequence)."""
    weights = pool_weights(logits, real)
    num = torch.einsum("bhlk,bhld->bhkd", weights, x)
    return (num / weights.sum(dim=2)[..., None].clamp(min=1e-30))[:, :, None]


class LowRankBlock(nn.Module):
    def __init__(self, dim: int, heads: int, interests: int, max_len: int, dropout: float):
        super().__init__()
        self.heads, self.head_dim = heads, dim // heads
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.theta_k = nn.Linear(self.head_dim, interests, bias=False)  # item-to-interest aggregation of keys
        self.theta_v = nn.Linear(self.head_dim, interests, bias=False)  # ... and of values
        self.pos_qk = nn.Linear(dim, 2 * dim)  # the decoupled position attention's own projections
        self.proj = nn.Linear(dim, dim)
        self.ffn = nn.Sequential(nn.Linear(dim, dim), nn.GELU(), nn.Dropout(dropout), nn.Linear(dim, dim))
        self.drop = nn.Dropout(dropout)

    def heads_of(self, x: torch.Tensor) -> torch.Tensor:
        b, length, _ = x.shape
        return x.view(b, length, self.heads, self.head_dim).transpose(1, 2)  # (B, H, L, d)

    def forward(self, x: torch.Tensor, pos: torch.Tensor, real: torch.Tensor, causal: torch.Tensor,
                last_only: bool = False) -> torch.Tensor:
        """``last_only``: the output at the last position alone, (B, 1, dim), pooled over the whole sequence."""
        b, length, dim = x.shape
        q, k, v = (self.heads_of(t) for t in self.qkv(self.norm1(x)).chunk(3, dim=-1))
        pool = whole_pool if last_only else prefix_pool
        keys = pool(k, self.theta_k(k), real)  # (B, H, L or 1, k, d)
        values = pool(v, self.theta_v(v), real)
        pq, pk = (self.heads_of(t) for t in self.pos_qk(pos).chunk(2, dim=-1))
        allowed = causal & real[:, None, None, :] | torch.eye(length, dtype=torch.bool)
        if last_only:
            q, pq, allowed, x = q[:, :, -1:], pq[:, :, -1:], allowed[:, :, -1:], x[:, -1:]
        scores = torch.einsum("bhld,bhlkd->bhlk", q, keys) / self.head_dim ** 0.5
        items = torch.einsum("bhlk,bhlkd->bhld", self.drop(scores.softmax(dim=-1)), values)
        # Position-to-position attention, decoupled from the items: which earlier positions matter, by position.
        by_position = (pq @ pk.transpose(-1, -2)) / self.head_dim ** 0.5
        positions = self.drop(by_position.masked_fill(~allowed, float("-inf")).softmax(dim=-1)) @ v
        x = x + self.drop(self.proj((items + positions).transpose(1, 2).reshape(b, -1, dim)))
        return x + self.drop(self.ffn(self.norm2(x)))


@register
class LightSANs(SequentialTool):
    name = "lightsans"
    Config = LightSANsConfig

    def __init__(self, config: LightSANsConfig, n_items: int, user_ids=None):
        super().__init__(config, n_items, user_ids)
        self.item_emb = nn.Embedding(n_items + 1, config.dim, padding_idx=0)
        self.pos_emb = nn.Embedding(config.max_len, config.dim)
        self.blocks = nn.ModuleList(LowRankBlock(config.dim, config.heads, config.interests, config.max_len,
                                                 config.dropout) for _ in range(config.layers))
        self.norm = nn.LayerNorm(config.dim)
        self.drop = nn.Dropout(config.dropout)
        nn.init.normal_(self.item_emb.weight, std=0.02)
        nn.init.normal_(self.pos_emb.weight, std=0.02)

    def encode(self, seq: torch.Tensor, last_only: bool = False) -> torch.Tensor:
        b, length = seq.shape
        # Positions count back from the most recent item, so left padding does not shift them.
        from_end = torch.arange(length - 1, -1, -1).clamp(max=self.config.max_len - 1)
        pos = self.pos_emb(from_end)[None].expand(b, -1, -1)
        x = self.drop(self.item_emb(seq) * self.config.dim ** 0.5)
        real = seq > 0
        causal = torch.ones(length, length, dtype=torch.bool).tril()
        for i, block in enumerate(self.blocks):
            if last_only and i == len(self.blocks) - 1:
                x = block(x, pos, real, causal, last_only=True) * real[:, -1:, None]
            else:
                x = block(x, pos, real, causal) * real[..., None]  # padding stays zero: no batch can reach a row
        return self.norm(x)

    def encode_last(self, seq: torch.Tensor) -> torch.Tensor:
        # Scoring reads the last position only: the final block pools the whole sequence once for it.
        return self.encode(seq, last_only=True)[:, -1]
