"""R-VIT on Ray Train: the driver builds the examples and commits ``vlm/``; the model never passes through it.

Each worker reads the base checkpoint from storage itself (a local folder or an object-storage URI) and its share
of the examples as a Ray Data shard, reports a checkpoint every ``checkpoint_every`` steps and, after a failure,
resumes from the latest one; rank 0 merges LoRA, exports the Hugging Face folder and measures it on held-out users.
So the driver's and the object store's memory do not grow with the checkpoint's size (docs/results.md).
"""
from __future__ import annotations

import dataclasses
import json
import logging
import tempfile
import time
from pathlib import Path

from reasonrec import arrivals, logs, storage
from reasonrec.vlm.finetune import FinetuneConfig

logger = logging.getLogger(__name__)


def finetune_vlm(data_uri: str, bundle_uri: str, config: FinetuneConfig | None = None,
                 base: str | None = None) -> dict:
    """Build R-VIT examples from the bundle's tools, fine-tune with Ray Train, commit ``vlm/`` with its held-out
    figures; returns the bundle's manifest. ``base``: a Hugging Face VLM folder or URI (tuned with LoRA), else the
    tiny model built from config (trained in full)."""
    import ray
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig, WorkerGroupError
    from ray.train.torch import TorchTrainer

    from reasonrec.bundle import Bundle, BundleWriter
    from reasonrec.data.prepared import PreparedData
    from reasonrec.horizon import EvidenceHorizon
    from reasonrec.vlm.examples import build_examples

    config = config or FinetuneConfig()
    if base and config.examples.item_tokens:
        raise ValueError("examples.item_tokens: item tokens are added to the tiny model built from config; a given "
                         "checkpoint (--base) is tuned on its own vocabulary: set examples.item_tokens: false")
    # Absolute: the Ray Train workers read both, and their working directory is not the driver's.
    data, bundle_uri = PreparedData(storage.absolute(data_uri)), storage.absolute(bundle_uri)
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
    run_storage = storage.absolute(config.storage_path or tempfile.mkdtemp(prefix="reasonrec-rvit-"))
    name = f"vlm-{int(time.time())}"
    base_uri = base_checkpoint(base, data, config, storage.join(run_storage, f"{name}-base"), bundle)
    datasets = {"train": ray.data.from_arrow(examples)}
    if warmup is not None:
        datasets["warmup"] = ray.data.from_arrow(warmup)
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"config": dataclasses.asdict(config), "lora_rank": lora_rank, "base": base_uri,
                           "data": data.uri, "bundle": bundle_uri, "log_level": logs.level()},
        datasets=datasets,
        scaling_config=ScalingConfig(num_workers=config.workers, use_gpu=config.use_gpu,
                                     resources_per_worker={"CPU": config.cpus_per_worker}),
        run_config=RunConfig(name=name, storage_path=run_storage,
                             failure_config=FailureConfig(max_failures=config.max_failures),
                             checkpoint_config=CheckpointConfig(num_to_keep=2)),
    )
    try:
        result = trainer.fit()
    except WorkerGroupError as e:  # the worker's own error in one line, not Ray Train's traceback of it
        rank, error = min(e.worker_failures.items())
        while getattr(error, "cause", None) is not None and error.cause is not error:
            error = error.cause
        raise RuntimeError(f"fine-tuning failed on Ray Train worker {rank}: {type(error).__name__}: "
                           f"{' '.join(str(error).split())}") from e
    with result.checkpoint.as_directory() as folder:
        summary = json.loads(Path(folder, "training.json").read_text())
        metrics = summary.pop("metrics")
        if "warmup" in summary:
            logger.info(f"warm-up loss {summary['warmup']['loss_first']:.4f} -> {summary['warmup']['loss_last']:.4f} "
                        f"in {summary['warmup']['seconds']}s")
        logger.info(f"training loss {summary['loss_first']:.4f} -> {summary['loss_last']:.4f} in "
                    f"{summary['seconds']}s" + (f", resumed at steps {summary['resumed_from']}"
                                                if summary["resumed_from"] else ""))
        with BundleWriter(bundle_uri) as writer:
            # The prompt builder's catalogue (titles, categories, images) travels with the model it was tuned for.
            writer.add_file("catalogue.parquet", storage.parquet_bytes(data.table("items")))
            places = config.examples.arrivals if config.examples.candidates_from == "shortlist" else 0
            if places:  # the tool stage lists the new arrivals it was tuned on: from the same training log
                writer.add_file(arrivals.FILE, storage.parquet_bytes(arrivals.first_bought(data.table("train"))))
            # Whether it learned to explain: from reviews (a share of explain examples over data that has them).
            explains = bool(config.examples.task_shares.get("explain")) and data.explain_rows("train")[0].num_rows > 0
            writer.add_vlm(folder, {"base": base or "tiny", "lora_rank": lora_rank, "training": summary,
                                    "arrivals": {"places": places, "share": arrivals.SHARE} if places else None,
                                    "examples": examples.num_rows, "explains": explains, "metrics": metrics,
                                    "config": dataclasses.asdict(config),
                                    "train_seconds": round(time.perf_counter() - start, 1)})
            manifest = writer.commit()
    logger.info(f"bundle {manifest['version']} committed to {bundle_uri} with vlm/")
    return manifest


