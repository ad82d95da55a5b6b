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
    """Request rows -> deliberator prompt rows (the listing template, items as title + image)."""

    def __init__(self, catalogue: Catalogue, vocab: Vocab, template_id: str, max_history: int):
        found = [t for t in load_templates() if t.id == template_id]
        if not found or "candidates" not in found[0].fields:
            raise ValueError(f"template {template_id!r}: not a listing template (e.g. sequential-01)")
        self.template = found[0]
        self.catalogue, self.vocab, self.max_history = catalogue, vocab, max_history

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
        self.prompts = PromptBuilder(catalogue, scoring.vocab, config.template, examples.get("max_history", 5))
        self.deliberate = BundleDeliberator(bundle, config.deliberator)

    def _image_problems(self, prompts: list[dict]) -> list[str | None]:
        """Per prompt the first of its images that cannot be used (unreadable, too large), as a reason."""
        images = self.deliberate.backend.images
        return [next((f"images: {p}" for p in map(images.problem, row["images"]) if p), None) for row in prompts]

    def __call__(self, batch: pa.Table) -> pa.Table:
        n, rows = self.shortlist, batch.num_rows
        scores = np.full((rows, n), np.nan, dtype=np.float32)
        confidence = np.full(rows, np.nan, dtype=np.float32)
        latency = pc.fill_null(batch.column("latency_ms"), 0.0).to_numpy(zero_copy_only=False).copy()
        valid = accepted(batch).copy()
        asked = np.flatnonzero(valid & np.isin(strings(batch.column("plan")), ASKS_VLM))
        if len(asked):
            start = time.perf_counter()
            prompts, orders = self.prompts.rows(batch.take(asked), n)
            problems = self._image_problems(prompts)
            if any(problems):  # an item image that cannot be used: the row goes to quarantine, named
                bad = np.array([p is not None for p in problems])
                batch = reject(batch, asked[bad], [p for p in problems if p], "vlm")
                valid[asked[bad]] = False
                prompts = [p for p, b in zip(prompts, bad) if not b]
                orders = [o for o, b in zip(orders, bad) if not b]
                asked = asked[~bad]
            found = self.deliberate(prompts) if prompts else []
            for row, order, verdict in zip(asked, orders, found):  # back to shortlist order: one short vector per row
                scores[row, order] = verdict.scores
            confidence[asked] = [v.confidence for v in found]
            latency[asked] += 1000 * (time.perf_counter() - start) / max(len(asked), 1)
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
