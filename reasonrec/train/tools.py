"""Train the tool repository with Ray Train (one ``TorchTrainer`` run per tool) and commit a bundle."""
from __future__ import annotations

import dataclasses
import json
import logging
import tempfile
import time

from reasonrec import logs, storage
from reasonrec.bundle import BundleWriter
from reasonrec.data.prepared import PreparedData
from reasonrec.horizon import EvidenceHorizon, HorizonConfig
from reasonrec.tools import make_config, tool_class

DEFAULT_TOOLS = ("sasrec", "gru4rec", "bprmf", "lightgcn")
logger = logging.getLogger(__name__)


@dataclasses.dataclass
class TrainToolsConfig:
    tools: tuple[str, ...] = DEFAULT_TOOLS
    workers: int = 1
    # Fractional so that the trainer never starves other Ray work on a 2-core machine.
    cpus_per_worker: float = 0.5
    threads: int = 2  # torch intra-op threads inside each worker
    storage_path: str | None = None  # where Ray Train keeps its run state; a temporary folder by default
    horizon: HorizonConfig = dataclasses.field(default_factory=HorizonConfig)
    overrides: dict = dataclasses.field(default_factory=dict)  # {tool: {config field: value}}

    def __post_init__(self):
        for name in self.tools:
            make_config(name, self.overrides.get(name))  # fail fast on unknown tools and fields
        if self.workers < 1 or self.cpus_per_worker <= 0:
            raise ValueError("workers must be >= 1 and cpus_per_worker > 0")


def train_loop_per_worker(cfg: dict) -> None:
    """Body of each Ray Train worker: the plain training loop, reporting per epoch, rank 0 checkpointing."""
    import ray.train
    import ray.train.torch
    import torch

    from reasonrec.train.loop import fit

    torch.set_num_threads(cfg["threads"])
    logs.worker(cfg["log_level"])
    logging.getLogger("ray.train").setLevel(logging.WARNING)  # one line per report is noise here
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    data = PreparedData(cfg["data_uri"])
    tool, train, valid, refit_on = build_tool(cfg["tool"], cfg["overrides"], data)
    module = ray.train.torch.prepare_model(tool, move_to_device=False) if world > 1 and tool.trainable else tool
    with tempfile.TemporaryDirectory() as tmp:
        # A refit tool keeps its train-only weights in holdout/: fit-planner reads the validation split with them.
        best = fit(tool, train, valid, refit_on=refit_on, module=module, shard=(rank, world),
                   holdout=lambda t: t.save(f"{tmp}/holdout") if rank == 0 else None)
        # One report at the end: each report is a round trip to the controller (~2 s measured here).
        checkpoint = None
        if rank == 0:
            tool.save(tmp)
            with open(f"{tmp}/best.json", "w") as f:
                json.dump(best, f)
            checkpoint = ray.train.Checkpoint.from_directory(tmp)
        ray.train.report({**best, "final": True}, checkpoint=checkpoint)


def build_tool(name: str, overrides: dict, data: PreparedData):
    """The untrained tool and what it trains and selects on: ranking tools the leave-one-out sequences (and refit on
    train + validation when their config says so), CTR tools the CTR rows (``reasonrec.data.ctr``)."""
    import torch

    cls = tool_class(name)
    config = make_config(name, overrides)
    if "ctr" in cls.tasks:
        config = cls.sized(config, data.item_features)
    # The initial weights follow the tool's seed, not whatever the worker process drew before (the demo's tools, and
    # all that follows them, differed from run to run): a forked generator leaves the process's own untouched.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        tool = cls(config, data.n_items, data.train.user_ids)
    if "ctr" in cls.tasks:
        return tool, data.ctr_set("train"), data.ctr_set("valid"), None
    return tool, data.train, data.eval_set("valid"), data.train_and_valid


