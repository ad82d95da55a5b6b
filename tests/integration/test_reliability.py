"""Nothing lost (DESIGN.md §3, §7): faults injected into the nightly job on the real stack (Ray, the S3 endpoint on
127.0.0.1 behind a fault-injecting proxy); every input row ends once in results or quarantine."""
import dataclasses
import json
import re
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
from conftest import PLANNER_SCORE, actor_processes
from s3_faults import FaultPlan

from reasonrec import storage
from reasonrec.batch import commit
from reasonrec.batch.config import ScoreConfig
from reasonrec.batch.requests import requests_for_split, write_requests
from reasonrec.data import schemas

ROOT = Path(__file__).resolve().parents[2]
DATE = "2026-11-27"
TOOLS_ONLY = ScoreConfig(mode="tools-only", batch_size=8, horizon_batch_size=8, tool_actors=1)  # many parts


def score(requests: str, output: str, bundle: str, config: ScoreConfig, force: bool = False) -> dict:
    from jobs.nightly_score import NightlyJob, run

    return run(NightlyJob(requests, bundle, output, DATE, force, dataclasses.replace(config)))


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
    return sum("/ledger/" in f for f in storage.list_files(f"{output}/{commit.RUNS}/run_date={DATE}"))


def test_driver_crash_then_rerun_resumes_only_the_missing_work(ray_session, requests_uri, bundle_uri, clean_run,
                                                               tmp_path, caplog):
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

    caplog.set_level("INFO", logger="reasonrec")
    manifest = score(requests_uri, output, bundle_uri, TOOLS_ONLY)
    reused = manifest["resumed"]
    assert reused is not None and 0 < reused["rows_reused"] < 320 and reused["parts_reused"] >= 2
    assert "resuming run" in caplog.text
    results, quarantine = accounted(output, 320)
    assert quarantine.num_rows == 0 and rankings(results) == clean_run
    # one run folder for the date, its manifest only left; the date's folder holds exactly the listed parts
    files = storage.list_files(f"{output}/{commit.RUNS}/run_date={DATE}")
    assert files == [f"run_id={manifest['run_id']}/{commit.MANIFEST}"]
    published = storage.list_files(f"{output}/run_date={DATE}")
    assert sorted(published) == sorted([*(f"{n}.parquet" for n in manifest["results"]), commit.SUCCESS,
                                        commit.MANIFEST])


def test_a_rerun_with_other_settings_starts_afresh(ray_session, requests_uri, bundle_uri, tmp_path):
    output = str(tmp_path / "out")
    run = commit.start(output, DATE, {"requests": "a"})[0]  # an unfinished run of other work
    assert commit.start(output, DATE, {"requests": "a"})[0] == run  # the same work resumes it
    manifest = score(requests_uri, output, bundle_uri, TOOLS_ONLY)
    assert manifest["run_id"] != run.run_id and manifest["resumed"] is None
    accounted(output, 320)


def kill_when_running(kinds: tuple[str, ...], killed: list, stop: threading.Event, after_s: float = 1.0) -> None:
    """SIGKILL one actor of each kind once it has been alive for ``after_s`` (mid-run: its pool has work)."""
    seen: dict = {}
    while len(killed) < len(kinds) and not stop.is_set():
        for kind in kinds:
            pids = actor_processes(kind) if kind not in killed else []
            if pids:
                seen.setdefault(kind, time.time())
                if time.time() - seen[kind] >= after_s:
                    os.kill(pids[0], signal.SIGKILL)
                    killed.append(kind)
        time.sleep(0.1)


def test_killed_tool_and_vlm_actors_are_replaced_and_nothing_is_lost(ray_session, requests_uri, routed_bundle_uri):
    output = "s3://reasonrec-test/reliability/actor-death"
    config = dataclasses.replace(PLANNER_SCORE, batch_size=16, horizon_batch_size=16, vlm_batch_size=8)
    killed, stop = [], threading.Event()
    killer = threading.Thread(target=kill_when_running, args=(("ToolActor", "VLMActor"), killed, stop))
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
    report = json.loads(next(line for line in reversed(done.stdout.splitlines()) if line.startswith("{")))
    print(report)
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


def test_the_row_count_reads_footers_and_never_takes_a_storage_error_for_a_corrupt_shard(s3_proxy):
    """The job's independent count of input rows: a footer it cannot fetch fails the count (after the retries); a
    shard without a footer counts as the one quarantine row it becomes; a footer beyond the first read is fetched."""
    from reasonrec.batch.shards import FOOTER_READ, rows_in_shard

    root = "s3://reasonrec-test/reliability/footers"
    storage.write_parquet(pa.table({"user_id": ["u"] * 10}), f"{root}/good.parquet")
    storage.write_bytes(f"{root}/corrupt.parquet", b"PAR1" + b"\x00" * 64)
    wide = pa.table({f"c{i:04d}": pa.array([i] * 3) for i in range(600)})  # ~600 column chunks: a large footer
    storage.write_parquet(wide, f"{root}/wide.parquet")
    assert int.from_bytes(storage.read_tail(f"{root}/wide.parquet", 8)[:4], "little") > FOOTER_READ
    assert [rows_in_shard(f"{root}/{name}.parquet") for name in ("good", "corrupt", "wide")] == [10, 1, 3]

    s3_proxy.plan = FaultPlan(kinds=(500,), methods=("GET",), path_contains="/footers/good")
    try:
        with pytest.raises(OSError):
            rows_in_shard(f"{root}/good.parquet")
    finally:
        s3_proxy.plan = None


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


