"""Ray Data actor: answer requests with the bundle's classical tools (CPU pool)."""
import pyarrow as pa

from reasonrec.batch.config import ScoreConfig
from reasonrec.batch.tool_stage import ToolStage
from reasonrec.bundle import Bundle


class ToolActor:
    def __init__(self, bundle_uri: str, config: ScoreConfig):
        self.stage = ToolStage(Bundle(bundle_uri), config)

    def __call__(self, batch: pa.Table) -> pa.Table:
        return self.stage(batch)
