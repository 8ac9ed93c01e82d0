"""A tiny random Qwen2.5-VL saved as a user's checkpoint folder, with a processor built offline.

The folder has what ``pilot.models.load`` reads from a real Qwen2.5-VL checkpoint: ``config.json``,
safetensors weights, a tokenizer with the family's special tokens (``<|vision_start|>`` 3,
``<|vision_end|>`` 4, ``<|image_pad|>`` 5, ``<|video_pad|>`` 6, ``<|im_start|>``, ``<|im_end|>``,
``<|endoftext|>``), the family's image processor (14 px patches shrunk to ``patch`` px, 2x2 merge,
2-frame temporal patches; ``min_pixels`` / ``max_pixels`` so that a 224 px demo image gives a few
dozen tokens), and a Qwen-style chat template. No downloads: the vocabulary is the words of the
demo task's prompts.
"""

from __future__ import annotations

from pathlib import Path

import torch

# Ids as random_qwen2_5_vl numbers them: pad 0, bos 1, eos 2, vision start 3, end 4, image 5, video 6.
SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
           "<|image_pad|>", "<|video_pad|>", "<unk>"]

CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif content['type'] == 'text' %}{{ content['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def build_tokenizer():
    """A word-level tokenizer over the demo task's words, with Qwen's special tokens first."""
    from transformers import PreTrainedTokenizerFast

    from pilot.demo.train import word_level_core

    core = word_level_core(SPECIAL, ["system user assistant"])
    return PreTrainedTokenizerFast(
        tokenizer_object=core, eos_token="<|im_end|>", pad_token="<|endoftext|>", unk_token="<unk>",
        padding_side="left",
        extra_special_tokens={"image_token": "<|image_pad|>", "video_token": "<|video_pad|>",
                              "vision_bos_token": "<|vision_start|>", "vision_eos_token": "<|vision_end|>"},
    )


def build_processor(tokenizer, patch: int = 4, min_pixels: int = 32 * 32, max_pixels: int = 64 * 64):
    """Qwen2_5_VLProcessor: the family's image processor (merge 2, temporal patch 2) and chat template.

    With patch 4 a token covers 8 x 8 pixels: a 224 px square demo image is resized to 64 x 64
    (``max_pixels``), 8 x 8 = 64 tokens.
    """
    from transformers import Qwen2_5_VLProcessor
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil
    from transformers.utils import is_torchvision_available

    from pilot.models import images_only

    images = Qwen2VLImageProcessorPil(
        patch_size=patch, merge_size=2, temporal_patch_size=2,
        size={"shortest_edge": min_pixels, "longest_edge": max_pixels},
    )
    processor_class = Qwen2_5_VLProcessor if is_torchvision_available() else images_only(Qwen2_5_VLProcessor)
    return processor_class(image_processor=images, tokenizer=tokenizer, chat_template=CHAT_TEMPLATE)


def save_tiny_qwen2_5_vl(folder: str | Path, *, layers: int = 4, seed: int = 0, **processor_kwargs) -> Path:
    """Build and save the tiny model, tokenizer and processor into ``folder``; returns it."""
    from pilot.testing.random_models import random_qwen2_5_vl

    folder = Path(folder)
    tokenizer = build_tokenizer()
    assert tokenizer.convert_tokens_to_ids("<|image_pad|>") == 5 and tokenizer.convert_tokens_to_ids(
        "<|vision_start|>") == 3
    model = random_qwen2_5_vl(layers=layers, vocab=len(tokenizer), seed=seed, dtype=torch.float32)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.save_pretrained(folder, safe_serialization=True)
    build_processor(tokenizer, **processor_kwargs).save_pretrained(folder)
    return folder
