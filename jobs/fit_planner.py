"""Fit the planner on the validation split and store it in the bundle (``reasonrec fit-planner`` is the same).

    python jobs/fit_planner.py --data URI --bundle URI [--users N] [--tolerance 0.01]

The validation requests run through the nightly job's stages (tools with their holdout weights, the VLM on
every row); a logistic-regression aggregator is fitted over the VLM's and the tools' candidate scores, then the
cheapest plan (tau_low, tau_high, kappa) within ``--tolerance`` of the best validation HR@5 is kept
(``reasonrec.train.planner``).
"""
from __future__ import annotations

import argparse
import sys
import time


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", required=True, help="the prepared data the bundle was trained on")
    parser.add_argument("--bundle", required=True, help="a bundle with tools and vlm/")
    parser.add_argument("--tasks", help="comma-separated (default sequential,direct; ctr shares direct's policy)")
    parser.add_argument("--users", type=int, help="validation users per task (default: all)")
    parser.add_argument("--tolerance", type=float, help="relative HR@5 a cheaper plan may give up (default 0.01)")
    parser.add_argument("--vlm-backend", choices=("auto", "transformers", "vllm"), help="default auto")
    parser.add_argument("--config", help="YAML with FitPlannerConfig fields (score: {ScoreConfig fields})")


def fit_planner_config(args):
    from reasonrec.config import from_dict, load_yaml
    from reasonrec.train.planner import FitPlannerConfig

    values = load_yaml(args.config)
    if args.tasks:
        values["tasks"] = args.tasks.split(",")
    for flag in ("users", "tolerance"):
        if getattr(args, flag) is not None:
            values[flag] = getattr(args, flag)
    if args.vlm_backend:
        values.setdefault("score", {}).setdefault("deliberator", {})["backend"] = args.vlm_backend
    return from_dict(FitPlannerConfig, values)


def main(argv: list[str] | None = None) -> int:
    from reasonrec.train.planner import fit_planner

    parser = argparse.ArgumentParser(prog="fit_planner", description=__doc__.split("\n\n")[0])
    add_arguments(parser)
    args = parser.parse_args(argv)
    start = time.perf_counter()
    try:
        fit_planner(args.data, args.bundle, fit_planner_config(args))
    except (ValueError, FileNotFoundError, RuntimeError) as e:
        print(f"fit_planner: error: {e}", file=sys.stderr)
        return 2
    print(f"done in {time.perf_counter() - start:.1f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
