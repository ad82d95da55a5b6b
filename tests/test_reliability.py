"""Nothing lost (DESIGN.md §3, §7): faults injected into the nightly job on the real stack (Ray, the S3 endpoint on
127.0.0.1 behind a fault-injecting proxy); every input row ends once in results or quarantine."""
import argparse
import dataclasses
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from conftest import PLANNER_SCORE
from s3_faults import FaultPlan

from reasonrec import storage
from reasonrec.batch import commit
from reasonrec.batch.config import ScoreConfig
from reasonrec.batch.requests import requests_for_split, write_requests
from reasonrec.data import schemas

ROOT = Path(__file__).resolve().parents[1]
DATE = "2026-11-27"
TOOLS_ONLY = ScoreConfig(mode="tools-only", batch_size=8, horizon_batch_size=8)  # small blocks: many parts


def score(requests: str, output: str, bundle: str, config: ScoreConfig, force: bool = False, log=None) -> dict:
    from jobs.nightly_score import run

    return run(argparse.Namespace(requests=requests, bundle=bundle, output=output, run_date=DATE, force=force),
               dataclasses.replace(config), log=log or (lambda *_: None))


def accounted(output: str, rows_in: int) -> tuple[pa.Table, pa.Table]:
    """The committed run holds every input row once: results + quarantine = rows in, no (user, task) twice."""
    manifest = commit.committed_run(output, DATE)
    results = commit.read_committed(output, DATE)
    quarantine = commit.read_committed(output, DATE, "quarantine")
    assert manifest["rows_in"] == rows_in == results.num_rows + quarantine.num_rows
    assert (manifest["rows_out"], manifest["rows_quarantined"]) == (results.num_rows, quarantine.num_rows)
    assert not results.select(["user_id", "task"]).to_pandas().duplicated().any()
    return results, quarantine


def rankings(results: pa.Table) -> dict:
    return {(r["user_id"], r["task"]): [x["item_id"] for x in r["ranked"]] for r in results.to_pylist()}


@pytest.fixture(scope="module")
def requests_uri(synthetic_data):
    table = requests_for_split(synthetic_data, "test", "sequential", k=10).slice(0, 320)
    uri = "s3://reasonrec-test/reliability/requests"
    write_requests(table, uri, shard_rows=16)
    return uri


@pytest.fixture(scope="module")
def clean_run(ray_session, requests_uri, bundle_uri):
    """The same requests scored without faults: what every faulty run must reproduce."""
    output = "s3://reasonrec-test/reliability/clean"
    score(requests_uri, output, bundle_uri, TOOLS_ONLY)
    results, _ = accounted(output, 320)
    return rankings(results)


def ledger_entries(output: str) -> int:
    return sum("/ledger/" in f for f in storage.list_files(f"{output}/run_date={DATE}"))


