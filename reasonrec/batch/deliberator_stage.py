"""Deliberate on a batch of prompt rows: the bundle's VLM adds scores, answer, confidence and trace columns."""
from __future__ import annotations

import tempfile

import pyarrow as pa

from reasonrec.bundle import Bundle
from reasonrec.vlm.deliberator import DeliberatorConfig, deliberate, make_backend

VERDICT_FIELDS = [("vlm_scores", pa.list_(pa.float32())), ("vlm_answer", pa.string()),
                  ("confidence", pa.float32()), ("trace", pa.string())]


class DeliberatorStage:
    def __init__(self, bundle: Bundle, config: DeliberatorConfig):
        self._folder = tempfile.TemporaryDirectory(prefix="reasonrec-vlm-")  # lives as long as the stage
        self.backend = make_backend(bundle.vlm_folder(self._folder.name), config)
        self.model_version = bundle.version

    def __call__(self, batch: pa.Table) -> pa.Table:
        found = deliberate(self.backend, batch.to_pylist())
        columns = [[v.scores.tolist() for v in found], [v.answer for v in found],
                   [v.confidence for v in found], [v.trace for v in found]]
        for (name, kind), values in zip(VERDICT_FIELDS, columns):
            batch = batch.append_column(pa.field(name, kind), pa.array(values, type=kind))
        return batch
