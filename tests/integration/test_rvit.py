"""R-VIT examples, LoRA merge, fine-tuning with Ray Train into a bundle, and the deliberator actor under Ray Data."""
import dataclasses

import numpy as np
import pyarrow.compute as pc
import pytest

from conftest import PLANNER_SCORE
from reasonrec.bundle import Bundle
from reasonrec.data.prepared import Sequences
from reasonrec.horizon import EvidenceHorizon
from reasonrec.prompts.templates import LABELS
from reasonrec.vlm.examples import ExamplesConfig, build_examples, sample_candidates, split_history


@pytest.fixture(scope="module")
def bundle(bundle_uri):
    return Bundle(bundle_uri)


@pytest.fixture(scope="module")
def tools(bundle):
    return {name: bundle.load_tool(name) for name in bundle.tools_for("sequential")}  # as finetune_vlm does


@pytest.fixture(scope="module")
def horizon(bundle):
    return EvidenceHorizon.from_json(bundle.read("horizon.json"))


def test_candidates_hold_the_positive_once_and_no_seen_item():
    rng = np.random.default_rng(0)
    history = Sequences(np.array(["a", "b", "c"], dtype=object), np.array([0, 3, 4, 10]),
                        np.array([1, 2, 3, 5, 1, 2, 3, 4, 6, 7]))
    target = np.array([4, 9, 8])
    candidates, position = sample_candidates(history, target, n_items=30, n=20, rng=rng)
    assert candidates.shape == (3, 20)
    for u in range(3):
        row = candidates[u]
        seen = history.items[history.offsets[u]:history.offsets[u + 1]]
        assert row[position[u]] == target[u] and (row == target[u]).sum() == 1
        assert len(set(row.tolist())) == 20 and not set(row.tolist()) & set(seen.tolist())
        assert row.min() >= 1 and row.max() <= 30
    with pytest.raises(ValueError, match="too small"):
        sample_candidates(history, target, n_items=12, n=20, rng=rng)


def test_train_split_targets_follow_their_prefix(synthetic_data):
    history, target = split_history(synthetic_data, "train", per_user=3)
    train = synthetic_data.train
    users = {u: i for i, u in enumerate(train.user_ids)}
    for row in range(0, len(target), 97):
        seq = train.items[train.offsets[users[history.user_ids[row]]]:train.offsets[users[history.user_ids[row]] + 1]]
        h = history.items[history.offsets[row]:history.offsets[row + 1]]
        assert 1 <= len(h) < len(seq) and (seq[:len(h)] == h).all() and seq[len(h)] == target[row]
    assert (np.bincount(np.unique(history.user_ids, return_inverse=True)[1]) <= 3).all()


def test_examples_follow_the_horizon_and_label_tool_usability(synthetic_data, horizon, tools):
    config = ExamplesConfig(noise=0.0, seed=1)
    table = build_examples(synthetic_data, "train", horizon, tools, config)
    rows = table.to_pylist()
    assert table.num_rows > 1000 and set(table["task"].to_pylist()) == {"sequential", "direct", "ctr", "explain"}
    decisions = {"low": "delegate", "medium": "answer", "high": "consult"}
    for r in rows:
        assert "{" not in r["prompt"] and "answer:" not in r["prompt"]
        assert r["prompt"].endswith(r["context"]) and r["prompt"].count("<image>") == len(r["images"])
        if r["task"] == "explain":
            assert r["decision"] == "answer" and r["answer"]
            continue
        assert r["decision"] == decisions[r["level"]]
        assert r["tools"] == {"delegate": ["sasrec"], "answer": [], "consult": sorted(tools)}[r["decision"]]
        if r["task"] == "sequential":
            assert r["labels"] == list(LABELS[:20]) and r["answer"] in r["labels"] and len(r["candidates"]) == 20
            # Without noise, a tool's output is the answer exactly when the tool is labelled usable.
            for tool, output in zip(r["tools"], r["tool_outputs"]):
                assert (output == r["answer"]) == (tool in r["usable"])
        else:
            assert r["labels"] == [] and r["answer"] in ("yes", "no") and len(r["candidates"]) == 1
    positions = [r["labels"].index(r["answer"]) for r in rows if r["task"] == "sequential"]
    assert len(set(positions)) == 20  # the positive is not always in the same slot


