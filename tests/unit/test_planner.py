"""The planner on hand-made cases (no Ray, no models): routes, escalation, aggregation, overrides, fitting."""
import json

import numpy as np
import pytest

from reasonrec.planner import Aggregator, Planner, Policy, reciprocal_rank
from reasonrec.train.planner import choose, plan_grid, replay

TOOLS = ["a", "b"]
BY_TASK = {"sequential": TOOLS, "direct": TOOLS}  # the consulted tools per task
N = 4


def aggregator(weights: dict) -> dict:
    """A hand-set aggregator: unit scale, zero mean, the given feature weights."""
    names = Aggregator.feature_names(TOOLS)
    coef = np.array([weights.get(n, 0.0) for n in names])
    return Aggregator(TOOLS, np.zeros(len(names)), np.ones(len(names)), coef, 0.0).to_dict()


def planner(weights: dict, kappa: float = 0.5) -> Planner:
    return Planner(BY_TASK, {"sequential": "a", "direct": "b"},
                   {"sequential": Policy(0.3, 0.7, kappa, aggregator(weights))})


def signals(rows: int):
    # Tool a prefers candidate 0, tool b candidate 1; the vote (pool order) puts 0 first; the VLM prefers 3.
    a = np.tile([4.0, 3.0, 2.0, 1.0], (rows, 1))
    b = np.tile([3.0, 4.0, 1.0, 2.0], (rows, 1))
    vote = np.tile([0.9, 0.8, 0.3, 0.2], (rows, 1))
    vlm = np.tile([0.1, 0.1, 0.1, 0.7], (rows, 1))
    return np.stack([a, b]), vote, vlm


def decide(p: Planner, mode: str, routes: list[str], confidence: list[float]):
    """The horizon stage's plan for the routes, then the planner stage's decision."""
    rows = len(routes)
    tool_scores, vote, vlm = signals(rows)
    task = np.array(["sequential"] * rows, dtype=object)
    plan = p.paths_before_vlm(mode, task, np.array(routes, dtype=object))
    return p.decide(mode, task, plan, np.full(rows, 0.5), tool_scores, vote, vlm, np.array(confidence),
                    np.full(rows, 0.6, np.float32))


def asks_vlm(p: Planner, mode: str, routes: list[str]) -> list[bool]:
    from reasonrec.batch.stream import ASKS_VLM

    task = np.array(["sequential"] * len(routes), dtype=object)
    plan = p.paths_before_vlm(mode, task, np.array(routes, dtype=object))
    return np.isin(plan, ASKS_VLM).tolist()


def test_routes_follow_the_policy_thresholds():
    p = planner({})
    got = p.routes(np.array(["sequential"] * 4 + ["ctr"], dtype=object), np.array([0.1, 0.3, 0.7, 0.71, 0.5]))
    # ctr has no fitted policy of its own and no direct policy here: the default thresholds (0.3, 0.7).
    assert got.tolist() == ["low", "medium", "medium", "high", "medium"]


def test_a_user_with_no_usable_history_is_high_risk_whatever_the_thresholds():
    # tau_high 1.0: every other horizon up to 1 is medium, but C = 1 (no evidence) always gets the consultation.
    p = Planner(BY_TASK, {"sequential": "a"}, {"sequential": Policy(0.3, 1.0, 0.0, aggregator({}))})
    got = p.routes(np.array(["sequential"] * 3, dtype=object), np.array([0.2, 0.99, 1.0]))
    assert got.tolist() == ["low", "medium", "high"]
    assert p.paths_before_vlm("planner", np.array(["sequential"] * 3, dtype=object), got).tolist() == [
        "tool", "vlm", "aggregate"]
    # fit-planner replays the same rule: a plan whose medium band reaches 1.0 still sends C = 1 to the aggregator.
    hits = {"tool": np.zeros(2), "vote": np.zeros(2), "vlm": np.array([1.0, 0.0]), "aggregate": np.array([0.0, 1.0])}
    medium_to_one = {"tau_low": np.array([0.0]), "tau_high": np.array([1.0]), "kappa": np.array([0.0]),
                     "low_vote": np.array([False])}
    quality, _ = replay(np.array([0.5, 1.0]), np.array([0.9, 0.9]), hits, medium_to_one)
    assert quality[0] == 1.0  # row 0 by the VLM alone, row 1 (C = 1) by the aggregator


