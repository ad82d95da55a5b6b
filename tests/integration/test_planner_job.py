"""fit-planner, the nightly job in every mode through Ray Data on S3, and the report."""
import dataclasses

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest
from conftest import PLANNER_SCORE as SCORE

from reasonrec import storage
from reasonrec.batch import commit
from reasonrec.batch.requests import requests_for_split, write_requests
from reasonrec.bundle import Bundle
from reasonrec.planner import MODES, Aggregator

USERS = 40  # per ranking task: the VLM runs on CPU in every mode but tools-only
CTR_USERS = 20  # ctr requests: 5 candidates each, a yes/no prompt per candidate
ROWS = 2 * USERS + 1 + CTR_USERS  # and one test user whose request carries no history (evidence horizon 1: high)
CANDIDATES = {"sequential": 10, "direct": 10, "ctr": 5}  # answers per row (k = 10)
CONSULTED = {"sequential": 2, "direct": 2, "ctr": 1}  # the routed bundle's tools per task


@pytest.fixture(scope="session")
def requests_uri(synthetic_data):
    sequential = requests_for_split(synthetic_data, "test", "sequential", k=10)
    cold = sequential.slice(USERS, 1)
    cold = cold.set_column(cold.schema.get_field_index("history"), "history",
                           pa.nulls(1, cold.schema.field("history").type))
    table = pa.concat_tables([sequential.slice(0, USERS), cold,
                              requests_for_split(synthetic_data, "test", "direct", k=10).slice(0, USERS),
                              requests_for_split(synthetic_data, "test", "ctr", k=10).slice(0, CTR_USERS)])
    bad = pa.table({"user_id": ["", "u-x"], "task": ["sequential", "direct"], "k": [10, 10],
                    "candidates": [None, None], "history": [None, None], "item_id": [None, None],
                    "rating": [None, None]}, schema=table.schema)
    uri = "s3://reasonrec-test/planner/requests"
    write_requests(pa.concat_tables([table, bad]), uri, shard_rows=50)
    return uri


def test_fit_planner_stores_a_validated_policy_per_task(planner_bundle_uri):
    fitted = Bundle(planner_bundle_uri).manifest["planner"]
    assert fitted["fitted_on"] == "valid" and fitted["tools"] == ["lightgcn", "sasrec"]
    for task in ("sequential", "direct"):
        policy = fitted["policies"][task]
        assert 0 <= policy["tau_low"] <= policy["tau_high"] <= 1
        Aggregator.from_dict(policy["aggregator"])  # loads, features match this version
        v = fitted["validation"][task]
        assert v["rows"] == 150 and v["plan"]["HR@5"] >= v["best_HR@5"] * (1 - fitted["tolerance"]) - 1e-9
        assert set(v["HR@5"]) == {"tool", "vote", "vlm", "aggregate"}
        # the ablation: the same plan with the VLM removed, its rows answered by an aggregator over the tools alone
        without = Aggregator.from_dict(policy["tools_aggregator"])
        vlm_weights = [w for name, w in zip(without.feature_names(without.tools), without.coef) if "vlm" in name]
        assert len(vlm_weights) == 5 and np.abs(vlm_weights).max() < 1e-9  # constant features: rounding only
        assert 0 <= v["without_vlm"] <= 1
    assert fitted["tools_by_task"]["ctr"] == ["dcnv2"]  # ctr consults the CTR tools only
    ctr = fitted["policies"]["ctr"]
    assert Aggregator.from_dict(ctr["aggregator"]).kind == "ctr"
    loglik = fitted["validation"]["ctr"]["LogLik"]  # mean log-likelihood of the click labels, per answerer
    assert set(loglik) == {"tool", "vote", "vlm", "aggregate"} and all(v < 0 for v in loglik.values()), loglik
    # This VLM is tuned a dozen steps: its own click probabilities may be far off, what the planner uses may not.
    assert all(-1.0 < loglik[answerer] for answerer in ("tool", "vote", "aggregate")), loglik


