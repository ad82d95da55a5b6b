"""The nightly job's stages in this process, without Ray: ``fit-planner``, the report, benchmarks and tests run
exactly the code the actors run."""
from __future__ import annotations

import pyarrow as pa

from reasonrec.batch.config import ScoreConfig
from reasonrec.batch.horizon_stage import HorizonStage
from reasonrec.batch.planner_stage import PlannerStage
from reasonrec.batch.requests import conform
from reasonrec.batch.tool_stage import ToolStage
from reasonrec.batch.vlm_stage import VLMStage
from reasonrec.bundle import Bundle


class LocalPipeline:
    def __init__(self, bundle: Bundle, config: ScoreConfig, decide: bool = True, holdout: bool = False):
        """``decide=False`` stops before the planner: the rows keep their tool and VLM signals. ``holdout``: the
        tools' weights from before their refit on the validation items."""
        self.config = config
        self.stages = [HorizonStage(bundle, config), ToolStage(bundle, config, holdout)]
        if config.mode != "tools-only":
            self.stages.append(VLMStage(bundle, config))
        if decide:
            self.stages.append(PlannerStage(bundle, config))

    def __call__(self, requests: pa.Table, source: str = "local", log=None) -> pa.Table:
        stream = conform(requests, source)
        out = []
        for lo in range(0, stream.num_rows, self.config.batch_size):
            batch = stream.slice(lo, self.config.batch_size)
            for stage in self.stages:
                batch = stage(batch)
            out.append(batch)
            if log:
                log(f"  {min(lo + self.config.batch_size, stream.num_rows)}/{stream.num_rows} rows")
        return pa.concat_tables(out) if out else stream
