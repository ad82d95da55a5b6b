"""Write the synthetic multimodal catalogue (the parquet source format, a 224x224 image per item).

Users with a taste over categories, colours and styles, a long tail of cold users, sequences that mix taste,
series order and popularity; deterministic from the seed. `reasonrec prepare --format parquet` reads it."""
from __future__ import annotations

import argparse
import dataclasses
import sys

from jobs import cli
from reasonrec.data.synthetic import SyntheticConfig


@dataclasses.dataclass
class SynthJob:
    out: str
    catalogue: SyntheticConfig = dataclasses.field(default_factory=SyntheticConfig)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, help="folder or s3:// prefix to write")
    parser.add_argument("--users", type=int, default=cli.default(SyntheticConfig, "users"), help="users")
    parser.add_argument("--items", type=int, default=cli.default(SyntheticConfig, "items"), help="items")
    parser.add_argument("--seed", type=int, default=cli.default(SyntheticConfig, "seed"), help="the catalogue is "
                        "deterministic from it")


def config(args: argparse.Namespace) -> SynthJob:
    return SynthJob(args.out, SyntheticConfig(users=args.users, items=args.items, seed=args.seed))


def run(job: SynthJob) -> dict:
    from reasonrec.api import synth

    info = synth(job.out, job.catalogue)
    cli.log().info(f"synthetic catalogue: {info} -> {job.out}")
    return info


def main(argv: list[str] | None = None) -> int:
    return cli.run_module(sys.modules[__name__], argv)


if __name__ == "__main__":
    sys.exit(main())
