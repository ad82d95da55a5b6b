"""One evaluator for every scorer: full ranking (sequential), 1 + N sampled candidates (direct), click
probabilities of the CTR rows (ctr: AUC and LogLoss), or generated explanations (explain: BLEU-4 and ROUGE-L)."""
from __future__ import annotations

import logging
from typing import Callable, Iterable

import numpy as np
import torch

from reasonrec.data.prepared import EvalSet, Sequences
from reasonrec.metrics import hit_and_ndcg, target_rank
from reasonrec.scores import majority_vote as vote, rows_per_pass
from reasonrec.tools.base import Tool, exclude_seen

TASKS = ("sequential", "direct", "ctr", "explain")
logger = logging.getLogger(__name__)
Scorer = Callable[[Sequences], torch.Tensor]


@torch.no_grad()
def rank_targets(scorer: Scorer, evalset: EvalSet, task: str, batch_size: int | None = None) -> np.ndarray:
    """0-based rank of each user's held-out item. ``batch_size`` None: as many users as fit one pass of scoring
    over the catalogue (``rows_per_pass``; the first 64 users show the catalogue's width)."""
    ranks, lo, step = [], 0, batch_size or 64
    while lo < len(evalset.target):
        rows = np.arange(lo, min(lo + step, len(evalset.target)))
        lo += len(rows)
        history = evalset.history.select(rows)
        scores = scorer(history)
        step = batch_size or rows_per_pass(scores.shape[1])
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
    if task == "explain":
        return evaluate_explain(data, bundle, split)
    evalset = data.eval_set(split)
    tools = {name: bundle.load_tool(name) for name in bundle.tools_for(task)}
    domains = user_domains(data, evalset.history.user_ids)
    ranks = {name: rank_targets(tool_scorer(tool), evalset, task) for name, tool in tools.items()}
    popularity = tool_class("pop")(make_config("pop"), data.n_items)
    popularity.attach(data.train)
    others = {"popularity": rank_targets(tool_scorer(popularity), evalset, task)}
    if len(tools) > 1:
        others["majority_vote"] = rank_targets(majority_vote(tools.values()), evalset, task)
    results = {name: hit_and_ndcg(r) for name, r in ranks.items()}
    baselines = {name: hit_and_ndcg(r) for name, r in others.items()}
    for name, metrics in {**results, **baselines}.items():
        logger.info(f"{name:>12s} " + "  ".join(f"{k} {v:.4f}" for k, v in metrics.items()))
    report = {
        "task": task, "dataset": data.meta["dataset"], "split": split, "split_kind": data.meta.get("split",
                                                                                                  "leave-one-out"),
        "users": int(len(evalset.target)), "bundle_version": bundle.version, "history_excluded": task == "sequential",
        "tools": results, "baselines": baselines,
    }
    if domains is not None:  # a multi-domain catalogue: the same ranks, each domain's users apart (paper Table A4)
        report["by_domain"] = {domain: {name: hit_and_ndcg(r[domains == domain]) for name, r in
                                        {**ranks, **others}.items()} for domain in data.meta["domains"]}
    return report


def user_domains(data, users: np.ndarray) -> np.ndarray | None:
    """Each user's domain on a multi-domain catalogue (``reasonrec.data.domains``), else None."""
    if not data.meta.get("domains"):
        return None
    from reasonrec.data.domains import split_ids

    return split_ids(np.asarray(users, dtype=object))[0]


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