def test_noise_replaces_the_configured_share_of_tool_outputs(synthetic_data, horizon, tools):
    table = build_examples(synthetic_data, "train", horizon, tools, ExamplesConfig(noise=0.3, seed=2))
    noisy = pc.list_flatten(table["noisy"]).to_numpy(zero_copy_only=False)
    assert len(noisy) > 300 and abs(noisy.mean() - 0.3) < 0.06
    clean = build_examples(synthetic_data, "train", horizon, tools, ExamplesConfig(noise=0.0, seed=2))
    assert not pc.any(pc.list_flatten(clean["noisy"])).as_py()
    # Same seed, every output noisy: each sequential tool output differs from the tool's own answer.
    always = build_examples(synthetic_data, "train", horizon, tools, ExamplesConfig(noise=1.0, seed=2))
    pairs = [(a, b) for ra, rb in zip(always.to_pylist(), clean.to_pylist()) if ra["task"] == "sequential"
             for a, b in zip(ra["tool_outputs"], rb["tool_outputs"])]
    assert len(pairs) > 100 and all(a != b for a, b in pairs)


def test_eval_examples_without_tools_answer_alone(synthetic_data, horizon):
    table = build_examples(synthetic_data, "test", horizon, {}, ExamplesConfig(), decision="answer",
                           tasks={"sequential": 1.0})
    assert table.num_rows == len(synthetic_data.eval_set("test").target)
    assert set(table["decision"].to_pylist()) == {"answer"} and not pc.any(pc.list_value_length(table["tools"])
                                                                           .cast("bool")).as_py()


def test_warmup_form_keeps_only_the_evidence_and_repeats_draw_anew(synthetic_data, horizon, tools):
    config = ExamplesConfig(max_history=2, repeats=2, decision="answer", seed=3)
    table = build_examples(synthetic_data, "train", horizon, tools, config, warmup=True)
    single = build_examples(synthetic_data, "train", horizon, tools, dataclasses.replace(config, repeats=1),
                            warmup=True)
    assert table.num_rows == 2 * single.num_rows
    rows = table.to_pylist()
    for r in rows:
        assert r["template_id"] == f"{r['task']}-warmup" and r["decision"] == "answer" and r["tools"] == []
        assert "EH" not in r["prompt"] and "horizon" not in r["prompt"]
        assert r["prompt"].count("<image>") == len(r["images"])
        if r["task"] != "explain":
            assert " ? " in r["prompt"]
    # The second draw asks about other candidates for the same (user, target) rows.
    first, second = rows[:single.num_rows], rows[single.num_rows:]
    assert [r["user_id"] for r in first] == [r["user_id"] for r in second]
    assert sum(a["candidates"] != b["candidates"] for a, b in zip(first, second)) > 0.5 * len(first)
    with pytest.raises(ValueError, match="decision"):
        ExamplesConfig(decision="maybe")


def test_every_candidate_rows_rank_by_p_yes(synthetic_data, horizon):
    from reasonrec.vlm.deliberator import Verdict, hit_rate_at_1

    table = build_examples(synthetic_data, "test", horizon, {}, ExamplesConfig(candidates=6), decision="answer",
                           tasks={"direct": 1.0}, every_candidate=True, keep=np.arange(40))
    rows = table.to_pylist()
    assert len(rows) == 40 * 6 and len({r["user_id"] for r in rows}) == 40
    for lo in range(0, len(rows), 6):
        user = rows[lo:lo + 6]
        assert len({r["user_id"] for r in user}) == 1 and [r["answer"] for r in user].count("yes") == 1
        assert len({r["candidates"][0] for r in user}) == 6

    def verdict(p_yes):
        return Verdict(np.array([p_yes, 1 - p_yes]), "yes" if p_yes > 0.5 else "no", max(p_yes, 1 - p_yes), "")

    perfect = [verdict(0.9 if r["answer"] == "yes" else 0.2) for r in rows]
    assert hit_rate_at_1(perfect, rows) == 1.0
    # For every other user one negative outscores the positive; the order of the rows must not matter.
    wrong_users = sorted({r["user_id"] for r in rows})[::2]
    half, spoiled = list(perfect), set()
    for i, r in enumerate(rows):
        if r["user_id"] in wrong_users and r["answer"] == "no" and r["user_id"] not in spoiled:
            half[i] = verdict(0.95)
            spoiled.add(r["user_id"])
    assert hit_rate_at_1(half, rows) == pytest.approx(0.5)
    shuffled = np.random.default_rng(0).permutation(len(rows))
    assert hit_rate_at_1([half[i] for i in shuffled], [rows[i] for i in shuffled]) == pytest.approx(0.5)


