"""The reference backend: one forward pass per prompt batch, logits of the last position read at the labels."""
from __future__ import annotations

import numpy as np
import torch

from reasonrec.vlm.backends import ANSWER_CUE, ImageCache, choices, label_token_ids
from reasonrec.vlm.build import image_marker, model_text


class TransformersDeliberator:
    def __init__(self, model, processor, batch_size: int = 8, images: ImageCache | None = None, device="cpu"):
        self.model = model.to(device).eval()
        self.processor = processor
        self.batch_size = batch_size
        self.images = images or ImageCache()
        self.device = device
        self.marker = image_marker(model.config)

    @torch.no_grad()
    def label_logprobs(self, prompts: list) -> list[np.ndarray]:
        """Per prompt, log P(label) of each of its choices under the full next-token distribution."""
        self.processor.tokenizer.padding_side = "left"  # the last position is every prompt's next token
        out = []
        for lo in range(0, len(prompts), self.batch_size):
            chunk = prompts[lo:lo + self.batch_size]
            images = [[self.images(uri) for uri in p.images] for p in chunk]
            inputs = self.processor(text=[model_text(p.text, self.marker) + ANSWER_CUE for p in chunk],
                                    images=images if any(images) else None, padding=True, return_tensors="pt")
            # The vocabulary at the last position only (a token per catalogue item makes it wide).
            logits = self.model(**inputs.to(self.device), logits_to_keep=1).logits[:, -1].float()
            logprobs = torch.log_softmax(logits, dim=-1).cpu()
            out.extend(logprobs[i, label_token_ids(self.processor.tokenizer, choices(p))].numpy()
                       for i, p in enumerate(chunk))
        return out

    @torch.no_grad()
    def generate(self, prompts: list, max_new_tokens: int) -> list[str]:
        """Greedy text after each prompt's answer cue, up to the end of utterance or ``max_new_tokens``. One prompt
        at a time: no padding, so a prompt gets the same text alone (Serve) as among others (the nightly job)."""
        tokenizer = self.processor.tokenizer
        out = []
        for p in prompts:
            images = [self.images(uri) for uri in p.images]
            inputs = self.processor(text=[model_text(p.text, self.marker) + ANSWER_CUE],
                                    images=[images] if images else None, return_tensors="pt").to(self.device)
            tokens = self.model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False,
                                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
            out.append(tokenizer.decode(tokens[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True).strip())
        return out

