"""The nightly job: request shards -> horizon -> tools -> committed results, plain stages and through Ray Data."""
import json

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
import torch

from conftest import copy_files

from reasonrec import storage
from reasonrec.batch import commit
from jobs.cli import main
from reasonrec.batch.config import ScoreConfig
from reasonrec.batch.context import Scoring
from reasonrec.batch.horizon_stage import HorizonStage
from reasonrec.batch.planner_stage import PlannerStage
from reasonrec.batch.requests import requests_for_split, write_requests
from reasonrec.batch.shards import conform, read_shard
from reasonrec.batch.tool_stage import ToolStage
from reasonrec.bundle import Bundle
from reasonrec.data import schemas
from reasonrec.vlm.deliberator import DeliberatorConfig
from reasonrec.evaluator import (
    evaluate_bundle,
    evaluate_results,
    majority_vote,
    rank_targets,
    ranks_from_results,
    tool_scorer,
)

# One tool actor, as in every test job (conftest.planner_score says why); this bundle has no VLM (test_planner_job
# has).
CONFIG = ScoreConfig(batch_size=200, mode="tools-only", tool_actors=1)
PLANNER_ON_CPU = ScoreConfig(batch_size=200, mode="planner", tool_actors=1, deliberator=DeliberatorConfig(device="cpu"))


def stream(table: pa.Table, shard: str = "mem://shard") -> pa.Table:
    return conform(table, shard)


def answer(bundle_uri, table: pa.Table, config: ScoreConfig = CONFIG, plan: str | None = None) -> pa.Table:
    """The job's stages in order; ``plan`` gives every row one answerer (``tool``: the primary tool)."""
    scoring = Scoring.load(bundle_uri, config)
    rows = HorizonStage(scoring)(stream(table))
    if plan:
        rows = rows.set_column(rows.schema.get_field_index("plan"), "plan", pa.array([plan] * rows.num_rows))
    return PlannerStage(scoring)(ToolStage(scoring)(rows))


def request_rows(**columns) -> pa.Table:
    n = len(columns["user_id"])
    columns.setdefault("task", ["sequential"] * n)
    columns.setdefault("k", [10] * n)
    return pa.table(columns)


# -- plain stages, no Ray --------------------------------------------------------------------------------------

def test_validator_names_the_field_of_each_bad_row(bundle_uri, synthetic_data):
    item = synthetic_data.item_vocab.ids[0]
    rows = request_rows(
        user_id=["u-ok", None, "  ", " pad", "u5", "u6", "u7", "u8", "u9", "u10", "u\x07", "u12", "u13"],
        task=["sequential", "sequential", "sequential", "sequential", "shopping", "explain", "sequential",
              "sequential", "direct", "direct", "sequential", "ctr", "ctr"],
        k=[10, 10, 10, 10, 10, 10, 0, 101, 10, 10, 10, 5, 5],
        candidates=[None] * 9 + [[item, "no-such-item"]] + [None, None, ["no-such-item", item, "nor-this"]],
    )
    out = HorizonStage(Scoring.load(bundle_uri, CONFIG))(stream(rows))
    errors = out.column("error").to_pylist()
    assert errors[0] is None
    expected = ["user_id: null", "user_id: empty", "user_id: ' pad' has surrounding whitespace",
                "task: unknown 'shopping'", "task: 'explain' is not answered by this job", "k: 0 out of range [1, 100]",
                "k: 101 out of range", "candidates: task 'direct' needs a list",
                "candidates: 1 not in the catalogue, e.g. 'no-such-item'", "is not printable",
                "candidates: task 'ctr' needs a list", "candidates: 2 not in the catalogue, e.g. 'no-such-item'"]
    for error, text in zip(errors[1:], expected, strict=True):
        assert text in error
    assert out.column("stage").to_pylist() == [None] + ["validate"] * 12
    assert set(out.column("route").to_pylist()) <= {"low", "medium", "high"}


