"""The tools stage: every consulted classical tool scores each valid row once; the planner reads the signals.

Per row it adds the majority vote's top ``max(shortlist, k)`` items (``pool``: the VLM's candidates are its first
``shortlist``, the rest is the tail of a final ranking), each tool's raw scores on the shortlist (``tool_scores``,
tool-major, -inf on padding), and the primary tool's own top k with its confidence (the answer of route low).
A row whose plan is the primary tool alone (route low in planner mode, DESIGN.md §4) is scored by that tool
only: its vote columns stay null, as nothing downstream reads them.
Rows rejected by an earlier stage pass through with null signals, so every row reaches the sink.
"""
from __future__ import annotations

import time

import numpy as np
import pyarrow as pa
import torch

from reasonrec.arrivals import Arrivals, with_arrivals
from reasonrec.batch.columns import appended, padded, strings
from reasonrec.batch.context import Scoring
from reasonrec.batch.stream import ASKS_VLM, SIGNALS, accepted, history_sequences
from reasonrec.data.sequences import Sequences
from reasonrec.data.vocab import Vocab
from reasonrec.scores import majority_vote, rows_per_pass, top_k
from reasonrec.tools.base import Tool, exclude_seen


class ToolStage:
    def __init__(self, scoring: Scoring, holdout: bool = False):
        """``holdout``: the tools as they were before their refit on the validation items (fit-planner). Torch's
        thread count is the caller's: the actors that own a process set ``config.torch_threads``."""
        self.vocab, self.shortlist, self.primary = scoring.vocab, scoring.config.shortlist, scoring.primary
        self.names = {task: scoring.tools_for(task) for task in self.primary}
        used = sorted({name for names in self.names.values() for name in names})
        self.tools: dict[str, Tool] = {name: scoring.bundle.load_tool(name, holdout) for name in used}
        # A VLM tuned on listings whose last places are new arrivals is shown the same (reasonrec.arrivals).
        tuned = (scoring.bundle.manifest.get("vlm") or {}).get("arrivals")
        self.places = tuned["places"] if tuned and scoring.config.mode != "tools-only" else 0
        self.arrivals = Arrivals.from_bundle(scoring.bundle, self.vocab) if self.places else None

    def __call__(self, batch: pa.Table) -> pa.Table:
        ok, task = accepted(batch), strings(batch.column("task"))
        alone = ok & (strings(batch.column("plan")) == "tool")
        one_group = len(ok) and ok.all() and (task == task[0]).all() and (alone == alone[0]).all()
        if one_group and task[0] in self.primary:  # e.g. a served request: no regrouping
            return self.signals(batch, task[0], bool(alone[0]))
        scored = ok & np.isin(task, list(self.primary))  # explain rows need no tool
        parts = [_without_signals(batch.filter(pa.array(~scored)))]
        for name in self.primary:
            for primary_only in (False, True):
                rows = batch.filter(pa.array(ok & (task == name) & (alone == primary_only)))
                if rows.num_rows:
                    parts.append(self.signals(rows, name, primary_only))
        return pa.concat_tables(parts)

    @torch.inference_mode()
    def signals(self, batch: pa.Table, task: str, primary_only: bool = False) -> pa.Table:
        start = time.perf_counter()
        names = [self.primary[task]] if primary_only else self.names[task]
        history = history_sequences(batch, self.vocab)
        # Users are encoded once for the whole batch (an encoder's fixed cost per call shrinks per user as calls
        # grow); the scores over the catalogue go by passes of a few MiB per tool (reasonrec.scores.SCORE_FLOATS).
        vectors = {} if task == "ctr" else {name: self.tools[name].user_vectors(history) for name in names}
        encoding = (time.perf_counter() - start) / max(batch.num_rows, 1)  # seconds per row, in each row's latency
        width = len(self.vocab) + 1
        step = rows_per_pass(width)
        if batch.num_rows <= step:
            return self._signals(batch, task, names, primary_only, history, vectors, encoding)
        # One score matrix per tool for all passes: a fresh one per pass is often mapped afresh by malloc, and its
        # page faults cost up to half the product's time (docs/results.md).
        products = {name: torch.empty(step, width) for name in vectors}
        return pa.concat_tables([
            self._signals(batch.slice(lo, step), task, names, primary_only,
                          history.select(np.arange(lo, min(lo + step, batch.num_rows))),
                          {name: v[lo:lo + step] for name, v in vectors.items()}, encoding, products)
            for lo in range(0, batch.num_rows, step)])

    def _signals(self, batch: pa.Table, task: str, names: list[str], primary_only: bool, history: Sequences,
                 vectors: dict[str, torch.Tensor], encoding: float,
                 products: dict[str, torch.Tensor] | None = None) -> pa.Table:
        start = time.perf_counter() - encoding * batch.num_rows
        primary_name = self.primary[task]
        k = torch.from_numpy(batch.column("k").to_numpy().astype(np.int64))
        eligible = None if task == "sequential" else _candidate_matrix(batch.column("candidates"), self.vocab)
        if task == "ctr":  # click logits of the candidates, laid out over the catalogue like the ranking tools'
            raw = {name: _over_catalogue(self.tools[name].score_candidates(history, eligible), eligible,
                                         len(self.vocab) + 1) for name in names}
            # The CTR vote is the mean click probability: calibrated tools give a calibrated mean.
            vote = None if primary_only else torch.stack([torch.sigmoid(s) for s in raw.values()]).mean(dim=0)
        else:
            raw = {name: torch.mm(vectors[name], self.tools[name].item_table().T,
                                  out=None if products is None else products[name][:batch.num_rows])
                   for name in names}
            vote = None if primary_only else majority_vote(raw.values())
        if task == "sequential":
            for scores in (*raw.values(), *([] if vote is None else [vote])):
                exclude_seen(scores, history)
        primary = raw[primary_name]
        primary_values, primary_items = _top(primary, eligible, int(k.max()))
        if task == "ctr":  # route low answers with the CTR tool's click probabilities
            primary_values = torch.sigmoid(primary_values)
            confidence = primary_values[:, 0]
        else:
            eligible_scores = primary if eligible is None else primary.gather(1, eligible.clamp(min=0)).masked_fill(
                eligible < 0, float("-inf"))
            confidence = torch.exp(primary_values[:, 0] - torch.logsumexp(eligible_scores, dim=1)).nan_to_num(0.0)
        rows = batch.num_rows
        within_k = _within_k(primary_values, k) & (primary_items >= 0)
        columns = {
            "primary_items": _lists(primary_items, within_k, self.vocab),
            "primary_scores": _lists(primary_values, within_k),
            "tool_confidence": pa.array(confidence.numpy(), pa.float32()),
        }
        if vote is None:
            columns.update({f.name: pa.nulls(rows, f.type) for f in SIGNALS if f.name not in columns})
        else:
            asks_vlm = np.isin(strings(batch.column("plan")), ASKS_VLM) if task != "ctr" else None
            columns.update(self._vote(raw, vote, eligible, k, history, asks_vlm))
        columns["latency_ms"] = pa.array(np.full(rows, 1000 * (time.perf_counter() - start) / rows), pa.float32())
        return appended(batch, SIGNALS, [columns[field.name] for field in SIGNALS])

    def _vote(self, raw: dict[str, torch.Tensor], vote: torch.Tensor, eligible: torch.Tensor | None,
              k: torch.Tensor, history, asks_vlm: np.ndarray | None) -> dict[str, pa.Array]:
        """The vote's pool and every tool's scores on its shortlist."""
        n = self.shortlist
        pool_scores, pool = _top(vote, eligible, max(int(k.max()), n))
        if self.places and asks_vlm is not None and asks_vlm.any() and pool.shape[1] >= n:
            pool = self._with_arrivals(pool, history, eligible, np.flatnonzero(asks_vlm))
            pool_scores = vote.gather(1, pool.clamp(min=0)).masked_fill(pool < 0, float("-inf"))
        short = pool[:, :n].clamp(min=0)
        padding = ~torch.isfinite(pool_scores[:, :n])
        if short.shape[1] < n:  # fewer eligible items than the shortlist: pad to a fixed width
            pad = n - short.shape[1]
            short = torch.nn.functional.pad(short, (0, pad))
            padding = torch.nn.functional.pad(padding, (0, pad), value=True)
        tool_scores = torch.stack([s.gather(1, short).masked_fill(padding, float("-inf")) for s in raw.values()])
        return {
            "pool": _lists(pool, torch.isfinite(pool_scores), self.vocab),
            "pool_scores": _lists(pool_scores, torch.isfinite(pool_scores)),
            "tool_scores": pa.FixedSizeListArray.from_arrays(
                pa.array(tool_scores.permute(1, 0, 2).reshape(-1).numpy(), pa.float32()), len(raw) * n).cast(
                pa.list_(pa.float32())),
        }

    def _with_arrivals(self, pool: torch.Tensor, history, eligible: torch.Tensor | None,
                       rows: np.ndarray) -> torch.Tensor:
        """The pool of the rows the VLM will see with the shortlist's last places given to new arrivals; the vote's
        items they displace follow the shortlist, ahead of the rest of the pool (one place wider for every row)."""
        n, f = self.shortlist, self.places
        out = np.concatenate([pool.numpy(), np.full((pool.shape[0], f), -1)], axis=1)
        short = out[rows, :n]
        among = None if eligible is None else eligible.numpy()[rows]
        picks = self.arrivals.pick(history.select(rows), f, short, among)
        displaced = np.where(picks >= 0, short[:, n - f:], -1)
        tail = out[rows, n:-f]
        out[rows, :n] = with_arrivals(short, picks)
        out[rows, n:] = np.concatenate([displaced, tail], axis=1)
        return torch.from_numpy(out)