def test_the_plan_without_the_vlm_is_measured_on_test(planner_bundle_uri, synthetic_data):
    from reasonrec.train.planner import without_vlm

    found = without_vlm(synthetic_data.uri, planner_bundle_uri, score=SCORE)
    assert set(found) == {"sequential", "direct", "ctr"}
    assert all(0 <= found[t]["HR@5"] <= 1 and found[t]["rows"] > 0 for t in ("sequential", "direct"))
    assert found["ctr"]["LogLoss"] > 0


def test_fit_planner_refuses_refit_tools_without_a_holdout(vlm_bundle_uri, synthetic_data, tmp_path):
    from reasonrec.train.planner import FitPlannerConfig, fit_planner

    uri = str(tmp_path / "bundle")
    for rel in storage.list_files(vlm_bundle_uri):
        if "/holdout/" not in rel:
            storage.write_bytes(storage.join(uri, rel), storage.read_bytes(storage.join(vlm_bundle_uri, rel)))
    manifest = storage.read_json(storage.join(uri, "manifest.json"))
    manifest["files"] = {r: h for r, h in manifest["files"].items() if "/holdout/" not in r}
    storage.write_json(storage.join(uri, "manifest.json"), manifest)
    with pytest.raises(ValueError, match=r"\['lightgcn'\] were refit on train \+ validation"):
        fit_planner(synthetic_data.uri, uri, FitPlannerConfig(score=SCORE))


def run_mode(mode, bundle_uri, requests_uri, output):
    from jobs.nightly_score import NightlyJob, run

    return run(NightlyJob(requests_uri, bundle_uri, output, "2026-11-27", force=True,
                          score=dataclasses.replace(SCORE, mode=mode)))


@pytest.fixture(scope="session")
def mode_runs(ray_session, routed_bundle_uri, requests_uri):
    root = "s3://reasonrec-test/planner/runs"
    return {mode: (f"{root}/{mode}", run_mode(mode, routed_bundle_uri, requests_uri, f"{root}/{mode}"))
            for mode in MODES}


@pytest.mark.parametrize("mode", MODES)
def test_job_in_every_mode_accounts_for_every_row(mode, mode_runs):
    output, manifest = mode_runs[mode]
    rows = manifest["rows_out"]
    assert manifest["mode"] == mode and manifest["rows_in"] == ROWS + 2
    assert rows == ROWS and manifest["rows_quarantined"] == 2
    assert sum(manifest["routes"].values()) == rows and sum(manifest["paths"].values()) == rows
    assert sum(manifest["route_shares"].values()) == pytest.approx(1.0)
    results = commit.read_committed(output, "2026-11-27")
    assert results.num_rows == rows and not results.select(["user_id", "task"]).to_pandas().duplicated().any()
    vlm = np.asarray(results.column("vlm_called").to_pylist())
    consulted = pc.list_value_length(results.column("tools")).to_numpy()
    route = np.asarray(results.column("route").to_pylist())
    task = np.asarray(results.column("task").to_pylist())
    every_tool = np.vectorize(CONSULTED.get)(task)
    assert manifest["vlm_calls_total"] == vlm.sum() and manifest["tool_calls_total"] == consulted.sum()
    assert manifest["tool_usage_rate"] == pytest.approx((consulted > 0).mean())
    assert manifest["override_rate"] == pytest.approx(np.mean(results.column("overrode").to_pylist()))
    if mode == "tools-only":
        assert vlm.sum() == 0 and (consulted == every_tool).all()
    elif mode == "vlm-only":
        assert vlm.all() and (consulted == 0).all()
    elif mode == "vlm+tools-always":
        assert vlm.all() and (consulted == every_tool).all()
    else:
        assert set(route) == {"low", "medium", "high"} and (vlm == (route != "low")).all()
        path = np.asarray(results.column("path").to_pylist())
        low_by = np.where(task == "sequential", "tool", "vote")  # the routed bundle's policies
        assert (path[route == "low"] == low_by[route == "low"]).all() and set(path[route == "high"]) == {"aggregate"}
        assert (consulted[path == "tool"] == 1).all()
        assert (consulted[path == "vote"] == every_tool[path == "vote"]).all()
        escalated = np.asarray(results.column("escalated").to_pylist())
        assert (path[route == "medium"] == np.where(escalated[route == "medium"], "aggregate", "vlm")).all()
        confidence = np.asarray(results.column("confidence").to_pylist())
        assert (confidence[escalated] >= 0).all()
    traces = results.column("trace").to_pylist()
    assert all(f"mode: {mode}" in t and "answer: " in t for t in traces)
    assert [len(r) for r in results.column("ranked").to_pylist()] == [CANDIDATES[t] for t in task]
    probabilities = [x["score"] for r in results.filter(pc.equal(results.column("task"), "ctr")).column("ranked")
                     .to_pylist() for x in r]
    assert len(probabilities) == 5 * CTR_USERS and all(0 <= p <= 1 for p in probabilities)


