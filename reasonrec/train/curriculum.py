"""The evidence-horizon curriculum (paper §3.2, Appendix A) as a sampler of training examples.

Examples are weighted by their user's risk level and by training progress p in [0, 1]: low-risk users
(C < tau_low) carry full weight throughout; medium-risk users ramp in linearly until ``ramp_end``; high-risk users
(C > tau_high) enter at ``high_floor`` of a full weight with the medium ones and are up-sampled ``high_boost``-fold
from ``high_from`` on (the paper: after 95% of the steps). Each step draws a batch with probabilities proportional
to the weights, so the schedule is exact in expectation and reproducible from the seed.
"""
from __future__ import annotations

import dataclasses
from typing import Iterator

import numpy as np


@dataclasses.dataclass
class CurriculumConfig:
    tau_low: float = 0.3
    tau_high: float = 0.7
    ramp_end: float = 0.5  # progress at which medium-risk users reach full weight
    high_floor: float = 0.25  # high-risk weight relative to medium before the boost
    high_from: float = 0.95
    high_boost: float = 4.0

    def __post_init__(self):
        if not 0 <= self.tau_low <= self.tau_high <= 1:
            raise ValueError(f"need 0 <= tau_low <= tau_high <= 1, got {self.tau_low}, {self.tau_high}")
        if not 0 < self.ramp_end <= 1 or not 0 <= self.high_from <= 1:
            raise ValueError("ramp_end must be in (0, 1] and high_from in [0, 1]")


def risk_levels(horizon: np.ndarray, config: CurriculumConfig) -> np.ndarray:
    """0 = low, 1 = medium, 2 = high, by the same thresholds as routing."""
    horizon = np.asarray(horizon)
    return np.where(horizon < config.tau_low, 0, np.where(horizon <= config.tau_high, 1, 2))


def level_weights(progress: float, config: CurriculumConfig) -> np.ndarray:
    """Weight of a low, medium and high-risk example at ``progress``."""
    ramp = min(1.0, progress / config.ramp_end)
    high = config.high_floor * ramp * (config.high_boost if progress >= config.high_from else 1.0)
    # A sliver of weight from the start, so no level is ever impossible to draw.
    return np.array([1.0, max(ramp, 0.02), max(high, 0.005)])


class HorizonCurriculum:
    """Yields ``steps`` batches of example indices (usable as a torch ``batch_sampler``)."""

    def __init__(self, horizon: np.ndarray, steps: int, batch_size: int, config: CurriculumConfig | None = None,
                 seed: int = 0):
        self.config = config or CurriculumConfig()
        levels = risk_levels(horizon, self.config)
        if len(levels) == 0:
            raise ValueError("the curriculum needs at least one training example")
        self.members = [np.flatnonzero(levels == level) for level in range(3)]
        self.steps = steps
        self.batch_size = batch_size
        self.seed = seed

    def __len__(self) -> int:
        return self.steps

    def level_shares(self, step: int) -> np.ndarray:
        """Probability that a drawn example is low / medium / high risk at ``step``."""
        mass = level_weights(step / max(self.steps - 1, 1), self.config) * [len(m) for m in self.members]
        return mass / mass.sum()

    def __iter__(self) -> Iterator[np.ndarray]:
        # Level first, then uniform within the level: O(batch) per step whatever the data size.
        rng = np.random.default_rng(self.seed)
        for step in range(self.steps):
            levels = rng.choice(3, size=self.batch_size, p=self.level_shares(step))
            batch = np.empty(self.batch_size, dtype=np.int64)
            for level, members in enumerate(self.members):
                picked = levels == level
                batch[picked] = members[rng.integers(len(members), size=int(picked.sum()))] if len(members) else 0
            yield batch