def test_unreadable_shard_and_missing_column_become_quarantine_rows(tmp_path):
    good = request_rows(user_id=["a", "b"])
    corrupt = tmp_path / "corrupt.parquet"
    pq.write_table(good, corrupt)
    data = bytearray(corrupt.read_bytes())
    data[8:40] = b"\xff" * 32  # the first data page, the footer stays readable
    corrupt.write_bytes(bytes(data))
    garbage = tmp_path / "garbage.parquet"
    garbage.write_bytes(b"not parquet at all")
    missing = tmp_path / "missing.parquet"
    pq.write_table(pa.table({"user_id": ["a", "b", "c"], "task": ["sequential"] * 3}), missing)

    out = read_shard(str(corrupt))
    assert out.num_rows == 2 and out.column("stage").to_pylist() == ["read", "read"]
    assert all(e.startswith("shard unreadable") for e in out.column("error").to_pylist())
    out = read_shard(str(garbage))
    assert out.num_rows == 1 and out.column("row").to_pylist() == [-1]
    out = read_shard(str(missing))
    assert out.num_rows == 3 and "missing required column(s) ['k']" in out.column("error")[0].as_py()
    assert json.loads(out.column("raw")[2].as_py()) == {"user_id": "c", "task": "sequential"}
    # An int64 k too large for int32 is one bad row, not a bad shard.
    out = conform(request_rows(user_id=["a", "b"], k=[3, 2**40]), "s")
    assert out.column("k").to_pylist() == [3, None] and out.column("error").null_count == 2


@pytest.mark.parametrize("task,tool", [("sequential", "sasrec"), ("direct", "lightgcn"), ("sequential", "vote"),
                                       ("direct", "vote")])
def test_batch_answers_rank_exactly_like_the_evaluator(bundle_uri, synthetic_data, task, tool):
    """Route low answers with the task's primary tool; tools-only with the Majority Vote of every tool."""
    requests = requests_for_split(synthetic_data, "test", task, k=10)
    bundle = Bundle(bundle_uri)
    if tool == "vote":
        out = answer(bundle_uri, requests)
        scorer = majority_vote(bundle.load_tool(name) for name in bundle.tools_for(task))
    else:
        out = answer(bundle_uri, requests, PLANNER_ON_CPU, plan="tool")
        scorer = tool_scorer(bundle.load_tool(tool))
    assert out.num_rows == requests.num_rows and out.column("error").null_count == out.num_rows
    results = commit._results(out, "r")
    evalset = synthetic_data.eval_set("test")
    expected = rank_targets(scorer, evalset, task)
    target_ids = synthetic_data.item_vocab.lookup(evalset.target)
    got = ranks_from_results(results, users=evalset.history.user_ids, items=target_ids)
    in_list = expected < 10
    np.testing.assert_array_equal(got[in_list], expected[in_list])
    assert (got[~in_list] >= 10).all()
    ranked = results.column("ranked").to_pylist()
    assert all(len(r) == 10 for r in ranked)
    assert all(r[i]["score"] >= r[i + 1]["score"] for r in ranked for i in range(9))
    if task == "sequential":  # a user's own history is never recommended back
        seen = dict(zip(requests.column("user_id").to_pylist(), requests.column("history").to_pylist()))
        assert not any(set(seen[u]) & {x["item_id"] for x in r}
                       for u, r in zip(results.column("user_id").to_pylist(), ranked))
    else:  # only the request's candidates are ranked
        cands = dict(zip(requests.column("user_id").to_pylist(), requests.column("candidates").to_pylist()))
        assert all({x["item_id"] for x in r} <= set(cands[u])
                   for u, r in zip(results.column("user_id").to_pylist(), ranked))
    confidence = results.column("confidence").to_numpy()
    assert ((confidence >= 0) & (confidence <= 1)).all() and confidence.mean() > 0
    assert results.column("trace")[0].as_py().startswith("EH: ")
    assert set(results.column("tools").to_pylist()[0]) == ({tool} if tool != "vote" else set(bundle.tools_for(task)))
    assert results.column("path").to_pylist()[0] == ("tool" if tool != "vote" else "vote")
    assert not any(results.column("vlm_called").to_pylist())