def base_checkpoint(base: str | None, data, config: FinetuneConfig, into: str, bundle) -> str:
    """Where the workers read the base model: the given folder or URI (checked to be a Hugging Face folder), or the
    tiny model built here and written to ``into``, the run's storage."""
    from reasonrec.vlm.finetune import tiny_base

    if base:
        base = storage.absolute(base)
        if not storage.exists(storage.join(base, "config.json")):
            raise FileNotFoundError(f"--base {base}: not a Hugging Face model folder (no config.json)")
        return base
    with tempfile.TemporaryDirectory() as tmp:
        storage.upload_dir(tiny_base(data, config, Path(tmp), bundle), into)
    return into


def train_loop_per_worker(cfg: dict) -> None:
    """Ray Train worker: its own copy of the base, its shard of the examples, the loop resumed from the latest
    checkpoint if there is one (DDP across workers); rank 0 exports and measures the merged HF folder."""
    import ray.train
    import ray.train.torch
    import torch

    from reasonrec.config import from_dict
    from reasonrec.vlm.build import load, save
    from reasonrec.vlm.finetune import add_lora, train

    config = from_dict(FinetuneConfig, cfg["config"])
    torch.set_num_threads(config.threads)
    logs.worker(cfg["log_level"])
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    device = ray.train.torch.get_device()
    tag = f"[rank {rank}] "
    with tempfile.TemporaryDirectory() as tmp:
        base = local_copy(cfg["base"], Path(tmp) / "base")
        model, processor = load(base)
        if cfg["lora_rank"]:
            model = add_lora(model, cfg["lora_rank"], config.lora_alpha, config.lora_targets)
        if device.type == "cuda" and config.gradient_checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        module = ray.train.torch.prepare_model(model) if world > 1 else model
        resume = checkpointed_state()
        warmup = resume.get("warmup") if resume else None
        if config.warmup_steps and (resume is None or resume["stage"] == "warmup"):
            logger.info(f"{tag}warm-up: {config.warmup_steps} steps on short prompts")
            warmup = train(module, processor, shard_rows("warmup"),
                           dataclasses.replace(config, steps=config.warmup_steps), device=device,
                           seed=config.seed + rank, tag=tag, resume=resume, save=reporter(rank, "warmup"))
            resume = None
        summary = train(module, processor, shard_rows("train"), config, device=device, seed=config.seed + rank,
                        tag=tag, resume=resume, save=reporter(rank, "rvit", warmup=warmup))
        if warmup:
            summary["warmup"] = warmup
        checkpoint = None
        if rank == 0:
            if cfg["lora_rank"]:
                model = model.merge_and_unload()
            out = Path(tmp) / "out"
            save(model.to("cpu"), processor, out)
            summary["metrics"] = measure(cfg, out, base, config)
            (out / "training.json").write_text(json.dumps(summary))
            checkpoint = ray.train.Checkpoint.from_directory(out)
        ray.train.report({"loss_last": summary["loss_last"]}, checkpoint=checkpoint)


def local_copy(uri: str, into: Path) -> Path:
    """A local folder as is; an object-storage prefix downloaded, streamed, into ``into``."""
    return storage.download_dir(uri, into) if storage.is_remote(uri) else Path(uri)


def shard_rows(name: str) -> list[dict]:
    """This worker's share of a Ray Data dataset, whole: the curriculum draws from it at random."""
    import ray.train

    shard = ray.train.get_dataset_shard(name)
    return [row for batch in shard.iter_batches(batch_format="pyarrow", batch_size=4096) for row in batch.to_pylist()]


def reporter(rank: int, stage: str, **extra):
    """``save(state)`` for the loop: every worker reports (Ray Train's collective), rank 0 with the checkpoint."""
    import ray.train
    import torch

    def save(state: dict) -> None:
        with tempfile.TemporaryDirectory() as folder:
            checkpoint = None
            if rank == 0:
                torch.save({**state, "stage": stage, **extra}, Path(folder, "state.pt"))
                checkpoint = ray.train.Checkpoint.from_directory(folder)
            ray.train.report({"stage": stage, "step": state["step"], "loss": state["losses"][-1]},
                             checkpoint=checkpoint)  # uploaded before it returns
    return save


def checkpointed_state() -> dict | None:
    """The latest checkpoint's loop state (after a failure: Ray Train restarts the workers with it), else None."""
    import ray.train
    import torch

    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None:
        return None
    with checkpoint.as_directory() as folder:
        path = Path(folder, "state.pt")
        # Tensors, numbers, strings and containers only (the optimiser's and the schedule's state dicts included):
        # torch's safe loader takes them, so a checkpoint in shared storage can never run code.
        return torch.load(path, weights_only=True) if path.exists() else None


def measure(cfg: dict, tuned: Path, untuned: Path, config: FinetuneConfig) -> dict:
    """Held-out HR@1 of the exported model (rank 0, where the model already is)."""
    from reasonrec.bundle import Bundle
    from reasonrec.data.prepared import PreparedData
    from reasonrec.horizon import EvidenceHorizon
    from reasonrec.vlm.finetune import evaluate_vlm

    if not config.eval_users:
        return {}
    horizon = EvidenceHorizon.from_json(Bundle(cfg["bundle"]).read("horizon.json"))
    return evaluate_vlm(PreparedData(cfg["data"]), horizon, tuned, untuned, config)
