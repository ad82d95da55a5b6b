"""One evaluator for every scorer: full ranking (sequential), 1 + N sampled candidates (direct), or click
probabilities of the CTR rows (ctr: AUC and LogLoss)."""
from __future__ import annotations

import logging
from typing import Callable, Iterable

import numpy as np
import torch

from reasonrec.data.prepared import EvalSet, Sequences
from reasonrec.metrics import hit_and_ndcg, target_rank
from reasonrec.scores import majority_vote as vote
from reasonrec.tools.base import Tool, exclude_seen

TASKS = ("sequential", "direct", "ctr")
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
    if task == "ctr":
        return evaluate_ctr_bundle(data, bundle, split)
    evalset = data.eval_set(split)
    tools = {name: bundle.load_tool(name) for name in bundle.tools_for(task)}
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


def evaluate_ctr_bundle(data, bundle, split: str = "test") -> dict:
    """AUC and LogLoss of every CTR tool on the split's CTR rows; popularity (the log of an item's training clicks,
    calibrated by a logistic regression on the training rows) and the Majority Vote (the tools' mean probability)."""
    from sklearn.linear_model import LogisticRegression

    from reasonrec.metrics import auc_and_logloss

    rows = data.ctr_set(split)
    names = bundle.tools_for("ctr")
    if not names:
        raise ValueError(f"bundle {bundle.uri} has no CTR tool (train one: reasonrec train-tools --tools dcnv2)")
    probabilities, results = {}, {}
    for name in names:
        with torch.no_grad():
            probabilities[name] = torch.sigmoid(bundle.load_tool(name).logits_of(rows.history, rows.items)).numpy()
        results[name] = auc_and_logloss(rows.labels, probabilities[name])
        logger.info(f"{name:>12s} " + "  ".join(f"{k} {v:.4f}" for k, v in results[name].items()))
    train = data.ctr_set("train")
    clicks = np.bincount(train.items[train.labels > 0], minlength=data.n_items + 1).astype(np.float64)
    popularity = LogisticRegression().fit(np.log1p(clicks[train.items])[:, None], train.labels)
    baselines = {"popularity": auc_and_logloss(rows.labels, popularity.predict_proba(
        np.log1p(clicks[rows.items])[:, None])[:, 1])}
    if len(names) > 1:
        baselines["majority_vote"] = auc_and_logloss(rows.labels, np.mean(list(probabilities.values()), axis=0))
    for name, metrics in baselines.items():
        logger.info(f"{name:>12s} " + "  ".join(f"{k} {v:.4f}" for k, v in metrics.items()))
    return {"task": "ctr", "dataset": data.meta["dataset"], "split": split, "rows": len(rows),
            "users": len(np.unique(rows.history.user_ids)), "clicks": int(rows.labels.sum()),
            "bundle_version": bundle.version, "tools": results, "baselines": baselines}


def ranks_from_results(results, users: np.ndarray, items: np.ndarray) -> np.ndarray:
    """0-based rank of each user's target within their ``ranked`` list, by the evaluator's rule.

    ``users``/``items`` give each target (aligned arrays); the rank counts listed items that score strictly
    higher than the target, as ``target_rank`` does. A target missing from the list ranks after it.
    """
    parent, scores, is_target = candidate_labels(results, users, items)
    lengths = np.bincount(parent, minlength=len(users))
    target_score = np.full(len(lengths), np.nan)
    target_score[parent[is_target]] = scores[is_target]
    above = np.bincount(parent[scores > target_score[parent]], minlength=len(lengths))
    return np.where(np.isnan(target_score), lengths, above)


def evaluate_results(results, data, task: str, split: str = "test") -> dict:
    """HR/NDCG of committed batch results against the split's held-out items (cutoffs up to the smallest k; ctr: AUC
    and LogLoss of the committed click probabilities), over the
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
    users = targets.column("user_id").to_numpy(zero_copy_only=False)
    items = targets.column("item_id").to_numpy(zero_copy_only=False)
    if task == "ctr":  # every candidate's committed probability against its click label
        from reasonrec.metrics import auc_and_logloss

        _, probability, clicked = candidate_labels(rows, users, items)
        report["metrics"] = auc_and_logloss(clicked, probability)
        return report
    ranks = ranks_from_results(rows, users=users, items=items)
    shortest = int(pc.min(pc.list_value_length(rows.column("ranked"))).as_py() or 0)
    report["metrics"] = hit_and_ndcg(ranks, ks=[k for k in (5, 10) if k <= shortest] or [shortest])
    return report


def candidate_labels(results, users: np.ndarray, items: np.ndarray):
    """Each listed candidate of every user's result row, flat: (row of the candidate, its score, whether it is the
    user's target). Rows follow ``users``; a user without a result is an error."""
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
    scores = flat.field("score").to_numpy(zero_copy_only=False).astype(np.float64)
    return parent, scores, listed == np.asarray(items, dtype=object)[parent]


def ctr_loglik(results, users: np.ndarray, items: np.ndarray) -> np.ndarray:
    """Per user: the mean log-likelihood of the click labels under the row's probabilities (ctr results)."""
    parent, p, clicked = candidate_labels(results, users, items)
    p = np.clip(p, 1e-7, 1 - 1e-7)
    ll = np.where(clicked, np.log(p), np.log1p(-p))
    return np.bincount(parent, ll, minlength=len(users)) / np.maximum(np.bincount(parent, minlength=len(users)), 1)
