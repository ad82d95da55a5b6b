"""Row checks of the requests, vectorised over a batch: the first failed check of a row names its field."""
from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from reasonrec.batch.columns import as_mask, list_parts, nulls
from reasonrec.batch.stream import reject
from reasonrec.data import schemas
from reasonrec.data.vocab import Vocab

MAX_USER_ID_CHARS = 256


class Validator:
    def __init__(self, catalogue: Vocab, max_k: int, answered_tasks: tuple[str, ...], max_history: int = 10_000,
                 unanswered: dict[str, str] | None = None):
        """``unanswered``: tasks the job cannot answer with the reason (``Scoring.unanswered``)."""
        self.catalogue = catalogue
        self.max_k = max_k
        self.max_history = max_history
        self.answered_tasks = answered_tasks
        self.unanswered = unanswered or {}
        self._tasks, self._answered = pa.array(schemas.TASKS), pa.array(answered_tasks, pa.string())
        self._ranking_tasks = pa.array(["direct", "ctr"])

    def __call__(self, batch: pa.Table) -> pa.Table:
        reasons = np.full(batch.num_rows, None, dtype=object)
        pending = nulls(batch.column("error"))  # not rejected yet

        def check(failed: np.ndarray, describe) -> None:
            rows = np.flatnonzero(failed & pending)
            for row in rows:  # only rejected rows, never the whole batch
                reasons[row] = describe(row)
            pending[rows] = False

        user = batch.column("user_id")
        stripped = pc.utf8_trim_whitespace(user)
        check(nulls(user), lambda r: "user_id: null")
        check(as_mask(pc.equal(pc.utf8_length(stripped), 0)), lambda r: "user_id: empty")
        check(as_mask(pc.not_equal(stripped, user)), lambda r: f"user_id: {_v(user, r)} has surrounding whitespace")
        check(as_mask(pc.greater(pc.utf8_length(user), MAX_USER_ID_CHARS)),
              lambda r: f"user_id: longer than {MAX_USER_ID_CHARS} characters")
        check(as_mask(pc.invert(pc.utf8_is_printable(user))), lambda r: f"user_id: {_v(user, r)} is not printable")

        task = batch.column("task")
        check(~as_mask(pc.is_in(task, self._tasks)),
              lambda r: f"task: unknown {_v(task, r)}; expected one of {list(schemas.TASKS)}")
        check(~as_mask(pc.is_in(task, self._answered)), lambda r: self._not_answered(task[r].as_py()))

        k = batch.column("k")
        in_range = pc.and_(pc.greater_equal(k, 1), pc.less_equal(k, self.max_k))
        check(~as_mask(in_range), lambda r: f"k: {_v(k, r)} out of range [1, {self.max_k}]")

        n_history = list_parts(batch.column("history"))[0]
        check(n_history > self.max_history,
              lambda r: f"history: {n_history[r]} items, more than max_history {self.max_history}")

        candidates = batch.column("candidates")
        n_cand, items = list_parts(candidates)
        check(as_mask(pc.is_in(task, self._ranking_tasks)) & (n_cand == 0),
              lambda r: f"candidates: task {_v(task, r)} needs a list")
        unknown = self._unknown_candidates(n_cand, items)
        check(unknown > 0, lambda r: f"candidates: {unknown[r]} not in the catalogue, e.g. "
                                     f"{self._first_unknown(candidates, r)!r}")
        self._check_explain(batch, task, check)
        rows = np.flatnonzero(np.not_equal(reasons, None))
        return reject(batch, rows, reasons[rows], "validate")

    def _check_explain(self, batch: pa.Table, task: pa.ChunkedArray, check) -> None:
        """An explain row names the item to explain and the user's 1-5 star rating of it."""
        explain = as_mask(pc.equal(task, "explain"))
        if not explain.any():
            return
        item, rating = batch.column("item_id"), batch.column("rating")
        check(explain & nulls(item), lambda r: "item_id: task 'explain' needs the item to explain")
        known = self.catalogue.index(pc.fill_null(item, "")) >= 0
        check(explain & ~known, lambda r: f"item_id: {_v(item, r)} not in the catalogue")
        check(explain & nulls(rating), lambda r: "rating: task 'explain' needs the user's star rating (1-5)")
        in_range = pc.and_(pc.greater_equal(rating, 1), pc.less_equal(rating, 5))
        check(explain & ~as_mask(pc.fill_null(in_range, True)), lambda r: f"rating: {_v(rating, r)} outside 1-5")

    def _not_answered(self, task: str) -> str:
        why = self.unanswered.get(task)
        if why:
            return f"task: {task!r} is not answered by this job: {why}"
        return f"task: {task!r} is not answered by this job (it answers {list(self.answered_tasks)})"

    def _unknown_candidates(self, lengths: np.ndarray, items: pa.Array) -> np.ndarray:
        if not lengths.any():
            return np.zeros(len(lengths), dtype=np.int64)
        bad = self.catalogue.index(items) < 0
        return np.bincount(np.repeat(np.arange(len(lengths)), lengths)[bad], minlength=len(lengths))

    def _first_unknown(self, candidates: pa.ChunkedArray, row: int) -> str:
        values = candidates[row].as_py()
        return next(v for v, i in zip(values, self.catalogue.index(values)) if i < 0)


def _v(column: pa.ChunkedArray, row: int):
    return repr(column[row].as_py())
