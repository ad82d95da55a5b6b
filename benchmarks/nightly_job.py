"""Throughput and peak memory of the nightly job vs the same scoring called directly, measured in the same run.

    python benchmarks/nightly_job.py [--data /tmp/rr/beauty] [--bundle /tmp/rr/beauty-bundle] [--task sequential]
                                     [--scales 1,2] [--batch-size N] [--tool-actors N]

For each scale s, the requests are every evaluated user of the test split, repeated s times, in 5,000-row shards on
local disk (each copy's users with fresh ids), scored in mode tools-only (the tools path; benchmarks/planner_job.py
measures the VLM routes). "direct" reads the same shards and runs the same HorizonStage + ToolStage + PlannerStage
in this process, batch by batch; "job" is the whole Ray Data job (plan, actor start-up and bundle loads, streaming,
commit) on an already started local Ray. Their ratio is what Ray costs. Peak memory is the proportional set size
(PSS, shared pages split between processes) of this process and all its descendants (the local Ray cluster), sampled
every 2 s, minus the same sum just before the job: streaming means doubling the requests must not double it.
"""
from __future__ import annotations

import argparse
import os
import tempfile
import threading
import time
from pathlib import Path

import pyarrow as pa
import torch


def descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, []))
    return out


def pss_bytes(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    total += int(line.split()[1]) * 1024
                    break
        except OSError:
            pass
    return total


def cpu_seconds(pid: int) -> tuple[str, float] | None:
    """A process's title (Ray names its workers by what they run, e.g. ``ray::MapWorker(MapBatches(ToolActor))``)
    and its user + system CPU seconds so far."""
    try:
        title = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode(errors="replace")
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return title.rsplit("/", 1)[-1][:60], (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class PeakMemory:
    """Peak PSS of this process and its descendants, and the CPU seconds each of them spent meanwhile."""

    def __init__(self, every_s: float = 2.0):
        # Reading smaps_rollup walks every page table: every 0.5 s it cost this process ~0.17 of a core (py-spy),
        # taken from the job it measures.
        self.every_s = every_s
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._first: dict[int, float] = {}
        self._last: dict[int, tuple[str, float]] = {}

    def _sample(self, pids: list[int], baseline: bool = False):
        """``baseline``: the processes running before the job count from their CPU so far, later ones from 0."""
        for pid in pids:
            seen = cpu_seconds(pid)
            if seen is not None:
                self._first.setdefault(pid, seen[1] if baseline else 0.0)
                if seen[0].startswith("ray::IDLE") and pid in self._last:  # a worker keeps the name of its work
                    seen = (self._last[pid][0], seen[1])
                self._last[pid] = seen

    def _run(self):
        while not self._stop.is_set():
            pids = descendants(os.getpid())
            self.peak = max(self.peak, pss_bytes(pids))
            self._sample(pids)
            self._stop.wait(self.every_s)
        self._sample(descendants(os.getpid()))

    def cpu_by_title(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for pid, (title, seconds) in self._last.items():
            out[title] = out.get(title, 0.0) + seconds - self._first.get(pid, 0.0)
        return dict(sorted(out.items(), key=lambda kv: -kv[1]))

    def __enter__(self):
        self._sample(descendants(os.getpid()), baseline=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def direct(shards: list[str], bundle, config, threads: int) -> tuple[float, float]:
    """The same stages, in this process, no Ray, with every core for torch."""
    from reasonrec.batch.context import Scoring
    from reasonrec.batch.horizon_stage import HorizonStage
    from reasonrec.batch.planner_stage import PlannerStage
    from reasonrec.batch.shards import read_shard
    from reasonrec.batch.tool_stage import ToolStage

    scoring = Scoring(bundle, config)
    horizon, tools, planner = HorizonStage(scoring), ToolStage(scoring), PlannerStage(scoring)
    torch.set_num_threads(threads)
    start, cpu = time.perf_counter(), time.process_time()
    for shard in shards:
        table = horizon(read_shard(shard))
        for lo in range(0, table.num_rows, config.batch_size):
            planner(tools(table.slice(lo, config.batch_size)))
    return time.perf_counter() - start, time.process_time() - cpu


def repeated(requests: pa.Table, times: int) -> pa.Table:
    """``requests`` ``times`` over, each copy's users with fresh ids (a repeated (user_id, task) is a duplicate)."""
    import pyarrow.compute as pc

    copies = [requests.set_column(0, "user_id", pc.binary_join_element_wise(requests.column("user_id"),
                                                                          pa.scalar(f"~{i}"), ""))
              for i in range(1, times)]
    return pa.concat_tables([requests, *copies])


def main() -> None:
    import ray

    from jobs.nightly_score import NightlyJob, run
    from reasonrec.batch.config import ScoreConfig
    from reasonrec.batch.requests import requests_for_split, write_requests
    from reasonrec.batch.shards import list_shards
    from reasonrec.bundle import Bundle
    from reasonrec.data.prepared import PreparedData

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="/tmp/rr/beauty")
    parser.add_argument("--bundle", default="/tmp/rr/beauty-bundle")
    parser.add_argument("--task", default="sequential")
    parser.add_argument("--scales", default="1,2")
    parser.add_argument("--batch-size", type=int, default=ScoreConfig.batch_size)
    parser.add_argument("--tool-actors", type=int, default=ScoreConfig.tool_actors)
    parser.add_argument("--threads", type=int, default=ScoreConfig.torch_threads, help="torch threads per actor")
    parser.add_argument("--direct-threads", type=int, default=os.cpu_count(), help="torch threads, direct run")
    args = parser.parse_args()
    config = ScoreConfig(mode="tools-only", batch_size=args.batch_size, tool_actors=args.tool_actors,
                         torch_threads=args.threads)
    bundle = Bundle(args.bundle)
    base = requests_for_split(PreparedData(args.data), "test", args.task, k=10)

    start = time.perf_counter()
    ray.init(include_dashboard=False, log_to_driver=False)
    print(f"ray.init: {time.perf_counter() - start:.1f} s (not counted below)")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for scale in (int(s) for s in args.scales.split(",")):
            requests = f"{tmp}/requests-x{scale}"
            write_requests(repeated(base, scale), requests, shard_rows=5000)
            shards = list_shards(requests)
            direct_s, direct_cpu = direct(shards, bundle, config, args.direct_threads)
            idle = pss_bytes(descendants(os.getpid()))
            with PeakMemory() as memory:
                start = time.perf_counter()
                manifest = run(NightlyJob(requests, args.bundle, f"{tmp}/out-x{scale}", force=True, score=config))
                job_s = time.perf_counter() - start
            assert manifest["rows_out"] == base.num_rows * scale, manifest
            rows.append((scale, base.num_rows * scale, job_s, direct_s, (memory.peak - idle) / 2**20))
            cpu = memory.cpu_by_title()
            print(f"x{scale}: CPU seconds, direct {direct_cpu:.1f} in {direct_s:.1f} s; job {sum(cpu.values()):.1f} "
                  f"in {job_s:.1f} s, by process:")
            for title, seconds in cpu.items():
                if seconds >= 0.05:
                    print(f"  {seconds:8.1f}  {title}")
            time.sleep(3)  # let idle actors go before the next scale's baseline
    print(f"\n{args.task} on {args.data}: batch {config.batch_size}, {config.tool_actors} tool actor(s) "
          f"x {config.tool_actor_cpus} CPU x {config.torch_threads} torch thread(s); direct: "
          f"{args.direct_threads} thread(s); {os.cpu_count()} cores")
    print(f"{'scale':>5} {'rows':>7} {'job s':>7} {'job users/s':>11} {'direct users/s':>14} {'ratio':>6} "
          f"{'peak MiB over idle':>18}")
    for scale, n, job_s, direct_s, peak in rows:
        print(f"{scale:>5} {n:>7} {job_s:>7.1f} {n / job_s:>11.0f} {n / direct_s:>14.0f} "
              f"{job_s / direct_s:>5.2f}x {peak:>18.0f}")
    if len(rows) > 1:
        print(f"peak memory x{rows[-1][0] / rows[0][0]:.0f} requests: x{rows[-1][4] / rows[0][4]:.2f}")


if __name__ == "__main__":
    main()
