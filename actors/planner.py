"""Ray Data actor: the planner decides each row from its signals and writes the final answer (CPU, cheap)."""
import pyarrow as pa

from reasonrec.batch.config import ScoreConfig
from reasonrec.batch.planner_stage import PlannerStage
from reasonrec.bundle import Bundle


class PlannerActor:
    def __init__(self, bundle_uri: str, config: ScoreConfig):
        self.stage = PlannerStage(Bundle(bundle_uri), config)

    def __call__(self, batch: pa.Table) -> pa.Table:
        return self.stage(batch)