def test_planner_rows_match_the_in_process_stages(mode_runs, routed_bundle_uri, requests_uri):
    """The same stages without Ray give the same answers: the job adds scheduling, not behaviour."""
    from reasonrec.batch.context import Scoring
    from reasonrec.batch.local import LocalPipeline
    from reasonrec.batch.shards import list_shards

    table = pa.concat_tables([storage.read_parquet(s) for s in list_shards(requests_uri)])
    local = LocalPipeline(Scoring.load(routed_bundle_uri, dataclasses.replace(SCORE, mode="planner")))(table)
    local = local.filter(local.column("error").is_null())
    batch = commit.read_committed(mode_runs["planner"][0], "2026-11-27")
    key = lambda t: {(u, k): [x["item_id"] for x in r] for u, k, r in zip(  # noqa: E731
        t.column("user_id").to_pylist(), t.column("task").to_pylist(), t.column("ranked").to_pylist())}
    assert key(local) == key(batch)


def test_report_compares_the_modes(mode_runs, synthetic_data, tmp_path):
    from reasonrec.report import ReportConfig, write_report

    out = str(tmp_path / "report")
    report = write_report([uri for uri, _ in mode_runs.values()], synthetic_data.uri, out,
                          ReportConfig(sweep_users=40, backend="transformers"))
    markdown = (tmp_path / "report" / "report.md").read_text()
    assert all(f"| {mode} |" in markdown for mode in MODES)
    assert (tmp_path / "report" / "frontier.png").read_bytes()[:4] == b"\x89PNG"
    seq = report["tasks"]["sequential"]
    assert set(seq["modes"]) == set(MODES) and len(seq["cold_start"]["planner"]) == 10
    assert sum(g["users"] for g in seq["cold_start"]["planner"]) == USERS + 1
    assert seq["modes"]["tools-only"]["vlm_calls"] == 0 and seq["modes"]["vlm-only"]["vlm_calls"] == USERS + 1
    assert sum(r["rows"] for r in seq["routes"]["planner"]) == USERS + 1
    # rows by their target's training interactions: the first group holds the least-bought targets
    groups = seq["new_items"]["vlm-only"]
    assert len(groups) == 5 and sum(g["rows"] for g in groups) == USERS + 1
    assert groups[0]["target_interactions"][1] <= groups[-1]["target_interactions"][0]
    assert all(g["vlm_share"] == 1.0 for g in groups) and "### New items" in markdown
    agreement = seq["agreement"]["vlm+tools-always"]
    assert sum(agreement[c]["rows"] for c in ("agree", "vlm_overrode", "tools_kept")) == agreement["rows"] == USERS + 1
    sweep = seq["sweep"]
    assert sweep["rows"] == 40 and len(sweep["plans"]["HR@5"]) > 10
    assert max(sweep["plans"]["HR@5"]) >= sweep["modes"]["primary tool"]["HR@5"]
    ctr = report["tasks"]["ctr"]  # click probabilities: AUC and LogLoss per mode, per cold-start group
    assert set(ctr["modes"]) == set(MODES) and all(0 <= m["AUC"] <= 1 and m["LogLoss"] > 0
                                                   for m in ctr["modes"].values())
    # One CTR tool: its vote is its own probability, so tools-only scores as the tool alone does.
    assert ctr["modes"]["tools-only"]["AUC"] == pytest.approx(ctr["single_tools"]["dcnv2"]["AUC"], abs=1e-9)
    assert set(ctr["single_tools"]) == {"dcnv2"} and sum(g["users"] for g in ctr["cold_start"]["planner"]) == CTR_USERS
    assert "## ctr" in markdown and "| AUC | LogLoss |" in markdown and "sweep" not in ctr and not ctr["new_items"]


