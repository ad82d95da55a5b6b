import numpy as np
import pytest

from reasonrec.horizon import EvidenceHorizon, HorizonConfig


def fitted(weight=0.0):
    lengths = np.array([1, 2, 2, 3, 5, 8, 13, 40])
    items = np.repeat(np.arange(1, 9), [10, 6, 4, 3, 2, 1, 1, 1])
    return EvidenceHorizon.fit(lengths, items, 10, HorizonConfig(item_weight=weight))


def csr(histories):
    lengths = np.array([len(h) for h in histories])
    items = np.array([i for h in histories for i in h], dtype=np.int64)
    return lengths, np.concatenate([[0], np.cumsum(lengths)]), items


def test_more_history_means_lower_horizon_and_unseen_is_one():
    h = fitted()
    c = h.apply(*csr([[], [1], [1, 2, 3], [1] * 40, [1] * 100]))
    assert c[0] == 1.0
    assert c[1] > c[2] > c[3] >= c[4] >= 0.0
    assert np.all((c >= 0) & (c <= 1))


def test_item_coldness_raises_horizon_and_unknown_items_count_cold():
    h = fitted(weight=0.5)
    popular, rare, unknown = h.apply(*csr([[1, 1], [8, 7], [-1, -1]]))
    assert rare > popular and unknown >= rare


def test_routes_and_json_round_trip():
    h = fitted(0.25)
    assert h.route(np.array([0.1, 0.3, 0.7, 0.71])).tolist() == ["low", "medium", "medium", "high"]
    h.config.tau_high = 1.0  # even then a user with no usable history (C = 1) is high risk
    assert h.route(np.array([0.99, 1.0])).tolist() == ["medium", "high"]
    h.config.tau_high = 0.7
    again = EvidenceHorizon.from_json(h.to_json())
    hist = csr([[1, 2], [3], [5, 6, 7, 8]])
    assert np.array_equal(h.apply(*hist), again.apply(*hist))


def test_bad_thresholds_rejected():
    with pytest.raises(ValueError, match="tau_low"):
        HorizonConfig(tau_low=0.8, tau_high=0.2)


def test_empty_histories_anywhere_in_a_batch():
    h = fitted()
    batch = [[], [1, 2], [], [3], [], []]
    c = h.apply(*csr(batch))
    assert c[[0, 2, 4, 5]].tolist() == [1.0] * 4
    np.testing.assert_allclose(c[[1, 3]], [h.apply(*csr([[1, 2]]))[0], h.apply(*csr([[3]]))[0]])
