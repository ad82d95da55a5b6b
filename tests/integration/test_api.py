"""The Python API as a notebook uses it: typed configs, no argparse, end to end on a small synthetic catalogue."""
import subprocess
import sys

import duckdb
import pyarrow.dataset as pads
import pytest


@pytest.fixture(scope="module")
def notebook(ray_session, tmp_path_factory):
    """What a notebook does, cell by cell: the verbs' returns are kept for the tests below."""
    import reasonrec
    from reasonrec import ScoreConfig, SyntheticConfig, TrainToolsConfig

    root = tmp_path_factory.mktemp("notebook")
    raw, data, bundle, requests, output = (str(root / p) for p in ("raw", "data", "bundle", "requests", "results"))
    reasonrec.synth(raw, SyntheticConfig(users=300, items=120, seed=5))
    meta = reasonrec.prepare(raw, "parquet", data)
    # A bundle of SASRec and BPR-MF: no LightGCN, which answered direct requests by default before bundles recorded
    # their own primary tools.
    tools = TrainToolsConfig(tools=("sasrec", "bprmf"), cpus_per_worker=0.5, overrides={
        "sasrec": {"epochs": 3, "batch_size": 64, "lr": 3e-3}, "bprmf": {"epochs": 5, "batch_size": 256}})
    trained = reasonrec.train_tools(data, bundle, tools)
    table = reasonrec.make_requests(data, tasks=("sequential", "direct"), users=40)
    reasonrec.write_requests(table, requests, shard_rows=30)
    config = ScoreConfig(mode="tools-only", batch_size=32, tool_actors=1)
    manifest = reasonrec.score(requests, bundle, output, config, run_date="2026-12-01")
    return {"meta": meta, "trained": trained, "requests": table, "manifest": manifest, "data": data,
            "bundle": bundle, "output": output, "config": config}


def test_every_verb_returns_what_the_next_needs(notebook):
    assert notebook["meta"]["users"] == 300 and notebook["trained"]["tools"].keys() == {"sasrec", "bprmf"}
    primary = notebook["trained"]["primary"]
    assert set(primary) == {"sequential", "direct"} and set(primary.values()) <= {"sasrec", "bprmf"}
    figures = notebook["trained"]["validation"]
    best = max(figures["sequential"], key=lambda name: figures["sequential"][name]["NDCG@10"])
    assert primary["sequential"] == best
    manifest = notebook["manifest"]
    assert manifest["rows_in"] == notebook["requests"].num_rows == manifest["rows_out"] == 80
    assert manifest["primary"] == primary and manifest["tasks"] == {"sequential": 40, "direct": 40}


def test_committed_results_read_the_same_everywhere(notebook):
    import reasonrec
    from reasonrec.data import schemas

    results = reasonrec.read_results(notebook["output"])
    assert results.num_rows == 80 and reasonrec.read_quarantine(notebook["output"]).num_rows == 0
    key = ["user_id", "task"]
    expected = results.select(schemas.RESULTS.names).sort_by([(k, "ascending") for k in key])
    plain = pads.dataset(notebook["output"], format="parquet", partitioning="hive").to_table()
    assert plain.drop_columns(["run_date"]).sort_by([(k, "ascending") for k in key]).equals(expected)
    rows = duckdb.sql(f"SELECT user_id, task FROM read_parquet('{notebook['output']}') ORDER BY user_id, task")
    assert rows.fetchall() == list(zip(*(expected.column(k).to_pylist() for k in key)))


def test_evaluate_agrees_with_the_bundle_and_the_recommender_with_the_job(notebook):
    import reasonrec

    for task in ("sequential", "direct"):
        committed = reasonrec.evaluate(notebook["data"], task, results=notebook["output"])
        assert committed["results"] == 40 and 0 <= committed["metrics"]["HR@5"] <= 1
    tools = reasonrec.evaluate(notebook["data"], "direct", bundle=notebook["bundle"])
    assert set(tools["tools"]) == {"sasrec", "bprmf"} and "majority_vote" in tools["baselines"]
    results = {(r["user_id"], r["task"]): r for r in reasonrec.read_results(notebook["output"]).to_pylist()}
    recommender = reasonrec.Recommender(notebook["bundle"], notebook["config"])
    for request in notebook["requests"].slice(0, 5).to_pylist():  # sequential rows, history as in the job
        answer = recommender.recommend({"user_id": request["user_id"], "history": request["history"], "k": 10})
        want = results[(request["user_id"], "sequential")]
        assert [x["item_id"] for x in answer["items"]] == [x["item_id"] for x in want["ranked"]]
        assert answer["path"] == want["path"] == "vote"


def test_the_library_is_quiet_unless_asked():
    code = ("import logging, reasonrec, reasonrec.batch.job\n"
            "logging.getLogger('reasonrec.batch.job').warning('not shown')\n"
            "logging.getLogger('reasonrec.batch.job').info('not shown')\n"
            "from reasonrec import logs\nlogs.console()\n"
            "logging.getLogger('reasonrec.batch.job').info('shown')\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout == "shown\n" and "not shown" not in done.stderr


def test_import_reasonrec_stays_light():
    code = "import sys, reasonrec; print(sorted(m for m in ('torch', 'ray') if m in sys.modules))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.stdout.strip() == "[]", done.stdout + done.stderr