def test_lora_merge_round_trip(synthetic_data, tmp_path):
    import torch

    from reasonrec.vlm.build import TinyVLMConfig, build_tiny, load, save
    from reasonrec.vlm.finetune import add_lora

    model, processor = build_tiny(synthetic_data.table("items").column("title").to_pylist(),
                                  TinyVLMConfig(vocab_size=1024))
    inputs = processor(text=["Lipstick and Serum\nanswer:"], return_tensors="pt")
    with torch.no_grad():
        base = model(**inputs).logits
    peft_model = add_lora(model, rank=4, alpha=8)
    trainable = [n for n, p in peft_model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n and "text_model" in n for n in trainable)
    torch.manual_seed(1)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)  # as if trained: B starts at zero
        adapted = peft_model(**inputs).logits
    merged = peft_model.merge_and_unload()
    with torch.no_grad():
        after_merge = merged(**inputs).logits
    assert (adapted - base).abs().max() > 1e-3
    torch.testing.assert_close(after_merge, adapted, atol=1e-4, rtol=1e-4)
    save(merged, processor, tmp_path / "merged")
    reloaded, _ = load(tmp_path / "merged")
    assert not any("lora" in n for n, _ in reloaded.named_parameters())
    with torch.no_grad():
        torch.testing.assert_close(reloaded(**inputs).logits, adapted, atol=1e-4, rtol=1e-4)


def test_finetune_with_ray_train_commits_a_reloadable_vlm(vlm_bundle_uri, monkeypatch, tmp_path):
    import torch

    from reasonrec.vlm.build import load

    bundle = Bundle(vlm_bundle_uri)
    info = bundle.manifest["vlm"]
    assert info["training"]["loss_last"] < info["training"]["loss_first"]
    assert info["training"]["warmup"]["steps"] == 4 and info["config"]["warmup_steps"] == 4
    assert {"HR@1_tuned", "HR@1_untuned", "HR@1_tuned_blank_images"} <= set(info["metrics"])
    files = bundle.manifest["files"]
    assert "vlm/config.json" in files and "horizon.json" in files
    assert bundle.tool_names == ["dcnv2", "lightgcn", "sasrec"]
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model, processor = load(bundle.vlm_folder(tmp_path))
    with torch.no_grad():
        assert torch.isfinite(model(**processor(text=["Serum\nanswer:"], return_tensors="pt")).logits).all()


def test_shipped_recipe_and_cli_flags_make_one_config():
    from pathlib import Path

    import reasonrec
    from jobs import finetune_vlm
    from jobs.cli import build_parser

    recipe = str(Path(reasonrec.__file__).parent / "configs" / "rvit_synthetic.yaml")
    args = build_parser().parse_args(["finetune-vlm", "--data", "d", "--bundle", "b", "--config", recipe,
                                      "--warmup-steps", "7"])
    config = finetune_vlm.config(args).vlm
    assert config.warmup_steps == 7 and config.steps == 600 and config.lr == 2e-4
    assert (config.tiny.hidden_size, config.tiny.layers) == (256, 4)
    assert config.examples.decision == "answer" and config.examples.repeats == 8
    assert config.examples.task_shares == {"direct": 1.0}


@pytest.mark.parametrize("arrivals", [0, 2])
def test_a_served_prompt_is_the_prompt_the_vlm_was_tuned_on(synthetic_data, horizon, tools, bundle_uri, vlm_bundle_uri,
                                                            arrivals):
    """Train what is served: for the same test user, the R-VIT example and the prompt the nightly job's VLM stage
    writes from the tool stage's shortlist share template, candidates (the vote's top N in the user's listing
    order; with ``arrivals``, its last places new arrivals, as the VLM of ``vlm_bundle_uri`` was tuned),
    labels (the items' own tokens) and deliberation lines, character for character."""
    import pyarrow as pa

    from reasonrec.batch.config import ScoreConfig
    from reasonrec.batch.context import Scoring
    from reasonrec.batch.local import LocalPipeline
    from reasonrec.batch.requests import requests_for_split
    from reasonrec.batch.vlm_stage import PromptBuilder
    from reasonrec.prompts.catalogue import Catalogue

    n = PLANNER_SCORE.shortlist
    config = ExamplesConfig(candidates=n, max_history=3, candidates_from="shortlist", item_tokens=True,
                            direct_form="listing", decision="answer", noise=0.0, seed=3, arrivals=arrivals)
    # vlm-only: every row asks the VLM, so the tool stage lists what that VLM was tuned on
    scoring = Scoring.load(vlm_bundle_uri, dataclasses.replace(PLANNER_SCORE, mode="vlm-only")) if arrivals \
        else Scoring.load(bundle_uri, ScoreConfig(mode="tools-only", shortlist=n))
    assert not arrivals or scoring.bundle.manifest["vlm"]["arrivals"]["places"] == arrivals
    assert scoring.tools_for("sequential") == list(tools)
    catalogue = Catalogue(synthetic_data.table("items"), synthetic_data.item_vocab, item_tokens=True)
    builder = PromptBuilder(catalogue, scoring.vocab, "sequential-01", 3, direct_template_id="direct-11")
    for task, template in (("sequential", "sequential-01"), ("direct", "direct-11")):
        examples = build_examples(synthetic_data, "test", horizon, tools, config, tasks={task: 1.0}).to_pylist()
        chosen = [e for e in examples if e["template_id"] == template][:6]
        assert len(chosen) >= 3
        requests = requests_for_split(synthetic_data, "test", task, k=5)
        requests = requests.filter(pc.is_in(requests["user_id"], value_set=pa.array([e["user_id"] for e in chosen])))
        signals = LocalPipeline(scoring, decide=False)(requests)
        served, _ = builder.rows(signals, n)
        by_user = {p["user_id"]: p for p in served}
        for e in chosen:
            p = by_user[e["user_id"]]
            assert p["labels"] == e["labels"], (p["labels"], e["labels"])
            assert p["prompt"] == e["prompt"], (p["prompt"], e["prompt"])
            assert (p["template_id"], p["prompt"], p["labels"], p["context"]) == (
                e["template_id"], e["prompt"], e["labels"], e["context"])
            assert e["answer"] in p["labels"] and p["labels"][0].startswith("<|item:")
        if arrivals:  # some users are listed a new arrival the vote alone would not list
            vote = LocalPipeline(Scoring.load(bundle_uri, ScoreConfig(mode="tools-only", shortlist=n)),
                                 decide=False)(requests)
            plain = {u: set(p[:n]) for u, p in zip(vote["user_id"].to_pylist(), vote["pool"].to_pylist())}
            assert any(set(p[:n]) != plain[u] for u, p in zip(signals["user_id"].to_pylist(),
                                                             signals["pool"].to_pylist()))


