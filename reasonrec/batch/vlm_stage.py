"""The VLM stage: rows whose plan asks the VLM get a listing prompt over their shortlist and one forward pass;
explain rows get their explanation generated (greedy).

They are asked in the form the bundle's VLM was tuned on (its manifest's examples config, DESIGN.md §5): the same
templates per task, the shortlist listed in the user's seeded ``listing_order``, items as title + image and, when
it has them, their own item tokens, which are then the labels.

Other rows (route low in ``planner`` mode, every row in ``tools-only``) pass through without a model call; their
``vlm_scores`` stay NaN. The prompt states the horizon and asks the VLM to answer on its own
(``decision: answer``): it gives its prediction before the tools are consulted (paper Fig. 3), so that the
aggregator combines two independent opinions.
"""
from __future__ import annotations

import io
import time

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from reasonrec.batch.columns import appended, list_parts, strings
from reasonrec.batch.context import Scoring
from reasonrec.batch.stream import ASKS_VLM, VLM, accepted, reject
from reasonrec.data.vocab import Vocab
from reasonrec.prompts.catalogue import NO_HISTORY, Catalogue, explain_prompt, listing_order
from reasonrec.prompts.cot import Deliberation, format_context
from reasonrec.prompts.templates import load_templates, render
from reasonrec.vlm.deliberator import BundleDeliberator


