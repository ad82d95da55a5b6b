"""The reference backend: one forward pass per prompt batch, logits of the last position read at the labels."""
from __future__ import annotations

import numpy as np
import torch

from reasonrec.vlm.backends import ANSWER_CUE, choices, load_image


class TransformersDeliberator:
    def __init__(self, model, processor, batch_size: int = 8):
        self.model = model.eval()
        self.processor = processor
        self.batch_size = batch_size
        processor.tokenizer.padding_side = "left"  # the last position is every prompt's next token

    def label_ids(self, labels: tuple[str, ...]) -> list[int]:
        return [self.processor.tokenizer.convert_tokens_to_ids(self.processor.tokenizer.tokenize(" " + label))[0]
                for label in labels]

    @torch.no_grad()
    def label_logprobs(self, prompts: list) -> list[np.ndarray]:
        """Per prompt, log P(label) of each of its choices under the full next-token distribution."""
        out = []
        for lo in range(0, len(prompts), self.batch_size):
            chunk = prompts[lo:lo + self.batch_size]
            images = [[load_image(uri) for uri in p.images] for p in chunk]
            inputs = self.processor(text=[p.text + ANSWER_CUE for p in chunk],
                                    images=images if any(images) else None, padding=True, return_tensors="pt")
            logprobs = torch.log_softmax(self.model(**inputs).logits[:, -1].float(), dim=-1)
            out.extend(logprobs[i, self.label_ids(choices(p))].numpy() for i, p in enumerate(chunk))
        return out
