import pytest

from reasonrec import tables


def bundle_report(task, sasrec, vote, **extra):
    return {"task": task, "dataset": "d", "users": 10, "tools": {"sasrec": {"HR@5": sasrec, "NDCG@5": sasrec / 2}},
            "baselines": {"majority_vote": {"HR@5": vote, "NDCG@5": vote / 2}}, **extra}


def test_the_time_shift_table_puts_each_model_without_and_with_the_shift():
    system = {"task": "sequential", "mode": "planner", "users": 10, "metrics": {"HR@5": 0.3, "NDCG@5": 0.2}}
    text = tables.time_shift([bundle_report("sequential", 0.2, 0.25), {**system}],
                             [bundle_report("sequential", 0.1, 0.2), {**system, "metrics": {"HR@5": 0.15,
                                                                                          "NDCG@5": 0.1}}])
    assert "| sasrec | 0.2000 | 0.1000 | -50% | 0.1000 | 0.0500 | -50% |" in text
    assert "| majority_vote | 0.2500 | 0.2000 | -20% |" in text
    assert "| ReasonRec system (planner) | 0.3000 | 0.1500 | -50% |" in text


def test_the_multi_domain_table_sets_each_domain_beside_the_model_trained_alone():
    combined = bundle_report("sequential", 0.1, 0.1, by_domain={
        "beauty": {"sasrec": {"HR@5": 0.054, "NDCG@5": 0.03}, "majority_vote": {"HR@5": 0.05, "NDCG@5": 0.03}},
        "toys": {"sasrec": {"HR@5": 0.06, "NDCG@5": 0.04}, "majority_vote": {"HR@5": 0.05, "NDCG@5": 0.03}}})
    text = tables.multi_domain([combined], {"beauty": [bundle_report("sequential", 0.06, 0.05)]})
    assert "| sasrec | 0.0540 | 0.0600 | 0.90x |" in text
    assert "### sequential, domain toys" in text and "| sasrec | 0.0600 | - | - |" in text
    assert "| REASONREC | Sports+Beauty | 0.0582 | 0.0488 |" in text
    with pytest.raises(ValueError, match="per-domain"):
        tables.multi_domain([bundle_report("sequential", 0.1, 0.1)], {})


def test_the_explanation_table_sets_the_vlm_beside_its_baselines_and_the_paper():
    report = {"task": "explain", "dataset": "syn", "rows": 300, "vlm": {"BLEU-4": 30.0, "ROUGE-L": 55.5},
              "baselines": {"item_review": {"BLEU-4": 12.0, "ROUGE-L": 40.0},
                            "attribute_template": {"BLEU-4": 1.0, "ROUGE-L": 20.0}}}
    committed = {"task": "explain", "mode": "planner", "results": 40, "metrics": {"BLEU-4": 29.0, "ROUGE-L": 54.0}}
    text = tables.explanation([report, committed])
    assert "| VLM (300 rows) | 30.00 | 55.50 |" in text and "| item_review | 12.00 | 40.00 |" in text
    assert "| ReasonRec system (planner), 40 rows | 29.00 | 54.00 |" in text
    assert "| REASONREC | Beauty | 4.3683 | 17.4422 |" in text
