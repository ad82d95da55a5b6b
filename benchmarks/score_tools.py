"""Full-catalogue scoring throughput of each tool vs the bare user x item matmul, measured in the same run.

    python benchmarks/score_tools.py [--data URI] [--bundle URI] [--batch-size N] [--threads 2]

Scoring = the tool's ``score`` (encoder + one matmul against the catalogue) + history masking + top-10, for every
test user. The bare matmul multiplies random (batch, dim) user vectors by the (n_items + 1, dim) item table: the
floor any embedding model pays. The ratio says how much the model adds on top of it. Each is the fastest of
``--repeats`` passes, interleaved.

The batch defaults to the rows the nightly job's tool stage scores per pass (``reasonrec.scores.rows_per_pass``:
a 2M-float score matrix, reused from the heap). A larger batch measures a lower floor than the hardware's: a score
matrix over glibc's 32 MiB mmap ceiling (1,024 Beauty users: 50 MB) is mapped afresh for every product and its
page faults (~12,000 per batch) halve the bare matmul's speed, which flatters every ratio (docs/results.md).

For the sequential tools it also checks the scoring shortcuts (users chunked by history length, the last position
only) against the plain computation (every user padded to max_len, every position encoded) on the first
``--check-users`` users: the share of equal top-10 lists and the largest score difference.
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from reasonrec.bundle import Bundle
from reasonrec.data.prepared import PreparedData
from reasonrec.scores import rows_per_pass
from reasonrec.tools import exclude_seen


def time_tool(tool, history, batch_size: int) -> float:
    start = time.perf_counter()
    with torch.no_grad():
        for lo in range(0, len(history), batch_size):
            batch = history.select(np.arange(lo, min(lo + batch_size, len(history))))
            exclude_seen(tool.score(batch), batch).topk(10, dim=1)
    return time.perf_counter() - start


def full_grid_scores(tool, history) -> torch.Tensor:
    """Scores the plain way: one grid of width max_len, every position encoded, the last one read."""
    grid = torch.zeros(len(history), tool.config.max_len, dtype=torch.int64)
    tails = torch.from_numpy(history.padded(np.arange(len(history)), tool.config.max_len))
    grid[:, grid.shape[1] - tails.shape[1]:] = tails
    return tool.encode(grid)[:, -1] @ tool.item_table().T


def shortcut_check(tool, history) -> str:
    with torch.no_grad():
        fast, full = tool.score(history), full_grid_scores(tool, history)
        largest = float((fast - full).abs().max())
        same = (exclude_seen(fast, history).topk(10, dim=1).indices ==
                exclude_seen(full, history).topk(10, dim=1).indices).all(dim=1).float().mean()
    return f"top-10 equal {float(same):.4f}, max |score diff| {largest:.1e}"


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
    parser.add_argument("--batch-size", type=int, help="users per pass (default: the job's, rows_per_pass)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--check-users", type=int, default=2048)
    parser.add_argument("--repeats", type=int, default=3, help="passes over the users; the fastest counts")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    data, bundle = PreparedData(args.data), Bundle(args.bundle)
    history = data.eval_set("test").history
    n = len(history)
    args.batch_size = args.batch_size or rows_per_pass(data.n_items + 1)
    print(f"{data.meta['dataset']}: {n} users x {data.n_items} items, batch {args.batch_size}, "
          f"{args.threads} threads")
    print(f"{'tool':>10s} {'users/s':>10s} {'matmul users/s':>15s} {'ratio':>6s}  shortcuts vs full grid")
    for name in bundle.tool_names:
        tool = bundle.load_tool(name)
        if "ctr" in tool.tasks:  # a CTR tool scores given candidates, never the whole catalogue
            continue
        time_tool(tool, history.select(np.arange(min(n, args.batch_size))), args.batch_size)  # warm-up
        # Best of --repeats, tool and floor interleaved: on a shared machine one pass of either can be 2x slow.
        seconds, bare = np.inf, np.inf
        for _ in range(args.repeats):
            seconds = min(seconds, time_tool(tool, history, args.batch_size))
            bare = min(bare, time_matmul(n, data.n_items, tool.config.dim, args.batch_size))
        check = shortcut_check(tool, history.select(np.arange(min(n, args.check_users)))) \
            if hasattr(tool, "encode_last") else "-"
        print(f"{name:>10s} {n / seconds:10.0f} {n / bare:15.0f} {seconds / bare:6.2f}x  {check}")


if __name__ == "__main__":
    main()