def train_tools(data_uri: str, bundle_uri: str, config: TrainToolsConfig | None = None) -> dict:
    """Train ``config.tools`` with Ray Train (one run per tool; Ray must be initialised, or a local Ray starts) and
    commit them, the evidence horizon and each task's primary tool into the bundle; returns its manifest."""
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    config = config or TrainToolsConfig()
    data_uri = storage.absolute(data_uri)
    data = PreparedData(data_uri)
    storage_path = storage.absolute(config.storage_path or tempfile.mkdtemp(prefix="reasonrec-train-"))
    with BundleWriter(bundle_uri) as writer:
        for name in config.tools:
            start = time.perf_counter()
            logger.info(f"training {name} with Ray Train ({config.workers} worker(s) x {config.cpus_per_worker} CPU)")
            trainer = TorchTrainer(
                train_loop_per_worker,
                train_loop_config={"data_uri": data_uri, "tool": name, "threads": config.threads,
                                   "overrides": config.overrides.get(name, {}), "log_level": logs.level()},
                scaling_config=ScalingConfig(num_workers=config.workers, use_gpu=False,
                                             resources_per_worker={"CPU": config.cpus_per_worker}),
                run_config=RunConfig(name=f"{name}-{int(time.time())}", storage_path=storage_path),
            )
            result = trainer.fit()
            with result.checkpoint.as_directory() as folder:
                best = json.loads(open(f"{folder}/best.json").read())
                writer.add_tool(name, folder, {**best, "train_seconds": round(time.perf_counter() - start, 1)},
                                tool_class(name).tasks)
            key = tool_class(name).selection
            logger.info(f"{name}: best epoch {best.get('epoch')} valid {key} {best.get(key, float('nan')):.4f}")
        add_data_files(writer, data, config.horizon)
        writer.update(**primary_on_validation(writer, data))
        return writer.commit()


def add_data_files(writer: BundleWriter, data: PreparedData, horizon_config: HorizonConfig) -> None:
    """What scoring needs besides the tools: the fitted evidence horizon and the item catalogue."""
    horizon = EvidenceHorizon.fit(data.train.lengths, data.train.items, data.n_items, horizon_config)
    writer.add_file("horizon.json", horizon.to_json().encode())
    writer.add_file("vocab/items.json", json.dumps(data.item_vocab.ids.tolist()).encode())
    writer.update(data={"uri": data.uri, **{k: data.meta[k] for k in ("dataset", "fingerprint", "items")}},
                  horizon=dataclasses.asdict(horizon_config))


def primary_on_validation(writer: BundleWriter, data: PreparedData) -> dict:
    """Each task's primary tool (the one that answers route low): the bundle's best tool for that task on the
    validation split, scored with the weights that never saw validation (a refit tool's holdout copy): NDCG@10 for
    sequential and direct among the ranking tools, AUC for ctr among the CTR tools."""
    from reasonrec.bundle import MANIFEST, Bundle
    from reasonrec.evaluator import evaluate, tool_scorer
    from reasonrec.tools.base import Tool

    tools = {name: Tool.load(writer.staged_tool(name, holdout=True)) for name in writer.staged_tools()}
    if storage.exists(storage.join(writer.uri, MANIFEST)):  # tools of the bundle that were not retrained
        previous = Bundle(writer.uri)
        tools.update({n: previous.load_tool(n, holdout=True) for n in previous.tool_names if n not in tools})
    figures = {}
    for task in ("sequential", "direct", "ctr"):
        names = sorted(n for n, tool in tools.items() if task in tool.tasks and tool.trainable)
        if not names:
            continue
        if task == "ctr":
            valid = data.ctr_set("valid")
            figures[task] = {name: tools[name].validate(valid) for name in names}
        else:
            valid = data.eval_set("valid")
            figures[task] = {name: evaluate(tool_scorer(tools[name]), valid, task) for name in names}
    key = {"sequential": "NDCG@10", "direct": "NDCG@10", "ctr": "AUC"}
    best = {task: max(sorted(f), key=lambda n: f[n][key[task]]) for task, f in figures.items()}  # ties: sorted first
    if best:
        logger.info("primary tools (best on validation): " + ", ".join(
            f"{task} {tool} {key[task]} {figures[task][tool][key[task]]:.4f}" for task, tool in best.items()))
    return {"primary": best, "validation": figures} if best else {}