@pytest.mark.parametrize("task", ["sequential", "direct"])
def test_a_row_the_primary_tool_answers_alone_costs_that_tool_only(bundle_uri, synthetic_data, task):
    """Route low in planner mode (DESIGN.md §4): only the primary tool scores the row, and the answer is the one
    the row gets when every tool is scored."""
    scoring = Scoring.load(bundle_uri, PLANNER_ON_CPU)
    rows = HorizonStage(scoring)(stream(requests_for_split(synthetic_data, "test", task, k=10).slice(0, 40)))
    planned = {plan: rows.set_column(rows.schema.get_field_index("plan"), "plan", pa.array([plan] * rows.num_rows))
               for plan in ("tool", "vote")}
    lean, full = ToolStage(scoring), ToolStage(scoring)
    called = []
    for name, tool in lean.tools.items():  # a ranking tool's work starts with its user vectors
        encode = tool.user_vectors
        tool.user_vectors = lambda history, name=name, encode=encode: called.append(name) or encode(history)
    lean_rows, full_rows = lean(planned["tool"]), full(planned["vote"])
    assert called == [scoring.primary[task]]
    assert lean_rows.column("pool").null_count == rows.num_rows
    assert full_rows.column("pool").null_count == 0
    full_rows = full_rows.set_column(full_rows.schema.get_field_index("plan"), "plan", lean_rows.column("plan"))
    columns = ["user_id", "ranked", "confidence", "tools", "trace", "path", "tools_top", "vlm_top", "vlm_called"]
    planner = PlannerStage(scoring)
    answered = planner(lean_rows).select(columns).to_pylist()
    assert answered == planner(full_rows).select(columns).to_pylist()
    # The stage answers tool rows without the decision; beside one vote row, ``answer`` decides every row from
    # every signal: the same answers.
    voted = full(planned["vote"]).slice(0, 1)
    decided = planner.answer(pa.concat_tables([full_rows, voted]), task).slice(0, full_rows.num_rows)
    assert decided.select(columns).to_pylist() == answered


@pytest.mark.parametrize("task", ["sequential", "direct", "ctr"])
def test_a_batch_scored_in_slices_gets_the_signals_of_one_pass(bundle_uri, synthetic_data, task, monkeypatch):
    """ToolStage bounds each catalogue-wide score matrix (scores.SCORE_FLOATS); a wider batch is scored in
    slices of rows, with the same items in the same order as in one pass and the same scores up to float rounding
    (a matrix product's last bits depend on its shape)."""
    from reasonrec import scores

    scoring = Scoring.load(bundle_uri, CONFIG)
    rows = HorizonStage(scoring)(stream(requests_for_split(synthetic_data, "test", task, k=10).slice(0, 45)))
    whole = ToolStage(scoring)(rows)
    monkeypatch.setattr(scores, "SCORE_FLOATS", 16 * (len(scoring.vocab) + 1))  # slices of 16 rows
    sliced = ToolStage(scoring)(rows)
    assert sliced.num_rows == whole.num_rows == 45
    for name in whole.column_names:
        if name in ("primary_scores", "pool_scores", "tool_scores", "tool_confidence"):
            flat = [pc.list_flatten(t.column(name)) if name != "tool_confidence" else t.column(name)
                    for t in (sliced, whole)]
            # atol: a score near 0 differs in its last float32 bits of a ~1 magnitude sum (1e-7), not 1e-5 of itself
            np.testing.assert_allclose(*(np.asarray(f.to_numpy(zero_copy_only=False)) for f in flat), rtol=1e-5,
                                       atol=1e-6, err_msg=name)
        elif name != "latency_ms":
            assert sliced.column(name).to_pylist() == whole.column(name).to_pylist(), name


def test_unknown_user_and_unknown_history_items_are_answered(bundle_uri):
    rows = request_rows(user_id=["new-user", "odd-history"], history=[None, ["never-seen-item"]])
    out = answer(bundle_uri, rows)
    assert out.column("error").null_count == 2
    horizon = out.column("horizon").to_pylist()
    assert horizon[0] == 1.0 and 0.0 < horizon[1] <= 1.0  # no history at all: the coldest possible user
    assert [len(r) for r in out.column("ranked").to_pylist()] == [10, 10]
    assert np.isfinite(out.column("confidence").to_numpy()).all()


