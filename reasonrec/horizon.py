"""Evidence horizon C(u) in [0, 1] (DESIGN.md §4): higher means less evidence about the user.

C(u) = (1 - w) * user_coldness + w * item_coldness, where user_coldness is 1 minus the mid-rank empirical CDF of
the user's interaction count among training users, and item_coldness is the mean of the same quantity for the
popularity of the user's items. A user with no history has C = 1. Fitted on training interactions and stored as
JSON (the ECDF support points), so batch scoring and serving compute the same value.
"""
from __future__ import annotations

import dataclasses
import json

import numpy as np

ROUTES = ("low", "medium", "high")
NO_EVIDENCE = 1.0  # C of a user with no usable history


def route_index(c, tau_low, tau_high) -> np.ndarray:
    """0 (low), 1 (medium) or 2 (high) per horizon, broadcasting over thresholds (e.g. a grid of plans). C =
    NO_EVIDENCE is high whatever the thresholds: a fitted tau_high of 1.0 must not send a user nobody knows to the
    VLM alone."""
    return np.where(c >= NO_EVIDENCE, 2, np.where(c < tau_low, 0, np.where(c <= tau_high, 1, 2)))


@dataclasses.dataclass
class HorizonConfig:
    item_weight: float = 0.25
    tau_low: float = 0.3
    tau_high: float = 0.7

    def __post_init__(self):
        if not 0.0 <= self.item_weight <= 1.0:
            raise ValueError(f"item_weight must be in [0, 1], got {self.item_weight}")
        if not 0.0 <= self.tau_low <= self.tau_high <= 1.0:
            raise ValueError(f"need 0 <= tau_low <= tau_high <= 1, got {self.tau_low}, {self.tau_high}")


@dataclasses.dataclass
class _ECDF:
    """Mid-rank ECDF of a count distribution, kept as its distinct support points."""

    values: np.ndarray  # sorted distinct counts
    cdf: np.ndarray  # (P(X < v) + P(X <= v)) / 2 at each support point

    @classmethod
    def fit(cls, counts: np.ndarray) -> "_ECDF":
        values, freq = np.unique(counts, return_counts=True)
        cum = np.cumsum(freq) / freq.sum()
        return cls(values.astype(np.float64), cum - freq / freq.sum() / 2)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        # Between support points, interpolate; beyond them, clamp to the ends of (0, 1).
        return np.interp(x, self.values, self.cdf, left=0.0, right=1.0)


class EvidenceHorizon:
    def __init__(self, config: HorizonConfig, users: _ECDF, items: _ECDF, item_counts: np.ndarray):
        self.config = config
        self._users = users
        self._items = items
        self._item_counts = item_counts  # by item index (0 = padding)

    @classmethod
    def fit(cls, lengths: np.ndarray, items: np.ndarray, n_items: int, config: HorizonConfig | None = None):
        """``lengths``: training interactions per user; ``items``: all training item indices (1-based)."""
        item_counts = np.bincount(items, minlength=n_items + 1)
        return cls(config or HorizonConfig(), _ECDF.fit(lengths), _ECDF.fit(item_counts[1:]), item_counts)

    def apply(self, lengths: np.ndarray, offsets: np.ndarray, items: np.ndarray) -> np.ndarray:
        """C for each user given their history in CSR form (lengths, offsets, item indices; unknown items = -1)."""
        lengths = np.asarray(lengths)
        user_cold = 1.0 - self._users(lengths)
        known = (items > 0) & (items < len(self._item_counts))
        pop = np.where(known, self._item_counts[np.where(known, items, 0)], 0)
        item_cold = 1.0 - self._items(pop)
        # Segment sums by row id: reduceat would misread empty histories (e.g. at the end of a batch).
        rows = np.repeat(np.arange(len(lengths)), np.diff(offsets))
        sums = np.bincount(rows, weights=item_cold, minlength=len(lengths))
        mean_item_cold = np.where(lengths > 0, sums / np.maximum(lengths, 1), 1.0)
        w = self.config.item_weight
        c = (1 - w) * user_cold + w * mean_item_cold
        return np.where(lengths > 0, np.clip(c, 0.0, 1.0), NO_EVIDENCE).astype(np.float32)

    def route(self, c: np.ndarray) -> np.ndarray:
        return np.array(ROUTES)[route_index(np.asarray(c), self.config.tau_low, self.config.tau_high)]

    def to_json(self) -> str:
        return json.dumps({
            "config": dataclasses.asdict(self.config),
            "users": {"values": self._users.values.tolist(), "cdf": self._users.cdf.tolist()},
            "items": {"values": self._items.values.tolist(), "cdf": self._items.cdf.tolist()},
            "item_counts": self._item_counts.tolist(),
        })

    @classmethod
    def from_json(cls, text: str | bytes) -> "EvidenceHorizon":
        d = json.loads(text)
        ecdf = lambda e: _ECDF(np.array(e["values"], dtype=np.float64), np.array(e["cdf"]))  # noqa: E731
        return cls(HorizonConfig(**d["config"]), ecdf(d["users"]), ecdf(d["items"]),
                   np.array(d["item_counts"], dtype=np.int64))
