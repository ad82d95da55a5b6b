"""Run the nightly job (planner mode) on a local autoscaling cluster whose node types are cluster/aws.yaml's, and
print, as JSON, how the GPU group scaled and where each kind of actor ran. A separate process: the test session
has its own Ray.

    python tests/scripts/autoscaling_job.py BUNDLE_URI REQUESTS_URI OUTPUT_URI

The cluster is Ray's own fake autoscaler, the one ``ray.cluster_utils.AutoscalingCluster`` starts: a head started
with ``RAY_FAKE_CLUSTER=1`` and an autoscaling config whose provider is ``fake_multinode``, which launches every
worker node as a raylet on this machine with the resources its node type advertises (a fake ``GPU: 1`` for the GPU
type). AutoscalingCluster itself is not used: its base config (fake_multi_node/example.yaml) is not in Ray's wheel,
and its start and shutdown run ``ray stop --force``, which would kill every Ray on the machine (the test session's
too). So this starts the same head with its own temp dir and ports and stops only its own processes.

From cluster/aws.yaml: the head's resources (``CPU: 0``: it schedules nothing), each worker type's name, resources
(``cpu_worker: 100``; ``GPU: 1``), ``min_workers`` and ``upscaling_speed``. Set here, for one 2-core machine: each
type's CPUs (an AWS node reports its instance's), at most one node per type, a small object store, and an idle
timeout of 6 s instead of 10 minutes, so that the GPU type's scale-down is seen within the test.
"""
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
CPUS = {"cpu_worker": 2, "gpu_worker": 1}
OBJECT_STORE = 200 * 2**20
IDLE_TIMEOUT_MINUTES = 0.1


def node_types(cluster_yaml: Path) -> dict:
    """The autoscaling config of the fake cluster, from the deployed YAML's node types."""
    deployed = yaml.safe_load(cluster_yaml.read_text())
    types = deployed["available_node_types"]
    head = types[deployed["head_node_type"]]
    workers = {name: {"resources": {**spec.get("resources", {}), "CPU": CPUS[name],
                                    "object_store_memory": OBJECT_STORE},
                      "node_config": {}, "min_workers": spec.get("min_workers", 0),
                      "max_workers": min(spec.get("max_workers", 1), 1)}
               for name, spec in types.items() if name != deployed["head_node_type"]}
    return {"head": dict(head.get("resources", {})), "workers": workers,
            "upscaling_speed": deployed.get("upscaling_speed", 1.0)}


