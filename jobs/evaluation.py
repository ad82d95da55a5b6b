"""HR/NDCG@5/10 of a bundle's tools (with popularity and the Majority Vote) or of a committed run's results.

Sequential ranks the whole catalogue minus the user's history; direct ranks the split's 1 + 99 candidates. With
--results, the latest committed run of the output root (or of --run-date) is scored against the split's
held-out items."""
from __future__ import annotations

import argparse
import dataclasses
import sys

from jobs import cli


@dataclasses.dataclass
class EvaluateJob:
    data: str
    task: str
    bundle: str | None = None
    results: str | None = None
    run_date: str | None = None
    split: str = "test"
    json: str | None = None  # where to write the report as JSON


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from reasonrec.evaluator import TASKS

    parser.add_argument("--data", required=True, help="the prepared data (targets, candidates)")
    parser.add_argument("--bundle", help="score every tool of this bundle, popularity and the Majority Vote")
    parser.add_argument("--results", help="evaluate the committed batch results under this output root")
    parser.add_argument("--run-date", help="with --results: the run date (default: the latest committed)")
    parser.add_argument("--task", required=True, choices=TASKS, help="sequential: full ranking; direct: 1 + 99 "
                        "candidates")
    parser.add_argument("--split", default=EvaluateJob.split, choices=("valid", "test"), help="whose "
                        "held-out items")
    parser.add_argument("--json", help="also write the figures to this JSON file (local path or s3://)")


def config(args: argparse.Namespace) -> EvaluateJob:
    return EvaluateJob(args.data, args.task, args.bundle, args.results, args.run_date, args.split, args.json)


def run(job: EvaluateJob) -> dict:
    from reasonrec import storage
    from reasonrec.api import evaluate

    report = evaluate(job.data, job.task, bundle=job.bundle, results=job.results, run_date=job.run_date,
                      split=job.split)
    if job.results:
        cli.log().info(f"committed results, {report['task']} ({report['results']} rows): "
                       + "  ".join(f"{k} {v:.4f}" for k, v in report["metrics"].items()))
    if job.json:
        storage.write_json(job.json, report)
        cli.log().info(f"wrote {job.json}")
    return report


def main(argv: list[str] | None = None) -> int:
    return cli.run_module(sys.modules[__name__], argv)


if __name__ == "__main__":
    sys.exit(main())
