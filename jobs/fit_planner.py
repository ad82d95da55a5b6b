"""Fit the planner (aggregator, kappa, horizon thresholds) on the validation split and store it in the bundle.

The validation requests run through the nightly job's stages (tools with their holdout weights, the VLM on every
row); a logistic-regression aggregator is fitted over the VLM's and the tools' candidate scores, then the cheapest
plan (tau_low, tau_high, kappa) within --tolerance of the best validation HR@5 is kept. The test split is never
read."""
from __future__ import annotations

import argparse
import dataclasses
import sys

from jobs import cli
from reasonrec.train.planner import FitPlannerConfig


@dataclasses.dataclass
class FitPlannerJob:
    data: str
    bundle: str
    planner: FitPlannerConfig = dataclasses.field(default_factory=FitPlannerConfig)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    d = lambda field: cli.default(FitPlannerConfig, field)  # noqa: E731
    parser.add_argument("--data", required=True, help="the prepared data the bundle was trained on")
    parser.add_argument("--bundle", required=True, help="a bundle with tools and vlm/")
    parser.add_argument("--tasks", help=f"comma-separated (default {','.join(d('tasks'))}; ctr shares direct's)")
    parser.add_argument("--users", type=int, help="validation users per task (default: all)")
    parser.add_argument("--tolerance", type=float, help=f"relative HR@5 a cheaper plan may give up (default "
                                                        f"{d('tolerance')})")
    parser.add_argument("--max-vlm-share", type=float,
                        help="the GPU budget: the best plan that sends at most this share of rows to the VLM "
                             f"(default {d('max_vlm_share')})")
    parser.add_argument("--vlm-backend", choices=("auto", "transformers", "vllm"),
                        help="default auto: vLLM when installed")
    parser.add_argument("--vlm-device", choices=("cuda", "cpu"),
                        help="where the VLM actors run: cuda asks Ray for a GPU each (default), cpu for none")
    parser.add_argument("--config", help="YAML with FitPlannerConfig fields (score: {ScoreConfig fields})")


def config(args: argparse.Namespace) -> FitPlannerJob:
    from reasonrec.config import load

    overrides = {"tasks": args.tasks.split(",") if args.tasks else None, "users": args.users,
                 "tolerance": args.tolerance, "max_vlm_share": args.max_vlm_share,
                 "score.deliberator.backend": args.vlm_backend, "score.deliberator.device": args.vlm_device}
    return FitPlannerJob(args.data, args.bundle, load(FitPlannerConfig, args.config, overrides))


def run(job: FitPlannerJob) -> dict:
    from reasonrec.api import fit_planner

    return fit_planner(job.data, job.bundle, job.planner)


def main(argv: list[str] | None = None) -> int:
    return cli.run_module(sys.modules[__name__], argv)


if __name__ == "__main__":
    sys.exit(main())
