"""R-VIT fine-tuning: the plain training loop, its checkpoint state, and the held-out evaluation (its Ray Train run
is ``reasonrec.train.vlm``).

The model learns the answer given the deliberation context (prompt, evidence horizon, decision, tool outputs):
the answer loss covers the answer tokens only, exactly the tokens the backends read at inference (DESIGN.md §5);
an optional language-model loss on the prompt text helps a model trained from scratch.
Batches are drawn by the evidence-horizon curriculum. A given checkpoint is tuned with LoRA (peft) and merged
for export; the tiny model built from config has no pretrained weights to keep, so it is trained in full.
"""
from __future__ import annotations

import dataclasses
import itertools
import logging
import time
from pathlib import Path

import numpy as np

from reasonrec.train.curriculum import CurriculumConfig, HorizonCurriculum
from reasonrec.vlm.backends import ANSWER_CUE, ImageCache
from reasonrec.prompts.templates import IMAGE
from reasonrec.vlm.build import TinyVLMConfig, image_marker, model_text
from reasonrec.vlm.examples import ExamplesConfig

logger = logging.getLogger(__name__)

ATTENTION_PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj")
# Tools whose item embeddings start the item tokens, best first: on the demo catalogue one history item's BPR-MF
# embedding dotted with a candidate's ranks the positive first among 20 random ones 53% of the time, LightGCN's
# 46%, SASRec's 45% (its input embeddings; GRU4Rec's 7%).
ITEM_TOKEN_TOOLS = ("bprmf", "lightgcn", "sasrec")


@dataclasses.dataclass
class FinetuneConfig:
    steps: int = 600
    batch_size: int = 8
    lr: float = 1e-3  # for LoRA on a pretrained checkpoint ~2e-4 is the usual choice
    weight_decay: float = 0.01
    lora_rank: int | None = None  # None: 16 for a given checkpoint, 0 (full fine-tune) for the tiny model
    lora_alpha: int = 32
    # Language-model loss on the prompt text, relative to the answer loss. A model trained from scratch learns to
    # compare candidates with the history from it (copying and matching circuits need dense signal); a pretrained
    # checkpoint has them already, and instruction tuning usually leaves it at 0.
    prompt_loss_weight: float = 0.0
    # Listwise loss over each prompt's choices (its candidates' labels, or yes/no), relative to the answer loss:
    # the softmax the backends read (DESIGN.md §5). Its target mixes the true answer with the tools' vote over the
    # listed candidates (``distill``: the vote's share, a softmax of its min-max scores at ``distill_temperature``).
    listwise_weight: float = 0.0
    distill: float = 0.0
    distill_temperature: float = 0.1
    # Collaborative item tokens for the tiny model (examples.item_tokens): the tool whose item embeddings start the
    # tokens' rows (None: the first of ITEM_TOKEN_TOOLS in the bundle), and the rows' mean norm (the text
    # embeddings' own is about 0.02 * sqrt(hidden)).
    item_token_tool: str | None = None
    item_token_scale: float = 1.0
    # Steps on the tasks' short warm-up form before the R-VIT schedule (each stage has its own one-cycle lr). A
    # model trained from scratch learns to compare items there first; a pretrained checkpoint needs none.
    warmup_steps: int = 0
    # LoRA's target modules: None finds the language model's attention projections (q/k/v/o_proj) whatever the
    # architecture (Idefics3's text_model, LLaVA's and Qwen2-VL's language_model); or a regex over module names.
    lora_targets: str | None = None
    workers: int = 1
    cpus_per_worker: float = 0.5
    use_gpu: bool = False
    threads: int = 2
    log_every: int = 50
    # A checkpoint (trainable weights, optimiser, schedule, step, losses) every this many steps, in the run's
    # storage; a worker that dies resumes from the latest one, ``max_failures`` times. 0: none.
    checkpoint_every: int = 100
    max_failures: int = 2
    # On CUDA: bf16 autocast, and activations recomputed in the backward pass (memory for time). CPU stays float32.
    bf16: bool = True
    gradient_checkpointing: bool = True
    eval_users: int = 200  # held-out test users scored after training (0: skip)
    # Comma-separated tasks, each asked in its trained form: a listing (sequential; direct with
    # examples.direct_form listing) is one labelled prompt per user, yes/no direct one prompt per candidate.
    eval_task: str = "direct"
    seed: int = 0
    storage_path: str | None = None
    tiny: TinyVLMConfig = dataclasses.field(default_factory=TinyVLMConfig)
    examples: ExamplesConfig = dataclasses.field(default_factory=ExamplesConfig)
    curriculum: CurriculumConfig = dataclasses.field(default_factory=CurriculumConfig)

    def __post_init__(self):
        if self.steps < 1 or self.batch_size < 1 or self.workers < 1 or self.cpus_per_worker <= 0:
            raise ValueError("steps, batch_size and workers must be >= 1 and cpus_per_worker > 0")
        if self.checkpoint_every < 0 or self.max_failures < 0:
            raise ValueError("checkpoint_every and max_failures must be >= 0")
        if self.warmup_steps < 0:
            raise ValueError(f"warmup_steps must be >= 0, got {self.warmup_steps}")
        if not 0 <= self.distill <= 1 or self.distill_temperature <= 0:
            raise ValueError("distill must be in [0, 1] and distill_temperature > 0")
        for task in self.eval_tasks:
            if task not in ("direct", "sequential"):
                raise ValueError(f"eval_task: {task!r} is not direct or sequential")

    @property
    def eval_tasks(self) -> list[str]:
        return [t.strip() for t in self.eval_task.split(",") if t.strip()]