def test_an_explain_request_is_asked_as_the_vlm_was_tuned(synthetic_data, horizon, bundle_uri):
    """The explanation example of a test review and the prompt the VLM stage writes for the explain request of the
    same (user, item, rating) are the same text; the example's answer is the review."""
    from reasonrec.batch.requests import explain_requests
    from reasonrec.batch.vlm_stage import PromptBuilder
    from reasonrec.prompts.catalogue import Catalogue

    config = ExamplesConfig(max_history=3, item_tokens=True, task_shares={"explain": 1.0}, seed=3)
    examples = [e for e in build_examples(synthetic_data, "test", horizon, {}, config).to_pylist()
                if e["template_id"] == "explain-01"][:5]
    assert len(examples) >= 3 and {e["task"] for e in examples} == {"explain"}
    requests = explain_requests(synthetic_data, "test")
    catalogue = Catalogue(synthetic_data.table("items"), synthetic_data.item_vocab, item_tokens=True)
    builder = PromptBuilder(catalogue, synthetic_data.item_vocab, "sequential-01", 3)
    served = {(p["user_id"], r["item_id"]): (p, r) for p, r in zip(builder.explain_rows(requests),
                                                                  requests.to_pylist())}
    reviews = synthetic_data.table("explain").to_pandas().set_index(["user_id", "item_id"])["review"]
    for e in examples:
        prompt, request = served[(e["user_id"], e["candidates"][0])]
        assert (prompt["prompt"], prompt["context"], prompt["images"]) == (e["prompt"], e["context"], e["images"])
        assert f"{round(request['rating'])}-star" in prompt["prompt"] and e["answer"] == reviews[
            (e["user_id"], e["candidates"][0])]


def test_tuning_teaches_the_vlm_to_rank(synthetic_data, horizon, tools, bundle, tmp_path):
    """Fails when the VLM learns nothing: at a small seeded setting (the demo's form, 80 steps in-process), the tuned
    VLM ranks held-out test users' positives first among 8 random candidates at least 0.10 more often than the
    untuned one in both tasks (chance 0.125; measured: sequential 0.32 vs 0.13, direct 0.33 vs 0.16, 120 users)."""
    import torch

    from reasonrec.vlm.build import TinyVLMConfig, load, save
    from reasonrec.vlm.finetune import FinetuneConfig, evaluate_vlm, tiny_base, train

    torch.set_num_threads(2)
    examples = ExamplesConfig(candidates=8, max_history=3, per_user=3, item_tokens=True, candidates_from="shortlist",
                              direct_form="listing", random_share=0.3, decision="answer",
                              task_shares={"sequential": 0.5, "direct": 0.5})
    config = FinetuneConfig(steps=80, batch_size=8, lr=3e-3, eval_users=120, eval_task="sequential,direct",
                            listwise_weight=1.0, distill=0.5, tiny=TinyVLMConfig(vocab_size=1024,
                                                                                 identity_values=True),
                            examples=examples)
    untuned = tiny_base(synthetic_data, config, tmp_path / "untuned", bundle)
    model, processor = load(untuned)
    rows = build_examples(synthetic_data, "train", horizon, tools, examples).to_pylist()
    train(model, processor, rows, config)
    save(model, processor, tmp_path / "tuned")
    metrics = evaluate_vlm(synthetic_data, horizon, tmp_path / "tuned", untuned, config)
    for task, found in metrics["tasks"].items():
        assert found["HR@1_tuned"] >= found["HR@1_untuned"] + 0.10, (task, found)
