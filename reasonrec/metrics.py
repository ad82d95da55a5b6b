"""Ranking metrics from the 0-based rank of the held-out item (one evaluator for every model)."""
from __future__ import annotations

import numpy as np
import torch

KS = (5, 10)


def target_rank(scores: torch.Tensor, target_col: torch.Tensor) -> torch.Tensor:
    """0-based rank of each row's target column: the number of columns that score strictly higher.

    Ties count in the target's favour only if they are exact; pass scores where excluded items are -inf.
    """
    target = scores.gather(1, target_col[:, None])
    return (scores > target).sum(dim=1)


def hit_and_ndcg(ranks: np.ndarray, ks=KS) -> dict[str, float]:
    ranks = np.asarray(ranks)
    out = {}
    for k in ks:
        hit = ranks < k
        out[f"HR@{k}"] = float(hit.mean()) if len(ranks) else 0.0
        out[f"NDCG@{k}"] = float((hit / np.log2(ranks + 2)).mean()) if len(ranks) else 0.0
    return out