def test_report_command_line(mode_runs, synthetic_data, tmp_path, capsys):
    from jobs.cli import main

    runs = [arg for uri, _ in mode_runs.values() for arg in ("--run", uri)]
    out = str(tmp_path / "cli-report")
    assert main(["report", *runs, "--data", synthetic_data.uri, "--out", out, "--sweep-users", "0"]) == 0
    assert "report written to" in capsys.readouterr().out
    assert (tmp_path / "cli-report" / "report.md").exists() and not (tmp_path / "cli-report" / "frontier.png").exists()
    assert main(["report", "--run", mode_runs["planner"][0], "--run", mode_runs["planner"][0],
                 "--data", synthetic_data.uri, "--out", out]) == 2
    assert "two runs in mode 'planner'" in capsys.readouterr().err


def test_the_gpu_group_scales_from_zero_for_the_vlm_and_back_when_idle(routed_bundle_uri, requests_uri):
    """Ray's fake autoscaler with cluster/aws.yaml's node types (tests/scripts/autoscaling_job.py, its own process):
    a head with 0 CPUs, the CPU group at its min_workers, the GPU group at 0. The nightly job's VLM actor asks for
    a GPU (deliberator.device cuda), so the GPU group scales up and the actor runs there; the horizon, tool and
    planner actors ask for the CPU group's resource and run there; once idle, the GPU group scales back to 0.
    With the VLM actor's GPU request removed (VLM_GPUS=0) no GPU node comes up and this test fails."""
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    import yaml

    repo = Path(__file__).resolve().parents[2]
    done = subprocess.run([sys.executable, "tests/scripts/autoscaling_job.py", routed_bundle_uri, requests_uri,
                           "s3://reasonrec-test/planner/autoscaling"], cwd=repo, capture_output=True, text=True,
                          timeout=500, env={**os.environ, "PYTHONPATH": str(repo)})
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    found = json.loads(done.stdout.strip().splitlines()[-1])
    deployed = yaml.safe_load((repo / "cluster" / "aws.yaml").read_text())["available_node_types"]
    assert found["head"] == deployed["head"]["resources"] == {"CPU": 0}
    assert found["min_workers"] == {name: spec["min_workers"] for name, spec in deployed.items() if name != "head"}
    for name, resources in found["node_types"].items():
        assert resources.items() >= deployed[name]["resources"].items()  # the YAML's resources, CPUs added
    assert found["before"].get("gpu_worker", 0) == 0 and found["before"]["cpu_worker"] >= 1
    assert found["gpu_peak"] == 1 and found["after"].get("gpu_worker", 0) == 0
    assert found["rows_out"] == ROWS and found["vlm_calls"] > 0
    assert found["placed"]["VLMActor"] == ["gpu_worker"]
    for kind in ("HorizonActor", "ToolActor", "PlannerActor"):
        assert found["placed"][kind] == ["cpu_worker"], (kind, found["placed"])
