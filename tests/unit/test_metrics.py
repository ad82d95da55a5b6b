import numpy as np
import pytest
import torch

from reasonrec.metrics import hit_and_ndcg, target_rank


def test_target_rank_counts_strictly_better_items():
    scores = torch.tensor([[0.1, 0.9, 0.5, float("-inf")], [3.0, 2.0, 1.0, 0.0]])
    assert target_rank(scores, torch.tensor([2, 0])).tolist() == [1, 0]


def test_hit_and_ndcg_hand_computed():
    m = hit_and_ndcg(np.array([0, 1, 4, 5, 20]))
    assert m["HR@5"] == pytest.approx(3 / 5)
    assert m["NDCG@5"] == pytest.approx((1 + 1 / np.log2(3) + 1 / np.log2(6)) / 5)
    assert m["HR@10"] == pytest.approx(4 / 5)
    assert m["NDCG@10"] == pytest.approx((1 + 1 / np.log2(3) + 1 / np.log2(6) + 1 / np.log2(7)) / 5)


def test_ndcg_agrees_with_scikit_learn():
    from sklearn.metrics import ndcg_score

    rng = np.random.default_rng(0)
    scores = rng.random((50, 30))
    target = rng.integers(0, 30, 50)
    relevance = np.zeros_like(scores)
    relevance[np.arange(50), target] = 1
    ranks = target_rank(torch.from_numpy(scores), torch.from_numpy(target)).numpy()
    assert hit_and_ndcg(ranks, ks=(10,))["NDCG@10"] == pytest.approx(ndcg_score(relevance, scores, k=10))


def test_bleu_and_rouge_hand_computed():
    from reasonrec.metrics import text_quality

    same = text_quality(["the cat sat on the mat"], ["the cat sat on the mat"])
    assert same == {"BLEU-4": pytest.approx(100), "ROUGE-L": pytest.approx(100)}
    # 1- to 4-gram precisions 4/5, 3/4, 2/3, 1/2, equal lengths (no brevity penalty): BLEU = (1/5) ** (1/4).
    assert text_quality(["a b c d e"], ["a b c d f"])["BLEU-4"] == pytest.approx(100 * 0.2 ** 0.25)
    # Longest common subsequence "the cat sat on mat": 5 of 6 tokens each way, F1 5/6.
    assert text_quality(["the cat sat on a mat"], ["the cat sat on the mat"])["ROUGE-L"] == pytest.approx(500 / 6)
    # A shorter guess: brevity penalty exp(1 - 6/4) on precisions 4/4, 3/3, 2/2, 1/1.
    assert text_quality(["a b c d"], ["a b c d e f"])["BLEU-4"] == pytest.approx(100 * np.exp(1 - 6 / 4))
    with pytest.raises(ValueError, match="references"):
        text_quality(["a"], [])


@pytest.mark.parametrize("task", ["sequential", "direct"])
def test_the_evaluator_ranks_the_same_in_passes_sized_by_the_catalogue(task, monkeypatch):
    """rank_targets sizes its passes by the catalogue's width (reasonrec.scores.SCORE_FLOATS): 1,000 users over 51
    columns in passes of 7 rows (after a first one of 64) rank exactly as in one pass."""
    from reasonrec import scores
    from reasonrec.data.prepared import EvalSet
    from reasonrec.data.sequences import Sequences
    from reasonrec.evaluator import rank_targets

    rng = np.random.default_rng(0)
    users, width = 1000, 51
    lengths = rng.integers(1, 6, users)
    history = Sequences(np.array([f"u{i}" for i in range(users)], dtype=object),
                        np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64),
                        rng.integers(1, width, lengths.sum()).astype(np.int64))
    table = torch.from_numpy(rng.normal(size=(users, width)).astype(np.float32))
    seen = []

    def scorer(h):  # a fixed score row per user, whatever the pass it falls in
        seen.append(len(h))
        return table[[int(u[1:]) for u in h.user_ids]].clone()

    candidates = rng.integers(1, width, (users, 10)) if task == "direct" else None
    evalset = EvalSet(history, rng.integers(1, width, users), candidates)
    whole = rank_targets(scorer, evalset, task, batch_size=users)
    monkeypatch.setattr(scores, "SCORE_FLOATS", 7 * width)
    seen.clear()
    assert (rank_targets(scorer, evalset, task) == whole).all()
    assert seen[:2] == [64, 7] and sum(seen) == users
