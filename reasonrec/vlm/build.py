"""Tiny randomly initialised VLMs built from transformers' config classes, with no download: Idefics3 (SmolVLM's
architecture), LLaVA-1.5 (CLIP vision tower + Llama) and Qwen2-VL, each with its own processor.

The tokenizer is a byte-level BPE trained on the project's own text (templates, item titles) and carries the
architecture's special tokens, so processor and model save and reload offline (``HF_HUB_OFFLINE=1``) in
transformers and vLLM. The text head_dim is 64 (hidden / heads), which vLLM's CPU attention accepts. Which backend
serves which architecture on which machine: docs/deliberator.md, "Architectures".
"""
from __future__ import annotations

import dataclasses
import string
from pathlib import Path

from reasonrec.prompts.templates import IMAGE, LABELS, load_templates

BASE_TOKENS = ["<|pad|>", "<|bos|>", "<end_of_utterance>"]  # pad, bos, eos
ARCHITECTURE_TOKENS = {
    "idefics3": ["<fake_token_around_image>", "<image>", "<global-img>"],
    "llava": ["<image>"],
    "qwen2_vl": ["<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"],
}
ARCHITECTURES = tuple(ARCHITECTURE_TOKENS)
# How each image is written in the model's text: the prompts' IMAGE marker, unless the architecture wraps it.
QWEN_IMAGE = "<|vision_start|><|image_pad|><|vision_end|>"
IMAGE_MARKERS = {"qwen2_vl": QWEN_IMAGE, "qwen2_5_vl": QWEN_IMAGE}


