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


def prefix_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, key_weights: torch.Tensor,
                     value_weights: torch.Tensor, causal: torch.Tensor, drop: nn.Module) -> torch.Tensor:
    """Every position t attends over the ``k`` interests its prefix s <= t is pooled into.

    ``q``, ``k``, ``v`` (B, H, L, d); ``key_weights``, ``value_weights`` (B, H, L, k) from ``pool_weights``; ``causal``
    (L, L) s <= t. The pooled interests (B, H, L, k, d) are never formed: q_t . sum_s w_sj k_s is row t of
    causal(q k^T) @ w, and the attention-weighted pooled values fold into an (L, L) mixing matrix the same way, so
    the work is four small matmuls instead of running sums over a tensor ``k`` times the size of the input."""
    mask = causal.to(q.dtype)
    key_den = torch.cumsum(key_weights, dim=2).clamp(min=1e-30)  # each prefix softmax's denominator
    value_den = torch.cumsum(value_weights, dim=2).clamp(min=1e-30)
    scores = ((q @ k.transpose(-1, -2)) * mask) @ key_weights / key_den / q.shape[-1] ** 0.5  # (B, H, L, k)
    attention = drop(scores.softmax(dim=-1))
    mixing = ((attention / value_den) @ value_weights.transpose(-1, -2)) * mask  # (B, H, L, L)
    return mixing @ v


def last_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, key_weights: torch.Tensor,
                   value_weights: torch.Tensor, drop: nn.Module) -> torch.Tensor:
    """``prefix_attention`` for the last position alone (``q`` (B, H, 1, d)): its prefix is the whole sequence, so
    each interest is pooled once, (B, H, k, d)."""
    keys = (key_weights.transpose(-1, -2) @ k) / key_weights.sum(dim=2)[..., None].clamp(min=1e-30)
    values = (value_weights.transpose(-1, -2) @ v) / value_weights.sum(dim=2)[..., None].clamp(min=1e-30)
    return drop((q @ keys.transpose(-1, -2) / q.shape[-1] ** 0.5).softmax(dim=-1)) @ values


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
        return x.view(b, length, self.heads, self.head_dim).transpose(1, 2)  # (B or 1, H, L, d)

    def forward(self, x: torch.Tensor, pos: torch.Tensor, real: torch.Tensor, causal: torch.Tensor,
                allowed: torch.Tensor, last_only: bool = False) -> torch.Tensor:
        """``pos`` (1, L, dim) is every sequence's; ``causal`` (L, L) s <= t; ``allowed`` (B, 1, L, L) what the
        position attention may read; ``last_only``: the output at the last position alone, (B, 1, dim), pooled
        over the whole sequence."""
        b, _, dim = x.shape
        q, k, v = (self.heads_of(t) for t in self.qkv(self.norm1(x)).chunk(3, dim=-1))
        key_weights, value_weights = pool_weights(self.theta_k(k), real), pool_weights(self.theta_v(v), real)
        pq, pk = (self.heads_of(t) for t in self.pos_qk(pos).chunk(2, dim=-1))
        if last_only:
            q, pq, allowed, x = q[:, :, -1:], pq[:, :, -1:], allowed[:, :, -1:], x[:, -1:]
            items = last_attention(q, k, v, key_weights, value_weights, self.drop)
        else:
            items = prefix_attention(q, k, v, key_weights, value_weights, causal, self.drop)
        # Position-to-position attention, decoupled from the items: which earlier positions matter, by position.
        # It is the same for every sequence of the batch (1, H, L, L) until the padding mask is applied.
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
        length = seq.shape[1]
        # Positions count back from the most recent item, so left padding does not shift them.
        from_end = torch.arange(length - 1, -1, -1).clamp(max=self.config.max_len - 1)
        pos = self.pos_emb(from_end)[None]  # (1, L, dim): projected once per block, not once per sequence
        x = self.drop(self.item_emb(seq) * self.config.dim ** 0.5)
        real = seq > 0
        causal = torch.ones(length, length, dtype=torch.bool).tril()
        allowed = causal & real[:, None, None, :] | torch.eye(length, dtype=torch.bool)  # padding reads itself
        for i, block in enumerate(self.blocks):
            if last_only and i == len(self.blocks) - 1:
                x = block(x, pos, real, causal, allowed, last_only=True) * real[:, -1:, None]
            else:
                x = block(x, pos, real, causal, allowed) * real[..., None]  # padding stays zero
        return self.norm(x)

    def encode_last(self, seq: torch.Tensor) -> torch.Tensor:
        # Scoring reads the last position only: the final block pools the whole sequence once for it.
        return self.encode(seq, last_only=True)[:, -1]