def test_the_gpu_budget_picks_the_best_plan_within_the_vlm_share():
    quality, share = np.array([0.9, 0.8, 0.6, 0.5]), np.array([1.0, 0.4, 0.2, 0.0])
    assert choose(quality, share, tolerance=0.0) == 0
    assert choose(quality, share, tolerance=0.0, max_share=0.5) == 1
    assert choose(quality, share, tolerance=0.0, max_share=0.2) == 2
    with pytest.raises(ValueError, match="no plan sends at most 10.0%"):
        choose(quality, share + 0.3, tolerance=0.0, max_share=0.1)


def test_each_route_in_planner_mode():
    d = decide(planner({"vlm_p": 1.0}), "planner", ["low", "medium", "medium", "high"], [0.9, 0.9, 0.2, 0.9])
    assert d.path.tolist() == ["tool", "vlm", "aggregate", "aggregate"]
    assert d.escalated.tolist() == [False, False, True, False]  # medium with confidence 0.2 < kappa 0.5
    assert d.vlm_called.tolist() == [False, True, True, True]
    assert d.consulted.tolist() == [[True, False], [False, False], [True, True], [True, True]]
    assert np.argmax(d.scores[0]) == 0  # the primary tool (a) answers route low
    assert np.argmax(d.scores[1]) == 3  # the VLM alone
    assert d.confidence[0] == pytest.approx(0.6)  # the tool's own confidence
    assert d.confidence[1] == pytest.approx(0.9)


@pytest.mark.parametrize("task,primary", [("sequential", 0), ("direct", 1)])
def test_rows_the_primary_tool_answers_alone_get_the_decision_of_every_signal(task, primary):
    """The planner stage answers route-low tool rows from their one signal (``by_tool``, no shortlist): the same
    path, confidence, consulted tool and flags as ``decide`` over every signal."""
    p = planner({"vlm_p": 1.0})
    rows = 3
    tasks = np.array([task] * rows, dtype=object)
    tool_scores, vote, vlm = signals(rows)
    confidence = np.array([0.2, 0.6, 0.9], np.float32)
    full = p.decide("planner", tasks, np.full(rows, "tool", dtype=object), np.full(rows, 0.1), tool_scores, vote,
                    vlm, np.full(rows, np.nan), confidence)
    alone = p.by_tool(tasks, confidence)
    for field in ("path", "confidence", "vlm_called", "escalated", "consulted", "overrode"):
        assert getattr(alone, field).tolist() == getattr(full, field).tolist(), field
    assert alone.consulted[:, primary].all() and alone.consulted.sum() == rows


def test_override_only_when_the_aggregator_sides_with_the_vlm():
    trusts_vlm = decide(planner({"vlm_p": 5.0}), "planner", ["high"], [0.9])
    assert trusts_vlm.overrode.tolist() == [True] and np.argmax(trusts_vlm.scores[0]) == 3
    trusts_tools = decide(planner({"a:minmax": 5.0, "b:minmax": 1.0}), "planner", ["high"], [0.9])
    assert trusts_tools.overrode.tolist() == [False] and np.argmax(trusts_tools.scores[0]) == 0


def test_modes_answer_every_row_the_same_way():
    p = planner({"vlm_p": 1.0})
    routes = ["low", "medium", "high"]
    assert decide(p, "tools-only", routes, [0.9] * 3).path.tolist() == ["vote"] * 3
    assert decide(p, "vlm-only", routes, [0.1] * 3).path.tolist() == ["vlm"] * 3  # no escalation outside planner
    always = decide(p, "vlm+tools-always", routes, [0.9] * 3)
    assert always.path.tolist() == ["aggregate"] * 3 and always.consulted.all()
    assert asks_vlm(p, "planner", routes) == [False, True, True]
    vote_low = Planner(BY_TASK, {"sequential": "a"}, {"sequential": Policy(0.3, 0.7, 0.5, aggregator({}), low="vote")})
    low = decide(vote_low, "planner", ["low"], [0.9])
    assert low.path.tolist() == ["vote"] and low.consulted.all() and not low.vlm_called.any()
    assert not any(asks_vlm(p, "tools-only", routes)) and all(asks_vlm(p, "vlm-only", routes))
    with pytest.raises(ValueError, match="mode 'both'"):
        asks_vlm(p, "both", routes)


def test_padding_never_wins():
    p = planner({"vlm_p": 5.0})
    tool_scores, vote, vlm = signals(1)
    tool_scores[:, :, 3], vote[:, 3] = -np.inf, -np.inf  # only 3 candidates: slot 3 is padding
    d = p.decide("planner", np.array(["sequential"], dtype=object), np.array(["aggregate"], dtype=object),
                 np.array([0.9]), tool_scores, vote, vlm, np.array([0.9]), np.array([0.5], np.float32))
    assert d.scores[0, 3] == -np.inf and np.argmax(d.scores[0]) != 3


