"""R-VIT fine-tuning: the plain training loop, its Ray Train wrapper, and the driver that commits ``vlm/`` to a bundle.

The model learns the answer given the deliberation context (prompt, evidence horizon, decision, tool outputs):
the answer loss covers the answer tokens only, exactly the tokens the backends read at inference (DESIGN.md §5);
an optional language-model loss on the prompt text helps a model trained from scratch.
Batches are drawn by the evidence-horizon curriculum. A given checkpoint is tuned with LoRA (peft) and merged
for export; the tiny model built from config has no pretrained weights to keep, so it is trained in full.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import tempfile
import time
from pathlib import Path

import numpy as np

from reasonrec import logs, storage
from reasonrec.train.curriculum import CurriculumConfig, HorizonCurriculum
from reasonrec.vlm.backends import ANSWER_CUE, ImageCache
from reasonrec.vlm.build import TinyVLMConfig
from reasonrec.vlm.examples import ExamplesConfig

logger = logging.getLogger(__name__)

LORA_TARGETS = r".*text_model.*\.(q_proj|k_proj|v_proj|o_proj)"
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
    workers: int = 1
    cpus_per_worker: float = 0.5
    use_gpu: bool = False
    threads: int = 2
    log_every: int = 50
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


def collate(processor, rows: list[dict], images: ImageCache, config: "FinetuneConfig | None" = None):
    """Inputs for ``prompt + ANSWER_CUE + answer``; ``answer_mask`` marks the answer tokens (and end of
    utterance), ``text_mask`` every other real text token (not padding, not image placeholders); ``choice_ids``
    (-1 padded) and ``choice_target`` each row's choices and the listwise target over them (no choices for
    explanations), ``answer_start`` the position of the answer's first token."""
    import torch

    from reasonrec.prompts.templates import Prompt
    from reasonrec.vlm.backends import choices, label_token_ids

    tokenizer = processor.tokenizer
    tokenizer.padding_side = "right"
    texts = [r["prompt"] + ANSWER_CUE + " " + r["answer"] + tokenizer.eos_token for r in rows]
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


def loss_terms(model, inputs) -> tuple:
    """(answer loss, prompt language-model loss, listwise loss): token cross-entropies averaged over each mask,
    and the cross-entropy of the choices' softmax (at the answer's first token) against ``choice_target``."""
    import torch
    import torch.nn.functional as F

    answer_mask, text_mask = inputs.pop("answer_mask"), inputs.pop("text_mask")
    start, ids, soft = inputs.pop("answer_start"), inputs.pop("choice_ids"), inputs.pop("choice_target")
    logits = model(**inputs).logits.float()
    target = inputs["input_ids"][:, 1:]
    shifted = logits[:, :-1]
    ce = F.cross_entropy(shifted.reshape(-1, shifted.shape[-1]), target.reshape(-1),
                         reduction="none").view_as(target)
    answer_mask, text_mask = answer_mask[:, 1:], text_mask[:, 1:]
    at_answer = logits[torch.arange(len(start)), start - 1]  # the distribution the backends read
    listed = ids >= 0
    picked = at_answer.gather(1, ids.clamp(min=0)).masked_fill(~listed, float("-inf"))
    has = listed.any(dim=1)
    listwise = -(soft * torch.log_softmax(picked, dim=1).masked_fill(~listed, 0.0)).sum(dim=1)
    return ((ce * answer_mask).sum() / answer_mask.sum().clamp(min=1),
            (ce * text_mask).sum() / text_mask.sum().clamp(min=1),
            (listwise * has).sum() / has.sum().clamp(min=1))


def add_lora(model, rank: int, alpha: int):
    from peft import LoraConfig, get_peft_model

    return get_peft_model(model, LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=0.0,
                                            target_modules=LORA_TARGETS))


