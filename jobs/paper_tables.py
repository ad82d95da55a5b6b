"""The paper's tables for time shift, multi-domain and explanation from `reasonrec evaluate --json` reports.

time-shift: --base the leave-one-out reports, --shifted the time-split reports of the same data (tools: `evaluate
--bundle`; the system: `evaluate --results`). multi-domain: --combined the reports on the multi-domain catalogue,
--single DOMAIN=REPORT the same models trained on one domain alone. explanation: --reports of `evaluate --task
explain` (the bundle's VLM and baselines; committed results)."""
from __future__ import annotations

import argparse
import dataclasses
import sys

from jobs import cli


@dataclasses.dataclass
class TablesJob:
    kind: str
    base: tuple[str, ...] = ()
    shifted: tuple[str, ...] = ()
    combined: tuple[str, ...] = ()
    single: tuple[str, ...] = ()  # DOMAIN=REPORT
    out: str | None = None
    reports: tuple[str, ...] = ()  # explanation


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--kind", required=True, choices=("time-shift", "multi-domain", "explanation"))
    parser.add_argument("--reports", nargs="+", default=[], help="explanation: `evaluate --task explain` reports")
    parser.add_argument("--base", nargs="+", default=[], help="time-shift: reports without the shift")
    parser.add_argument("--shifted", nargs="+", default=[], help="time-shift: reports on the time split")
    parser.add_argument("--combined", nargs="+", default=[], help="multi-domain: reports on the combined catalogue")
    parser.add_argument("--single", nargs="+", default=[], metavar="DOMAIN=REPORT",
                        help="multi-domain: a report of one domain trained alone")
    parser.add_argument("--out", help="also write the table (markdown) here")


def config(args: argparse.Namespace) -> TablesJob:
    return TablesJob(args.kind, tuple(args.base), tuple(args.shifted), tuple(args.combined), tuple(args.single),
                     args.out, tuple(args.reports))


def run(job: TablesJob) -> str:
    from reasonrec import storage, tables

    def read(uris) -> list[dict]:
        return [storage.read_json(storage.absolute(u)) for u in uris]

    if job.kind == "explanation":
        text = tables.explanation(read(job.reports))
    elif job.kind == "time-shift":
        if not job.base or not job.shifted:
            raise ValueError("--kind time-shift needs --base and --shifted reports")
        text = tables.time_shift(read(job.base), read(job.shifted))
    else:
        if not job.combined:
            raise ValueError("--kind multi-domain needs --combined reports")
        single: dict[str, list[dict]] = {}
        for entry in job.single:
            domain, sep, uri = entry.partition("=")
            if not sep:
                raise ValueError(f"--single {entry!r}: use DOMAIN=REPORT")
            single.setdefault(domain, []).extend(read([uri]))
        text = tables.multi_domain(read(job.combined), single)
    print(text)
    if job.out:
        storage.write_bytes(storage.absolute(job.out), text.encode())
        cli.log().info(f"wrote {job.out}")
    return text


def main(argv: list[str] | None = None) -> int:
    return cli.run_module(sys.modules[__name__], argv)


if __name__ == "__main__":
    sys.exit(main())
