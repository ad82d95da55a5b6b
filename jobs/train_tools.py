"""Train the classical tools with Ray Train (one TorchTrainer run per tool) and commit them into a bundle.

Each tool early-stops on validation NDCG@10 of its own task; the bundle records each task's primary tool (its best
tool on validation), the evidence horizon and the item catalogue. Per-tool hyper-parameters go under `overrides` in
the --config YAML (fields of e.g. reasonrec.tools.sasrec.SASRecConfig)."""
from __future__ import annotations

import argparse
import dataclasses
import sys

from jobs import cli
from reasonrec.train.tools import TrainToolsConfig


@dataclasses.dataclass
class TrainToolsJob:
    data: str
    bundle: str
    tools: TrainToolsConfig = dataclasses.field(default_factory=TrainToolsConfig)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    d = lambda field: cli.default(TrainToolsConfig, field)  # noqa: E731
    parser.add_argument("--data", required=True, help="a prepared folder (reasonrec prepare)")
    parser.add_argument("--bundle", required=True, help="the bundle to create or update (tools not retrained stay)")
    parser.add_argument("--tools", help=f"comma-separated (default: {','.join(d('tools'))})")
    parser.add_argument("--config", help="YAML with TrainToolsConfig fields (overrides: {tool: {field: value}})")
    parser.add_argument("--workers", type=int, help=f"Ray Train workers per tool (default {d('workers')})")
    parser.add_argument("--cpus-per-worker", type=float, help=f"default {d('cpus_per_worker')}")
    parser.add_argument("--threads", type=int, help=f"torch threads per worker (default {d('threads')})")
    parser.add_argument("--storage-path", help="Ray Train run storage (shared storage on a multi-node cluster; "
                                               "default: a temporary folder)")
    parser.add_argument("--epochs", type=int, help="max epochs for every tool (default: each tool's own)")


def config(args: argparse.Namespace) -> TrainToolsJob:
    from reasonrec.config import load, read_yaml

    tools = args.tools.split(",") if args.tools else read_yaml(args.config).get("tools", cli.default(
        TrainToolsConfig, "tools"))
    overrides = {"tools": tools if args.tools else None, "workers": args.workers,
                 "cpus_per_worker": args.cpus_per_worker, "threads": args.threads, "storage_path": args.storage_path}
    if args.epochs is not None:
        overrides.update({f"overrides.{name}.epochs": args.epochs for name in tools})
    return TrainToolsJob(args.data, args.bundle, load(TrainToolsConfig, args.config, overrides))


def run(job: TrainToolsJob) -> dict:
    import time

    from reasonrec.api import train_tools

    start = time.perf_counter()
    manifest = train_tools(job.data, job.bundle, job.tools)
    cli.log().info(f"bundle {manifest['version']} committed to {job.bundle} with tools {sorted(manifest['tools'])} "
                   f"in {time.perf_counter() - start:.0f}s")
    return manifest


def main(argv: list[str] | None = None) -> int:
    return cli.run_module(sys.modules[__name__], argv)


if __name__ == "__main__":
    sys.exit(main())
