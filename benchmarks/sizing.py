"""Sizing a night: nodes, wall time and the first bottleneck for N users, from per-row costs measured here.

    python benchmarks/sizing.py [--users 1e6,1e7,1e8] [--tool-rows-per-core-s 2000] [--vlm-share 0.2]
                                [--vlm-rows-per-gpu-s 24] [--cluster cluster/aws.yaml] [--window-h 4]

A paper model, not a measurement of a cluster: each request row costs the CPU group ``1 / tool-rows-per-core-s``
core-seconds (read, horizon, tools, planner, write: the nightly job's tools path, benchmarks/nightly_job.py) and,
for the share the planner sends to the VLM, the GPU group ``1 / vlm-rows-per-gpu-s`` GPU-seconds
(benchmarks/planner_job.py, scripts/gpu_check.sh). Node types and their limits come from the cluster YAML. It prints,
per size, the nodes each group needs to finish inside the window (or the wall time at the group's maximum), the
driver's own work (listing and footer reads of every shard) and the S3 request rates, and names what runs out first.
"""
from __future__ import annotations

import argparse
import math

import yaml

# vCPUs of the instance types cluster/aws.yaml names (AWS's published figures).
VCPUS = {"m6i.2xlarge": 8, "c6i.4xlarge": 16, "g5.2xlarge": 8}
SHARD_ROWS = 5000  # rows per request shard (reasonrec requests' default)
FOOTER_READS_PER_S = 16 / 0.05  # the driver's 16 threads, ~50 ms per S3 range GET
S3_PUTS_PER_PREFIX_S = 3500  # S3's documented per-prefix PUT rate
PUTS_PER_PART = 3  # results part, quarantine part, ledger entry


def size(rows: float, args, cpu: dict, gpu: dict) -> dict:
    window = args.window_h * 3600
    cpu_core_s = rows / args.tool_rows_per_core_s
    gpu_s = rows * args.vlm_share / args.vlm_rows_per_gpu_s
    cores = VCPUS[cpu["node_config"]["InstanceType"]] * args.cpu_efficiency
    cpu_nodes = math.ceil(cpu_core_s / (window * cores))
    gpu_nodes = math.ceil(gpu_s / window) if gpu_s else 0
    cpu_wall = cpu_core_s / (min(cpu_nodes, cpu["max_workers"]) * cores)
    gpu_wall = gpu_s / min(gpu_nodes, gpu["max_workers"]) if gpu_nodes else 0.0
    shards = math.ceil(rows / SHARD_ROWS)
    parts = math.ceil(rows / args.batch_size)
    wall = max(cpu_wall, gpu_wall)
    limits = {"CPU group": (cpu_nodes, cpu["max_workers"]), "GPU group": (gpu_nodes, gpu["max_workers"])}
    short = [f"{g} needs {n} > max_workers {m}" for g, (n, m) in limits.items() if n > m]
    put_rate = PUTS_PER_PART * parts / wall if wall else 0.0
    if put_rate > S3_PUTS_PER_PREFIX_S:
        short.append(f"S3 PUTs {put_rate:.0f}/s > {S3_PUTS_PER_PREFIX_S}/s per prefix")
    return {"rows": rows, "cpu_nodes": cpu_nodes, "gpu_nodes": gpu_nodes, "wall_h": wall / 3600,
            "driver_footers_min": shards / FOOTER_READS_PER_S / 60, "shards": shards, "parts": parts,
            "put_rate": put_rate, "first_limit": "; ".join(short) or "none inside the window"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", default="1e6,1e7,1e8")
    parser.add_argument("--tasks-per-user", type=float, default=2.0, help="request rows per user (sequential+direct)")
    parser.add_argument("--tool-rows-per-core-s", type=float, default=2000.0)
    parser.add_argument("--cpu-efficiency", type=float, default=0.75, help="share of a node's vCPUs the actors use")
    parser.add_argument("--vlm-share", type=float, default=0.2, help="rows the planner sends to the VLM")
    parser.add_argument("--vlm-rows-per-gpu-s", type=float, default=24.0)
    parser.add_argument("--batch-size", type=int, default=1024, help="rows per written part (ScoreConfig)")
    parser.add_argument("--cluster", default="cluster/aws.yaml")
    parser.add_argument("--window-h", type=float, default=4.0, help="the nightly window")
    args = parser.parse_args()
    with open(args.cluster) as f:
        types = yaml.safe_load(f)["available_node_types"]
    cpu, gpu = types["cpu_worker"], types["gpu_worker"]
    print(f"{args.cluster}: CPU group {cpu['node_config']['InstanceType']} x {cpu['min_workers']}-"
          f"{cpu['max_workers']}, GPU group {gpu['node_config']['InstanceType']} x {gpu['min_workers']}-"
          f"{gpu['max_workers']}; tools path {args.tool_rows_per_core_s:.0f} rows/core-s, VLM "
          f"{args.vlm_rows_per_gpu_s:.0f} rows/GPU-s on {args.vlm_share:.0%} of rows; window {args.window_h:.0f} h")
    print(f"{'users':>6} {'rows':>7} {'CPU nodes':>9} {'GPU nodes':>9} {'wall h':>7} {'shards':>7} "
          f"{'driver footers min':>18} {'S3 PUT/s':>8}  first limit")
    for users in (float(u) for u in args.users.split(",")):
        s = size(users * args.tasks_per_user, args, cpu, gpu)
        print(f"{users:6.0e} {s['rows']:7.0e} {s['cpu_nodes']:9d} {s['gpu_nodes']:9d} {s['wall_h']:7.2f} "
              f"{s['shards']:7d} {s['driver_footers_min']:18.1f} {s['put_rate']:8.0f}  {s['first_limit']}")


if __name__ == "__main__":
    main()
