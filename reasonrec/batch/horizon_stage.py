"""First stage of the nightly job: validate each request, add its evidence horizon and the planner's route
(no torch here)."""
from __future__ import annotations

import numpy as np
import pyarrow as pa

from reasonrec.batch.columns import appended, strings
from reasonrec.batch.config import ScoreConfig, make_planner
from reasonrec.batch.requests import Validator, history_indices
from reasonrec.bundle import Bundle
from reasonrec.data.vocab import Vocab
from reasonrec.horizon import EvidenceHorizon

ROUTED = [pa.field("horizon", pa.float32()), pa.field("route", pa.string())]  # the columns this stage adds


class HorizonStage:
    def __init__(self, bundle: Bundle, config: ScoreConfig):
        self.vocab = Vocab(bundle.item_ids(), offset=1)
        self.horizon = EvidenceHorizon.from_json(bundle.read("horizon.json"))
        self.validate = Validator(self.vocab, config.max_k, tuple(config.primary), config.max_history)
        self.planner = make_planner(bundle, config)

    def __call__(self, batch: pa.Table) -> pa.Table:
        batch = self.validate(batch)
        lengths, items = history_indices(batch, self.vocab)
        offsets = np.concatenate([[0], np.cumsum(lengths)])
        c = self.horizon.apply(lengths, offsets, items)
        route = self.planner.routes(strings(batch.column("task")), c)
        return appended(batch, ROUTED, [pa.array(c, pa.float32()), pa.array(route, pa.string())])
