"""Build a small Idefics3-architecture VLM and its processor from config, with no download.

The tokenizer is a byte-level BPE trained on the project's own text (templates, item titles) and carries the
architecture's special tokens, so processor and model save and reload offline (``HF_HUB_OFFLINE=1``) in
transformers and vLLM. The text head_dim is 64 (hidden / heads), which vLLM's CPU attention accepts.
"""
from __future__ import annotations

import dataclasses
import string
from pathlib import Path

from reasonrec.prompts.templates import LABELS, load_templates

SPECIAL_TOKENS = ["<|pad|>", "<|bos|>", "<end_of_utterance>", "<fake_token_around_image>", "<image>", "<global-img>"]


@dataclasses.dataclass
class TinyVLMConfig:
    vocab_size: int = 2048
    hidden_size: int = 128
    layers: int = 2
    heads: int = 2  # head_dim = hidden_size / heads = 64
    vision_hidden_size: int = 64
    vision_layers: int = 2
    image_size: int = 112
    patch_size: int = 28  # (112 / 28)^2 = 16 patches, pixel shuffle by 2 -> 4 tokens per image
    scale_factor: int = 2
    # The first text layer's value and output projections start as the identity, so that from step 0 the answer
    # position reads a mix of the prompt's token embeddings (its item tokens among them) instead of a random
    # projection of it: with collaborative item tokens the first gradient steps then only have to learn where to
    # look. Measured on the demo catalogue (docs/results.md): served-form HR@1 0.10 -> 0.28 after 300 steps.
    identity_values: bool = False
    seed: int = 0

    @property
    def image_seq_len(self) -> int:
        return (self.image_size // self.patch_size) ** 2 // self.scale_factor ** 2


def train_tokenizer(corpus: list[str], vocab_size: int):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    # Every candidate label and yes/no must be one token after a space: they are read as next-token choices.
    answers = [f"answer: {label}" for label in LABELS] + ["answer: yes", "answer: no"]
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    # Repeated in proportion to the corpus: with rare answer lines a large catalogue's own merges (e.g. "i"+"n"
    # before " "+"i") would leave some labels as two tokens.
    tokenizer.train_from_iterator([*corpus, *answers * max(20, len(corpus) // 5)], trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token="<|bos|>", eos_token="<end_of_utterance>",
                                   pad_token="<|pad|>", additional_special_tokens=SPECIAL_TOKENS[2:])
    for word in [*string.ascii_letters, "yes", "no"]:
        if len(fast(" " + word, add_special_tokens=False).input_ids) != 1:
            raise RuntimeError(f"tokenizer: {' ' + word!r} is not a single token")
    return fast


def build_tiny(corpus: list[str], config: TinyVLMConfig | None = None):
    """A randomly initialised tiny Idefics3 and its processor."""
    import torch
    from transformers import (
        Idefics3Config,
        Idefics3ForConditionalGeneration,
        Idefics3Processor,
    )
    from transformers.models.idefics3.image_processing_pil_idefics3 import (
        Idefics3ImageProcessorPil,
    )

    config = config or TinyVLMConfig()
    tokenizer = train_tokenizer([t.text for t in load_templates()] + list(corpus), config.vocab_size)
    size = {"longest_edge": config.image_size}
    processor = Idefics3Processor(
        image_processor=Idefics3ImageProcessorPil(do_image_splitting=False, size=size, max_image_size=size),
        tokenizer=tokenizer, image_seq_len=config.image_seq_len)
    model_config = Idefics3Config(
        text_config=dict(model_type="llama", vocab_size=len(tokenizer), hidden_size=config.hidden_size,
                         intermediate_size=2 * config.hidden_size, num_hidden_layers=config.layers,
                         num_attention_heads=config.heads, num_key_value_heads=config.heads,
                         max_position_embeddings=4096, pad_token_id=tokenizer.pad_token_id),
        vision_config=dict(hidden_size=config.vision_hidden_size, intermediate_size=2 * config.vision_hidden_size,
                           num_hidden_layers=config.vision_layers, num_attention_heads=1,
                           image_size=config.image_size, patch_size=config.patch_size),
        scale_factor=config.scale_factor, image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
        pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=False)
    torch.manual_seed(config.seed)
    model = Idefics3ForConditionalGeneration(model_config).eval()
    if config.identity_values:
        attention = model.model.text_model.layers[0].self_attn
        with torch.no_grad():
            attention.v_proj.weight.copy_(torch.eye(*attention.v_proj.weight.shape))
            attention.o_proj.weight.copy_(torch.eye(*attention.o_proj.weight.shape))
    return model, processor


def save(model, processor, folder: str | Path) -> None:
    model.save_pretrained(folder)
    processor.save_pretrained(folder)


def load(folder: str | Path):
    """Model and processor from a local HF folder, never from the network."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    model = AutoModelForImageTextToText.from_pretrained(folder, local_files_only=True).eval()
    return model, AutoProcessor.from_pretrained(folder, local_files_only=True)
