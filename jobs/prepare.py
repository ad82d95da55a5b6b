"""Load a dataset, split it leave-one-out (or in time, at --cut), sample the direct task's candidates, write the
prepared folder.

Formats: amazon-seq (lines `user item item ...`, optional titles/attributes), recbole (atomic .inter/.item files),
parquet (interactions + items in the contract schemas). Users with fewer than --min-len interactions stay in
train and are not evaluated. Several --source (multi-domain) make one catalogue, ids prefixed `DOMAIN:`."""
from __future__ import annotations

import argparse
import dataclasses
import sys

from jobs import cli


@dataclasses.dataclass
class PrepareJob:
    source: str | tuple[str, ...]  # several: one multi-domain catalogue
    format: str | tuple[str, ...]
    out: str
    min_len: int = 3
    negatives: int = 99
    seed: int = 12345
    cut: str | None = None  # the time split's cut; None: leave-one-out
    domains: tuple[str, ...] = ()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from reasonrec.data.loaders import FORMATS

    parser.add_argument("--source", required=True, action="append",
                        help="the dataset's file or folder (repeat for a multi-domain catalogue)")
    parser.add_argument("--format", required=True, action="append", choices=FORMATS,
                        help="how --source is laid out (docs/data.md); once for all sources, or once per source")
    parser.add_argument("--domain", action="append", default=[],
                        help="with several sources: each one's domain name, the prefix of its ids (default: the "
                             "source's folder name)")
    parser.add_argument("--split", default="leave-one-out", choices=("leave-one-out", "time"),
                        help="leave-one-out (last item test, second last validation), or time: train before --cut, "
                             "test the first interaction after it")
    parser.add_argument("--cut", help="with --split time: a date (YYYY-MM-DD, UTC) or epoch seconds")
    parser.add_argument("--out", required=True, help="the prepared folder or s3:// prefix")
    parser.add_argument("--min-len", type=int, default=PrepareJob.min_len, help="users with fewer interactions are "
                                                                               "not evaluated")
    parser.add_argument("--negatives", type=int, default=PrepareJob.negatives, help="sampled negatives per direct "
                                                                                   "candidate list")
    parser.add_argument("--seed", type=int, default=PrepareJob.seed, help="the negatives' sample")


def config(args: argparse.Namespace) -> PrepareJob:
    if (args.split == "time") != (args.cut is not None):
        raise ValueError("--split time needs --cut DATE, and --cut is only for --split time")
    return PrepareJob(tuple(args.source), tuple(args.format), args.out, args.min_len, args.negatives, args.seed,
                      args.cut, tuple(args.domain))


def run(job: PrepareJob) -> dict:
    from reasonrec.api import prepare

    listed = [job.source] if isinstance(job.source, str) else list(job.source)
    formats = [job.format] if isinstance(job.format, str) else list(job.format)
    meta = prepare(listed, formats, job.out, min_len=job.min_len, negatives=job.negatives,
                   seed=job.seed, cut=job.cut, domains=list(job.domains) or None)
    how = f"time split at {job.cut}" if job.cut else "leave-one-out"
    cli.log().info(f"prepared {meta['dataset']} ({how}): {meta['users']} users, {meta['items']} items, "
                   f"{meta['interactions']} interactions, {meta['evaluated_users']} evaluated -> {job.out}")
    return meta


def main(argv: list[str] | None = None) -> int:
    return cli.run_module(sys.modules[__name__], argv)


if __name__ == "__main__":
    sys.exit(main())