def test_padding_has_no_rank():
    # -inf and NaN are padding (np.nan_to_num(nan=-inf) alone would turn -inf into a finite -1.8e308 with a rank).
    assert reciprocal_rank(np.array([[2.0, 1.0, -np.inf, np.nan]])).tolist() == [[1.0, 0.5, 0.0, 0.0]]


def test_aggregator_fit_save_load_round_trip():
    rng = np.random.default_rng(0)
    rows = 300
    tool_scores = rng.normal(size=(2, rows, N))
    vlm = rng.dirichlet(np.ones(N), size=rows)
    confidence, horizon = vlm.max(axis=1), rng.random(rows)
    positive = np.zeros((rows, N), dtype=bool)
    positive[np.arange(rows), np.argmax(tool_scores[1], axis=1)] = True  # tool b is always right
    vote = tool_scores.mean(axis=0)
    x = Aggregator.features(tool_scores, vote, vlm, confidence, horizon)
    fitted = Aggregator.fit(TOOLS, x.reshape(-1, x.shape[-1]), positive.reshape(-1))
    logits = fitted.logits(tool_scores, vote, vlm, confidence, horizon)
    assert (np.argmax(logits, axis=1) == np.argmax(tool_scores[1], axis=1)).mean() > 0.95
    again = Aggregator.from_dict(json.loads(json.dumps(fitted.to_dict())))
    np.testing.assert_allclose(again.logits(tool_scores, vote, vlm, confidence, horizon), logits)
    stale = {**fitted.to_dict(), "features": ["vlm_p"]}
    with pytest.raises(ValueError, match="refit"):
        Aggregator.from_dict(stale)
    with pytest.raises(ValueError, match="positive and negative"):
        Aggregator.fit(TOOLS, x.reshape(-1, x.shape[-1]), np.zeros(rows * N, dtype=bool))


def test_planner_round_trips_through_the_manifest_and_checks_its_tools():
    p = planner({"vlm_p": 1.0}, kappa=0.4)
    manifest = {"planner": json.loads(json.dumps(p.to_dict()))}
    again = Planner.from_manifest(manifest, {"sequential": "a"}, BY_TASK, Policy())
    assert again.policy("sequential").kappa == 0.4 and again.tools_for("sequential") == TOOLS
    with pytest.raises(ValueError, match="fitted on tools"):
        Planner({"sequential": ["a", "c"]}, {}, {"sequential": Policy(aggregator=aggregator({}))})
    with pytest.raises(ValueError, match="fit-planner"):
        Planner.from_manifest({}, {}, BY_TASK, Policy()).aggregator("sequential")
    with pytest.raises(ValueError, match="tau_low <= tau_high"):
        Policy(0.8, 0.2)


def test_replay_picks_the_cheapest_plan_within_tolerance():
    horizon = np.array([0.1, 0.2, 0.6, 0.9])
    confidence = np.array([0.9, 0.9, 0.9, 0.1])
    # The tool is right on the two warm users only; the aggregator is right everywhere; the VLM alone never.
    hits = {"tool": np.array([1.0, 1.0, 0.0, 0.0]), "vlm": np.zeros(4), "aggregate": np.ones(4)}
    hits["vote"] = np.array([0.0, 1.0, 1.0, 0.0])  # the vote misses the warmest user
    plans = plan_grid(horizon, confidence, 5)
    quality, share = replay(horizon, confidence, hits, plans)
    best = choose(quality, share, tolerance=0.0)
    assert quality[best] == 1.0 and share[best] == 0.5  # warm users to the tool, the rest to the aggregator
    assert plans["tau_low"][best] > 0.2 and not plans["low_vote"][best]
    assert plans["tau_high"][best] < 0.6 or plans["kappa"][best] > 0.9
    # Giving up a quarter of the quality buys a plan with one VLM call in four.
    cheap = choose(quality, share, tolerance=0.25)
    assert share[cheap] == 0.25 and quality[cheap] == 0.75
    # A vote that is right on every user the tool gets right and more: route low goes to the vote.
    hits["vote"] = np.array([1.0, 1.0, 1.0, 0.0])
    quality, share = replay(horizon, confidence, hits, plans)
    best = choose(quality, share, tolerance=0.0)
    assert quality[best] == 1.0 and share[best] == 0.25 and plans["low_vote"][best]
    always = {"tau_low": np.array([0.0]), "tau_high": np.array([0.0]), "kappa": np.array([0.0]),
              "low_vote": np.array([False])}
    q, s = replay(horizon, confidence, hits, always)
    assert (q[0], s[0]) == (1.0, 1.0)  # everyone high: the aggregator on every row
