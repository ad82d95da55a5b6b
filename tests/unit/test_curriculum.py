import numpy as np
import pytest

from reasonrec.train.curriculum import (
    CurriculumConfig,
    HorizonCurriculum,
    level_weights,
    risk_levels,
)


def shares_of(batches, levels):
    drawn = levels[np.concatenate(batches)]
    return np.bincount(drawn, minlength=3) / len(drawn)


def test_low_risk_first_then_medium_then_high_upsampled_late():
    rng = np.random.default_rng(0)
    horizon = np.concatenate([rng.uniform(0, 0.3, 500), rng.uniform(0.3, 0.7, 300), rng.uniform(0.7, 1, 200)])
    config = CurriculumConfig()
    levels = risk_levels(horizon, config)
    sampler = HorizonCurriculum(horizon, steps=1000, batch_size=64, config=config, seed=1)
    batches = list(sampler)
    assert len(batches) == len(sampler) == 1000 and all(b.shape == (64,) for b in batches)
    population = np.bincount(levels, minlength=3) / len(levels)

    early, middle, late = shares_of(batches[:50], levels), shares_of(batches[600:900], levels), \
        shares_of(batches[960:], levels)
    assert early[0] > 0.9  # evidence-rich users first
    assert middle[1] == pytest.approx(population[1] / (population @ level_weights(0.75, config)), abs=0.03)
    assert late[2] > population[2] > middle[2]  # sparse users up-sampled at the end
    # The sampler draws what it says it draws.
    for step, observed in ((25, early), (975, late)):
        assert observed == pytest.approx(sampler.level_shares(step), abs=0.03)


def test_seeded_and_every_index_valid():
    horizon = np.linspace(0, 1, 101)
    a = list(HorizonCurriculum(horizon, 20, 16, seed=5))
    b = list(HorizonCurriculum(horizon, 20, 16, seed=5))
    assert all((x == y).all() for x, y in zip(a, b))
    assert all(((x >= 0) & (x < 101)).all() for x in a)


def test_levels_without_users_are_never_drawn_and_bad_config_is_refused():
    horizon = np.full(10, 0.1)
    assert set(np.concatenate(list(HorizonCurriculum(horizon, 5, 8)))) <= set(range(10))
    with pytest.raises(ValueError):
        CurriculumConfig(tau_low=0.8, tau_high=0.2)
    with pytest.raises(ValueError, match="at least one"):
        HorizonCurriculum(np.array([]), 5, 8)
