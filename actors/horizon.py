"""Ray Data actor: validate requests and add the evidence horizon and route (one bundle load per actor)."""
import pyarrow as pa

from reasonrec.batch.config import ScoreConfig
from reasonrec.batch.horizon_stage import HorizonStage
from reasonrec.bundle import Bundle


class HorizonActor:
    def __init__(self, bundle_uri: str, config: ScoreConfig):
        self.stage = HorizonStage(Bundle(bundle_uri), config)

    def __call__(self, batch: pa.Table) -> pa.Table:
        return self.stage(batch)
