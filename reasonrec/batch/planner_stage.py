"""The planner stage: decide each valid row from its signals and write the final answer columns.

A row's ranking is its path's order of the shortlist followed by the rest of the majority-vote pool (route low
and ``tools-only`` rows keep the tool's own ranking); the trace says what happened.
"""
from __future__ import annotations

import time

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from reasonrec.batch.columns import appended, padded, strings
from reasonrec.batch.context import Scoring
from reasonrec.batch.stream import ANSWER, ANSWER_COLUMNS, accepted
from reasonrec.data import schemas
from reasonrec.data.vocab import Vocab


class PlannerStage:
    def __init__(self, scoring: Scoring, mode: str | None = None):
        """``mode``: another mode than the config's, for replaying the same signals (fit-planner)."""
        self.mode, self.shortlist = mode or scoring.config.mode, scoring.config.shortlist
        self.vocab, self.planner, self.version = scoring.vocab, scoring.planner, scoring.bundle.version

    def __call__(self, batch: pa.Table) -> pa.Table:
        task, by_tool = strings(batch.column("task")), strings(batch.column("plan")) == "tool"
        ok = accepted(batch)
        if batch.num_rows and ok.all() and (task == task[0]).all() and (by_tool == by_tool[0]).all():
            return self.answer(batch, task[0])  # e.g. a served request: no regrouping
        parts = [_without_answers(batch.filter(pa.array(~ok)))]
        for name in np.unique(task[ok]):  # each task has its own consulted tools (the T axis of tool_scores)
            for tool_alone in (False, True):  # rows the primary tool answers alone skip the decision (``answer``)
                rows = ok & (task == name) & (by_tool == tool_alone)
                if rows.any():
                    parts.append(self.answer(batch.filter(pa.array(rows)), name))
        return pa.concat_tables(parts)

    def answer(self, batch: pa.Table, task_name: str) -> pa.Table:
        """Rows of one task."""
        if task_name == "explain":
            return self.explained(batch)
        start = time.perf_counter()
        tools, rows = self.planner.tools_for(task_name), batch.num_rows
        task = batch.column("task").to_numpy(zero_copy_only=False).astype(object)
        plan = batch.column("plan").to_numpy(zero_copy_only=False).astype(object)
        k = batch.column("k").to_numpy(zero_copy_only=False).astype(np.int64)
        tool_conf = batch.column("tool_confidence").to_numpy(zero_copy_only=False).astype(np.float32)
        index = self.vocab.index
        primary = padded(batch.column("primary_items"), fill=-1, to=index)
        primary_scores = padded(batch.column("primary_scores"), primary.shape[1], fill=-np.inf)
        if (plan == "tool").all():
            # Route low answered by the primary tool (DESIGN.md §4): its own ranking, nothing to decide; the row has
            # no vote columns. What ``decide`` and ``_rankings`` give such rows, at a fraction of a served row's cost.
            d, vlm_conf = self.planner.by_tool(task, tool_conf), None
            items, scores = primary, primary_scores
            vlm_top, tools_top = np.full(rows, -1), items[:, 0]
        else:
            d, items, scores, vlm_top, tools_top, vlm_conf = self._decided(batch, task, plan, tool_conf, tools,
                                                                           primary, primary_scores)
        keep = (np.arange(items.shape[1])[None, :] < k[:, None]) & np.isfinite(scores) & (items > 0)
        ranked = _ranked(items, scores, keep, self.vocab)
        names = _tool_names(d.consulted, tools)
        spent = 1000 * (time.perf_counter() - start) / rows
        latency = batch.column("latency_ms").to_numpy(zero_copy_only=False) + spent
        answers = {
            "confidence": pa.array(d.confidence, pa.float32()),
            "ranked": ranked,
            "tools": names,
            "trace": self._trace(batch, d, vlm_conf, vlm_top, tools_top, items[:, 0], names),
            "model_version": pa.array(np.full(rows, self.version), pa.string()),
            "latency_ms": pa.array(latency, pa.float32()),
            "path": pa.array(d.path.astype(str), pa.string()),
            "vlm_called": pa.array(d.vlm_called, pa.bool_()),
            "escalated": pa.array(d.escalated, pa.bool_()),
            "overrode": pa.array(d.overrode, pa.bool_()),
            "vlm_top": _ids(vlm_top, self.vocab),
            "tools_top": _ids(tools_top, self.vocab),
            "text": pa.nulls(rows, pa.string()),
        }
        return appended(batch.drop_columns(["latency_ms"]), ANSWER, [answers[name] for name in ANSWER_COLUMNS])

    def _decided(self, batch, task, plan, tool_conf, tools, primary, primary_scores):
        """Rows of one task whose answer the planner decides from every signal: the decision, the ranked items and
        scores, the VLM's and the tools' top items, the VLM's confidence."""
        n, rows = self.shortlist, batch.num_rows
        horizon = batch.column("horizon").to_numpy(zero_copy_only=False).astype(np.float64)
        index = self.vocab.index
        pool = padded(batch.column("pool"), fill=-1, to=index)
        pool_scores = padded(batch.column("pool_scores"), pool.shape[1], fill=-np.inf)
        tool_scores = padded(batch.column("tool_scores"), len(tools) * n).reshape(rows, len(tools), n)
        tool_scores = np.nan_to_num(tool_scores.transpose(1, 0, 2), nan=-np.inf, neginf=-np.inf)
        if "vlm_scores" in batch.column_names:
            vlm = padded(batch.column("vlm_scores"), n)
            vlm_conf = pc.fill_null(batch.column("vlm_confidence"), np.nan).to_numpy(zero_copy_only=False)
        else:  # tools-only: the job has no VLM stage
            vlm, vlm_conf = np.full((rows, n), np.nan), np.full(rows, np.nan)
        shortlist, vote = _widened(pool[:, :n], n, -1), _widened(pool_scores[:, :n], n, -np.inf)

        d = self.planner.decide(self.mode, task, plan, horizon, tool_scores, vote, vlm, vlm_conf, tool_conf)
        items, scores = self._rankings(d, shortlist, pool, pool_scores, primary, primary_scores)
        vlm_top = np.where(d.vlm_called, shortlist[np.arange(rows), np.argmax(np.nan_to_num(vlm, nan=-1), 1)], -1)
        voted = (d.path == "vote") | (d.path == "aggregate")
        tools_top = np.where(d.path == "tool", items[:, 0], np.where(voted, pool[:, 0], -1))
        return d, items, scores, vlm_top, tools_top, vlm_conf

    def explained(self, batch: pa.Table) -> pa.Table:
        """Explain rows: the VLM's generated text is the answer; no ranking, no tools."""
        rows = batch.num_rows
        latency = pc.fill_null(batch.column("latency_ms"), 0.0).to_numpy(zero_copy_only=False)
        stars = pc.cast(pc.round(batch.column("rating")), pa.int32())
        trace = pc.binary_join_element_wise(
            f"mode: {self.mode}; path: vlm; explanation of ", batch.column("item_id"), " at ",
            pc.cast(stars, pa.string()), " stars", "")
        answers = {
            "confidence": pa.nulls(rows, pa.float32()),
            "ranked": pa.array([[]] * rows, schemas.RANKED),
            "tools": pa.array([[]] * rows, pa.list_(pa.string())),
            "trace": trace,
            "model_version": pa.array(np.full(rows, self.version), pa.string()),
            "latency_ms": pa.array(latency, pa.float32()),
            "path": pa.array(np.full(rows, "vlm"), pa.string()),
            "vlm_called": pa.array(np.ones(rows, dtype=bool)),
            "escalated": pa.array(np.zeros(rows, dtype=bool)),
            "overrode": pa.array(np.zeros(rows, dtype=bool)),
            "vlm_top": pa.nulls(rows, pa.string()),
            "tools_top": pa.nulls(rows, pa.string()),
            "text": batch.column("vlm_text"),
        }
        return appended(batch.drop_columns(["latency_ms"]), ANSWER, [answers[name] for name in ANSWER_COLUMNS])

    def _rankings(self, d, shortlist, pool, pool_scores, primary, primary_scores) -> tuple[np.ndarray, np.ndarray]:
        """(rows, width) item indices and scores, best first, per each row's path."""
        n = shortlist.shape[1]
        width = max(pool.shape[1], primary.shape[1], n)
        items, scores = _widened(pool, width, -1), _widened(pool_scores, width, -np.inf)
        reranked = d.vlm_called  # the vlm and aggregate paths
        if reranked.any():
            order = np.argsort(-np.nan_to_num(d.scores[reranked], neginf=-1e30), axis=1, kind="stable")
            short_scores = np.take_along_axis(d.scores[reranked], order, axis=1)
            floor = np.where(np.isfinite(short_scores), short_scores, np.inf).min(axis=1, keepdims=True)
            # The tail keeps its vote order below the shortlist: scores must fall with the rank.
            tail = np.where(np.isfinite(scores[reranked, n:]), floor - 1 - np.arange(width - n)[None, :], -np.inf)
            items[reranked, :n] = np.take_along_axis(shortlist[reranked], order, axis=1)
            scores[reranked] = np.concatenate([short_scores, tail], axis=1)
        by_tool = d.path == "tool"
        if by_tool.any():
            items[by_tool] = _widened(primary[by_tool], width, -1)
            scores[by_tool] = _widened(primary_scores[by_tool], width, -np.inf)
        return items, scores

    def _trace(self, batch, d, vlm_conf, vlm_top, tools_top, answer, names) -> pa.Array:
        def text(values) -> pa.Array:
            return pa.array(np.asarray(values).astype(str), pa.string())

        vlm_part, tools_part = "-", "-"  # a served batch often has no row of one kind: skip its kernels
        if d.vlm_called.any():
            vlm_part = pc.if_else(pa.array(d.vlm_called), pc.binary_join_element_wise(
                _ids(vlm_top, self.vocab), text(np.char.mod("%.2f", np.nan_to_num(vlm_conf))), " "), "-")
        consulted = d.consulted.any(axis=1)
        if consulted.any():
            tools_part = pc.if_else(pa.array(consulted), pc.binary_join_element_wise(
                pc.binary_join(names, ", "), _ids(tools_top, self.vocab), " -> "), "-")
        path = np.where(d.escalated, np.char.add(d.path.astype(str), " (escalated)"), d.path.astype(str))
        return pc.binary_join_element_wise(
            "EH: ", text(np.char.mod("%.2f", batch.column("horizon").to_numpy(zero_copy_only=False))),
            " (", batch.column("route"), f"); mode: {self.mode}; path: ", text(path), "; vlm: ", vlm_part,
            "; tools: ", tools_part, "; answer: ", _ids(answer, self.vocab),
            "; confidence: ", text(np.char.mod("%.2f", d.confidence)),
            text(np.where(d.overrode, "; vlm overrode the tools", "")), "",
            null_handling="replace", null_replacement="-")


