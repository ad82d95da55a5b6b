"""Full-catalogue scoring throughput of each tool vs the bare user x item matmul, measured in the same run.

    python benchmarks/score_tools.py [--data URI] [--bundle URI] [--block N] [--batch-size N] [--threads 2]

Scoring = what the nightly job's tool stage does per tool: the users of a block (``--block``, the job's rows per
tool-actor call) encoded at once (``user_vectors``), then per pass of ``--batch-size`` rows one matmul against the
catalogue, history masking and top-10 (``reasonrec.scores.top_k``), for every test user. The bare matmul multiplies
random (batch, dim) user vectors by the (n_items + 1, dim) item table: the floor any embedding model pays. The
ratio says how much the model adds on top of it: the median over ``--repeats`` back-to-back pairs of passes.

The pass defaults to the rows the nightly job's tool stage scores per pass (``reasonrec.scores.rows_per_pass``:
a 2M-float score matrix). Both the floor and the tools write their products into a matrix allocated once (per run,
per block): a matrix allocated per product is often mapped afresh by malloc, and its page faults made the floor
swing between ~52k and ~85k users/s from one tool's row to the next in the same run (docs/results.md).

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
from reasonrec.batch.config import ScoreConfig
from reasonrec.scores import rows_per_pass, top_k
from reasonrec.tools import exclude_seen


def time_tool(tool, history, block: int, batch_size: int) -> float:
    start = time.perf_counter()
    with torch.inference_mode():
        items = tool.item_table()
        for lo in range(0, len(history), block):
            users = history.select(np.arange(lo, min(lo + block, len(history))))
            vectors = tool.user_vectors(users)
            scores = torch.empty(batch_size, len(items))  # one per block, as the tool stage does
            for at in range(0, len(users), batch_size):
                rows = users.select(np.arange(at, min(at + batch_size, len(users))))
                product = torch.mm(vectors[at:at + batch_size], items.T, out=scores[:len(rows)])
                top_k(exclude_seen(product, rows), 10)
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
    scores = torch.empty(batch_size, n_items + 1)
    start = time.perf_counter()
    for lo in range(0, n_users, batch_size):
        rows = min(batch_size, n_users - lo)
        torch.mm(users[:rows], items.T, out=scores[:rows])
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="/tmp/rr/beauty")
    parser.add_argument("--bundle", default="/tmp/rr/beauty-bundle")
    parser.add_argument("--block", type=int, default=ScoreConfig().batch_size,
                        help="users encoded per call (default: the job's rows per tool-actor call)")
    parser.add_argument("--batch-size", type=int, help="users per pass (default: the job's, rows_per_pass)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--check-users", type=int, default=2048)
    parser.add_argument("--repeats", type=int, default=5, help="pairs of passes (tool, floor) over the users")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    data, bundle = PreparedData(args.data), Bundle(args.bundle)
    history = data.eval_set("test").history
    n = len(history)
    args.batch_size = args.batch_size or rows_per_pass(data.n_items + 1)
    print(f"{data.meta['dataset']}: {n} users x {data.n_items} items, block {args.block}, pass {args.batch_size}, "
          f"{args.threads} threads")
    print(f"{'tool':>10s} {'users/s':>10s} {'matmul users/s':>15s} {'ratio':>6s}  shortcuts vs full grid")
    for name in bundle.tool_names:
        tool = bundle.load_tool(name)
        if "ctr" in tool.tasks:  # a CTR tool scores given candidates, never the whole catalogue
            continue
        time_tool(tool, history.select(np.arange(min(n, args.block))), args.block, args.batch_size)  # warm-up
        # Tool and floor back to back, --repeats times: this machine's speed drifts between runs and within one
        # (the floor alone: ~52k or ~85k users/s for a minute at a time), so the ratio is the median of each
        # pair's, next to the fastest pass of each.
        pairs = np.array([(time_tool(tool, history, args.block, args.batch_size),
                           time_matmul(n, data.n_items, tool.config.dim, args.batch_size))
                          for _ in range(args.repeats)])
        check = shortcut_check(tool, history.select(np.arange(min(n, args.check_users)))) \
            if hasattr(tool, "encode_last") else "-"
        ratio = np.median(pairs[:, 0] / pairs[:, 1])
        print(f"{name:>10s} {n / pairs[:, 0].min():10.0f} {n / pairs[:, 1].min():15.0f} {ratio:6.2f}x  {check}")


if __name__ == "__main__":
    main()
