"""What the planner saves: the nightly job in mode ``planner`` vs ``vlm-only`` on the same requests, same run.

    python benchmarks/planner_job.py --data DATA --bundle BUNDLE [--task sequential,direct] [--users 1000]
                                     [--backend auto] [--vlm-actors 1] [--plan 0.3,0.7,0.2,tool]

Both runs are the whole Ray Data job (actor start-up, model loads, streaming, commit) on an already started local
Ray, on the same request shards (the first ``--users`` test users of each task). Printed per mode: rows/s, VLM
calls, and per route the rows and the mean and p95 latency per row (the stages' own time per row); then the
planner/vlm-only ratios. The bundle must have a fitted planner (``reasonrec fit-planner``). ``--plan`` adds a
run of the planner with other thresholds (tau_low, tau_high, kappa, low answerer) set in a copy of the bundle, e.g.
the paper's 0.3/0.7 when the fitted plan sends no row to the VLM.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import tempfile
import time

import numpy as np
import pyarrow as pa


def main() -> None:
    import ray

    from jobs.nightly_score import NightlyJob, run
    from reasonrec.batch import commit
    from reasonrec.batch.config import ScoreConfig
    from reasonrec.batch.requests import requests_for_split, write_requests
    from reasonrec.data.prepared import PreparedData
    from reasonrec.report import route_table
    from reasonrec.train.planner import copy_with_plan
    from reasonrec.vlm.deliberator import DeliberatorConfig, local_device

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True)
    parser.add_argument("--bundle", required=True)
    parser.add_argument("--task", default="sequential,direct")
    parser.add_argument("--users", type=int, default=1000, help="test users per task (0: all)")
    parser.add_argument("--backend", default="auto", choices=("auto", "transformers", "vllm"))
    parser.add_argument("--vlm-actors", type=int, default=1)
    parser.add_argument("--modes", default="vlm-only,planner")
    parser.add_argument("--plan", help="tau_low,tau_high,kappa,low (tool|vote): one more planner run with this plan")
    args = parser.parse_args()

    data = PreparedData(args.data)
    tables = [requests_for_split(data, "test", t, k=10) for t in args.task.split(",")]
    table = pa.concat_tables([t.slice(0, args.users) if args.users else t for t in tables])
    config = ScoreConfig(vlm_actors=args.vlm_actors,
                         deliberator=DeliberatorConfig(backend=args.backend, device=local_device()))
    start = time.perf_counter()
    ray.init(include_dashboard=False, log_to_driver=False)
    print(f"ray.init: {time.perf_counter() - start:.1f} s (not counted below)")
    figures = {}
    with tempfile.TemporaryDirectory() as tmp:
        write_requests(table, f"{tmp}/requests", shard_rows=1000)
        runs = [(mode, mode, args.bundle) for mode in args.modes.split(",")]
        if args.plan:
            runs.append((f"planner[{args.plan}]", "planner", copy_with_plan(args.bundle, args.plan, f"{tmp}/bundle")))
        for i, (name, mode, bundle) in enumerate(runs):
            start = time.perf_counter()
            manifest = run(NightlyJob(f"{tmp}/requests", bundle, f"{tmp}/out{i}", force=True,
                                      score=dataclasses.replace(config, mode=mode)))
            seconds = time.perf_counter() - start
            results = commit.read_committed(f"{tmp}/out{i}")
            latency = results.column("latency_ms").to_numpy(zero_copy_only=False)
            figures[name] = {"seconds": seconds, "rows_per_s": table.num_rows / seconds,
                             "vlm_calls": manifest["vlm_calls_total"], "routes": route_table(results),
                             "latency_mean_ms": float(np.mean(latency)),
                             "latency_p95_ms": float(np.percentile(latency, 95))}
    print(f"\n{table.num_rows} requests ({args.task}) on {args.data}; backend {args.backend}, "
          f"{args.vlm_actors} VLM actor(s); {os.cpu_count()} cores")
    print(f"{'mode':>28} {'wall s':>7} {'rows/s':>7} {'VLM calls':>9} {'ms/row mean':>11} {'p95':>8}")
    for mode, f in figures.items():
        print(f"{mode:>28} {f['seconds']:7.1f} {f['rows_per_s']:7.1f} {f['vlm_calls']:9d} "
              f"{f['latency_mean_ms']:11.2f} {f['latency_p95_ms']:8.2f}")
    print(f"\n{'mode':>28} {'route':>7} {'rows':>6} {'VLM calls':>9} {'ms/row mean':>11} {'p95':>8}")
    for mode, f in figures.items():
        for r in f["routes"]:
            print(f"{mode:>28} {r['route']:>7} {r['rows']:6d} {r['vlm_calls']:9d} {r['latency_mean_ms']:11.2f} "
                  f"{r['latency_p95_ms']:8.2f}")
    for name in [n for n in figures if n.startswith("planner")] if "vlm-only" in figures else []:
        p, v = figures[name], figures["vlm-only"]
        print(f"\n{name} / vlm-only: rows/s x{p['rows_per_s'] / v['rows_per_s']:.2f}, VLM calls "
              f"x{p['vlm_calls'] / max(v['vlm_calls'], 1):.2f} ({1 - p['vlm_calls'] / max(v['vlm_calls'], 1):.0%} "
              f"fewer), mean ms/row x{p['latency_mean_ms'] / v['latency_mean_ms']:.2f}")


if __name__ == "__main__":
    main()
