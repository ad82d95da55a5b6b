"""The tools answer: the task's primary classical tool scores the catalogue (or the given candidates), top k.

Rows rejected by an earlier stage pass through with empty answer columns, so every row reaches the sink.
"""
from __future__ import annotations

import time

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch

from reasonrec.batch.config import ScoreConfig
from reasonrec.batch.requests import STREAM, history_sequences
from reasonrec.bundle import Bundle
from reasonrec.data import schemas
from reasonrec.data.vocab import Vocab
from reasonrec.tools.base import Tool, exclude_seen

ANSWER_COLUMNS = ("confidence", "ranked", "tools", "trace", "model_version", "latency_ms")


class ToolStage:
    def __init__(self, bundle: Bundle, config: ScoreConfig):
        torch.set_num_threads(config.torch_threads)
        self.vocab = Vocab(bundle.item_ids(), offset=1)
        self.version = bundle.version
        self.primary = dict(config.primary)
        self.tools: dict[str, Tool] = {name: bundle.load_tool(name) for name in set(self.primary.values())}

    def __call__(self, batch: pa.Table) -> pa.Table:
        ok = batch.column("error").is_null()
        parts = [_without_answers(batch.filter(pc.invert(ok)))]
        for task, tool_name in self.primary.items():
            rows = batch.filter(pc.and_(ok, pc.equal(batch.column("task"), task)))
            if rows.num_rows:
                parts.append(self.answer(rows, task, tool_name))
        return pa.concat_tables(parts)

    @torch.no_grad()
    def answer(self, batch: pa.Table, task: str, tool_name: str) -> pa.Table:
        start = time.perf_counter()
        history = history_sequences(batch, self.vocab)
        scores = self.tools[tool_name].score(history)
        k = torch.from_numpy(batch.column("k").to_numpy().astype(np.int64))
        if task == "sequential":
            values, items = exclude_seen(scores, history).topk(int(min(k.max(), len(self.vocab))), dim=1)
        else:
            candidates = _candidate_matrix(batch.column("candidates"), self.vocab)
            picked = scores.gather(1, candidates.clamp(min=0)).masked_fill(candidates < 0, float("-inf"))
            values, pos = picked.topk(int(min(k.max(), candidates.shape[1])), dim=1)
            items, scores = candidates.gather(1, pos), picked
        # Softmax probability of the top answer among everything that was eligible.
        confidence = torch.exp(values[:, 0] - torch.logsumexp(scores, dim=1)).nan_to_num(0.0)
        keep = (torch.arange(values.shape[1])[None, :] < k[:, None]) & torch.isfinite(values)
        ranked = _ranked(values, items, keep, self.vocab)
        latency_ms = 1000 * (time.perf_counter() - start) / batch.num_rows
        n = batch.num_rows
        trace = pc.binary_join_element_wise(
            "EH: ", pc.cast(pc.round(batch.column("horizon"), 2), pa.string()),
            "; route: ", batch.column("route"), f" (tools-only); tools: {tool_name}; confidence ",
            pc.cast(pc.round(pa.array(confidence.numpy()), 2), pa.string()), "")
        answers = {
            "confidence": pa.array(confidence.numpy(), pa.float32()),
            "ranked": ranked,
            "tools": pa.ListArray.from_arrays(pa.array(np.arange(n + 1), pa.int32()),
                                              pa.array(np.full(n, tool_name), pa.string())),
            "trace": trace,
            "model_version": pa.array(np.full(n, self.version), pa.string()),
            "latency_ms": pa.array(np.full(n, latency_ms), pa.float32()),
        }
        for name in ANSWER_COLUMNS:
            batch = batch.append_column(name, answers[name])
        return batch


def _candidate_matrix(candidates: pa.ChunkedArray, vocab: Vocab) -> torch.Tensor:
    """Candidate item indices, one row per request, padded with -1."""
    lengths = pc.list_value_length(candidates).to_numpy(zero_copy_only=False).astype(np.int64)
    matrix = np.full((len(lengths), max(int(lengths.max(initial=0)), 1)), -1, dtype=np.int64)
    rows = np.repeat(np.arange(len(lengths)), lengths)
    cols = np.arange(lengths.sum()) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    matrix[rows, cols] = vocab.index(pc.list_flatten(candidates))
    return torch.from_numpy(matrix)


def _ranked(values: torch.Tensor, items: torch.Tensor, keep: torch.Tensor, vocab: Vocab) -> pa.ListArray:
    offsets = np.concatenate([[0], np.cumsum(keep.sum(dim=1).numpy())])
    struct = pa.StructArray.from_arrays(
        [pa.array(vocab.lookup(items[keep].numpy()), pa.string()), pa.array(values[keep].numpy(), pa.float32())],
        fields=list(schemas.RANKED.value_type))
    return pa.ListArray.from_arrays(pa.array(offsets, pa.int32()), struct, type=schemas.RANKED)


def _without_answers(batch: pa.Table) -> pa.Table:
    types = {f.name: f.type for f in schemas.RESULTS}
    for name in ANSWER_COLUMNS:
        batch = batch.append_column(name, pa.nulls(batch.num_rows, types[name]))
    return batch


# Column order after both stages, so that every block the sink sees has one schema.
ANSWERED = pa.schema([*STREAM, pa.field("horizon", pa.float32()), pa.field("route", pa.string()),
                      *(f for f in schemas.RESULTS if f.name in ANSWER_COLUMNS)])