def evaluate_explain(data, bundle, split: str = "test", rows: int = 300, config=None) -> dict:
    """BLEU-4 and ROUGE-L of the bundle's VLM explanations of ``rows`` reviews of the split (a seeded sample),
    generated by the nightly job's stages in this process (``config``: a ScoreConfig, mode vlm-only by default),
    beside two baselines on the same rows: the item's most common training review, and a template filled from the
    item's attributes and the rating."""
    import pyarrow.compute as pc

    from reasonrec.batch.config import ScoreConfig
    from reasonrec.batch.context import Scoring
    from reasonrec.batch.local import LocalPipeline
    from reasonrec.batch.requests import explain_requests
    from reasonrec.metrics import text_quality
    from reasonrec.vlm.deliberator import DeliberatorConfig, local_device

    requests = explain_requests(data, split)
    if rows and requests.num_rows > rows:
        requests = requests.take(np.sort(np.random.default_rng(0).permutation(requests.num_rows)[:rows]))
    config = config or ScoreConfig(mode="vlm-only", deliberator=DeliberatorConfig(device=local_device()))
    answered = LocalPipeline(Scoring(bundle, config))(requests)
    failed = answered.filter(pc.is_valid(answered.column("error")))
    if failed.num_rows:
        raise ValueError(f"{failed.num_rows} explain request(s) not answered, e.g. {failed.column('error')[0]}")
    answered = answered.sort_by("row")
    references = reference_reviews(data, split, answered)
    generated = answered.column("text").to_pylist()
    baselines = explanation_baselines(data, answered)
    report = {"task": "explain", "dataset": data.meta["dataset"], "split": split, "rows": answered.num_rows,
              "bundle_version": bundle.version, "tools": {}, "vlm": text_quality(generated, references),
              "baselines": {name: text_quality(texts, references) for name, texts in baselines.items()},
              "examples": [{"reference": r, "vlm": g, **{name: texts[i] for name, texts in baselines.items()}}
                           for i, (r, g) in enumerate(zip(references[:3], generated[:3]))]}
    for name, metrics in {"vlm": report["vlm"], **report["baselines"]}.items():
        logger.info(f"{name:>20s} " + "  ".join(f"{k} {v:.2f}" for k, v in metrics.items()))
    return report


def reference_reviews(data, split: str, answered) -> list[str]:
    """The split's review of each answered (user_id, item_id), in ``answered``'s order."""
    import pandas as pd

    rows = data.explain_rows(split)[0].select(["user_id", "item_id", "review"]).to_pandas()
    keys = answered.select(["user_id", "item_id"]).to_pandas()
    found = keys.merge(rows.drop_duplicates(["user_id", "item_id"]), how="left", on=["user_id", "item_id"])
    missing = found["review"].isna()
    if missing.any():
        first = found[missing].iloc[0]
        raise ValueError(f"{int(missing.sum())} explanation(s) of the results have no {split} review, e.g. user_id "
                         f"{first['user_id']!r} item_id {first['item_id']!r}")
    return pd.Series(found["review"]).tolist()


def explanation_baselines(data, asked) -> dict[str, list[str]]:
    """Per asked row (``item_id``, ``rating``): the item's most common training review (the most common review of
    all for an item without one), and a template over the item's attributes and the rating."""
    import pandas as pd

    train = data.explain_rows("train")[0].select(["item_id", "review"]).to_pandas()
    counts = train.groupby(["item_id", "review"]).size().reset_index(name="n")
    top = counts.sort_values(["n", "review"], ascending=[False, True]).drop_duplicates("item_id")
    fallback = train["review"].mode().iloc[0] if len(train) else ""
    items = asked.column("item_id").to_pylist()
    common = pd.Series(top["review"].to_numpy(), index=top["item_id"]).reindex(items).fillna(fallback).tolist()
    import pyarrow.compute as pc

    catalogue = data.table("items")
    row = pc.index_in(asked.column("item_id"), catalogue.column("item_id"))
    title, brand = (catalogue.column(c).take(row).to_pylist() for c in ("title", "brand"))
    firsts = [c[0] if c else "product" for c in catalogue.column("categories").take(row).to_pylist()]
    stars = np.round(asked.column("rating").to_numpy(zero_copy_only=False)).astype(int)
    template = [f"{s} stars for the {t or 'item ' + i}, a {c}" + (f" by {b}." if b else ".")
                for s, t, i, c, b in zip(stars, title, items, firsts, brand)]
    return {"item_review": common, "attribute_template": template}


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
    if task == "explain":  # one answer per (user, item): every committed explanation against its review
        if asked.num_rows == 0:
            raise ValueError("no committed results for task 'explain'")
        from reasonrec.metrics import text_quality

        return {"task": task, "split": split, "results": asked.num_rows,
                "metrics": text_quality(asked.column("text").to_pylist(), reference_reviews(data, split, asked))}
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
    ks = [k for k in (5, 10) if k <= shortest] or [shortest]
    report["metrics"] = hit_and_ndcg(ranks, ks=ks)
    domains = user_domains(data, users)
    if domains is not None:
        report["by_domain"] = {d: hit_and_ndcg(ranks[domains == d], ks=ks) for d in data.meta["domains"]}
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
