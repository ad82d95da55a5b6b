"""The report's task metrics, cold-start groups and paper tables on hand-made results (no Ray, no models)."""
import types

import numpy as np
import pyarrow as pa
import pytest

from reasonrec.paper import published
from reasonrec.report import cold_start, render_markdown, task_quality


def results(ranked: list[list[tuple[str, float]]], tools: list[list[str]]) -> pa.Table:
    return pa.table({"user_id": [f"u{i}" for i in range(len(ranked))],
                     "ranked": [[{"item_id": i, "score": s} for i, s in r] for r in ranked], "tools": tools})


def test_ctr_quality_and_cold_start_groups_by_training_interactions():
    # u0 and u1 have few training interactions, u2 and u3 many; the click is item "c" for everyone.
    rows = results([[("c", 0.9), ("n", 0.1)], [("c", 0.2), ("n", 0.6)], [("c", 0.7), ("n", 0.3)],
                    [("c", 0.8), ("n", 0.4)]], [["dcnv2"], [], ["dcnv2"], ["dcnv2"]])
    target = np.array(["c"] * 4, dtype=object)
    overall, measure = task_quality(rows, target, "ctr")
    assert overall["AUC"] == pytest.approx(13 / 16)  # 13 of the 16 (click, non-click) pairs are ordered right
    data = types.SimpleNamespace(train=types.SimpleNamespace(user_ids=np.array(["u0", "u1", "u2", "u3"]),
                                                             lengths=np.array([1, 2, 9, 8])))
    groups = cold_start(rows, measure, data, 2)
    assert [g["train_interactions"] for g in groups] == [[1, 2], [8, 9]]
    assert groups[0]["AUC"] == pytest.approx(0.75) and groups[1]["AUC"] == 1.0
    assert [g["tool_usage"] for g in groups] == [0.5, 1.0]


def test_ranking_quality_is_hit_rate_at_5():
    rows = results([[(f"i{j}", 10.0 - j) for j in range(10)]] * 2, [["sasrec"]] * 2)
    overall, measure = task_quality(rows, np.array(["i0", "i7"], dtype=object), "sequential")
    assert overall["HR@5"] == 0.5 and measure(np.array([0]))["HR@5"] == 1.0


def test_report_prints_our_rows_beside_the_papers():
    assert published("amazon_beauty", "ctr")["DCNv2"] == {"AUC": 0.8825, "LogLoss": 0.1742}
    assert published("amazon_beauty", "sequential")["LightSANs"]["HR@5"] == 0.0435
    assert published("ml-100k", "sequential") == {}
    mode = {"AUC": 0.8, "LogLoss": 0.4, "rows": 10, "vlm_calls": 0, "tool_calls": 10, "tool_usage": 1.0,
            "override_rate": 0.0, "latency_mean_ms": 1.0, "users_per_s": 100}
    report = {"split": "test", "bundle": "v1", "dataset": "amazon_beauty", "tasks": {"ctr": {
        "metric": ["AUC", "LogLoss"], "modes": {"tools-only": mode}, "routes": {"tools-only": []},
        "agreement": {"tools-only": None}, "cold_start": {"tools-only": []},
        "single_tools": {"dcnv2": {"AUC": 0.81, "LogLoss": 0.39}}, "paper": published("amazon_beauty", "ctr")}}}
    markdown = render_markdown(report)
    assert "| tools-only | 0.8000 | 0.4000 | measured here |" in markdown
    assert "| dcnv2 | 0.8100 | 0.3900 | measured here (tool alone) |" in markdown
    assert "| DCNv2 | 0.8825 | 0.1742 | paper |" in markdown and "Agreement" not in markdown


def test_the_sweep_marks_the_plan_chosen_within_the_vlm_budget(tmp_path):
    from reasonrec.report import plot_frontier

    mode = {"HR@5": 0.5, "NDCG@5": 0.4, "rows": 10, "vlm_calls": 3, "tool_calls": 10, "tool_usage": 1.0,
            "override_rate": 0.0, "latency_mean_ms": 1.0, "users_per_s": 100}
    fitted = {"tau_low": 0.4, "tau_high": 0.8, "kappa": 0.0, "low": "vote", "max_vlm_share": 0.3, "HR@5": 0.5,
              "vlm_share": 0.3}
    sweep = {"rows": 10, "plans": {"vlm_share": [0.0, 0.3, 1.0], "HR@5": [0.4, 0.5, 0.6]}, "fitted": fitted,
             "modes": {"tools-only": {"HR@5": 0.4, "vlm_share": 0.0}}}
    report = {"split": "test", "bundle": "v1", "tasks": {"sequential": {
        "metric": ["HR@5", "NDCG@5"], "modes": {"planner": mode}, "routes": {"planner": []},
        "agreement": {"planner": None}, "cold_start": {"planner": []}, "single_tools": {}, "sweep": sweep}}}
    assert "the best plan within the VLM budget (max_vlm_share 30%)" in render_markdown(report)
    unbudgeted = {**sweep, "fitted": {**fitted, "max_vlm_share": 1.0}}
    report["tasks"]["sequential"]["sweep"] = unbudgeted
    assert "VLM budget" not in render_markdown(report)
    plot_frontier({"sequential": sweep}, str(tmp_path / "frontier.png"))
    assert (tmp_path / "frontier.png").stat().st_size > 0