def _widened(matrix: np.ndarray, width: int, fill) -> np.ndarray:
    """A copy of ``matrix`` filled on the right to ``width`` columns (np.pad costs ~20x more on a served row)."""
    out = np.full((matrix.shape[0], width), fill, dtype=matrix.dtype)
    out[:, :matrix.shape[1]] = matrix
    return out


def _ids(indices: np.ndarray, vocab: Vocab) -> pa.Array:
    known = indices > 0
    ids = np.full(len(indices), None, dtype=object)
    ids[known] = vocab.lookup(indices[known])
    return pa.array(ids, pa.string())


def _tool_names(consulted: np.ndarray, tools: list[str]) -> pa.ListArray:
    counts = consulted.sum(axis=1)
    flat = np.array(tools, dtype=object)[np.nonzero(consulted)[1]]
    return pa.ListArray.from_arrays(pa.array(np.concatenate([[0], np.cumsum(counts)]), pa.int32()),
                                    pa.array(flat, pa.string()))


def _ranked(items: np.ndarray, scores: np.ndarray, keep: np.ndarray, vocab: Vocab) -> pa.ListArray:
    offsets = np.concatenate([[0], np.cumsum(keep.sum(axis=1))])
    struct = pa.StructArray.from_arrays(
        [pa.array(vocab.lookup(items[keep]), pa.string()), pa.array(scores[keep], pa.float32())],
        fields=list(schemas.RANKED.value_type))
    return pa.ListArray.from_arrays(pa.array(offsets, pa.int32()), struct, type=schemas.RANKED)


def _without_answers(batch: pa.Table) -> pa.Table:
    return appended(batch.drop_columns(["latency_ms"]), ANSWER, [pa.nulls(batch.num_rows, f.type) for f in ANSWER])
