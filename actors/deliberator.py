"""Ray Data actors around the VLM: ``VLMActor`` for the nightly job's request rows (GPU pool when the cluster has
GPUs), ``DeliberatorActor`` for ready-made prompt rows."""
import pyarrow as pa

from reasonrec.batch.config import ScoreConfig
from reasonrec.batch.deliberator_stage import DeliberatorStage
from reasonrec.batch.vlm_stage import VLMStage
from reasonrec.bundle import Bundle
from reasonrec.vlm.deliberator import DeliberatorConfig


class VLMActor:
    def __init__(self, bundle_uri: str, config: ScoreConfig):
        self.stage = VLMStage(Bundle(bundle_uri), config)

    def __call__(self, batch: pa.Table) -> pa.Table:
        return self.stage(batch)


class DeliberatorActor:
    def __init__(self, bundle_uri: str, config: DeliberatorConfig):
        self.stage = DeliberatorStage(Bundle(bundle_uri), config)

    def __call__(self, batch: pa.Table) -> pa.Table:
        return self.stage(batch)


def actor_resources(config: DeliberatorConfig) -> dict:
    """``num_cpus``/``num_gpus`` for ``map_batches``, from config and the connected cluster."""
    import ray

    return config.resources(ray.cluster_resources().get("GPU", 0))