class PromptBuilder:
    """Request rows -> deliberator prompt rows (items as title + image): one listing prompt per sequential or direct
    row (each task its own listing template), one yes/no prompt per candidate of a ctr row (and of a direct row when
    the VLM was tuned to answer direct yes/no)."""

    def __init__(self, catalogue: Catalogue, vocab: Vocab, template_id: str, max_history: int,
                 ctr_template_id: str = "ctr-01", direct_template_id: str | None = None,
                 explain_template_id: str = "explain-01"):
        self.template = _template(template_id, "candidates", "a listing template (e.g. sequential-01)")
        self.explain_template = _template(explain_template_id, "rating", "an explanation template (e.g. explain-01)")
        self.ctr_template = _template(ctr_template_id, "item", "a yes/no template about one item (e.g. ctr-01)")
        # A direct row's own template: a listing one (direct-11) or a yes/no one (direct-01); None: the listing
        # template above, as bundles tuned before the direct listing forms existed were asked.
        self.direct_template = _template(direct_template_id, "", "a direct template") if direct_template_id else None
        self.catalogue, self.vocab, self.max_history = catalogue, vocab, max_history

    @property
    def direct_yes_no(self) -> bool:
        return self.direct_template is not None and "candidates" not in self.direct_template.fields

    def yes_no_rows(self, batch: pa.Table, shortlist: int, template=None) -> tuple[list[dict], np.ndarray,
                                                                                     np.ndarray]:
        """Per row, one prompt per shortlist candidate (``template``, default the ctr one): the prompts, and each
        prompt's row and candidate position (P(yes) is the VLM's click probability, or its direct score)."""
        template = template or self.ctr_template
        history = _lists_of_indices(batch.column("history"), self.vocab)
        pool = _lists_of_indices(batch.column("pool"), self.vocab)
        users = batch.column("user_id").to_pylist()
        horizon = batch.column("horizon").to_numpy(zero_copy_only=False)
        route = batch.column("route").to_pylist()
        out, rows, positions = [], [], []
        for r, (u, h, p, c, level) in enumerate(zip(users, history, pool, horizon, route)):  # text: per prompt
            h = h[h > 0]  # the profile describes the whole known history, the prompt shows its last items
            profile = self.catalogue.profile(h)
            shown = [self.catalogue.items[i] for i in h[-self.max_history:]] or [NO_HISTORY]
            context = format_context(Deliberation(decision="answer", answer="", horizon=float(c), level=level))
            for j, item in enumerate(p[:shortlist]):
                prompt = render(template, user=u, profile=profile, history=shown,
                                item=self.catalogue.items[item], horizon=float(c))
                out.append({"user_id": u, "prompt": prompt.text + "\n" + context, "images": list(prompt.images),
                            "labels": [], "context": context, "template_id": prompt.template_id})
                rows.append(r)
                positions.append(j)
        return out, np.array(rows, dtype=np.int64), np.array(positions, dtype=np.int64)

    def explain_rows(self, batch: pa.Table) -> list[dict]:
        """One generation prompt per explain row: its item and star rating, in the form R-VIT tuned on."""
        history = _lists_of_indices(batch.column("history"), self.vocab)
        items = self.vocab.index(batch.column("item_id"))
        ratings = batch.column("rating").to_numpy(zero_copy_only=False)
        return [explain_prompt(self.catalogue, self.explain_template, u, h[h > 0], i, round(r), self.max_history)
                for u, h, i, r in zip(batch.column("user_id").to_pylist(), history, items, ratings)]

    def rows(self, batch: pa.Table, shortlist: int) -> tuple[list[dict], list[np.ndarray]]:
        """Prompt rows, and per row the listing order: candidate j of the prompt is shortlist entry order[j].

        The shortlist comes best-first by the tools' vote; the prompt lists it in a random order, seeded by the
        user, as in R-VIT training, so that a label's position tells the VLM nothing."""
        history = _lists_of_indices(batch.column("history"), self.vocab)
        pool = _lists_of_indices(batch.column("pool"), self.vocab)
        users = batch.column("user_id").to_pylist()
        horizon = batch.column("horizon").to_numpy(zero_copy_only=False)
        route = batch.column("route").to_pylist()
        tasks = strings(batch.column("task"))
        out, orders = [], []
        for u, h, p, c, level, task in zip(users, history, pool, horizon, route, tasks):  # text: per prompt
            h = h[h > 0]
            order = listing_order(u, min(len(p), shortlist))
            listed = p[order]
            profile = self.catalogue.profile(h)  # as in training: the whole known history
            shown = [self.catalogue.items[i] for i in h[-self.max_history:]] or [NO_HISTORY]  # cold users too
            template = self.direct_template if task == "direct" and self.direct_template else self.template
            prompt = render(template, user=u, profile=profile, history=shown,
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
                              images=examples.get("images", True), item_tokens=examples.get("item_tokens", False))
        direct = {"listing": config.direct_template, "yes_no": config.direct_yes_no_template}.get(
            examples.get("direct_form"))
        self.prompts = PromptBuilder(catalogue, scoring.vocab, config.template, examples.get("max_history", 5),
                                     config.ctr_template, direct, config.explain_template)
        self.deliberate = BundleDeliberator(bundle, config.deliberator)
        self.explain_max_tokens = config.explain_max_tokens

    def _yes_no_rows(self, batch: pa.Table, n: int):
        """ctr rows with the ctr template, direct rows (a VLM tuned to answer direct yes/no) with the direct one."""
        direct = strings(batch.column("task")) == "direct"
        if not direct.any():
            return self.prompts.yes_no_rows(batch, n)
        parts = [(np.flatnonzero(m), self.prompts.yes_no_rows(batch.take(np.flatnonzero(m)), n, t))
                 for m, t in ((~direct, None), (direct, self.prompts.direct_template)) if m.any()]
        prompts = [p for _, (found, _, _) in parts for p in found]
        owner = np.concatenate([rows[o] for rows, (_, o, _) in parts])
        position = np.concatenate([pos for _, (_, _, pos) in parts])
        return prompts, owner, position

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
        task = strings(batch.column("task"))
        is_ctr = (task == "ctr") | ((task == "direct") & self.prompts.direct_yes_no)
        is_explain = task == "explain"
        start = time.perf_counter()
        text = np.full(rows, None, dtype=object)
        explained = np.flatnonzero(wanted & is_explain)
        if len(explained):  # generation: the item's explanation, greedy
            prompts = self.prompts.explain_rows(batch.take(explained))
            usable = self._usable(prompts, np.arange(len(explained)))
            batch, valid = self._reject(batch, valid, explained, usable)
            keep = usable[0]
            found = self.deliberate.explain([p for p, k in zip(prompts, keep) if k], self.explain_max_tokens)
            text[explained[keep]] = found
        asked = np.flatnonzero(wanted & ~is_ctr & ~is_explain)
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
            prompts, owner, position = self._yes_no_rows(batch.take(clicks), n)
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
            pa.array(confidence, pa.float32(), mask=np.isnan(confidence)), pa.array(text, pa.string())])


def _nullable(values: np.ndarray, valid: np.ndarray) -> pa.Array:
    return pa.array(values.astype(np.float32), pa.float32(), mask=~valid)


def _lists_of_indices(column: pa.ChunkedArray, vocab: Vocab) -> list[np.ndarray]:
    """Each row's list of item ids as catalogue indices (-1 unknown), split without a per-row Arrow call."""
    lengths, flat = list_parts(column)
    return np.split(vocab.index(flat), np.cumsum(lengths)[:-1])


def _template(template_id: str, field: str, kind: str):
    found = [t for t in load_templates() if t.id == template_id]
    if not found or (field and field not in found[0].fields):
        raise ValueError(f"template {template_id!r}: not {kind}")
    return found[0]
