"""The stream contract: the columns a request row carries from shard to sink, and how a stage rejects a row.

Every stage is a plain ``__call__(pa.Table) -> pa.Table`` (run unchanged by Ray Data, in one process and by Serve)
that adds its columns at the end and passes every row on:

    read      STREAM    the request (schemas.REQUESTS), where it came from (shard, row), ``raw`` (the input as JSON
                        when it could not be conformed) and ``error``/``stage`` (set by the first stage to reject it)
    horizon   ROUTED    ``horizon`` C, ``route`` (low/medium/high) and ``plan``: who answers before the VLM has
                        spoken (tool / vote / vlm / aggregate, ``Planner.paths_before_vlm``); decided once, here
    tools     SIGNALS   the vote's pool, every tool's shortlist scores, the primary tool's top k, ``latency_ms``
    vlm       VLM       the VLM's shortlist scores and confidence (rows whose plan asks the VLM); explain rows its
                        generated text
    planner   ANSWER    the final ranking, path, trace, ... (schemas.RESULTS)

A rejected row keeps flowing with its reason; the sink writes it to quarantine, so nothing is dropped on the way.
"""
from __future__ import annotations

import numpy as np
import pyarrow as pa

from reasonrec.batch.columns import list_parts, nulls, to_numpy
from reasonrec.data import schemas
from reasonrec.data.prepared import Sequences
from reasonrec.data.vocab import Vocab

STREAM = pa.schema([
    *schemas.REQUESTS,
    pa.field("shard", pa.string()),
    pa.field("row", pa.int64()),
    pa.field("raw", pa.string()),  # the input row as JSON, kept only when it could not be conformed
    pa.field("error", pa.string()),
    pa.field("stage", pa.string()),
])

ROUTED = [pa.field("horizon", pa.float32()), pa.field("route", pa.string()), pa.field("plan", pa.string())]
ASKS_VLM = ("vlm", "aggregate")  # the plans whose rows the VLM stage runs through the model

SIGNALS = [
    pa.field("pool", pa.list_(pa.string())), pa.field("pool_scores", pa.list_(pa.float32())),
    pa.field("tool_scores", pa.list_(pa.float32())),  # T x shortlist, flattened
    pa.field("primary_items", pa.list_(pa.string())), pa.field("primary_scores", pa.list_(pa.float32())),
    pa.field("tool_confidence", pa.float32()), pa.field("latency_ms", pa.float32()),
]

VLM = [pa.field("vlm_scores", pa.list_(pa.float32())), pa.field("vlm_confidence", pa.float32()),
       pa.field("vlm_text", pa.string())]  # explain rows: the generated text

ANSWER_COLUMNS = ("confidence", "ranked", "tools", "trace", "model_version", "latency_ms", "path", "vlm_called",
                  "escalated", "overrode", "vlm_top", "tools_top", "text")
ANSWER = [schemas.RESULTS.field(name) for name in ANSWER_COLUMNS]

# What the sink keeps of every block, in this order (the signals were read by the planner stage).
ANSWERED = pa.schema([*STREAM, *ROUTED, *ANSWER])


def to_sink(block: pa.Table) -> pa.Table:
    """An answered block in the column order and types the sink writes."""
    return block.select(ANSWERED.names).cast(ANSWERED)


def reject(batch: pa.Table, rows: np.ndarray, reasons, stage: str) -> pa.Table:
    """``batch`` with ``rows`` rejected by ``stage`` for ``reasons`` (one per row, or one for all). A row that an
    earlier check already rejected keeps its first reason."""
    rows = np.asarray(rows, dtype=np.int64)
    if not len(rows):
        return batch
    error = to_numpy(batch.column("error")).astype(object)
    where = to_numpy(batch.column("stage")).astype(object)
    fresh = np.equal(error[rows], None)
    picked = rows[fresh]
    error[picked] = np.asarray(reasons, dtype=object)[fresh] if not isinstance(reasons, str) else reasons
    where[picked] = stage
    batch = batch.set_column(batch.schema.get_field_index("error"), "error", pa.array(error, pa.string()))
    return batch.set_column(batch.schema.get_field_index("stage"), "stage", pa.array(where, pa.string()))


def accepted(batch: pa.Table) -> np.ndarray:
    """Rows no stage has rejected."""
    return nulls(batch.column("error"))


def history_indices(batch: pa.Table, vocab: Vocab) -> tuple[np.ndarray, np.ndarray]:
    """Per row the history length, and the flat item indices (-1 for items not in the catalogue)."""
    lengths, items = list_parts(batch.column("history"))
    return lengths, vocab.index(items)


def history_sequences(batch: pa.Table, vocab: Vocab) -> Sequences:
    """The batch's histories as tool input; items the catalogue does not know are left out."""
    lengths, items = history_indices(batch, vocab)
    known = items > 0
    rows = np.repeat(np.arange(len(lengths)), lengths)
    kept = np.bincount(rows[known], minlength=len(lengths))
    offsets = np.concatenate([[0], np.cumsum(kept)]).astype(np.int64)
    return Sequences(to_numpy(batch.column("user_id")), offsets, items[known])
