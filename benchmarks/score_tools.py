"""Full-catalogue scoring throughput of each tool vs the bare user x item matmul, measured in the same run.

    python benchmarks/score_tools.py [--data URI] [--bundle URI] [--batch-size 1024] [--threads 2]

Scoring = the tool's ``score`` (encoder + one matmul against the catalogue) + history masking + top-10, for every
test user. The bare matmul multiplies random (batch, dim) user vectors by the (n_items + 1, dim) item table: the
floor any embedding model pays. The ratio says how much the model adds on top of it.
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from reasonrec.bundle import Bundle
from reasonrec.data.prepared import PreparedData
from reasonrec.tools import exclude_seen


def time_tool(tool, history, batch_size: int) -> float:
    start = time.perf_counter()
    with torch.no_grad():
        for lo in range(0, len(history), batch_size):
            batch = history.select(np.arange(lo, min(lo + batch_size, len(history))))
            exclude_seen(tool.score(batch), batch).topk(10, dim=1)
    return time.perf_counter() - start


def time_matmul(n_users: int, n_items: int, dim: int, batch_size: int) -> float:
    items = torch.randn(n_items + 1, dim)
    users = torch.randn(batch_size, dim)
    start = time.perf_counter()
    for lo in range(0, n_users, batch_size):
        users[: min(batch_size, n_users - lo)] @ items.T
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="/tmp/rr/beauty")
    parser.add_argument("--bundle", default="/tmp/rr/beauty-bundle")
    parser.add_argument("--batch-size", type=int, default=1024)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    data, bundle = PreparedData(args.data), Bundle(args.bundle)
    history = data.eval_set("test").history
    n = len(history)
    print(f"{data.meta['dataset']}: {n} users x {data.n_items} items, batch {args.batch_size}, "
          f"{args.threads} threads")
    print(f"{'tool':>10s} {'users/s':>10s} {'matmul users/s':>15s} {'ratio':>6s}")
    for name in bundle.tool_names:
        tool = bundle.load_tool(name)
        time_tool(tool, history.select(np.arange(min(n, args.batch_size))), args.batch_size)  # warm-up
        seconds = time_tool(tool, history, args.batch_size)
        bare = time_matmul(n, data.n_items, tool.config.dim, args.batch_size)
        print(f"{name:>10s} {n / seconds:10.0f} {n / bare:15.0f} {seconds / bare:6.2f}x")


if __name__ == "__main__":
    main()