def train(model, processor, examples: list[dict], config: FinetuneConfig, *, device="cpu", seed: int = 0,
          tag: str = "") -> dict:
    """Plain loop: ``config.steps`` curriculum batches; returns the loss curve summary. ``tag`` prefixes its
    progress lines (e.g. the Ray Train rank)."""
    import torch

    torch.manual_seed(seed)
    model.to(device).train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=config.lr, total_steps=config.steps,
                                                   pct_start=0.1)
    horizon = np.array([r["horizon"] for r in examples], dtype=np.float32)
    sampler = HorizonCurriculum(horizon, config.steps, config.batch_size, config.curriculum, seed=seed)
    images = ImageCache()
    losses, listwise_losses, start = [], [], time.perf_counter()
    for step, batch in enumerate(sampler):
        inputs = collate(processor, [examples[i] for i in batch], images, config).to(device)
        loss, prompt_loss, listwise = loss_terms(model, inputs)
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
    model.eval()
    window = max(1, min(config.log_every, len(losses) // 4))
    return {"steps": config.steps, "loss_first": float(np.mean(losses[:window])),
            "loss_last": float(np.mean(losses[-window:])), "seconds": round(time.perf_counter() - start, 1),
            "listwise_first": float(np.mean(listwise_losses[:window])),
            "listwise_last": float(np.mean(listwise_losses[-window:])),
            "loss_curve": [round(float(np.mean(losses[i:i + window])), 4) for i in range(0, len(losses), window)]}


def pack_folder(folder: str | Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in Path(folder).rglob("*") if p.is_file()}


def unpack_folder(files: dict[str, bytes], folder: str | Path) -> Path:
    for rel, data in files.items():
        target = Path(folder) / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
    return Path(folder)


def train_loop_per_worker(cfg: dict) -> None:
    """Ray Train worker: unpack the base model, train (DDP across workers), rank 0 exports the merged HF folder."""
    import ray
    import ray.train
    import ray.train.torch
    import torch

    from reasonrec.config import from_dict
    from reasonrec.vlm.build import load, save

    config = from_dict(FinetuneConfig, cfg["config"])
    torch.set_num_threads(config.threads)
    logs.worker(cfg["log_level"])
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    device = ray.train.torch.get_device()
    with tempfile.TemporaryDirectory() as tmp:
        model, processor = load(unpack_folder(ray.get(cfg["base"]), Path(tmp) / "base"))
        if cfg["lora_rank"]:
            model = add_lora(model, cfg["lora_rank"], config.lora_alpha)
        module = ray.train.torch.prepare_model(model) if world > 1 else model
        tag = f"[rank {rank}] "
        if config.warmup_steps:
            logger.info(f"{tag}warm-up: {config.warmup_steps} steps on short prompts")
            warmup = train(module, processor, ray.get(cfg["warmup"]).to_pylist(),
                           dataclasses.replace(config, steps=config.warmup_steps), device=device,
                           seed=config.seed + rank, tag=tag)
        summary = train(module, processor, ray.get(cfg["examples"]).to_pylist(), config, device=device,
                        seed=config.seed + rank, tag=tag)
        if config.warmup_steps:
            summary["warmup"] = warmup
        checkpoint = None
        if rank == 0:
            if cfg["lora_rank"]:
                model = model.merge_and_unload()
            out = Path(tmp) / "out"
            save(model.to("cpu"), processor, out)
            (out / "training.json").write_text(json.dumps(summary))
            checkpoint = ray.train.Checkpoint.from_directory(out)
        ray.train.report({"loss_last": summary["loss_last"]}, checkpoint=checkpoint)


def base_folder(base: str | None, data, config: FinetuneConfig, into: Path, bundle=None) -> Path:
    """A given HF folder as is, or the tiny model built from config with a tokenizer trained on the catalogue (and,
    with ``examples.item_tokens``, a token per item started from the bundle's ``item_token_tool``)."""
    from reasonrec.vlm.build import build_tiny, save
    from reasonrec.vlm.item_tokens import add_catalogue_tokens

    if base:
        if not Path(base, "config.json").exists():
            raise FileNotFoundError(f"--base {base}: not a Hugging Face model folder (no config.json)")
        return Path(base)
    titles = [t for t in data.table("items").column("title").to_pylist() if t]
    model, processor = build_tiny(titles, config.tiny)
    if config.examples.item_tokens:
        name = config.item_token_tool or next((t for t in ITEM_TOKEN_TOOLS if t in bundle.tool_names), None)
        if name is None:
            raise ValueError(f"item tokens: the bundle has none of {ITEM_TOKEN_TOOLS} (set item_token_tool)")
        added = add_catalogue_tokens(model, processor.tokenizer, data, bundle.load_tool(name),
                                     config.item_token_scale, config.seed)
        logger.info(f"item tokens: {added} items, rows from {name}'s item embeddings")
    save(model, processor, into)
    return into


def finetune_vlm(data_uri: str, bundle_uri: str, config: FinetuneConfig | None = None,
                 base: str | None = None) -> dict:
    """Build R-VIT examples from the bundle's tools, fine-tune with Ray Train, evaluate, commit ``vlm/``; returns the
    bundle's manifest."""
    import ray
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from reasonrec.bundle import Bundle, BundleWriter
    from reasonrec.data.prepared import PreparedData
    from reasonrec.horizon import EvidenceHorizon
    from reasonrec.vlm.examples import build_examples

    config = config or FinetuneConfig()
    data = PreparedData(storage.absolute(data_uri))
    bundle = Bundle(bundle_uri)
    horizon = EvidenceHorizon.from_json(bundle.read("horizon.json"))
    # The examples' tool outputs rank candidates over the catalogue: the ranking tools (CTR tools answer ctr only).
    tools = {name: bundle.load_tool(name) for name in (config.examples.tools or bundle.tools_for("sequential"))}
    examples = build_examples(data, "train", horizon, tools, config.examples)
    # No tools: the warm-up form has no deliberation lines, so scoring them again would be wasted.
    warmup = build_examples(data, "train", horizon, {}, config.examples, warmup=True) if config.warmup_steps else None
    lora_rank = config.lora_rank if config.lora_rank is not None else (16 if base else 0)
    logger.info(f"R-VIT: {examples.num_rows} training examples from {len(set(examples['user_id'].to_pylist()))} users, "
        f"tools {list(tools)}; {config.steps} steps x {config.batch_size} on {config.workers} worker(s), "
        + (f"LoRA rank {lora_rank}" if lora_rank else "full fine-tune")
        + (f", after {config.warmup_steps} warm-up steps on short prompts" if config.warmup_steps else ""))
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        base_path = base_folder(base, data, config, Path(tmp) / "base", bundle)
        trainer = TorchTrainer(
            train_loop_per_worker,
            train_loop_config={"config": dataclasses.asdict(config), "lora_rank": lora_rank,
                               "base": ray.put(pack_folder(base_path)), "examples": ray.put(examples),
                               "warmup": ray.put(warmup), "log_level": logs.level()},
            scaling_config=ScalingConfig(num_workers=config.workers, use_gpu=config.use_gpu,
                                         resources_per_worker={"CPU": config.cpus_per_worker}),
            run_config=RunConfig(name=f"vlm-{int(time.time())}",
                                 storage_path=storage.absolute(config.storage_path or f"{tmp}/ray-train")),
        )
        result = trainer.fit()
        with result.checkpoint.as_directory() as folder:
            summary = json.loads(Path(folder, "training.json").read_text())
            if "warmup" in summary:
                warmup = summary["warmup"]
                logger.info(f"warm-up loss {warmup['loss_first']:.4f} -> {warmup['loss_last']:.4f} "
                    f"in {summary['warmup']['seconds']}s")
            logger.info(f"training loss {summary['loss_first']:.4f} -> {summary['loss_last']:.4f} in "
                        f"{summary['seconds']}s")
            metrics = evaluate_vlm(data, horizon, folder, base_path, config) if config.eval_users else {}
            with BundleWriter(bundle_uri) as writer:
                # The prompt builder's catalogue (titles, categories, images) travels with the model it was tuned for.
                writer.add_file("catalogue.parquet", storage.parquet_bytes(data.table("items")))
                writer.add_vlm(folder, {"base": base or "tiny", "lora_rank": lora_rank, "training": summary,
                                        "examples": examples.num_rows, "metrics": metrics,
                                        "config": dataclasses.asdict(config),
                                        "train_seconds": round(time.perf_counter() - start, 1)})
                manifest = writer.commit()
    logger.info(f"bundle {manifest['version']} committed to {bundle_uri} with vlm/")
    return manifest


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