def test_commit_keeps_only_listed_parts_and_latest_run(tmp_path, bundle_uri):
    out = answer(bundle_uri, request_rows(user_id=["a", None, "c"]))
    first = commit.Run.new(str(tmp_path), "2026-01-02")
    part = commit.write_part(out, first)
    storage.write_bytes(storage.join(first.uri, "part-orphan.parquet"), b"left by a failed attempt")
    commit.commit(first, {**commit.summarise([part]), "rows_in": 3, "finished": "1"})
    assert "part-orphan.parquet" not in storage.list_files(first.uri)
    assert storage.list_files(first.date_uri) == sorted([*(f"{n}.parquet" for n in part["results"]), "_SUCCESS",
                                                         "_manifest.json"])
    assert commit.read_committed(str(tmp_path)).num_rows == 2
    quarantine = commit.read_committed(str(tmp_path), table="quarantine")
    assert quarantine.column("reason").to_pylist() == ["user_id: null"]
    assert quarantine.column("source").to_pylist() == ["mem://shard#1"]
    second = commit.Run.new(str(tmp_path), "2026-01-02")
    commit.commit(second, {**commit.summarise([commit.write_part(out, second)]), "rows_in": 3, "finished": "2"})
    assert commit.committed_run(str(tmp_path), "2026-01-02")["run_id"] == second.run_id
    assert not storage.exists(first.uri)
    with pytest.raises(ValueError, match="not YYYY-MM-DD"):
        commit.Run.new(str(tmp_path), "02/01/2026")


# -- the job through Ray Data, on S3 ---------------------------------------------------------------------------

