"""Deliberator backends: prompts in, log-probabilities of each prompt's answer labels out (DESIGN.md §5).

Both backends share one contract, ``label_logprobs(prompts) -> [np.ndarray]``: for each prompt, log P(label) of
each of its choices (candidate labels, else yes/no) under the full next-token distribution after ``ANSWER_CUE``.
"""
from __future__ import annotations

import io

ANSWER_CUE = "\nanswer:"  # the CoT target's answer line; the next token is the label


def choices(prompt) -> tuple[str, ...]:
    """The answer tokens a prompt is scored over: its candidate labels, else yes/no."""
    return prompt.labels or ("yes", "no")


def label_token_ids(tokenizer, labels) -> list[int]:
    """Each label's token id when it follows a space (single tokens by construction of the tokenizer)."""
    ids = [tokenizer.convert_tokens_to_ids(tokenizer.tokenize(" " + label)) for label in labels]
    if any(len(i) != 1 for i in ids):
        raise ValueError(f"labels {labels} are not single tokens after a space in this tokenizer")
    return [i[0] for i in ids]


class ImageCache:
    """Decoded images by URI; ``blank`` swaps every image for a grey one (the image-channel ablation)."""

    def __init__(self, blank: bool = False):
        self.blank = blank
        self._cache: dict = {}

    def __call__(self, uri: str):
        from PIL import Image

        from reasonrec import storage

        if uri not in self._cache:
            image = Image.open(io.BytesIO(storage.read_bytes(uri))).convert("RGB")
            self._cache[uri] = Image.new("RGB", image.size, (128, 128, 128)) if self.blank else image
        return self._cache[uri]
