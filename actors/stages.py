"""Ray Data actors for the nightly job: each a thin shell that builds one library stage in its own process (the
bundle is read there, not shipped through the object store) and calls it on every batch."""
from __future__ import annotations

import pyarrow as pa
import torch

from reasonrec.batch.config import ScoreConfig
from reasonrec.batch.context import Scoring
from reasonrec.batch.deliberator_stage import DeliberatorStage
from reasonrec.batch.horizon_stage import HorizonStage
from reasonrec.batch.planner_stage import PlannerStage
from reasonrec.batch.tool_stage import ToolStage
from reasonrec.batch.vlm_stage import VLMStage
from reasonrec.bundle import Bundle
from reasonrec.vlm.deliberator import DeliberatorConfig


class StageActor:
    stage_class: type

    def __init__(self, bundle_uri: str, config: ScoreConfig):
        self.stage = self.stage_class(Scoring.load(bundle_uri, config))

    def __call__(self, batch: pa.Table) -> pa.Table:
        return self.stage(batch)


class HorizonActor(StageActor):
    """Validate requests, add horizon, route and plan (CPU, cheap)."""
    stage_class = HorizonStage


class ToolActor(StageActor):
    """Every consulted classical tool scores each row once (CPU pool)."""
    stage_class = ToolStage

    def __init__(self, bundle_uri: str, config: ScoreConfig):
        torch.set_num_threads(config.torch_threads)
        super().__init__(bundle_uri, config)


class VLMActor(StageActor):
    """The VLM on the rows whose plan asks it (GPU pool when the cluster has GPUs)."""
    stage_class = VLMStage


class PlannerActor(StageActor):
    """The planner decides each row from its signals and writes the final answer (CPU, cheap)."""
    stage_class = PlannerStage


class DeliberatorActor:
    """Ready-made prompt rows (e.g. R-VIT examples) through the bundle's VLM."""

    def __init__(self, bundle_uri: str, config: DeliberatorConfig):
        self.stage = DeliberatorStage(Bundle(bundle_uri), config)

    def __call__(self, batch: pa.Table) -> pa.Table:
        return self.stage(batch)


def vlm_resources(config: DeliberatorConfig) -> dict:
    """``num_cpus``/``num_gpus`` of one VLM actor, from config alone. On a Ray instance this process started itself
    (no cluster, so no autoscaler) GPUs that are not there never come: that is an error naming the fix, not a hang."""
    import ray

    resources = config.resources()
    if resources["num_gpus"] and _started_here() and not ray.cluster_resources().get("GPU"):
        raise ValueError(f"deliberator.device is {config.device} ({resources['num_gpus']} GPU per VLM actor), but "
                         f"this local Ray has no GPU: set deliberator.device: cpu (--vlm-device cpu) to run the VLM "
                         f"on CPU, or submit to a cluster with a GPU group")
    return resources


def _started_here() -> bool:
    """Whether this driver started its Ray instance (``ray.init()`` without an address) rather than joining one."""
    import ray._private.worker  # no public API says which: the driver's node is a head only when it started it

    node = getattr(ray._private.worker, "_global_node", None)
    return bool(node is not None and getattr(node, "head", False))
