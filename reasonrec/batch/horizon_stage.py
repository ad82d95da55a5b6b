"""First stage of the nightly job: validate each request, add its evidence horizon, route and plan (no torch)."""
from __future__ import annotations

import numpy as np
import pyarrow as pa

from reasonrec.batch.columns import appended, strings
from reasonrec.batch.context import Scoring
from reasonrec.batch.stream import ROUTED, history_indices
from reasonrec.batch.validate import Validator


class HorizonStage:
    def __init__(self, scoring: Scoring):
        config = scoring.config
        self.vocab, self.horizon, self.planner, self.mode = scoring.vocab, scoring.horizon, scoring.planner, config.mode
        self.validate = Validator(self.vocab, config.max_k, scoring.answered, config.max_history, scoring.unanswered)

    def __call__(self, batch: pa.Table) -> pa.Table:
        batch = self.validate(batch)
        lengths, items = history_indices(batch, self.vocab)
        offsets = np.concatenate([[0], np.cumsum(lengths)])
        c = self.horizon.apply(lengths, offsets, items)
        task = strings(batch.column("task"))
        route = self.planner.routes(task, c)
        plan = self.planner.paths_before_vlm(self.mode, task, route)  # decided here, read by every later stage
        explain = task == "explain"  # the VLM alone, whatever the horizon (paper Appendix A)
        route[explain], plan[explain] = "medium", "vlm"
        return appended(batch, ROUTED, [pa.array(c, pa.float32()), pa.array(route, pa.string()),
                                        pa.array(plan.astype(str), pa.string())])
