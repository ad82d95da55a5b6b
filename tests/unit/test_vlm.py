"""The tiny deliberators (Idefics3, LLaVA, Qwen2-VL): offline build, save/reload, label log-probabilities (transformers
backend)."""
import numpy as np
import pytest

from reasonrec.prompts.templates import LABELS, Item, render, templates_for
from reasonrec.vlm.backends import choices
from reasonrec.vlm.backends.transformers_backend import TransformersDeliberator
from reasonrec.vlm.build import TinyVLMConfig, build_tiny, load, save


@pytest.fixture(scope="module")
def catalogue(synthetic_data):
    items = synthetic_data.table("items").to_pylist()
    return [Item(row["title"], row["image_uri"]) for row in items]


@pytest.fixture(scope="module")
def tiny(catalogue, tmp_path_factory):
    model, processor = build_tiny([i.title for i in catalogue], TinyVLMConfig(vocab_size=1024))
    folder = tmp_path_factory.mktemp("tiny-vlm")
    save(model, processor, folder)
    return model, processor, folder


def prompts(catalogue):
    no_image = Item(catalogue[0].title)
    return [
        render(templates_for("sequential")[3], user="u1", profile="3 purchases", history=catalogue[:3],
               candidates=catalogue[10:30], horizon=0.41),
        render(templates_for("direct")[0], user="u2", profile="9 purchases", history=catalogue[3:5],
               item=catalogue[5], horizon=0.93),
        render(templates_for("ctr")[2], user="u3", profile="1 purchase", history=[no_image], item=no_image,
               horizon=0.12),
    ]


def test_tiny_vlm_is_small_and_vllm_compatible(tiny):
    model, processor, _ = tiny
    text = model.config.text_config
    assert text.hidden_size // text.num_attention_heads == 64  # vLLM CPU attention accepts head_dim 64
    assert sum(p.numel() for p in model.parameters()) < 2_000_000
    for label in [*LABELS, "yes", "no"]:
        assert len(processor.tokenizer.tokenize(" " + label)) == 1


def test_label_logprobs_same_in_a_batch_alone_and_after_reload(tiny, catalogue, monkeypatch):
    model, processor, folder = tiny
    batch = prompts(catalogue)
    assert [len(p.images) for p in batch] == [23, 3, 0]
    deliberator = TransformersDeliberator(model, processor, batch_size=3)
    together = deliberator.label_logprobs(batch)
    alone = [deliberator.label_logprobs([p])[0] for p in batch]
    for prompt, a, b in zip(batch, together, alone):
        assert a.shape == (len(choices(prompt)),) and np.isfinite(a).all() and (a < 0).all()
        np.testing.assert_allclose(a, b, atol=1e-4)  # left padding keeps every prompt's last position
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    reloaded = TransformersDeliberator(*load(folder), batch_size=3).label_logprobs(batch)
    for a, b in zip(together, reloaded):
        np.testing.assert_allclose(a, b, atol=1e-5)


def test_item_tokens_start_from_the_tool_vectors_and_survive_export(synthetic_data, tmp_path):
    """Collaborative item tokens: one token per item after a space (so it can be a label), input and output rows
    from the projected tool vectors (dot products kept up to a common factor), cold items at their group's mean,
    and the exported folder reloads with the same tokens and rows."""
    import torch

    from reasonrec.prompts.catalogue import item_token
    from reasonrec.vlm.backends import label_token_ids
    from reasonrec.vlm.item_tokens import add_item_tokens, initial_rows

    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(6, 32))
    warm = np.array([True, True, True, True, False, False])
    groups = np.array(["a", "a", "b", "b", "a", "c"], dtype=object)
    rows = initial_rows(vectors, warm, groups, width=128, scale=1.0)
    assert np.linalg.norm(rows[:4], axis=1).mean() == pytest.approx(1.0, rel=0.2)
    np.testing.assert_allclose(rows[4], rows[:2].mean(axis=0))  # cold, group a
    np.testing.assert_allclose(rows[5], rows[:4].mean(axis=0))  # cold, a group without warm items
    wide = initial_rows(vectors, np.ones(6, bool), groups, width=4096, scale=1.0)

    def cosine(m):
        unit = m / np.linalg.norm(m, axis=1, keepdims=True)
        return unit @ unit.T

    assert np.abs(cosine(wide) - cosine(vectors)).max() < 0.1  # a random projection keeps the geometry

    model, processor = build_tiny(synthetic_data.table("items").column("title").to_pylist(),
                                  TinyVLMConfig(vocab_size=1024))
    ids = add_item_tokens(model, processor.tokenizer, [f"x{i}" for i in range(6)], rows)
    labels = [item_token(f"x{i}") for i in range(6)]
    assert label_token_ids(processor.tokenizer, labels) == ids
    assert processor.tokenizer("bought" + " " + labels[2], add_special_tokens=False).input_ids[-1] == ids[2]
    for weights in (model.get_input_embeddings().weight, model.get_output_embeddings().weight):
        torch.testing.assert_close(weights[ids].float(), torch.tensor(rows, dtype=torch.float32))
    save(model, processor, tmp_path / "with-items")
    reloaded, reprocessor = load(tmp_path / "with-items")
    assert label_token_ids(reprocessor.tokenizer, labels) == ids
    torch.testing.assert_close(reloaded.get_output_embeddings().weight[ids], model.get_output_embeddings().weight[ids])