def test_a_run_stopped_by_a_storage_outage_resumes_without_duplicates(ray_session, s3_proxy, synthetic_data,
                                                                      bundle_uri):
    """The outage starts after a few writes; the rerun resumes the unfinished run. The last shard repeats the
    first one's requests: whichever of them the first attempt answered, each is answered once."""
    root = "s3://reasonrec-test/reliability/outage"
    requests, output = f"{root}/requests", f"{root}/results"
    good = requests_for_split(synthetic_data, "test", "sequential", k=10).slice(0, 160)
    write_requests(good, requests, shard_rows=16)
    storage.write_parquet(good.slice(0, 16), f"{requests}/part-00010.parquet")
    s3_proxy.plan = FaultPlan(kinds=(500,), methods=("PUT", "POST"), path_contains="/outage/results/", after=40)
    try:
        with pytest.raises(RuntimeError, match="storage"):
            score(requests, output, bundle_uri, TOOLS_ONLY)
    finally:
        s3_proxy.plan = None
    assert commit.committed_run(output, DATE) is None and ledger_entries(output) >= 1
    manifest = score(requests, output, bundle_uri, TOOLS_ONLY)
    assert manifest["resumed"]["rows_reused"] > 0
    results, quarantine = accounted(output, 176)
    assert results.num_rows == 160 and quarantine.num_rows == 16
    assert all(r.startswith("duplicate: ") for r in quarantine.column("reason").to_pylist())


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


def test_credentials_never_reach_outputs_logs_or_traces(ray_session, requests_uri, bundle_uri, capfd, caplog):
    output = "s3://reasonrec-test/reliability/secrets"
    caplog.set_level("DEBUG", logger="reasonrec")
    score(requests_uri, output, bundle_uri, TOOLS_ONLY)
    secrets = [os.environ["AWS_ACCESS_KEY_ID"].encode(), os.environ["AWS_SECRET_ACCESS_KEY"].encode()]
    texts = {"job log": caplog.text.encode(), "captured output": "".join(capfd.readouterr()).encode()}
    for rel in storage.list_files(output):  # results, quarantine, manifest (with the job's settings)
        texts[rel] = storage.read_bytes(f"{output}/{rel}")
    results = commit.read_committed(output, DATE)
    texts["traces"] = "\n".join(results.column("trace").to_pylist()).encode()
    logs = Path(ray_session._private.worker._global_node.get_session_dir_path()) / "logs"
    for path in logs.rglob("*"):
        if path.is_file():
            texts[str(path)] = path.read_bytes()
    assert len(texts) > 10 and any(name.endswith(commit.MANIFEST) for name in texts)
    leaked = [name for name, data in texts.items() if any(secret in data for secret in secrets)]
    assert not leaked, leaked


UNSAFE_LOADS = re.compile(r"pickle\.loads?\(|joblib\.load\(|allow_pickle\s*=\s*True"
                          r"|torch\.load\((?![^)]*weights_only=True)")


def test_no_code_path_unpickles_and_every_bundle_file_is_checksummed(bundle_uri):
    from reasonrec.bundle import Bundle

    sources = [p for d in ("reasonrec", "actors", "jobs") for p in (ROOT / d).rglob("*.py")]
    unsafe = [f"{p.relative_to(ROOT)}:{i}" for p in sources
              for i, line in enumerate(p.read_text().splitlines(), 1) if UNSAFE_LOADS.search(line)]
    assert not unsafe, unsafe
    bundle = Bundle(bundle_uri)
    stored = set(storage.list_files(bundle_uri)) - {"manifest.json"}
    assert stored == set(bundle.manifest["files"])
    assert not any(rel.endswith((".pt", ".pkl", ".pickle", ".bin")) for rel in stored)


