"""One evaluator for every scorer: full ranking (sequential) or 1 + N sampled candidates (direct)."""
from __future__ import annotations

import logging
from typing import Callable, Iterable

import numpy as np
import torch

from reasonrec.data.prepared import EvalSet, Sequences
from reasonrec.metrics import hit_and_ndcg, target_rank
from reasonrec.scores import majority_vote as vote
from reasonrec.tools.base import Tool, exclude_seen

TASKS = ("sequential", "direct")
logger = logging.getLogger(__name__)
Scorer = Callable[[Sequences], torch.Tensor]


@torch.no_grad()
def rank_targets(scorer: Scorer, evalset: EvalSet, task: str, batch_size: int = 1024) -> np.ndarray:
    """0-based rank of each user's held-out item."""
    ranks = []
    for lo in range(0, len(evalset.target), batch_size):
        rows = np.arange(lo, min(lo + batch_size, len(evalset.target)))
        history = evalset.history.select(rows)
        scores = scorer(history)
        if task == "sequential":
            scores = exclude_seen(scores, history)
            ranks.append(target_rank(scores, torch.from_numpy(evalset.target[rows])))
        elif task == "direct":
            cand = torch.from_numpy(evalset.candidates[rows])
            picked = scores.gather(1, cand.clamp(min=0)).masked_fill(cand < 0, float("-inf"))
            ranks.append(target_rank(picked, torch.zeros(len(rows), dtype=torch.long)))
        else:
            raise ValueError(f"unknown task {task!r}; use one of {TASKS}")
    return torch.cat(ranks).numpy() if ranks else np.zeros(0, dtype=np.int64)


def evaluate(scorer: Scorer, evalset: EvalSet, task: str) -> dict[str, float]:
    return hit_and_ndcg(rank_targets(scorer, evalset, task))


def tool_scorer(tool: Tool) -> Scorer:
    tool.eval()
    return tool.score


def majority_vote(tools: Iterable[Tool]) -> Scorer:
    """The paper's Majority Vote baseline: the mean of the tools' normalised scores."""
    tools = list(tools)
    for tool in tools:
        tool.eval()

    def score(history: Sequences) -> torch.Tensor:
        return vote([tool.score(history) for tool in tools])

    return score


def evaluate_bundle(data, bundle, task: str, split: str = "test") -> dict:
    """Every tool of the bundle, popularity fitted on the same training data, and their Majority Vote."""
    from reasonrec.tools import make_config, tool_class

    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; use one of {TASKS}")
    if list(bundle.item_ids()) != list(data.item_vocab.ids):
        raise ValueError(f"bundle {bundle.uri} was trained on another item catalogue than {data.uri}")
    evalset = data.eval_set(split)
    tools = {name: bundle.load_tool(name) for name in bundle.tool_names}
    results = {}
    for name, tool in tools.items():
        results[name] = evaluate(tool_scorer(tool), evalset, task)
        logger.info(f"{name:>12s} " + "  ".join(f"{k} {v:.4f}" for k, v in results[name].items()))
    popularity = tool_class("pop")(make_config("pop"), data.n_items)
    popularity.attach(data.train)
    baselines = {"popularity": evaluate(tool_scorer(popularity), evalset, task)}
    if len(tools) > 1:
        baselines["majority_vote"] = evaluate(majority_vote(tools.values()), evalset, task)
    for name, metrics in baselines.items():
        logger.info(f"{name:>12s} " + "  ".join(f"{k} {v:.4f}" for k, v in metrics.items()))
    return {
        "task": task, "dataset": data.meta["dataset"], "split": split, "users": int(len(evalset.target)),
        "bundle_version": bundle.version, "history_excluded": task == "sequential",
        "tools": results, "baselines": baselines,
    }


def ranks_from_results(results, users: np.ndarray, items: np.ndarray) -> np.ndarray:
    """0-based rank of each user's target within their ``ranked`` list, by the evaluator's rule.

    ``users``/``items`` give each target (aligned arrays); the rank counts listed items that score strictly
    higher than the target, as ``target_rank`` does. A target missing from the list ranks after it.
    """
    import pyarrow.compute as pc

    from reasonrec.data.vocab import Vocab

    row_of = Vocab(results.column("user_id").to_numpy(zero_copy_only=False)).index(users)
    if (row_of < 0).any():
        missing = np.asarray(users, dtype=object)[row_of < 0]
        raise ValueError(f"{len(missing)} evaluated user(s) have no result, e.g. {missing[0]!r}")
    ranked = results.column("ranked").combine_chunks().take(row_of)
    lengths = pc.list_value_length(ranked).to_numpy(zero_copy_only=False).astype(np.int64)
    flat = pc.list_flatten(ranked)
    parent = np.repeat(np.arange(len(lengths)), lengths)
    listed = flat.field("item_id").to_numpy(zero_copy_only=False)
    scores = flat.field("score").to_numpy(zero_copy_only=False)
    is_target = listed == np.asarray(items, dtype=object)[parent]
    target_score = np.full(len(lengths), np.nan)
    target_score[parent[is_target]] = scores[is_target]
    above = np.bincount(parent[scores > target_score[parent]], minlength=len(lengths))
    return np.where(np.isnan(target_score), lengths, above)


def evaluate_results(results, data, task: str, split: str = "test") -> dict:
    """HR/NDCG of committed batch results against the split's held-out items (cutoffs up to the smallest k), over the
    split's users the results answer (a run over a sample of users is scored on that sample: ``unanswered`` counts
    the split's other users)."""
    import pyarrow.compute as pc

    asked = results.filter(pc.equal(results.column("task"), task))
    # A user asked twice is evaluated once (the first answer): the requests decide duplicates, not the metric.
    _, first = np.unique(asked.column("user_id").to_numpy(zero_copy_only=False).astype(str), return_index=True)
    rows = asked.take(np.sort(first))
    if rows.num_rows == 0:
        raise ValueError(f"no committed results for task {task!r}")
    every = data.table(split)
    targets = every.filter(pc.is_in(every.column("user_id"), rows.column("user_id")))
    report = {"task": task, "split": split, "users": int(targets.num_rows), "results": int(asked.num_rows),
              "duplicates": int(asked.num_rows - len(first)), "unanswered": int(every.num_rows - targets.num_rows)}
    ranks = ranks_from_results(rows, users=targets.column("user_id").to_numpy(zero_copy_only=False),
                               items=targets.column("item_id").to_numpy(zero_copy_only=False))
    shortest = int(pc.min(pc.list_value_length(rows.column("ranked"))).as_py() or 0)
    report["metrics"] = hit_and_ndcg(ranks, ks=[k for k in (5, 10) if k <= shortest] or [shortest])
    return report