def test_identity_values_make_the_first_layer_copy(synthetic_data):
    model, _ = build_tiny(["a title"], TinyVLMConfig(vocab_size=1024, identity_values=True))
    attention = model.model.text_model.layers[0].self_attn
    eye = np.eye(attention.v_proj.weight.shape[0])
    np.testing.assert_allclose(attention.v_proj.weight.detach().numpy(), eye)
    np.testing.assert_allclose(attention.o_proj.weight.detach().numpy(), eye)


def torchvision_loads() -> bool:
    import importlib.util

    return importlib.util.find_spec("torchvision") is not None


@pytest.mark.parametrize("architecture", ["idefics3", "llava"])
def test_each_architecture_builds_scores_and_reloads_offline(architecture, catalogue, tmp_path, monkeypatch):
    """The tiny checkpoints a user's would look like (transformers' own config classes and PIL processors): prompts
    with images scored the same in a batch and alone, and after a save/reload with the hub off; LoRA finds the
    language model's attention projections, never the vision tower's."""
    from reasonrec.vlm.finetune import lora_targets

    model, processor = build_tiny([i.title for i in catalogue], TinyVLMConfig(vocab_size=1024,
                                                                               architecture=architecture))
    assert model.config.model_type == architecture
    batch = prompts(catalogue)
    deliberator = TransformersDeliberator(model, processor, batch_size=3)
    together = deliberator.label_logprobs(batch)
    for prompt, a, b in zip(batch, together, [deliberator.label_logprobs([p])[0] for p in batch]):
        assert a.shape == (len(choices(prompt)),) and np.isfinite(a).all()
        np.testing.assert_allclose(a, b, atol=1e-4)
    targets = lora_targets(model)
    assert len(targets) == 4 * model.config.text_config.num_hidden_layers
    assert all(".language_model." in t or ".text_model." in t for t in targets)
    save(model, processor, tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    reloaded = TransformersDeliberator(*load(tmp_path), batch_size=3).label_logprobs(batch)
    for a, b in zip(together, reloaded):
        np.testing.assert_allclose(a, b, atol=1e-5)


def test_qwen2_vl_is_built_where_torchvision_loads_and_names_it_where_not(catalogue):
    """Qwen2-VL's processor needs its video processor, which transformers builds on torchvision: on a CPU-only stack
    without it (this project's, docs/deliberator.md) building says exactly that; where torchvision loads (a GPU
    node), the model is built and scores prompts with images written as its vision tokens."""
    from reasonrec.vlm.build import image_marker, model_text

    config = TinyVLMConfig(vocab_size=1024, architecture="qwen2_vl")
    if not torchvision_loads():
        with pytest.raises(ImportError, match="Qwen2VLVideoProcessor requires the Torchvision library"):
            build_tiny([i.title for i in catalogue], config)
        return
    model, processor = build_tiny([i.title for i in catalogue], config)
    assert image_marker(model.config) == "<|vision_start|><|image_pad|><|vision_end|>"
    assert model_text("a <image> b", image_marker(model.config)).count("<|image_pad|>") == 1
    scores = TransformersDeliberator(model, processor, batch_size=3).label_logprobs(prompts(catalogue))
    assert all(np.isfinite(s).all() for s in scores)


def test_an_unknown_architecture_is_an_error_naming_the_choices():
    with pytest.raises(ValueError, match=r"tiny.architecture 'llama': use one of \('idefics3', 'llava', 'qwen2_vl'\)"):
        TinyVLMConfig(architecture="llama")


@pytest.mark.parametrize("architecture", ["idefics3", "llava"])
def test_the_answer_losses_from_the_answer_positions_alone_equal_the_full_ones(architecture, catalogue):
    """Training scores the vocabulary only where an answer token is predicted (``loss_terms(prompt_loss=False)``):
    the answer and listwise losses and every gradient equal those of the head over every position."""
    import torch

    from reasonrec.vlm.backends import ImageCache
    from reasonrec.vlm.finetune import FinetuneConfig, collate, loss_terms

    model, processor = build_tiny([i.title for i in catalogue], TinyVLMConfig(vocab_size=1024,
                                                                               architecture=architecture))
    model.train()
    # Prompts of different lengths, so that the rows' answers sit at different positions of the padded batch.
    rows = [{"prompt": p.text, "images": list(p.images), "labels": list(p.labels), "answer": answer,
             "teacher": [float(t) for t in np.linspace(0, 1, len(p.labels))] if p.labels else []}
            for p, answer in zip(prompts(catalogue), ["c", "yes", "no"])]
    config = FinetuneConfig(distill=0.5)
    found = {}
    for prompt_loss in (True, False):
        model.zero_grad()
        answer, prompt, listwise = loss_terms(model, collate(processor, rows, ImageCache(), config), prompt_loss)
        (answer + listwise).backward()
        found[prompt_loss] = (answer.item(), listwise.item(), prompt.item(),
                              [p.grad.clone() for p in model.parameters() if p.grad is not None])
    full, kept = found[True], found[False]
    assert kept[0] == pytest.approx(full[0], rel=1e-6) and kept[1] == pytest.approx(full[1], rel=1e-6)
    assert full[2] > 0 and kept[2] == 0.0
    assert len(full[3]) == len(kept[3])
    for a, b in zip(full[3], kept[3]):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
