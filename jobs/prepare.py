"""Load a dataset, split it leave-one-out, sample the direct task's candidates, write the prepared folder.

Formats: amazon-seq (lines `user item item ...`, optional titles/attributes), recbole (atomic .inter/.item files),
parquet (interactions + items in the contract schemas). Users with fewer than --min-len interactions stay in
train and are not evaluated."""
from __future__ import annotations

import argparse
import dataclasses
import sys

from jobs import cli


@dataclasses.dataclass
class PrepareJob:
    source: str
    format: str
    out: str
    min_len: int = 3
    negatives: int = 99
    seed: int = 12345


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from reasonrec.data.loaders import FORMATS

    parser.add_argument("--source", required=True, help="the dataset's file or folder")
    parser.add_argument("--format", required=True, choices=FORMATS, help="how --source is laid out (docs/data.md)")
    parser.add_argument("--out", required=True, help="the prepared folder or s3:// prefix")
    parser.add_argument("--min-len", type=int, default=PrepareJob.min_len, help="users with fewer interactions are "
                                                                               "not evaluated")
    parser.add_argument("--negatives", type=int, default=PrepareJob.negatives, help="sampled negatives per direct "
                                                                                   "candidate list")
    parser.add_argument("--seed", type=int, default=PrepareJob.seed, help="the negatives' sample")


def config(args: argparse.Namespace) -> PrepareJob:
    return PrepareJob(args.source, args.format, args.out, args.min_len, args.negatives, args.seed)


def run(job: PrepareJob) -> dict:
    from reasonrec.api import prepare

    meta = prepare(job.source, job.format, job.out, min_len=job.min_len, negatives=job.negatives, seed=job.seed)
    cli.log().info(f"prepared {meta['dataset']}: {meta['users']} users, {meta['items']} items, "
                   f"{meta['interactions']} interactions, {meta['evaluated_users']} evaluated -> {job.out}")
    return meta


def main(argv: list[str] | None = None) -> int:
    return cli.run_module(sys.modules[__name__], argv)


if __name__ == "__main__":
    sys.exit(main())
