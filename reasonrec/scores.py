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


def top_k(scores, k: int):
    """``scores.topk(k, dim=1)`` of a wide (rows, items) torch matrix, reading most scores through vectorised maxima:
    torch's CPU top-k selects row by row, element by element (on Beauty, 173 x 12,102 scores: 1.6 ms, two thirds of
    the product that made them; this: 0.7 ms). Values equal torch's; where scores tie at the k-th place either may
    return either index, and a row with fewer than k finite scores gets -inf entries at arbitrary indices."""
    import torch  # only where tools score

    rows, width = scores.shape
    # Items fall into `groups` interleaved groups (item j in group j % groups): their maxima are elementwise maxima
    # of contiguous slices, and torch's CPU top-k takes a one-pass partial sort once a row has >= 64 k entries.
    groups = 64 * k
    depth = width // groups if k > 0 else 0
    if depth < 2:  # too narrow to leave most scores unread
        return scores.topk(min(k, width), dim=1)
    best = scores[:, :depth * groups].reshape(rows, depth, groups).amax(dim=1)
    rest = width - depth * groups  # the last items: one more in each of the first `rest` groups
    best[:, :rest] = torch.maximum(best[:, :rest], scores[:, depth * groups:])
    # A group that holds one of the row's k best scores has its maximum at or above the k-th best, and only k
    # groups can: the k groups with the highest maxima hold all k.
    chosen = best.topk(k, dim=1).indices
    items = (chosen[:, :, None] + groups * torch.arange(depth + 1)).reshape(rows, -1)
    past_end = items >= width  # the groups beyond `rest` have one item fewer
    items = items.clamp_(max=width - 1)
    values, at = scores.gather(1, items).masked_fill_(past_end, float("-inf")).topk(k, dim=1)
    return values, items.gather(1, at)


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
