"""Plain parts of the Serve app: request rows in the nightly job's stream form, histories, responses."""
from __future__ import annotations

import numpy as np
import pyarrow as pa

from reasonrec.batch.requests import conform
from reasonrec.data import schemas
from reasonrec.data.vocab import Vocab
from reasonrec.serve.api import RecommendRequest, RecommendResponse, ScoredItem


class Histories:
    """Each known user's items (train + validation, oldest first) from the data the bundle was trained on."""

    def __init__(self, data_uri: str | None):
        self._users = Vocab([])
        if data_uri:
            from reasonrec.data.prepared import PreparedData

            data = PreparedData(data_uri)
            seqs = data.train_and_valid
            self._users, self._offsets = Vocab(seqs.user_ids), seqs.offsets
            self._items = data.item_vocab.lookup(seqs.items)

    def get(self, user_id: str) -> list[str] | None:
        row = self._users.index([user_id])[0]
        if row < 0:
            return None  # an unknown user: evidence horizon 1
        return self._items[self._offsets[row]:self._offsets[row + 1]].tolist()


def request_rows(request: RecommendRequest, history: list[str] | None) -> pa.Table:
    """One request as the stream rows the job's stages take (same validation, same quarantine reasons)."""
    table = pa.table({"user_id": [request.user_id], "task": [request.task], "candidates": [request.candidates],
                      "k": [request.k], "history": [history]}, schema=schemas.REQUESTS)
    return conform(table, "serve")


def split_rows(table: pa.Table) -> list[pa.Table]:
    return [table.slice(i, 1) for i in range(table.num_rows)]


def response(row: pa.Table) -> RecommendResponse:
    r = row.to_pylist()[0]
    return RecommendResponse(
        user_id=r["user_id"], task=r["task"], route=r["route"], path=r["path"], horizon=float(r["horizon"]),
        confidence=float(np.nan_to_num(r["confidence"])), tools=r["tools"] or [], trace=r["trace"],
        model_version=r["model_version"], items=[ScoredItem(**x) for x in r["ranked"] or []])
