"""The VLM stage: rows whose plan asks the VLM get a listing prompt over their shortlist and one forward pass.

Other rows (route low in ``planner`` mode, every row in ``tools-only``) pass through without a model call; their
``vlm_scores`` stay NaN. The prompt states the horizon and asks the VLM to answer on its own
(``decision: answer``): it gives its prediction before the tools are consulted (paper Fig. 3), so that the
aggregator combines two independent opinions.
"""
from __future__ import annotations

import io
import time
import zlib

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from reasonrec.batch.columns import appended, list_parts, strings
from reasonrec.batch.context import Scoring
from reasonrec.batch.stream import ASKS_VLM, VLM, accepted, reject
from reasonrec.data.vocab import Vocab
from reasonrec.prompts.catalogue import Catalogue
from reasonrec.prompts.cot import Deliberation, format_context
from reasonrec.prompts.templates import Item, load_templates, render
from reasonrec.vlm.deliberator import BundleDeliberator

NO_HISTORY = Item("no purchases yet")


class PromptBuilder:
    """Request rows -> deliberator prompt rows (items as title + image): one listing prompt per sequential or direct
    row, one yes/no prompt per candidate of a ctr row."""

    def __init__(self, catalogue: Catalogue, vocab: Vocab, template_id: str, max_history: int,
                 ctr_template_id: str = "ctr-01"):
        self.template = _template(template_id, "candidates", "a listing template (e.g. sequential-01)")
        self.ctr_template = _template(ctr_template_id, "item", "a yes/no template about one item (e.g. ctr-01)")
        self.catalogue, self.vocab, self.max_history = catalogue, vocab, max_history

    def yes_no_rows(self, batch: pa.Table, shortlist: int) -> tuple[list[dict], np.ndarray, np.ndarray]:
        """Per ctr row, one prompt per shortlist candidate: the prompts, and each prompt's row and candidate
        position (P(yes) is the VLM's click probability)."""
        history = _lists_of_indices(batch.column("history"), self.vocab)
        pool = _lists_of_indices(batch.column("pool"), self.vocab)
        users = batch.column("user_id").to_pylist()
        horizon = batch.column("horizon").to_numpy(zero_copy_only=False)
        route = batch.column("route").to_pylist()
        out, rows, positions = [], [], []
        for r, (u, h, p, c, level) in enumerate(zip(users, history, pool, horizon, route)):  # text: per prompt
            h = h[h > 0][-self.max_history:]
            shown = [self.catalogue.items[i] for i in h] or [NO_HISTORY]
            context = format_context(Deliberation(decision="answer", answer="", horizon=float(c), level=level))
            for j, item in enumerate(p[:shortlist]):
                prompt = render(self.ctr_template, user=u, profile=self.catalogue.profile(h), history=shown,
                                item=self.catalogue.items[item], horizon=float(c))
                out.append({"user_id": u, "prompt": prompt.text + "\n" + context, "images": list(prompt.images),
                            "labels": [], "context": context, "template_id": prompt.template_id})
                rows.append(r)
                positions.append(j)
        return out, np.array(rows, dtype=np.int64), np.array(positions, dtype=np.int64)

    def rows(self, batch: pa.Table, shortlist: int) -> tuple[list[dict], list[np.ndarray]]:
        """Prompt rows, and per row the listing order: candidate j of the prompt is shortlist entry order[j].

        The shortlist comes best-first by the tools' vote; the prompt lists it in a random order, seeded by the
        user, as in R-VIT training, so that a label's position tells the VLM nothing."""
        history = _lists_of_indices(batch.column("history"), self.vocab)
        pool = _lists_of_indices(batch.column("pool"), self.vocab)
        users = batch.column("user_id").to_pylist()
        horizon = batch.column("horizon").to_numpy(zero_copy_only=False)
        route = batch.column("route").to_pylist()
        out, orders = [], []
        for u, h, p, c, level in zip(users, history, pool, horizon, route):  # text rendering: per prompt
            h = h[h > 0][-self.max_history:]
            order = np.random.default_rng(zlib.crc32(u.encode())).permutation(min(len(p), shortlist))
            listed = p[order]
            profile = self.catalogue.profile(h)
            shown = [self.catalogue.items[i] for i in h] or [NO_HISTORY]  # a cold user still gets a prompt
            prompt = render(self.template, user=u, profile=profile, history=shown,
                            candidates=[self.catalogue.items[i] for i in listed], horizon=float(c))
            context = format_context(Deliberation(decision="answer", answer="", horizon=float(c), level=level))
            out.append({"user_id": u, "prompt": prompt.text + "\n" + context, "images": list(prompt.images),
                        "labels": list(prompt.labels), "context": context, "template_id": prompt.template_id})
            orders.append(order)
        return out, orders


