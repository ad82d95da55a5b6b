"""The catalogue as prompts see it: item index -> prompt Item (title, image), categories for profiles and
explanations. R-VIT training and the VLM stage build their prompts from the same object."""
from __future__ import annotations

import zlib

import numpy as np
import pyarrow as pa

from reasonrec.prompts.cot import Deliberation, format_context
from reasonrec.prompts.templates import Item, Template, render

NO_HISTORY = Item("no purchases yet")


def item_token(item_id: str) -> str:
    """The item's own vocabulary entry in a VLM tuned with collaborative item tokens."""
    return f"<|item:{item_id}|>"


def listing_order(user_id: str, n: int) -> np.ndarray:
    """The order a user's shortlist (best first by the tools' vote) is listed in: a permutation seeded by the
    user, the same in R-VIT training, the nightly job and Serve, so that a position tells the VLM nothing."""
    return np.random.default_rng(zlib.crc32(user_id.encode())).permutation(n)


class Catalogue:
    """Item index -> prompt Item (title, image); categories for profiles and explanations."""

    def __init__(self, items: pa.Table, vocab, images: bool = True, item_tokens: bool = False):
        """``items``: the catalogue table (item_id, title, categories, image_uri); ``vocab``: items, offset 1;
        ``item_tokens``: each item is also written as its own token (``item_token``)."""
        ids = items.column("item_id").to_pylist()
        index = vocab.index(items.column("item_id"))
        titles = items.column("title").to_pylist()
        uris = items.column("image_uri").to_pylist() if images else [None] * len(ids)
        categories = items.column("categories").to_pylist()
        size = len(vocab) + 1
        self.ids = np.empty(size, dtype=object)
        self.items = np.empty(size, dtype=object)
        self.category = np.empty(size, dtype=object)
        for row, i in enumerate(index):
            if i < 0:
                continue  # an item the model was not trained on
            self.ids[i] = ids[row]
            self.items[i] = Item(titles[row] or f"item {ids[row]}", uris[row] or None,
                                 item_token(ids[row]) if item_tokens else None)
            self.category[i] = (categories[row] or [None])[0]

    def profile(self, history: np.ndarray) -> str:
        cats = [c for c in self.category[history] if c]
        text = f"{len(history)} purchase{'s' if len(history) != 1 else ''}"
        if cats:
            names, counts = np.unique(cats, return_counts=True)
            text += ", mostly " + " and ".join(names[np.argsort(-counts, kind="stable")[:2]])
        return text

    def explanation(self, history: np.ndarray, item: int) -> str:
        category = self.category[item]
        same = sum(c == category for c in self.category[history]) if category else 0
        if same:
            return (f"{same} of the {len(history)} past purchases are {category}, and {self.items[item].title} is "
                    "one too")
        return f"{self.items[item].title} is a new direction after {len(history)} purchases"


def explain_prompt(catalogue: Catalogue, template: Template, user: str, history: np.ndarray, item: int, rating: int,
                   max_history: int) -> dict:
    """The prompt row of an explanation, the same in R-VIT training and in the VLM stage: the user's profile over
    their whole known history, their last ``max_history`` items, the item and the star rating; the deliberation
    line states that the VLM answers alone (no horizon, no tools: paper Appendix A)."""
    shown = [catalogue.items[i] for i in history[-max_history:]] or [NO_HISTORY]
    prompt = render(template, user=user, profile=catalogue.profile(history), history=shown,
                    item=catalogue.items[item], rating=int(rating))
    context = format_context(Deliberation(decision="answer", answer=""))
    return {"user_id": user, "prompt": prompt.text + "\n" + context, "images": list(prompt.images), "labels": [],
            "context": context, "template_id": prompt.template_id, "task": "explain"}

