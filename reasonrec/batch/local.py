"""The nightly job's stages in this process, without Ray: ``reasonrec.score``, ``fit-planner``, the report,
benchmarks and tests run exactly the code the actors run, sharing one ``Scoring``."""
from __future__ import annotations

import logging

import pyarrow as pa

from reasonrec.batch.context import Scoring
from reasonrec.batch.horizon_stage import HorizonStage
from reasonrec.batch.planner_stage import PlannerStage
from reasonrec.batch.shards import conform
from reasonrec.batch.tool_stage import ToolStage
from reasonrec.batch.vlm_stage import VLMStage

logger = logging.getLogger(__name__)


class LocalPipeline:
    def __init__(self, scoring: Scoring, decide: bool = True, holdout: bool = False, vlm_batches: bool = False):
        """``decide=False`` stops before the planner: the rows keep their tool and VLM signals. ``holdout``: the
        tools' weights from before their refit on the validation items. ``vlm_batches``: the VLM sees a block in
        batches of ``vlm_batch_size`` rows, as its Ray actors do (the backend's numerics depend on its batches)."""
        config = scoring.config
        self.batch_size = config.batch_size
        self.pipeline = [(HorizonStage(scoring), None), (ToolStage(scoring, holdout), None)]
        if config.mode != "tools-only":
            self.pipeline.append((VLMStage(scoring), config.vlm_batch_size if vlm_batches else None))
        if decide:
            self.pipeline.append((PlannerStage(scoring), None))

    def stages(self, batch: pa.Table) -> pa.Table:
        """One block of stream rows through every stage."""
        for stage, size in self.pipeline:
            if size is None or batch.num_rows <= size:
                batch = stage(batch)
            else:
                batch = pa.concat_tables([stage(batch.slice(lo, size)) for lo in range(0, batch.num_rows, size)])
        return batch

    def __call__(self, requests: pa.Table, source: str = "local") -> pa.Table:
        """Request rows (schemas.REQUESTS) through the stages, block by block."""
        stream = conform(requests, source)
        out = []
        for lo in range(0, stream.num_rows, self.batch_size):
            out.append(self.stages(stream.slice(lo, self.batch_size)))
            logger.debug(f"  {min(lo + self.batch_size, stream.num_rows)}/{stream.num_rows} rows")
        return pa.concat_tables(out) if out else stream
