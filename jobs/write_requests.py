"""Write request shards from a prepared split: one request per evaluated user and task.

Each request carries the user's history as that split's evaluation sees it; direct and ctr requests carry the
split's 1 + N candidates, shuffled per user (--seed). Score them with `reasonrec score`."""
from __future__ import annotations

import argparse
import dataclasses
import sys

from jobs import cli


@dataclasses.dataclass
class RequestsJob:
    data: str
    out: str
    split: str = "test"
    tasks: tuple[str, ...] = ("sequential",)
    k: int = 10
    shard_rows: int = 5000
    users: int = 0  # a seeded sample of this many users, the same for every task (0: every evaluated user)
    seed: int = 0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", required=True, help="a prepared folder")
    parser.add_argument("--out", required=True, help="folder or s3:// prefix for the shards (replaced)")
    parser.add_argument("--split", default=RequestsJob.split, choices=("valid", "test"), help="whose users "
                        "and histories")
    parser.add_argument("--tasks", default=",".join(RequestsJob.tasks), help="comma-separated: "
                                                                           "sequential,direct,ctr,explain")
    parser.add_argument("--k", type=int, default=RequestsJob.k, help="items to return per request")
    parser.add_argument("--shard-rows", type=int, default=RequestsJob.shard_rows, help="rows per shard")
    parser.add_argument("--users", type=int, default=RequestsJob.users,
                        help="a seeded sample of this many users (0: every evaluated user)")
    parser.add_argument("--seed", type=int, default=RequestsJob.seed, help="shuffles each direct request's "
                                                                           "candidates; the sample")


def config(args: argparse.Namespace) -> RequestsJob:
    return RequestsJob(args.data, args.out, args.split, tuple(args.tasks.split(",")), args.k, args.shard_rows,
                       args.users, args.seed)


def run(job: RequestsJob) -> dict:
    from reasonrec.api import make_requests, write_requests

    table = make_requests(job.data, job.split, job.tasks, job.k, job.users, job.seed)
    shards = write_requests(table, job.out, shard_rows=job.shard_rows)
    cli.log().info(f"wrote {table.num_rows} requests ({','.join(job.tasks)}, k={job.k}, {job.split} split) "
                   f"in {len(shards)} shard(s) -> {job.out}")
    return {"rows": table.num_rows, "shards": shards}


def main(argv: list[str] | None = None) -> int:
    return cli.run_module(sys.modules[__name__], argv)


if __name__ == "__main__":
    sys.exit(main())