def test_nightly_job_on_s3_commits_quarantines_and_agrees_with_evaluate(ray_session, synthetic_data, bundle_uri,
                                                                       tmp_path, capsys):
    root = "s3://reasonrec-test/nightly"
    requests, output = f"{root}/requests", f"{root}/results"
    table = pa.concat_tables([requests_for_split(synthetic_data, "test", t, k=10) for t in ("sequential", "direct")])
    write_requests(table, requests, shard_rows=500)
    # 100 malformed rows inside a good shard, a shard with corrupt bytes and one without the k column.
    bad = table.slice(0, 100).to_pydict()
    bad["user_id"] = [None] * 25 + [""] * 25 + bad["user_id"][50:]
    bad["task"] = bad["task"][:50] + ["nonsense"] * 25 + bad["task"][75:]
    bad["k"] = bad["k"][:75] + [0] * 25
    mixed = pa.concat_tables([table.slice(0, 50), pa.table(bad, schema=schemas.REQUESTS)])
    storage.write_parquet(mixed, f"{requests}/mixed.parquet")
    storage.write_bytes(f"{requests}/corrupt.parquet", b"PAR1" + b"\x00" * 64)
    storage.write_parquet(table.slice(0, 7).drop_columns(["k"]), f"{requests}/no-k.parquet")

    args = ["score", "--requests", requests, "--bundle", bundle_uri, "--output", output,
            "--run-date", "2026-11-27", "--batch-size", "256", "--tool-actors", "2", "--mode", "tools-only"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "== nightly job 2026-11-27" in printed and "users/s" in printed
    manifest = commit.committed_run(output, "2026-11-27")
    n_good = table.num_rows  # the 50 good rows of mixed.parquet come first: their copies in part-00000 are duplicates
    assert manifest["rows_in"] == n_good + 50 + 100 + 1 + 7
    assert manifest["rows_out"] == n_good
    assert manifest["rows_quarantined"] == 158
    assert manifest["rows_in"] == manifest["rows_out"] + manifest["rows_quarantined"]
    assert sum(manifest["routes"].values()) == n_good and manifest["bundle_version"] == Bundle(bundle_uri).version
    assert manifest["quarantine_stages"] == {"read": 58, "validate": 100}

    quarantine = commit.read_committed(output, "2026-11-27", table="quarantine")
    reasons = quarantine.column("reason").to_pylist()
    assert sum(r == "user_id: null" for r in reasons) == 25 and sum(r == "user_id: empty" for r in reasons) == 25
    assert sum(r.startswith("task: unknown 'nonsense'") for r in reasons) == 25
    assert sum(r.startswith("k: 0 out of range") for r in reasons) == 25
    assert sum(r.startswith("shard unreadable") for r in reasons) == 1
    assert sum("missing required column(s) ['k']" in r for r in reasons) == 7
    assert sum(r.startswith("duplicate: this (user_id, task) is already requested at ") and "mixed.parquet#" in r
               for r in reasons) == 50

    results = commit.read_committed(output, "2026-11-27")
    import pyarrow.dataset as pads  # a reader that knows nothing of manifests sees the same rows, on S3 too

    fs, path = storage.resolve(output)
    plain = pads.dataset(path, filesystem=fs, format="parquet", partitioning="hive").to_table()
    key = [("user_id", "ascending"), ("task", "ascending")]
    assert plain.drop_columns(["run_date"]).sort_by(key).equals(results.sort_by(key))
    for task in ("sequential", "direct"):
        from_results = evaluate_results(results, synthetic_data, task)["metrics"]
        from_evaluate = evaluate_bundle(synthetic_data, Bundle(bundle_uri), task)["baselines"]["majority_vote"]
        assert from_results == pytest.approx(from_evaluate, abs=1e-9)

    assert main(args) == 0  # the date is committed: a no-op that says so
    assert "already committed" in capsys.readouterr().out
    assert commit.committed_run(output, "2026-11-27")["run_id"] == manifest["run_id"]

    assert main([*args, "--force"]) == 0
    forced = commit.committed_run(output, "2026-11-27")
    assert forced["run_id"] != manifest["run_id"]
    assert [f for f in storage.list_files(f"{output}/_runs/run_date=2026-11-27") if f.endswith("_manifest.json")] \
        == [f"run_id={forced['run_id']}/_manifest.json"]
    published = storage.list_files(f"{output}/run_date=2026-11-27")
    assert sorted(published) == sorted([*(f"{n}.parquet" for n in forced["results"]), "_SUCCESS", "_manifest.json"])
    again = commit.read_committed(output, "2026-11-27")
    keys = again.select(["user_id", "task"]).to_pandas()
    assert again.num_rows == n_good and keys.duplicated().sum() == 0


def test_the_duplicate_scan_on_ray_tasks_finds_what_the_driver_finds(ray_session, synthetic_data, tmp_path,
                                                                     monkeypatch):
    """Several buckets (map tasks split keys by hash, one reduce task per bucket): the driver holds only repeats."""
    from actors import duplicates as on_ray
    from reasonrec.batch import duplicates

    table = requests_for_split(synthetic_data, "test", "sequential", k=10)
    repeated = pa.concat_tables([table, table.slice(0, 40), table.slice(100, 30)])  # repeats in later shards
    uris = write_requests(repeated, str(tmp_path / "requests"), shard_rows=90)
    monkeypatch.setattr(on_ray, "SHARDS_PER_BUCKET", 2)
    monkeypatch.setattr(on_ray, "SHARDS_PER_TASK", 3)
    found = on_ray.find(uris, ("sequential",), 100)
    assert found == duplicates.find(uris, ("sequential",), 100)
    assert sum(map(len, found.values())) == 70 and -(-len(uris) // 2) > 1


def test_score_refuses_a_bundle_without_the_configured_tool(bundle_uri, tmp_path, capsys):
    config = tmp_path / "score.yaml"
    config.write_text("primary: {sequential: gru4rec}\n")
    assert main(["score", "--requests", str(tmp_path), "--bundle", bundle_uri, "--output", str(tmp_path / "o"),
                 "--config", str(config)]) == 2
    assert "names {'sequential': 'gru4rec'}" in capsys.readouterr().err


def copy_bundle(uri: str, to: str, edit) -> str:
    copy_files(uri, to)
    manifest = storage.read_json(storage.join(to, "manifest.json"))
    edit(manifest)
    storage.write_json(storage.join(to, "manifest.json"), manifest)
    return to


def test_primary_tools_come_from_the_bundle_and_a_task_without_one_is_quarantined(bundle_uri, synthetic_data,
                                                                                 tmp_path):
    """A bundle of SASRec alone, from before bundles recorded their primary tools: sequential requests are answered,
    direct ones are quarantined with the reason, and nothing refuses to start. A recorded choice is the default;
    the config overrides it."""
    from reasonrec.batch.local import LocalPipeline

    def sasrec_alone(manifest):
        for name in ("lightgcn", "dcnv2"):
            manifest["tools"].pop(name)
        manifest.pop("primary")

    only_sasrec = copy_bundle(bundle_uri, str(tmp_path / "sasrec"), sasrec_alone)
    scoring = Scoring.load(only_sasrec, CONFIG)
    scoring.check()
    assert scoring.primary == {"sequential": "sasrec"} and scoring.answered == ("sequential",)
    requests = pa.concat_tables([requests_for_split(synthetic_data, "test", t, k=5).slice(0, 4)
                                 for t in ("sequential", "direct")])
    out = LocalPipeline(scoring)(requests)
    errors = dict(zip(out.column("task").to_pylist(), out.column("error").to_pylist()))
    assert errors["sequential"] is None
    assert errors["direct"] == (f"task: 'direct' is not answered by this job: bundle {only_sasrec} has no primary "
                                "tool for it among ['sasrec'] (ScoreConfig.primary)")

    recorded = copy_bundle(bundle_uri, str(tmp_path / "recorded"),
                           lambda m: m.update(primary={"sequential": "lightgcn", "direct": "sasrec", "ctr": "sasrec"}))
    # A recorded ranking tool never answers ctr: click probabilities come from CTR tools only.
    assert Scoring.load(recorded, CONFIG).primary == {"sequential": "lightgcn", "direct": "sasrec"}
    chosen = Scoring.load(recorded, ScoreConfig(mode="tools-only", primary={"sequential": "sasrec"})).primary
    assert chosen == {"sequential": "sasrec", "direct": "sasrec"}
    assert Scoring.load(bundle_uri, CONFIG).primary["ctr"] == "dcnv2"


@pytest.mark.parametrize("plan", ["tool", "vote"])
def test_ctr_answers_are_the_ctr_tools_click_probabilities(bundle_uri, synthetic_data, plan):
    """A ctr request gets a click probability per candidate: the CTR tool's sigmoid (route low) or the CTR tools'
    mean (the vote); ranking tools never answer it. Committed answers score as ``evaluate --task ctr`` does."""
    from reasonrec.evaluator import evaluate_ctr_bundle

    requests = requests_for_split(synthetic_data, "test", "ctr", k=10)
    out = answer(bundle_uri, requests, PLANNER_ON_CPU, plan=plan)
    assert out.column("error").null_count == out.num_rows == requests.num_rows
    results = commit._results(out, "r")
    assert set(results.column("path").to_pylist()) == {plan}
    assert {tuple(t) for t in results.column("tools").to_pylist()} == {("dcnv2",)}
    ranked = results.column("ranked").to_pylist()
    candidates = dict(zip(requests.column("user_id").to_pylist(), requests.column("candidates").to_pylist()))
    assert all(sorted(x["item_id"] for x in r) == sorted(candidates[u])  # every candidate, once
               for u, r in zip(results.column("user_id").to_pylist(), ranked))
    assert all(0 < x["score"] < 1 for r in ranked for x in r)
    bundle = Bundle(bundle_uri)
    rows = synthetic_data.ctr_set("test")
    with torch.no_grad():
        expected = torch.sigmoid(bundle.load_tool("dcnv2").logits_of(rows.history, rows.items)).numpy()
    want = dict(zip(zip(rows.history.user_ids, synthetic_data.item_vocab.lookup(rows.items)), expected))
    got = {(u, x["item_id"]): x["score"] for u, r in zip(results.column("user_id").to_pylist(), ranked) for x in r}
    assert got.keys() == want.keys()
    np.testing.assert_allclose([got[key] for key in want], list(want.values()), rtol=1e-5, atol=1e-6)
    committed = evaluate_results(results, synthetic_data, "ctr")["metrics"]
    assert committed == pytest.approx(evaluate_ctr_bundle(synthetic_data, bundle, "test")["tools"]["dcnv2"], abs=1e-6)


def test_a_local_ray_without_gpus_refuses_a_cuda_vlm_and_names_the_fix(ray_session):
    """The VLM actors' GPU request comes from config: on a Ray this process started (no autoscaler) and that has no
    GPU, asking for one would wait for ever, so it is an error naming deliberator.device; cpu asks for none."""
    from actors.stages import vlm_resources

    with pytest.raises(ValueError, match=r"set deliberator.device: cpu \(--vlm-device cpu\)"):
        vlm_resources(DeliberatorConfig())
    assert vlm_resources(DeliberatorConfig(device="cpu"))["num_gpus"] == 0