def autoscaling_config(types: dict, gcs_address: str) -> dict:
    """fake_multi_node/example.yaml's shape (the provider launches nodes in-process; nothing to set up on them)."""
    empty = {key: [] for key in ("initialization_commands", "setup_commands", "head_setup_commands",
                                 "worker_setup_commands", "head_start_ray_commands", "worker_start_ray_commands",
                                 "cluster_synced_files", "rsync_exclude", "rsync_filter")}
    return {
        "cluster_name": "reasonrec-fake", "max_workers": sum(t["max_workers"] for t in types["workers"].values()),
        "provider": {"type": "fake_multinode", "use_node_id_as_ip": True, "disable_node_updaters": True,
                     "disable_launch_config_check": True, "gcs_address": gcs_address},
        "available_node_types": {**types["workers"], "ray.head.default": {
            "resources": {k: v for k, v in types["head"].items() if k != "CPU"}, "node_config": {},
            "max_workers": 0}},
        "head_node_type": "ray.head.default", "auth": {}, "docker": {}, "file_mounts": {},
        "file_mounts_sync_continuously": False, "upscaling_speed": types["upscaling_speed"],
        "idle_timeout_minutes": IDLE_TIMEOUT_MINUTES, **empty,
    }


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_head(types: dict, temp_dir: str) -> tuple[subprocess.Popen, str]:
    from ray._private.services import get_node_ip_address

    port = free_port()
    address = f"{get_node_ip_address()}:{port}"
    config = Path(temp_dir, "autoscaling.json")
    config.write_text(json.dumps(autoscaling_config(types, address)))
    ray = str(Path(sys.executable).with_name("ray"))
    head = subprocess.Popen(
        [ray, "start", "--head", "--block", f"--port={port}", f"--num-cpus={types['head'].get('CPU', 0)}",
         f"--autoscaling-config={config}", f"--temp-dir={temp_dir}", "--disable-usage-stats",
         f"--object-store-memory={OBJECT_STORE}", f"--dashboard-port={free_port()}",
         # The test session's own Ray already holds the default agent ports.
         f"--dashboard-agent-listen-port={free_port()}", f"--dashboard-agent-grpc-port={free_port()}",
         f"--metrics-export-port={free_port()}", f"--ray-client-server-port={free_port()}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        env={**os.environ, "RAY_FAKE_CLUSTER": "1", "AUTOSCALER_UPDATE_INTERVAL_S": "1"})
    return head, address


def stop(head: subprocess.Popen, temp_dir: str) -> None:
    """This cluster's processes only: the head's process group, then anything still running from its temp dir
    (the fake nodes' raylets and workers)."""
    import psutil

    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(head.pid, sig)
        except ProcessLookupError:
            break
        time.sleep(2)
    for process in psutil.process_iter(["cmdline"]):
        if any(temp_dir in part for part in process.info["cmdline"] or ()):
            process.kill()


def node_type(node: dict, workers: dict) -> str:
    resources = node["Resources"]
    for name, spec in workers.items():
        if all(k in resources for k in spec["resources"] if k not in ("CPU", "object_store_memory")):
            return name
    return "head"


def alive(workers: dict) -> dict:
    import ray

    counts = defaultdict(int)
    for node in ray.nodes():
        if node["Alive"]:
            counts[node_type(node, workers)] += 1
    return counts


def wait_until(condition, timeout_s: float, what: str) -> float:
    start = time.time()
    while not condition():
        if time.time() - start > timeout_s:
            raise TimeoutError(f"{what}: not within {timeout_s}s")
        time.sleep(0.5)
    return time.time() - start


def main() -> None:
    import ray
    from ray.util.state import list_actors

    from jobs.nightly_score import NightlyJob, run
    from reasonrec.batch.config import ScoreConfig
    from reasonrec.vlm.deliberator import DeliberatorConfig

    bundle, requests, output = sys.argv[1:4]
    types = node_types(REPO / "cluster" / "aws.yaml")
    workers = types["workers"]
    temp_dir = tempfile.mkdtemp(prefix="rr-as-")  # short: Ray's unix socket paths must stay < 108 bytes
    head, address = start_head(types, temp_dir)
    timeline, done = [], threading.Event()
    try:
        wait_until(lambda: subprocess.run([str(Path(sys.executable).with_name("ray")), "status",
                                           f"--address={address}"], capture_output=True).returncode == 0,
                   120, "the head")
        ray.init(address=address, log_to_driver=False)
        min_up = wait_until(lambda: all(alive(workers)[name] >= spec["min_workers"]
                                        for name, spec in workers.items()), 120, "min_workers")
        before = dict(alive(workers))

        def watch():
            while not done.is_set():
                timeline.append(dict(alive(workers)))
                time.sleep(0.5)

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        # The deployed config's resource requests: the VLM actor's GPU from deliberator.device (cuda), the CPU
        # actors' cpu_worker resource (reasonrec/configs/cluster_score.yaml).
        config = ScoreConfig(batch_size=64, shortlist=8, mode="planner", tool_actors=1,
                             cpu_actor_resources={"cpu_worker": 0.01},
                             deliberator=DeliberatorConfig(backend="transformers", batch_size=16,
                                                           num_gpus=float(os.environ.get("VLM_GPUS", "1"))))
        start = time.time()
        manifest = run(NightlyJob(requests, bundle, output, "2026-12-04", force=True, score=config))
        job_seconds = time.time() - start
        placed = defaultdict(set)
        by_id = {n["NodeID"]: node_type(n, workers) for n in ray.nodes()}
        for actor in list_actors(address=address, detail=True, limit=10_000):
            for kind in ("HorizonActor", "ToolActor", "VLMActor", "PlannerActor"):
                if kind in actor.class_name:
                    placed[kind].add(by_id.get(actor.node_id, "unknown"))
        scale_down = wait_until(lambda: alive(workers)["gpu_worker"] == 0, 180, "the GPU type's scale-down")
        done.set()
        watcher.join()
        print(json.dumps({
            "node_types": {name: spec["resources"] for name, spec in workers.items()},
            "min_workers": {name: spec["min_workers"] for name, spec in workers.items()},
            "head": types["head"], "before": before, "min_workers_up_s": round(min_up, 1),
            "gpu_peak": max((t.get("gpu_worker", 0) for t in timeline), default=0),
            "after": dict(alive(workers)), "scale_down_s": round(scale_down, 1), "job_s": round(job_seconds, 1),
            "placed": {k: sorted(v) for k, v in placed.items()},
            "rows_out": manifest["rows_out"], "vlm_calls": manifest["vlm_calls_total"],
        }))
    finally:
        done.set()
        ray.shutdown()
        stop(head, temp_dir)


if __name__ == "__main__":
    main()