def test_driver_crash_then_rerun_resumes_only_the_missing_work(ray_session, requests_uri, bundle_uri, clean_run,
                                                               tmp_path):
    output = "s3://reasonrec-test/reliability/crash"
    settings = tmp_path / "score.yaml"
    settings.write_text(f"horizon_batch_size: {TOOLS_ONLY.horizon_batch_size}\n")
    env = {**os.environ, "RAY_ADDRESS": ray_session.get_runtime_context().gcs_address,
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    driver = subprocess.Popen(
        [sys.executable, "jobs/nightly_score.py", "--requests", requests_uri, "--bundle", bundle_uri, "--output",
         output, "--run-date", DATE, "--mode", "tools-only", "--batch-size", str(TOOLS_ONLY.batch_size),
         "--config", str(settings)],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while ledger_entries(output) < 2 and driver.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    driver.send_signal(signal.SIGKILL)
    driver.wait()
    assert commit.committed_run(output, DATE) is None, "the driver finished before it could be killed"
    assert ledger_entries(output) >= 2

    lines = []
    manifest = score(requests_uri, output, bundle_uri, TOOLS_ONLY, log=lines.append)
    reused = manifest["resumed"]
    assert reused is not None and 0 < reused["rows_reused"] < 320 and reused["parts_reused"] >= 2
    assert any("resuming run" in line for line in lines)
    results, quarantine = accounted(output, 320)
    assert quarantine.num_rows == 0 and rankings(results) == clean_run
    # one run folder for the date, holding only what its manifest lists
    files = storage.list_files(f"{output}/run_date={DATE}")
    assert {f.split("/")[0] for f in files} == {f"run_id={manifest['run_id']}"}
    assert not any("/ledger/" in f or f.endswith(commit.RUN_HEADER) for f in files)


def test_a_rerun_with_other_settings_starts_afresh(ray_session, requests_uri, bundle_uri, tmp_path):
    output = str(tmp_path / "out")
    run = commit.start(output, DATE, {"requests": "a"})[0]  # an unfinished run of other work
    assert commit.start(output, DATE, {"requests": "a"})[0] == run  # the same work resumes it
    manifest = score(requests_uri, output, bundle_uri, TOOLS_ONLY)
    assert manifest["run_id"] != run.run_id and manifest["resumed"] is None
    accounted(output, 320)


def kill_when_running(output: str, kinds: tuple[str, ...], killed: list, stop: threading.Event) -> None:
    """Kill (SIGKILL) one live actor of each kind once the job has written its first block."""
    from ray.util.state import list_actors

    while not stop.is_set() and ledger_entries(output) < 1:
        time.sleep(0.1)
    pending = set(kinds)
    while pending and not stop.is_set():
        for actor in list_actors(filters=[("state", "=", "ALIVE")], detail=True, limit=1000):
            kind = next((k for k in pending if k in actor.class_name), None)
            if kind and actor.pid:
                os.kill(actor.pid, signal.SIGKILL)
                killed.append(kind)
                pending.discard(kind)
        time.sleep(0.1)


def test_killed_tool_and_vlm_actors_are_replaced_and_nothing_is_lost(ray_session, requests_uri, routed_bundle_uri):
    output = "s3://reasonrec-test/reliability/actor-death"
    config = dataclasses.replace(PLANNER_SCORE, batch_size=16, horizon_batch_size=16, vlm_batch_size=8)
    killed, stop = [], threading.Event()
    killer = threading.Thread(target=kill_when_running, args=(output, ("ToolActor", "VLMActor"), killed, stop))
    killer.start()
    try:
        manifest = score(requests_uri, output, routed_bundle_uri, config)
    finally:
        stop.set()
        killer.join()
    assert sorted(killed) == ["ToolActor", "VLMActor"]
    assert manifest["vlm_calls_total"] > 0
    results, quarantine = accounted(output, 320)
    assert quarantine.num_rows == 0


def test_node_loss_mid_run_loses_nothing(bundle_uri, requests_uri):
    """A separate process: its own three-node ``ray.cluster_utils.Cluster``; the worker running the tool actor is
    removed once the job has written its first block."""
    output = "s3://reasonrec-test/reliability/node-loss"
    done = subprocess.run([sys.executable, "tests/scripts/node_loss_job.py", bundle_uri, requests_uri, output, DATE],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["removed"] and report["alive_nodes_after"] == 2
    accounted(output, 320)


def test_transient_storage_faults_are_retried(ray_session, s3_proxy, requests_uri, bundle_uri, clean_run):
    output = "s3://reasonrec-test/reliability/flaky"
    s3_proxy.plan = FaultPlan(kinds=(503, 500, "reset"), rate=0.08, limit=24, seed=7)
    try:
        score(requests_uri, output, bundle_uri, TOOLS_ONLY)
    finally:
        injected, s3_proxy.plan = s3_proxy.plan.injected, None
    assert sum(injected.values()) >= 10 and set(injected) == {503, 500, "reset"}, injected
    results, _ = accounted(output, 320)
    assert rankings(results) == clean_run


def test_persistent_storage_failure_fails_the_job_and_commits_nothing(ray_session, s3_proxy, requests_uri,
                                                                     bundle_uri):
    from jobs.nightly_score import main

    output = "s3://reasonrec-test/reliability/down"
    s3_proxy.plan = FaultPlan(kinds=(500,), methods=("PUT", "POST"), path_contains="/part-")  # result parts
    try:
        with pytest.raises(RuntimeError, match="storage") as failure:
            score(requests_uri, output, bundle_uri, TOOLS_ONLY)
    finally:
        s3_proxy.plan = None
    message = str(failure.value)
    assert "InternalError" in message or "internal error" in message.lower()
    assert "no manifest" in message and "rerun" in message
    assert commit.committed_run(output, DATE) is None
    assert not any(f.endswith(commit.MANIFEST) for f in storage.list_files(output))
    assert main  # the command line turns the RuntimeError into exit status 2 with the same message


BAD_KINDS = ("null user_id", "empty user_id", "padded user_id", "unknown task", "k out of range", "null k",
             "unknown candidate", "no candidates", "oversized history", "duplicate", "all null")
FIELD_OF = {"null user_id": "user_id", "empty user_id": "user_id", "padded user_id": "user_id",
            "unknown task": "task", "k out of range": "k", "null k": "k", "unknown candidate": "candidates",
            "no candidates": "candidates", "oversized history": "history", "duplicate": "duplicate",
            "all null": "user_id"}


def malformed_rows(good: list[dict], items: list[str], rng: np.random.Generator, n: int) -> tuple[list, list]:
    """``n`` rows, each broken in one random way (seeded), and the kind of each."""
    rows, kinds = [], []
    for i in range(n):
        kind = BAD_KINDS[rng.integers(len(BAD_KINDS))]
        row = dict(good[rng.integers(len(good))], user_id=f"fuzz-{i}")
        if kind == "null user_id":
            row["user_id"] = None
        elif kind == "empty user_id":
            row["user_id"] = ""
        elif kind == "padded user_id":
            row["user_id"] = f" fuzz-{i}\t"
        elif kind == "unknown task":
            row["task"] = str(rng.choice(["explain!", "", "SEQUENTIAL", "rank"]))
        elif kind == "k out of range":
            row["k"] = int(rng.choice([0, -3, 101, 2**31 - 1]))
        elif kind == "null k":
            row["k"] = None
        elif kind == "unknown candidate":
            row.update(task="direct", candidates=[items[0], f"no-such-item-{i}"])
        elif kind == "no candidates":
            row.update(task="direct", candidates=[])
        elif kind == "oversized history":
            row["history"] = list(rng.choice(items, 61))
        elif kind == "duplicate":
            row = dict(good[rng.integers(len(good))])  # the same (user_id, task) as a good row before it
        elif kind == "all null":
            row = {name: None for name in schemas.REQUESTS.names}
        rows.append(row)
        kinds.append(kind)
    return rows, kinds


def test_bad_input_at_scale_is_quarantined_row_by_row(ray_session, synthetic_data, bundle_uri):
    """Seeded fuzz: hundreds of rows broken at random, a corrupt shard, a truncated one, one with a wrong schema;
    each bad row comes out in quarantine with a reason naming its field, each good row in results, once."""
    root = "s3://reasonrec-test/reliability/fuzz"
    requests, output = f"{root}/requests", f"{root}/results"
    good = requests_for_split(synthetic_data, "test", "sequential", k=10).slice(0, 120)
    items = list(synthetic_data.item_vocab.ids)
    rows, kinds = malformed_rows(good.to_pylist(), items, np.random.default_rng(11), 400)
    write_requests(good, requests, shard_rows=60)  # part-00000, part-00001: every duplicate's first copy
    storage.write_parquet(pa.Table.from_pylist(rows, schema=schemas.REQUESTS), f"{requests}/part-00002.parquet")
    valid_bytes = storage.parquet_bytes(good.slice(0, 30))
    storage.write_bytes(f"{requests}/part-00003.parquet", bytes(np.random.default_rng(3).integers(0, 256, 900,
                                                                                                    np.uint8)))
    storage.write_bytes(f"{requests}/part-00004.parquet", valid_bytes[: len(valid_bytes) // 2])
    wrong = good.slice(0, 9).set_column(good.schema.get_field_index("k"), "k", pa.array(["ten"] * 9))
    storage.write_parquet(wrong, f"{requests}/part-00005.parquet")

    config = dataclasses.replace(TOOLS_ONLY, max_history=60)
    manifest = score(requests, output, bundle_uri, config)
    rows_in = 120 + 400 + 1 + 1 + 9
    results, quarantine = accounted(output, rows_in)
    assert results.num_rows == 120 and manifest["rows_quarantined"] == 400 + 1 + 1 + 9

    reasons = {}
    for r in quarantine.to_pylist():
        reasons[r["source"]] = r["reason"]
    shard = f"{requests}/part-00002.parquet"
    for i, kind in enumerate(kinds):
        reason = reasons[f"{shard}#{i}"]
        assert reason.startswith(FIELD_OF[kind]), (kind, reason)
    assert reasons[f"{requests}/part-00003.parquet"].startswith("shard unreadable")
    assert sum(r.startswith("shard unreadable") for r in reasons.values()) == 2
    assert sum("k" in r and f"{requests}/part-00005.parquet" in s for s, r in reasons.items()) == 9
    assert set(kinds) == set(BAD_KINDS)  # the seed exercises every kind