class VLMStage:
    def __init__(self, scoring: Scoring):
        bundle, config = scoring.bundle, scoring.config
        self.shortlist = config.shortlist
        examples = bundle.manifest.get("vlm", {}).get("config", {}).get("examples", {})
        catalogue = Catalogue(pq.read_table(io.BytesIO(bundle.read("catalogue.parquet"))), scoring.vocab,
                              images=examples.get("images", True))
        self.prompts = PromptBuilder(catalogue, scoring.vocab, config.template, examples.get("max_history", 5),
                                     config.ctr_template)
        self.deliberate = BundleDeliberator(bundle, config.deliberator)

    def _usable(self, prompts: list[dict], owner: np.ndarray) -> tuple[np.ndarray, list]:
        """Per asked row: whether every image its prompts show can be used, and the first reason it cannot."""
        images = self.deliberate.backend.images
        ok = np.ones(int(owner.max(initial=-1)) + 1, dtype=bool)
        reasons = [None] * len(ok)
        for row, prompt in zip(owner, prompts):
            if ok[row]:
                problem = next((p for p in map(images.problem, prompt["images"]) if p), None)
                if problem:
                    ok[row], reasons[row] = False, f"images: {problem}"
        return ok, reasons

    @staticmethod
    def _reject(batch: pa.Table, valid: np.ndarray, asked: np.ndarray, usable) -> tuple[pa.Table, np.ndarray]:
        """A row whose prompt needs an item image that cannot be used goes to quarantine, the image named."""
        ok, reasons = usable
        if ok.all():
            return batch, valid
        bad = np.flatnonzero(~ok)
        valid = valid.copy()
        valid[asked[bad]] = False
        return reject(batch, asked[bad], [reasons[i] for i in bad], "vlm"), valid

    def __call__(self, batch: pa.Table) -> pa.Table:
        n, rows = self.shortlist, batch.num_rows
        scores = np.full((rows, n), np.nan, dtype=np.float32)
        confidence = np.full(rows, np.nan, dtype=np.float32)
        latency = pc.fill_null(batch.column("latency_ms"), 0.0).to_numpy(zero_copy_only=False).copy()
        valid = accepted(batch).copy()
        wanted = valid & np.isin(strings(batch.column("plan")), ASKS_VLM)
        is_ctr = strings(batch.column("task")) == "ctr"
        start = time.perf_counter()
        asked = np.flatnonzero(wanted & ~is_ctr)
        if len(asked):
            prompts, orders = self.prompts.rows(batch.take(asked), n)
            usable = self._usable(prompts, np.arange(len(asked)))
            batch, valid = self._reject(batch, valid, asked, usable)
            ok = usable[0]
            prompts = [p for p, k in zip(prompts, ok) if k]
            orders, asked = [o for o, k in zip(orders, ok) if k], asked[ok]
            found = self.deliberate(prompts) if prompts else []
            for row, order, verdict in zip(asked, orders, found):  # back to shortlist order: one short vector per row
                scores[row, order] = verdict.scores
            confidence[asked] = [v.confidence for v in found]
        clicks = np.flatnonzero(wanted & is_ctr)
        if len(clicks):  # one yes/no prompt per candidate; P(yes) is the VLM's click probability
            prompts, owner, position = self.prompts.yes_no_rows(batch.take(clicks), n)
            usable = self._usable(prompts, owner)
            batch, valid = self._reject(batch, valid, clicks, usable)
            ok, fine = usable[0], usable[0][owner]
            found = self.deliberate([p for p, k in zip(prompts, fine) if k]) if fine.any() else []
            p_yes = np.array([v.scores[0] for v in found], dtype=np.float32)
            scores[clicks[owner[fine]], position[fine]] = p_yes
            # The row's confidence: how sure the VLM is of its yes/no calls, on average over the candidates.
            sure, count = np.zeros(len(clicks)), np.zeros(len(clicks))
            np.add.at(sure, owner[fine], np.maximum(p_yes, 1 - p_yes))
            np.add.at(count, owner[fine], 1)
            confidence[clicks[ok]] = (sure / np.maximum(count, 1))[ok]
        done = np.flatnonzero(wanted & valid)
        latency[done] += 1000 * (time.perf_counter() - start) / max(len(done), 1)
        batch = batch.set_column(batch.schema.get_field_index("latency_ms"), "latency_ms", _nullable(latency, valid))
        return appended(batch, VLM, [
            pa.FixedSizeListArray.from_arrays(pa.array(scores.reshape(-1), pa.float32()), n).cast(VLM[0].type),
            pa.array(confidence, pa.float32(), mask=np.isnan(confidence))])


def _nullable(values: np.ndarray, valid: np.ndarray) -> pa.Array:
    return pa.array(values.astype(np.float32), pa.float32(), mask=~valid)


def _lists_of_indices(column: pa.ChunkedArray, vocab: Vocab) -> list[np.ndarray]:
    """Each row's list of item ids as catalogue indices (-1 unknown), split without a per-row Arrow call."""
    lengths, flat = list_parts(column)
    return np.split(vocab.index(flat), np.cumsum(lengths)[:-1])


def _template(template_id: str, field: str, kind: str):
    found = [t for t in load_templates() if t.id == template_id]
    if not found or field not in found[0].fields:
        raise ValueError(f"template {template_id!r}: not {kind}")
    return found[0]
