"""Plain parts of the Serve app: request rows in the nightly job's stream form, histories, responses, and
``Recommender``, the whole app in one process (what the deployments of actors/serve.py split across replicas)."""
from __future__ import annotations

import numpy as np
import pyarrow as pa

from reasonrec.batch.columns import strings
from reasonrec.batch.config import ScoreConfig
from reasonrec.batch.context import Scoring
from reasonrec.batch.horizon_stage import HorizonStage
from reasonrec.batch.planner_stage import PlannerStage
from reasonrec.batch.shards import conform
from reasonrec.batch.stream import ASKS_VLM, accepted
from reasonrec.batch.tool_stage import ToolStage
from reasonrec.bundle import Bundle
from reasonrec.data import schemas
from reasonrec.data.vocab import Vocab
from reasonrec.serve.api import RecommendRequest

RESPONSE_COLUMNS = ["user_id", "task", "route", "path", "horizon", "confidence", "tools", "trace", "model_version",
                    "ranked", "text", "error", "stage"]


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


class ToolAnswerer:
    """The tool replica's work: horizon, every consulted tool and, for rows the planner answers without the VLM,
    the decision, so that a route-low request makes one hop from the ingress and back."""

    def __init__(self, scoring: Scoring):
        self.horizon, self.tools, self.decide = HorizonStage(scoring), ToolStage(scoring), PlannerStage(scoring)

    def __call__(self, requests: list[dict]) -> list[dict | pa.Table]:
        """Each request's response body, or (for a row whose plan asks the VLM) its signal row."""
        rows = in_order(self.tools(self.horizon(request_table(requests))))
        to_vlm = accepted(rows) & np.isin(strings(rows.column("plan")), ASKS_VLM)
        answered = rows.filter(pa.array(~to_vlm)) if to_vlm.any() else rows
        answers = iter(responses(in_order(self.decide(answered))))
        return [rows.slice(i, 1) if vlm else next(answers) for i, vlm in enumerate(to_vlm)]


def request_table(requests: list[dict]) -> pa.Table:
    """Requests (RecommendRequest fields, history resolved) as the stream rows the job's stages take: same
    validation, same quarantine reasons; column ``row`` is each request's position."""
    return conform(pa.Table.from_pylist(requests, schema=schemas.REQUESTS), "serve")


def in_order(table: pa.Table) -> pa.Table:
    """The stages group rows (rejected first, then by task): put them back in request order."""
    row = table.column("row").to_numpy()
    return table if (np.diff(row) > 0).all() else table.take(np.argsort(row, kind="stable"))


def renumbered(rows: list[pa.Table]) -> pa.Table:
    """Rows of several requests as one table, each numbered by its position in ``rows``."""
    table = pa.concat_tables(rows)
    return table.set_column(table.schema.get_field_index("row"), "row", pa.array(np.arange(table.num_rows)))


def responses(answered: pa.Table) -> list[dict]:
    """Each answered row (in order) as the ``RecommendResponse`` body, or ``{"error": reason, "stage": stage}`` for a
    rejected one."""
    out = []
    for r in answered.select(RESPONSE_COLUMNS).to_pylist():
        if r["error"] is not None:
            out.append({"error": r["error"], "stage": r["stage"]})
            continue
        r.pop("error"), r.pop("stage")
        r["confidence"] = 0.0 if r["confidence"] is None or np.isnan(r["confidence"]) else r["confidence"]
        r["tools"], r["items"] = r["tools"] or [], r.pop("ranked") or []
        out.append(r)
    return out


class Recommender:
    """The Serve app's answers in this process: ``recommend(request)`` gives the body ``POST /v1/recommend`` returns
    for the same bundle, config and request (``RecommendRequest`` fields; an omitted history is the user's in the
    bundle's data). A request the job's validator rejects raises ``ValueError`` with its reason."""

    def __init__(self, bundle: str | Bundle, config: ScoreConfig | None = None):
        bundle = bundle if isinstance(bundle, Bundle) else Bundle(bundle)
        self.scoring = Scoring(bundle, config or ScoreConfig())
        self.scoring.check()
        self.tools = ToolAnswerer(self.scoring)
        self.histories = Histories(bundle.manifest.get("data", {}).get("uri"))
        self._vlm = None  # the model loads on the first request that needs it, as in the Serve app

    def recommend(self, request: dict) -> dict:
        request = RecommendRequest.model_validate(request).model_dump()
        if request["history"] is None:
            request["history"] = self.histories.get(request["user_id"])
        answer = self.tools([request])[0]
        if isinstance(answer, pa.Table):  # the planner sends this row to the VLM
            if self._vlm is None:
                from reasonrec.batch.vlm_stage import VLMStage

                self._vlm = VLMStage(self.scoring)
            answer = responses(in_order(self.tools.decide(self._vlm(answer))))[0]
        if "error" in answer:
            raise ValueError(answer["error"])
        return answer
