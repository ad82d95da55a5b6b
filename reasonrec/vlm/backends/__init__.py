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
    """Each label's token id when it follows a space (single tokens by construction of the tokenizer; an item
    token absorbs the space)."""
    ids = [tokenizer(" " + label, add_special_tokens=False).input_ids for label in labels]
    if any(len(i) != 1 for i in ids):
        raise ValueError(f"labels {labels} are not single tokens after a space in this tokenizer")
    return [i[0] for i in ids]


MAX_IMAGE_BYTES = 20 * 2**20
MAX_IMAGE_PIXELS = 4096 * 4096


class BadImage(ValueError):
    pass


class ImageCache:
    """Decoded images by URI; ``blank`` swaps every image for a grey one (the image-channel ablation). An image
    that cannot be read, or is over the size limits, raises ``BadImage`` with the reason (and is remembered)."""

    def __init__(self, blank: bool = False):
        self.blank = blank
        self._cache: dict = {}

    def __call__(self, uri: str):
        if uri not in self._cache:
            try:
                self._cache[uri] = self._load(uri)
            except BadImage as e:
                self._cache[uri] = e
        found = self._cache[uri]
        if isinstance(found, BadImage):
            raise found
        return found

    def problem(self, uri: str) -> str | None:
        """Why the image cannot be used, or None (it is then decoded and cached)."""
        try:
            self(uri)
        except BadImage as e:
            return str(e)
        return None

    def _load(self, uri: str):
        from PIL import Image

        from reasonrec import storage

        try:
            data = storage.read_bytes(uri)
        except FileNotFoundError:
            raise BadImage(f"image {uri}: no such file") from None
        if len(data) > MAX_IMAGE_BYTES:
            raise BadImage(f"image {uri}: {len(data)} bytes, more than {MAX_IMAGE_BYTES}")
        try:
            image = Image.open(io.BytesIO(data))
            if image.width * image.height > MAX_IMAGE_PIXELS:  # checked before decoding the pixels
                raise BadImage(f"image {uri}: {image.width}x{image.height} pixels, more than {MAX_IMAGE_PIXELS}")
            image = image.convert("RGB")
        except BadImage:
            raise
        except (OSError, ValueError, Image.DecompressionBombError) as e:
            raise BadImage(f"image {uri}: unreadable ({e})") from None
        return Image.new("RGB", image.size, (128, 128, 128)) if self.blank else image
