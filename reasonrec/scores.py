"""Score normalisation shared by the Majority Vote (evaluator, tool stage) and the planner's aggregator features,
and the size of one pass of catalogue-wide scoring."""
from __future__ import annotations

import numpy as np

# Catalogue scores per tool in one pass: 8 MiB of float32. A (rows, catalogue) matrix above glibc's 32 MiB mmap
# ceiling is mapped afresh for every batch and page-faulted in again (on Beauty, 1,024 rows x 12,102 items: ~65,000
# faults a batch, more system time than the scoring itself); below it, a freed matrix is reused from the heap.
SCORE_FLOATS = 1 << 21


def rows_per_pass(width: int) -> int:
    """Rows whose scores over ``width`` items fit one pass (SCORE_FLOATS), at least one."""
    return max(1, SCORE_FLOATS // width)


def minmax(scores: np.ndarray) -> np.ndarray:
    """Min-max per row (last axis) over the finite entries, padding (-inf, NaN) -> 0, so that tools on different
    scales can be averaged and compared. Keeps the input's dtype."""
    finite = np.isfinite(scores)
    if finite.all():  # raw tool scores over the catalogue: no padding, skip the masking passes
        low = scores.min(axis=-1, keepdims=True)
        return (scores - low) / np.maximum(scores.max(axis=-1, keepdims=True) - low, 1e-12)
    low = np.where(finite, scores, np.inf).min(axis=-1, keepdims=True)
    high = np.where(finite, scores, -np.inf).max(axis=-1, keepdims=True)
    span = np.where(np.isfinite(high - low), np.maximum(high - low, 1e-12), 1.0)
    out = np.where(finite, (scores - np.where(np.isfinite(low), low, 0.0)) / span, 0.0)
    return out.astype(scores.dtype, copy=False)


def majority_vote(scores):
    """The paper's Majority Vote: the mean of the tools' min-max normalised scores (torch tensors, rows x items)."""
    import torch  # only where tools score

    return torch.stack([torch.from_numpy(minmax(s.detach().numpy())) for s in scores]).mean(dim=0)