def _top(scores: torch.Tensor, eligible: torch.Tensor | None, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Top k (values, item indices) over the catalogue, or over each row's eligible items (-1 = padding)."""
    if eligible is None:
        return top_k(scores, k)
    picked = scores.gather(1, eligible.clamp(min=0)).masked_fill(eligible < 0, float("-inf"))
    values, pos = picked.topk(min(k, picked.shape[1]), dim=1)
    return values, eligible.gather(1, pos)


def _within_k(values: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    return (torch.arange(values.shape[1])[None, :] < k[:, None]) & torch.isfinite(values)


def _lists(matrix: torch.Tensor, keep: torch.Tensor, vocab: Vocab | None = None) -> pa.ListArray:
    """The kept entries of each row as a list: item ids (with ``vocab``) or float32 scores."""
    offsets = np.concatenate([[0], np.cumsum(keep.sum(dim=1).numpy())])
    kept = matrix[keep].numpy()
    values = pa.array(vocab.lookup(kept), pa.string()) if vocab else pa.array(kept, pa.float32())
    return pa.ListArray.from_arrays(pa.array(offsets, pa.int32()), values)


def _over_catalogue(scores: torch.Tensor, eligible: torch.Tensor, width: int) -> torch.Tensor:
    """(R, C) candidate scores as (R, width) catalogue scores, -inf where an item is not a candidate."""
    out = torch.full((scores.shape[0], width), float("-inf"))
    rows, cols = torch.nonzero(eligible >= 0, as_tuple=True)
    out[rows, eligible[rows, cols]] = scores[rows, cols]
    return out


def _candidate_matrix(candidates: pa.ChunkedArray, vocab: Vocab) -> torch.Tensor:
    """Candidate item indices, one row per request, padded with -1."""
    return torch.from_numpy(padded(candidates, fill=-1, to=vocab.index))


def _without_signals(batch: pa.Table) -> pa.Table:
    return appended(batch, SIGNALS, [pa.nulls(batch.num_rows, field.type) for field in SIGNALS])