def collate(processor, rows: list[dict], images: ImageCache, config: "FinetuneConfig | None" = None,
            marker: str = IMAGE):
    """Inputs for ``prompt + ANSWER_CUE + answer``, images written as the model's ``marker``
    (``build.image_marker``); ``answer_mask`` marks the answer tokens (and end of utterance), ``text_mask`` every
    other real text token (not padding, not image placeholders); ``choice_ids`` (-1 padded) and ``choice_target``
    each row's choices and the listwise target over them (no choices for explanations), ``answer_start`` the
    position of the answer's first token."""
    import torch

    from reasonrec.prompts.templates import Prompt
    from reasonrec.vlm.backends import choices, label_token_ids

    tokenizer = processor.tokenizer
    tokenizer.padding_side = "right"
    texts = [model_text(r["prompt"], marker) + ANSWER_CUE + " " + r["answer"] + tokenizer.eos_token for r in rows]
    pictures = [[images(uri) for uri in r["images"]] for r in rows]
    inputs = processor(text=texts, images=pictures if any(pictures) else None, padding=True, return_tensors="pt")
    answer_lengths = [len(tokenizer(" " + r["answer"], add_special_tokens=False).input_ids) + 1 for r in rows]
    ends = inputs["attention_mask"].sum(dim=1)
    position = torch.arange(inputs["input_ids"].shape[1])[None, :]
    starts = ends - torch.tensor(answer_lengths)
    answer = (position >= starts[:, None]) & (position < ends[:, None])
    special = torch.isin(inputs["input_ids"], torch.tensor(tokenizer.all_special_ids))
    inputs["answer_mask"] = answer
    inputs["text_mask"] = (position < starts[:, None]) & ~special
    inputs["answer_start"] = starts
    options = [() if r.get("task") == "explain" else choices(Prompt.from_row(r)) for r in rows]
    width = max(map(len, options), default=0)
    ids = torch.full((len(rows), width), -1, dtype=torch.long)
    target = torch.zeros((len(rows), width))
    distill, temperature = (config.distill, config.distill_temperature) if config else (0.0, 1.0)
    for k, (row, labels) in enumerate(zip(rows, options)):  # a few labels per row
        if not labels:
            continue
        ids[k, :len(labels)] = torch.tensor(label_token_ids(tokenizer, labels))
        truth = torch.tensor([label == row["answer"] for label in labels], dtype=torch.float32)
        teacher = row.get("teacher") or []
        if distill and len(teacher) == len(labels):
            truth = (1 - distill) * truth + distill * torch.softmax(torch.tensor(teacher) / temperature, dim=0)
        target[k, :len(labels)] = truth
    inputs["choice_ids"], inputs["choice_target"] = ids, target
    return inputs


def loss_terms(model, inputs, prompt_loss: bool = True) -> tuple:
    """(answer loss, prompt language-model loss, listwise loss): token cross-entropies averaged over each mask,
    and the cross-entropy of the choices' softmax (at the answer's first token) against ``choice_target``.
    ``prompt_loss`` False: the vocabulary is scored only at the positions that predict an answer token, and the
    prompt loss is 0: with a token per catalogue item the head over every prompt position was most of a step
    (Amazon Beauty: 14,000 tokens, 6 s a step of 16)."""
    import torch
    import torch.nn.functional as F

    answer_mask, text_mask = inputs.pop("answer_mask"), inputs.pop("text_mask")
    start, ids, soft = inputs.pop("answer_start"), inputs.pop("choice_ids"), inputs.pop("choice_target")
    predicts = answer_mask[:, 1:]  # position p predicts token p + 1
    if prompt_loss:
        kept = torch.arange(predicts.shape[1])
    else:  # the positions any row predicts an answer token from, each row's answer_start - 1 among them
        kept = predicts.any(dim=0).nonzero().flatten()
    logits = model(**inputs, logits_to_keep=kept).logits.float()
    target = inputs["input_ids"][:, kept + 1]
    ce = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1),
                         reduction="none").view_as(target)
    answer_mask, text_mask = predicts[:, kept], text_mask[:, 1:][:, kept] & prompt_loss
    column = torch.searchsorted(kept, start - 1)  # where each row's answer_start - 1 is among the kept positions
    at_answer = logits[torch.arange(len(start)), column]  # the distribution the backends read
    listed = ids >= 0
    picked = at_answer.gather(1, ids.clamp(min=0)).masked_fill(~listed, float("-inf"))
    has = listed.any(dim=1)
    listwise = -(soft * torch.log_softmax(picked, dim=1).masked_fill(~listed, 0.0)).sum(dim=1)
    return ((ce * answer_mask).sum() / answer_mask.sum().clamp(min=1),
            (ce * text_mask).sum() / text_mask.sum().clamp(min=1),
            (listwise * has).sum() / has.sum().clamp(min=1))


