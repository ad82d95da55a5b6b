"""Deliberate on a batch of ready-made prompt rows: the bundle's VLM adds scores, answer, confidence and trace."""
from __future__ import annotations

import pyarrow as pa

from reasonrec.bundle import Bundle
from reasonrec.vlm.deliberator import BundleDeliberator, DeliberatorConfig

VERDICT_FIELDS = [("vlm_scores", pa.list_(pa.float32())), ("vlm_answer", pa.string()),
                  ("confidence", pa.float32()), ("trace", pa.string())]


class DeliberatorStage:
    def __init__(self, bundle: Bundle, config: DeliberatorConfig):
        self.deliberate = BundleDeliberator(bundle, config)

    def __call__(self, batch: pa.Table) -> pa.Table:
        found = self.deliberate(batch.to_pylist())
        columns = [[v.scores.tolist() for v in found], [v.answer for v in found],
                   [v.confidence for v in found], [v.trace for v in found]]
        for (name, kind), values in zip(VERDICT_FIELDS, columns):
            batch = batch.append_column(pa.field(name, kind), pa.array(values, type=kind))
        return batch
