"""The tiny Idefics3 deliberator: offline build, save/reload, label log-probabilities (transformers backend)."""
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
