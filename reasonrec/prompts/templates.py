"""Instruction templates (``templates.yaml``) and how a row of evidence becomes a prompt.

Items appear as their title followed by an image marker when they have an image; the VLM processor replaces each
marker by the image's tokens, in order. Candidates are listed under single-character labels so that one forward
pass gives a distribution over them (DESIGN.md §5).
"""
from __future__ import annotations

import dataclasses
import string
from functools import lru_cache
from pathlib import Path

import yaml

IMAGE = "<image>"
LABELS = tuple(string.ascii_uppercase + string.ascii_lowercase)  # single tokens in every tokenizer we target
ANSWER_FIELDS = {"answer", "target", "label", "positive"}  # never allowed in a query template


@dataclasses.dataclass(frozen=True)
class Template:
    id: str  # e.g. "sequential-03"
    task: str
    text: str
    metric: str

    @property
    def fields(self) -> tuple[str, ...]:
        return tuple(name for _, name, _, _ in string.Formatter().parse(self.text) if name)


@dataclasses.dataclass(frozen=True)
class Item:
    title: str
    image_uri: str | None = None
    token: str | None = None  # the item's own token (collaborative item tokens), written before its title

    def text(self) -> str:
        return " ".join(part for part in (self.token, self.title, IMAGE if self.image_uri else None) if part)


@dataclasses.dataclass(frozen=True)
class Prompt:
    text: str
    images: tuple[str, ...]  # one URI per IMAGE marker, in order
    labels: tuple[str, ...]  # the candidate labels, in listing order (empty for yes/no and explain)
    template_id: str

    @classmethod
    def from_row(cls, row: dict) -> "Prompt":
        """A prompt row (``prompt``, ``images``, ``labels``, ``template_id``: what the example builder and the VLM
        stage write) as a Prompt."""
        return cls(row["prompt"], tuple(row.get("images") or ()), tuple(row.get("labels") or ()),
                   row.get("template_id", ""))


@lru_cache(maxsize=None)
def load_templates(path: str | None = None) -> tuple[Template, ...]:
    data = yaml.safe_load(Path(path or Path(__file__).with_name("templates.yaml")).read_text())
    return tuple(Template(f"{task}-{i:02d}", task, text, spec["metric"])
                 for task, spec in data.items() for i, text in enumerate(spec["texts"], start=1))


# The warm-up form of each task: the evidence and the question's object, no instructions. A model trained from
# scratch first learns to compare items in these short prompts, then finds them among the template text
# (benchmarks/matching_probe.py: at ~70 tokens it does not learn the comparison without this stage).
WARMUP_TEXTS = {"sequential": "{history} ? {candidates}", "direct": "{history} ? {item}",
                "ctr": "{history} ? {item}", "explain": "{item}"}


def warmup_template(task: str) -> Template:
    if task not in WARMUP_TEXTS:
        raise ValueError(f"no warm-up form for task {task!r}")
    return Template(f"{task}-warmup", task, WARMUP_TEXTS[task], "warmup")


def templates_for(task: str, listing: bool | None = None) -> tuple[Template, ...]:
    """The task's templates; ``listing`` True / False: only those that list candidates / ask about one item."""
    found = tuple(t for t in load_templates() if t.task == task
                  and (listing is None or ("candidates" in t.fields) == listing))
    if not found:
        raise ValueError(f"no templates for task {task!r}" + ("" if listing is None else f" (listing={listing})"))
    return found


def render(template: Template, *, user: str, profile: str, history: list[Item] = (), candidates: list[Item] = (),
           item: Item | None = None, horizon: float | None = None, rating: int | None = None) -> Prompt:
    """Fill every placeholder of ``template``; a placeholder without a value is an error naming it.

    Candidates are listed under single-character labels, unless every one has its own item token: then the token
    is the label (the answer names the item itself) and the listing has no letters."""
    by_token = bool(candidates) and all(c.token for c in candidates)
    if len(candidates) > len(LABELS) and not by_token:
        raise ValueError(f"{len(candidates)} candidates; at most {len(LABELS)} fit single-token labels")
    labels = tuple(c.token for c in candidates) if by_token else LABELS[:len(candidates)]
    listing = ("; ".join(c.text() for c in candidates) if by_token
               else " ".join(f"{label}) {c.text()}" for label, c in zip(labels, candidates)))
    parts = {
        "user": (user, ()),
        "profile": (profile, ()),
        "history": ("; ".join(i.text() for i in history), tuple(i.image_uri for i in history if i.image_uri)),
        "candidates": (listing, tuple(c.image_uri for c in candidates if c.image_uri)),
        "item": (item.text(), (item.image_uri,) if item.image_uri else ()) if item else None,
        "horizon": (f"{horizon:.2f}", ()) if horizon is not None else None,
        "rating": (str(rating), ()) if rating is not None else None,
    }
    values, images = {}, []
    for name in template.fields:
        if parts.get(name) is None or (name in ("history", "candidates") and not parts[name][0]):
            raise ValueError(f"template {template.id}: no value for {{{name}}}")
        values[name] = parts[name][0]
        images.extend(parts[name][1])
    return Prompt(template.text.format(**values), tuple(images), labels if "candidates" in values else (),
                  template.id)
