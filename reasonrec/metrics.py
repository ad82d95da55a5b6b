"""Ranking metrics from the 0-based rank of the held-out item, and CTR metrics (one evaluator for every model)."""
from __future__ import annotations

import numpy as np
import torch

KS = (5, 10)


def target_rank(scores: torch.Tensor, target_col: torch.Tensor) -> torch.Tensor:
    """0-based rank of each row's target column: the number of columns that score strictly higher.

    Ties count in the target's favour only if they are exact; pass scores where excluded items are -inf.
    """
    target = scores.gather(1, target_col[:, None])
    return (scores > target).sum(dim=1)


def hit_and_ndcg(ranks: np.ndarray, ks=KS) -> dict[str, float]:
    ranks = np.asarray(ranks)
    out = {}
    for k in ks:
        hit = ranks < k
        out[f"HR@{k}"] = float(hit.mean()) if len(ranks) else 0.0
        out[f"NDCG@{k}"] = float((hit / np.log2(ranks + 2)).mean()) if len(ranks) else 0.0
    return out


def auc_and_logloss(labels: np.ndarray, probabilities: np.ndarray) -> dict[str, float]:
    """CTR metrics (scikit-learn): AUC of the click probabilities, and their log loss."""
    from sklearn.metrics import log_loss, roc_auc_score

    labels = np.asarray(labels, dtype=np.float64)
    probabilities = np.clip(np.asarray(probabilities, dtype=np.float64), 1e-7, 1 - 1e-7)
    if len(np.unique(labels)) < 2:
        raise ValueError(f"AUC needs clicks and non-clicks; got {int(labels.sum())} clicks in {len(labels)} rows")
    return {"AUC": float(roc_auc_score(labels, probabilities)), "LogLoss": float(log_loss(labels, probabilities))}


def text_quality(generated: list[str], references: list[str]) -> dict[str, float]:
    """Explanation metrics on the paper's scale (Table A2): corpus BLEU-4 (sacrebleu, 13a tokenisation) and the mean
    ROUGE-L F1 (rouge-score), both x 100."""
    import sacrebleu
    from rouge_score import rouge_scorer

    if len(generated) != len(references) or not references:
        raise ValueError(f"{len(generated)} generated texts for {len(references)} references")
    scorer = rouge_scorer.RougeScorer(["rougeL"])
    rouge = np.mean([scorer.score(ref, hyp)["rougeL"].fmeasure for hyp, ref in zip(generated, references)])
    return {"BLEU-4": float(sacrebleu.corpus_bleu(list(generated), [list(references)]).score),
            "ROUGE-L": float(100 * rouge)}