def test_unreadable_and_huge_item_images_quarantine_the_rows_that_show_them(vlm_bundle_uri, synthetic_data,
                                                                            tmp_path):
    """The VLM stage checks every image a prompt shows; a row whose prompt needs a broken one is quarantined with
    the image named, the others are deliberated."""
    from PIL import Image

    from reasonrec.batch.config import ScoreConfig
    from reasonrec.batch.context import Scoring
    from reasonrec.batch.horizon_stage import HorizonStage
    from reasonrec.batch.shards import conform
    from reasonrec.batch.tool_stage import ToolStage
    from reasonrec.batch.vlm_stage import VLMStage
    from reasonrec.vlm.backends import MAX_IMAGE_PIXELS

    config = ScoreConfig(mode="vlm-only", shortlist=8, tool_actors=1, deliberator=PLANNER_SCORE.deliberator)
    scoring = Scoring.load(vlm_bundle_uri, config)
    requests = conform(requests_for_split(synthetic_data, "test", "sequential", k=5).slice(0, 6), "images")
    rows = ToolStage(scoring)(HorizonStage(scoring)(requests))
    stage = VLMStage(scoring)
    prompts, _ = stage.prompts.rows(rows, config.shortlist)
    spared = set(prompts[0]["images"])  # row 0 must still be answered
    broken = next(uri for uri in prompts[1]["images"] if uri not in spared)
    huge = next(uri for uri in prompts[3]["images"] if uri not in spared | {broken})
    originals = {uri: storage.read_bytes(uri) for uri in (broken, huge)}
    try:
        storage.write_bytes(broken, b"\xff\xd8\xff\xe0 not a jpeg")
        side = int(MAX_IMAGE_PIXELS ** 0.5) + 1
        big = tmp_path / "big.png"
        Image.new("L", (side, side)).save(big)  # a small file with too many pixels (a decompression bomb's shape)
        storage.write_bytes(huge, big.read_bytes())
        out = stage(rows)
    finally:
        for uri, data in originals.items():
            storage.write_bytes(uri, data)
    errors = out.column("error").to_pylist()
    assert errors[1].startswith("images: image") and "unreadable" in errors[1]
    assert errors[3].startswith("images: image") and "pixels" in errors[3]
    shown = [set(p["images"]) for p in prompts]
    for i, error in enumerate(errors):
        assert (error is not None) == bool(shown[i] & {broken, huge}), (i, error)
    answered = [i for i, e in enumerate(errors) if e is None]
    assert answered and not np.isnan(out.column("vlm_confidence").to_numpy(zero_copy_only=False)[answered]).any()


def first_checkpoint_state(run: Path, timeout_s: float = 300) -> dict:
    """The loop state of the first checkpoint Ray Train has registered under ``run``: a reported checkpoint counts
    once the controller has recorded it (its snapshot file, polled every 2 s); files alone may not yet. Only the
    earliest is read (checkpoint folders are named by time): a later one may still be being written."""
    import torch

    deadline = time.time() + timeout_s
    while time.time() < deadline:
        if any(run.rglob("checkpoint_manager_snapshot.json")):
            first = min(run.rglob("state.pt"), key=lambda path: path.parent.name)
            return torch.load(first, weights_only=True)
        time.sleep(0.05)
    raise TimeoutError(f"no checkpoint under {run} in {timeout_s}s")


def test_a_fine_tune_whose_worker_dies_resumes_from_its_checkpoint(ray_session, bundle_uri, synthetic_data, tmp_path,
                                                                    monkeypatch):
    """The Ray Train worker is SIGKILLed after its first checkpoint: the run restarts the worker, which resumes from
    the latest checkpoint (not step 0), and the committed loss record continues that checkpoint's, step for step.
    The bundle is given as a relative path (as `make demo` does): the worker, whose working directory differs,
    still reads it for the held-out evaluation."""
    from reasonrec.train.vlm import finetune_vlm
    from reasonrec.vlm.build import TinyVLMConfig
    from reasonrec.vlm.examples import ExamplesConfig
    from reasonrec.vlm.finetune import FinetuneConfig

    monkeypatch.chdir(tmp_path)
    bundle = "bundle"
    storage.upload_dir(storage.download_dir(bundle_uri, tmp_path / "tools"), bundle)
    steps, every = 120, 10
    config = FinetuneConfig(steps=steps, batch_size=2, checkpoint_every=every, max_failures=1, eval_users=8,
                            log_every=every, storage_path=str(tmp_path / "run"), tiny=TinyVLMConfig(vocab_size=1024),
                            examples=ExamplesConfig(candidates=4, per_user=1, max_history=3))
    out: dict = {}
    training = threading.Thread(target=lambda: out.update(manifest=finetune_vlm(synthetic_data.uri, bundle, config)))
    training.start()
    try:
        first = first_checkpoint_state(tmp_path / "run")
        (pid,) = actor_processes("RayTrainWorker")
        os.kill(pid, signal.SIGKILL)
    finally:
        training.join(timeout=600)
    summary = out["manifest"]["vlm"]["training"]
    assert first["step"] == every and first["stage"] == "rvit"
    (resumed,) = summary["resumed_from"]
    assert every <= resumed < steps and resumed % every == 0  # the latest checkpoint when the worker died
    assert len(summary["losses"]) == steps  # no step lost, none counted twice
    assert summary["losses"][:every] == pytest.approx(first["losses"], abs=1e-5)
    assert out["manifest"]["vlm"]["metrics"]["users"] == 8
