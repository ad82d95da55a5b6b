"""Compare committed runs of the nightly job (one per mode): quality, routes, cost, overrides, cold start and the
threshold sweep (every plan replayed as VLM calls vs HR@5), written as report.md, report.json and frontier.png."""
from __future__ import annotations

import argparse
import dataclasses
import sys

from jobs import cli
from reasonrec.report import ReportConfig


@dataclasses.dataclass
class ReportJob:
    runs: tuple[str, ...]
    data: str
    out: str | None = None  # default: `report` beside the first run's output root
    bundle: str | None = None  # default: the runs' bundle
    report: ReportConfig = dataclasses.field(default_factory=ReportConfig)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--run", action="append", required=True,
                        help="an output root of the nightly job (repeat, one per mode); its latest committed run is "
                             "read")
    parser.add_argument("--data", required=True, help="the prepared data the requests came from")
    parser.add_argument("--out", help="report folder (default: REPORT beside the first run's output root)")
    parser.add_argument("--bundle", help="bundle for the threshold sweep (default: the runs' bundle)")
    parser.add_argument("--split", default=cli.default(ReportConfig, "split"), choices=("valid", "test"),
                        help="the split the runs' requests came from")
    parser.add_argument("--sweep-users", type=int, default=cli.default(ReportConfig, "sweep_users"),
                        help="users per task in the threshold sweep (0: skip)")
    parser.add_argument("--vlm-backend", default=cli.default(ReportConfig, "backend"),
                        choices=("auto", "transformers", "vllm"), help="the VLM backend of the sweep")


def config(args: argparse.Namespace) -> ReportJob:
    return ReportJob(tuple(args.run), args.data, args.out, args.bundle,
                     ReportConfig(split=args.split, sweep_users=args.sweep_users, backend=args.vlm_backend))


def run(job: ReportJob) -> dict:
    from reasonrec.api import write_report

    return write_report(list(job.runs), job.data, job.out, job.report, bundle=job.bundle)


def main(argv: list[str] | None = None) -> int:
    return cli.run_module(sys.modules[__name__], argv)


if __name__ == "__main__":
    sys.exit(main())
