"""Deliberator backends: prompts in, log-probabilities of each prompt's answer labels out (DESIGN.md §5)."""
from __future__ import annotations

import io

ANSWER_CUE = "\nanswer:"  # the CoT target's answer line; the next token is the label


def choices(prompt) -> tuple[str, ...]:
    """The answer tokens a prompt is scored over: its candidate labels, else yes/no."""
    return prompt.labels or ("yes", "no")


def load_image(uri: str):
    from PIL import Image

    from reasonrec import storage

    return Image.open(io.BytesIO(storage.read_bytes(uri))).convert("RGB")