@dataclasses.dataclass
class TinyVLMConfig:
    architecture: str = "idefics3"  # one of ARCHITECTURES
    vocab_size: int = 2048
    hidden_size: int = 128
    layers: int = 2
    heads: int = 2  # head_dim = hidden_size / heads = 64
    vision_hidden_size: int = 64
    vision_layers: int = 2
    image_size: int = 112
    patch_size: int = 28  # Idefics3: (112 / 28)^2 = 16 patches, pixel shuffle by 2 -> 4 tokens per image
    scale_factor: int = 2
    # The first text layer's value and output projections start as the identity, so that from step 0 the answer
    # position reads a mix of the prompt's token embeddings (its item tokens among them) instead of a random
    # projection of it: with collaborative item tokens the first gradient steps then only have to learn where to
    # look. Measured on the demo catalogue (docs/results.md): served-form HR@1 0.10 -> 0.28 after 300 steps.
    identity_values: bool = False
    seed: int = 0

    def __post_init__(self):
        if self.architecture not in ARCHITECTURES:
            raise ValueError(f"tiny.architecture {self.architecture!r}: use one of {ARCHITECTURES}")

    @property
    def image_seq_len(self) -> int:
        return (self.image_size // self.patch_size) ** 2 // self.scale_factor ** 2


def image_marker(model_config) -> str:
    """How a prompt's image marker is written for a model (its transformers config): most VLM processors expand
    ``<image>``; Qwen2-VL's expands ``<|image_pad|>`` between vision start and end tokens."""
    return IMAGE_MARKERS.get(model_config.model_type, IMAGE)


def model_text(text: str, marker: str) -> str:
    return text if marker == IMAGE else text.replace(IMAGE, marker)


def train_tokenizer(corpus: list[str], vocab_size: int, architecture: str = "idefics3"):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    special = BASE_TOKENS + ARCHITECTURE_TOKENS[architecture]
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    # Every candidate label and yes/no must be one token after a space: they are read as next-token choices.
    answers = [f"answer: {label}" for label in LABELS] + ["answer: yes", "answer: no"]
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=special,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    # Repeated in proportion to the corpus: with rare answer lines a large catalogue's own merges (e.g. "i"+"n"
    # before " "+"i") would leave some labels as two tokens.
    tokenizer.train_from_iterator([*corpus, *answers * max(20, len(corpus) // 5)], trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token="<|bos|>", eos_token="<end_of_utterance>",
                                   pad_token="<|pad|>", additional_special_tokens=special[2:])
    for word in [*string.ascii_letters, "yes", "no"]:
        if len(fast(" " + word, add_special_tokens=False).input_ids) != 1:
            raise RuntimeError(f"tokenizer: {' ' + word!r} is not a single token")
    return fast


def build_tiny(corpus: list[str], config: TinyVLMConfig | None = None):
    """A randomly initialised tiny VLM of ``config.architecture`` and its processor."""
    import torch
    from transformers import AutoModelForImageTextToText

    config = config or TinyVLMConfig()
    tokenizer = train_tokenizer([t.text for t in load_templates()] + list(corpus), config.vocab_size,
                                config.architecture)
    text = dict(model_type="llama", vocab_size=len(tokenizer), hidden_size=config.hidden_size,
                intermediate_size=2 * config.hidden_size, num_hidden_layers=config.layers,
                num_attention_heads=config.heads, num_key_value_heads=config.heads, max_position_embeddings=4096,
                pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
                eos_token_id=tokenizer.eos_token_id)
    processor, model_config = BUILDERS[config.architecture](tokenizer, text, config)
    torch.manual_seed(config.seed)
    model = AutoModelForImageTextToText.from_config(model_config).eval()
    if config.identity_values:
        attention = model.get_decoder().layers[0].self_attn
        with torch.no_grad():
            attention.v_proj.weight.copy_(torch.eye(*attention.v_proj.weight.shape))
            attention.o_proj.weight.copy_(torch.eye(*attention.o_proj.weight.shape))
    return model, processor


def _idefics3(tokenizer, text: dict, config: TinyVLMConfig):
    from transformers import Idefics3Config, Idefics3ImageProcessorPil, Idefics3Processor

    size = {"longest_edge": config.image_size}
    processor = Idefics3Processor(
        image_processor=Idefics3ImageProcessorPil(do_image_splitting=False, size=size, max_image_size=size),
        tokenizer=tokenizer, image_seq_len=config.image_seq_len)
    model_config = Idefics3Config(
        text_config=text, vision_config=_vision(config), scale_factor=config.scale_factor,
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"), pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False)
    return processor, model_config


def _llava(tokenizer, text: dict, config: TinyVLMConfig):
    """LLaVA-1.5's layout: a CLIP vision tower, its second-to-last layer's patch features (CLS dropped) through a
    two-layer projector, one ``<image>`` token per patch."""
    from transformers import CLIPImageProcessorPil, LlavaConfig, LlavaProcessor

    side = {"height": config.image_size, "width": config.image_size}
    processor = LlavaProcessor(
        image_processor=CLIPImageProcessorPil(size={"shortest_edge": config.image_size}, crop_size=side),
        tokenizer=tokenizer, patch_size=config.patch_size, vision_feature_select_strategy="default",
        num_additional_image_tokens=1)
    model_config = LlavaConfig(
        text_config=text, vision_config={**_vision(config), "model_type": "clip_vision_model"},
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"), vision_feature_select_strategy="default",
        vision_feature_layer=-2, pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=False)
    return processor, model_config


def _qwen2_vl(tokenizer, text: dict, config: TinyVLMConfig):
    """Qwen2-VL: its processor also needs its video processor, which transformers builds on torchvision."""
    from transformers import Qwen2VLConfig, Qwen2VLImageProcessorPil, Qwen2VLProcessor, Qwen2VLVideoProcessor

    pixels = config.image_size ** 2
    processor = Qwen2VLProcessor(
        image_processor=Qwen2VLImageProcessorPil(min_pixels=pixels, max_pixels=pixels, patch_size=config.patch_size,
                                                 merge_size=config.scale_factor),
        tokenizer=tokenizer, video_processor=Qwen2VLVideoProcessor())
    head_dim = config.hidden_size // config.heads
    ids = {f"{name}_token_id": tokenizer.convert_tokens_to_ids(token) for name, token in
           (("image", "<|image_pad|>"), ("video", "<|video_pad|>"), ("vision_start", "<|vision_start|>"),
            ("vision_end", "<|vision_end|>"))}
    # M-RoPE splits the rotary half-dimension over (time, height, width).
    sections = [head_dim // 8, 3 * head_dim // 16, 3 * head_dim // 16]
    model_config = Qwen2VLConfig(
        text_config={**text, "model_type": "qwen2_vl_text",
                     "rope_scaling": {"type": "mrope", "mrope_section": sections}},
        vision_config=dict(depth=config.vision_layers, embed_dim=config.vision_hidden_size,
                           hidden_size=config.hidden_size, num_heads=1, mlp_ratio=2, patch_size=config.patch_size,
                           spatial_merge_size=config.scale_factor, temporal_patch_size=2),
        pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=False, **ids)
    return processor, model_config


def _vision(config: TinyVLMConfig) -> dict:
    return dict(hidden_size=config.vision_hidden_size, intermediate_size=2 * config.vision_hidden_size,
                num_hidden_layers=config.vision_layers, num_attention_heads=1, image_size=config.image_size,
                patch_size=config.patch_size)


BUILDERS = {"idefics3": _idefics3, "llava": _llava, "qwen2_vl": _qwen2_vl}


def save(model, processor, folder: str | Path) -> None:
    model.save_pretrained(folder)
    processor.save_pretrained(folder)


def load(folder: str | Path):
    """Model and processor from a local HF folder, never from the network."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    model = AutoModelForImageTextToText.from_pretrained(folder, local_files_only=True).eval()
    return model, AutoProcessor.from_pretrained(folder, local_files_only=True)