def lora_targets(model) -> list[str]:
    """The full names of the language model's attention projections: the decoder transformers itself names
    (``get_decoder``: Idefics3's text_model, LLaVA's and Qwen2-VL's language_model), never the vision tower."""
    import torch

    decoder = model.get_decoder()
    prefix = next((name for name, module in model.named_modules() if module is decoder), None)
    found = [f"{prefix}.{name}" if prefix else name for name, module in decoder.named_modules()
             if isinstance(module, torch.nn.Linear) and name.rsplit(".", 1)[-1] in ATTENTION_PROJECTIONS]
    if not found:
        raise ValueError(f"LoRA: no {'/'.join(ATTENTION_PROJECTIONS)} under {type(model).__name__}'s language model "
                         f"({type(decoder).__name__}); name them with lora_targets (a regex over module names)")
    return found


def add_lora(model, rank: int, alpha: int, targets: str | None = None):
    from peft import LoraConfig, get_peft_model

    return get_peft_model(model, LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=0.0,
                                            target_modules=targets or lora_targets(model)))


def train(model, processor, examples: list[dict], config: FinetuneConfig, *, device="cpu", seed: int = 0,
          tag: str = "", resume: dict | None = None, save=None) -> dict:
    """Plain loop: ``config.steps`` curriculum batches; returns the loss curve summary. ``tag`` prefixes its
    progress lines (e.g. the Ray Train rank). ``resume``: a checkpoint's state (``state``) to continue from, its
    batches skipped; ``save(state)`` is called every ``config.checkpoint_every`` steps."""
    import torch

    torch.manual_seed(seed)
    model.to(device).train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=config.lr, total_steps=config.steps,
                                                   pct_start=0.1)
    horizon = np.array([r["horizon"] for r in examples], dtype=np.float32)
    sampler = HorizonCurriculum(horizon, config.steps, config.batch_size, config.curriculum, seed=seed)
    losses, listwise_losses, resumed = [], [], []
    if resume:
        restore(model, optimizer, schedule, resume)
        losses, listwise_losses = list(resume["losses"]), list(resume["listwise"])
        resumed = [*resume["resumed"], resume["step"]]
        logger.info(f"{tag}resumed at step {resume['step']}/{config.steps} from a checkpoint")
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=config.bf16 and str(device).startswith("cuda"))
    marker = image_marker(getattr(model, "module", model).config)  # under DDP the model is its .module
    images = ImageCache()
    start = time.perf_counter()
    for step, batch in itertools.islice(enumerate(sampler), len(losses), None):  # the same seeded batches
        inputs = collate(processor, [examples[i] for i in batch], images, config, marker).to(device)
        with autocast:
            loss, prompt_loss, listwise = loss_terms(model, inputs, config.prompt_loss_weight > 0)
        optimizer.zero_grad(set_to_none=True)
        (loss + config.prompt_loss_weight * prompt_loss + config.listwise_weight * listwise).backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        schedule.step()
        losses.append(loss.item())
        listwise_losses.append(listwise.item())
        if (step + 1) % config.log_every == 0 or step + 1 == config.steps:
            logger.info(f"{tag}step {step + 1}/{config.steps} loss {np.mean(losses[-config.log_every:]):.4f} "
                        f"listwise {np.mean(listwise_losses[-config.log_every:]):.4f} "
                        f"({time.perf_counter() - start:.0f}s)")
        if save and config.checkpoint_every and (step + 1) % config.checkpoint_every == 0 and step + 1 < config.steps:
            save(state(model, optimizer, schedule, step + 1, losses, listwise_losses, resumed))
    model.eval()
    window = max(1, min(config.log_every, len(losses) // 4))
    return {"steps": config.steps, "loss_first": float(np.mean(losses[:window])),
            "loss_last": float(np.mean(losses[-window:])), "seconds": round(time.perf_counter() - start, 1),
            "listwise_first": float(np.mean(listwise_losses[:window])),
            "listwise_last": float(np.mean(listwise_losses[-window:])), "resumed_from": resumed,
            "losses": [round(v, 5) for v in losses],
            "loss_curve": [round(float(np.mean(losses[i:i + window])), 4) for i in range(0, len(losses), window)]}


def state(model, optimizer, schedule, step: int, losses: list, listwise: list, resumed: list) -> dict:
    """What a checkpoint holds: the trainable weights only (LoRA's adapters, or the whole tiny model), the
    optimiser and schedule, the step and the losses so far."""
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    return {"step": step, "losses": list(losses), "listwise": list(listwise), "resumed": list(resumed),
            "weights": {k: v.detach().cpu() for k, v in model.state_dict().items() if k in trainable},
            "optimizer": optimizer.state_dict(), "schedule": schedule.state_dict()}


def restore(model, optimizer, schedule, saved: dict) -> None:
    missing = {name for name, p in model.named_parameters() if p.requires_grad} - set(saved["weights"])
    if missing:
        raise ValueError(f"checkpoint: no weights for {len(missing)} trainable parameters, e.g. {sorted(missing)[0]}")
    model.load_state_dict(saved["weights"], strict=False)
    optimizer.load_state_dict(saved["optimizer"])
    schedule.load_state_dict(saved["schedule"])


def tiny_base(data, config: FinetuneConfig, into: Path, bundle=None) -> Path:
    """The tiny model built from config with a tokenizer trained on the catalogue (and, with
    ``examples.item_tokens``, a token per item started from the bundle's ``item_token_tool``), saved in ``into``."""
    from reasonrec.vlm.build import build_tiny, save
    from reasonrec.vlm.item_tokens import add_catalogue_tokens

    corpus = [t for t in data.table("items").column("title").to_pylist() if t]
    if config.examples.task_shares.get("explain"):  # the words of the reviews it learns to write
        corpus += data.explain_rows("train")[0].column("review").to_pylist()[:5000]
    model, processor = build_tiny(corpus, config.tiny)
    if config.examples.item_tokens:
        name = config.item_token_tool or next((t for t in ITEM_TOKEN_TOOLS if t in bundle.tool_names), None)
        if name is None:
            raise ValueError(f"item tokens: the bundle has none of {ITEM_TOKEN_TOOLS} (set item_token_tool)")
        added = add_catalogue_tokens(model, processor.tokenizer, data, bundle.load_tool(name),
                                     config.item_token_scale, config.seed)
        logger.info(f"item tokens: {added} items, rows from {name}'s item embeddings")
    save(model, processor, into)
    return into


def evaluate_vlm(data, horizon, tuned: str | Path, untuned: str | Path, config: FinetuneConfig) -> dict:
    """HR@1 over held-out test users (one positive among ``examples.candidates`` random ones), VLM alone (no tool
    outputs), tuned vs untuned vs tuned with blank images, for each of ``eval_task``'s tasks in its trained form: a
    listing ranks by the label distribution of one prompt, yes/no direct by P(yes) per candidate. The first task's
    figures are also at the top level."""
    from reasonrec.vlm.backends.transformers_backend import TransformersDeliberator
    from reasonrec.vlm.build import load
    from reasonrec.vlm.deliberator import deliberate, hit_rate_at_1
    from reasonrec.vlm.examples import build_examples

    users = np.random.default_rng(config.seed).permutation(data.table("test").num_rows)[:config.eval_users]
    one_draw = dataclasses.replace(config.examples, seed=config.seed + 1, repeats=1, candidates_from="random")
    metrics = {"users": len(users), "candidates": config.examples.candidates, "task": config.eval_tasks[0],
               "chance": 1 / config.examples.candidates, "tasks": {}}
    models = {"tuned": load(tuned), "untuned": load(untuned)}
    for task in config.eval_tasks:
        held_out = build_examples(data, "test", horizon, {}, one_draw, decision="answer", tasks={task: 1.0},
                                  every_candidate=True, keep=users)
        rows = held_out.to_pylist()
        found = metrics["tasks"][task] = {}
        for name, model, blank in (("tuned", "tuned", False), ("untuned", "untuned", False),
                                   ("tuned_blank_images", "tuned", True)):
            if blank and not any(r["images"] for r in rows):
                continue
            start = time.perf_counter()
            backend = TransformersDeliberator(*models[model], images=ImageCache(blank=blank))
            found[f"HR@1_{name}"] = hit_rate_at_1(deliberate(backend, rows), rows)
            logger.info(f"{task} HR@1 {name}: {found[f'HR@1_{name}']:.4f} ({len(users)} test users, {len(rows)} "
                        f"prompts, {time.perf_counter() - start:.0f}s)")
    metrics.update(metrics["tasks"][config.eval_tasks[0]])
    return metrics
