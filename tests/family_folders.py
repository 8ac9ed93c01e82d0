"""Tiny random models of the tiled families saved as users' checkpoint folders, with processors built offline.

Like ``tests/qwen_folder.py`` for Qwen2.5-VL: ``config.json``, safetensors weights, a word-level
tokenizer over the demo task's words with the family's special tokens at the ids the tiny model
uses (``pilot.testing.random_models``), the family's image processor shrunk to the tiny model's
tile size, and a chat template in the family's style. No downloads.

InternVL (``InternVLProcessor``, ``GotOcr2ImageProcessorPil``): an image is cut into a
``cols x rows`` canvas of 32 px tiles (at most ``max_tiles``; the arrangement closest to its
aspect ratio) plus a 32 px thumbnail when there is more than one tile; each tile gives 4 x 4 = 16
``<IMG_CONTEXT>`` tokens, the image's run wrapped in ``<img>`` ... ``</img>``.

SmolVLM (``SmolVLMProcessor``, ``SmolVLMImageProcessorPil``): an image is resized to a longest
edge of ``longest`` px, then to whole 32 px tiles (rows = ceil(height / 32), cols likewise, at
most 3 x 3 with the default 96), split into them, and followed by the whole image at 32 px (the
global image); each gives 4 x 4 = 16 ``<image>`` tokens, a tile after
``<fake_token_around_image><row_i_col_j>``, a newline after each row of tiles, the global image
after ``<fake_token_around_image><global-img>`` and before a closing ``<fake_token_around_image>``.
The processor needs the ``num2words`` package (for video prompts only); see
``tests/test_family_pilot.py``.
"""

from __future__ import annotations

from pathlib import Path

import torch

# Ids as random_internvl numbers them: pad 0, bos 1, eos 2, <img> 3, </img> 4, <IMG_CONTEXT> 5.
INTERNVL_SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<img>", "</img>", "<IMG_CONTEXT>", "<video>",
                    "<unk>"]

# InternVL's template (as the released -hf checkpoints), without the default system message.
INTERNVL_CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' %}<IMG_CONTEXT>\n"
    "{% elif content['type'] == 'video' %}<video>\n"
    "{% elif content['type'] == 'text' %}{{ content['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def word_tokenizer(special: list[str], **kwargs):
    """A word-level tokenizer over the demo task's words, ``special`` first (ids 0, 1, ...)."""
    from transformers import PreTrainedTokenizerFast

    from pilot.demo.train import word_level_core

    core = word_level_core(special, ["system user assistant :"])
    return PreTrainedTokenizerFast(tokenizer_object=core, unk_token="<unk>", padding_side="left", **kwargs)


def build_internvl_processor(tile: int = 32, tokens_per_tile: int = 16, max_tiles: int = 4):
    """InternVLProcessor: GotOcr2's PIL image processor cropping to ``tile`` px tiles, images only without
    torchvision (InternVL's video processor needs it)."""
    from transformers import InternVLProcessor
    from transformers.models.got_ocr2.image_processing_pil_got_ocr2 import GotOcr2ImageProcessorPil
    from transformers.utils import is_torchvision_available

    from pilot.models import images_only

    tokenizer = word_tokenizer(
        INTERNVL_SPECIAL, eos_token="<|im_end|>", pad_token="<|endoftext|>",
        extra_special_tokens={"start_image_token": "<img>", "end_image_token": "</img>",
                              "context_image_token": "<IMG_CONTEXT>", "video_token": "<video>"},
    )
    images = GotOcr2ImageProcessorPil(size={"height": tile, "width": tile}, crop_to_patches=True, min_patches=1,
                                      max_patches=max_tiles)
    processor_class = InternVLProcessor if is_torchvision_available() else images_only(InternVLProcessor)
    return processor_class(image_processor=images, tokenizer=tokenizer, image_seq_length=tokens_per_tile,
                           chat_template=INTERNVL_CHAT_TEMPLATE)


def save_tiny_internvl(folder: str | Path, *, layers: int = 4, seed: int = 0, max_tiles: int = 4) -> Path:
    """Build and save a tiny InternVL (32 px tiles of 4 x 4 tokens), its tokenizer and processor into ``folder``."""
    from pilot.testing import random_models as rm

    folder = Path(folder)
    processor = build_internvl_processor(max_tiles=max_tiles)
    tokenizer = processor.tokenizer
    ids = [tokenizer.convert_tokens_to_ids(t) for t in ("<img>", "</img>", "<IMG_CONTEXT>")]
    assert ids == [rm.INTERNVL_IMG_START, rm.INTERNVL_IMG_END, rm.INTERNVL_IMAGE_TOKEN], ids
    model = rm.random_internvl(layers=layers, vocab=len(tokenizer), seed=seed, dtype=torch.float32)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.save_pretrained(folder, safe_serialization=True)
    processor.save_pretrained(folder)
    return folder


# Ids as random_smolvlm numbers them: pad 0, bos 1, eos 2, <fake_token_around_image> 3, <global-img> 4,
# <image> 5, <row_i_col_j> 7 + 3 * (i - 1) + (j - 1).
SMOLVLM_SPECIAL = ["<|endoftext|>", "<|im_start|>", "<end_of_utterance>", "<fake_token_around_image>", "<global-img>",
                   "<image>", "<video>", *[f"<row_{i}_col_{j}>" for i in range(1, 4) for j in range(1, 4)], "<unk>"]

# SmolVLM2's template.
SMOLVLM_CHAT_TEMPLATE = (
    "<|im_start|>{% for message in messages %}{{ message['role'] | capitalize }}"
    "{% if message['content'][0]['type'] == 'image' %}{{ ':' }}{% else %}{{ ': ' }}{% endif %}"
    "{% for line in message['content'] %}{% if line['type'] == 'text' %}{{ line['text'] }}"
    "{% elif line['type'] == 'image' %}{{ '<image>' }}{% endif %}{% endfor %}<end_of_utterance>\n{% endfor %}"
    "{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}"
)


def build_smolvlm_processor(tile: int = 32, tokens_per_tile: int = 16, longest: int = 96):
    """SmolVLMProcessor over SmolVLM's PIL image processor (``tile`` px tiles, longest edge ``longest``), without
    a video processor (SmolVLM's needs torchvision; the pilot feeds images only)."""
    from transformers import SmolVLMProcessor
    from transformers.models.smolvlm.image_processing_pil_smolvlm import SmolVLMImageProcessorPil
    from transformers.utils import is_torchvision_available

    from pilot.models import images_only

    tokenizer = word_tokenizer(
        SMOLVLM_SPECIAL, eos_token="<end_of_utterance>", pad_token="<|endoftext|>", bos_token="<|im_start|>",
        extra_special_tokens={"fake_image_token": "<fake_token_around_image>", "image_token": "<image>",
                              "global_image_token": "<global-img>", "end_of_utterance_token": "<end_of_utterance>"},
    )
    images = SmolVLMImageProcessorPil(size={"longest_edge": longest}, max_image_size={"longest_edge": tile},
                                      do_image_splitting=True)
    processor_class = SmolVLMProcessor if is_torchvision_available() else images_only(SmolVLMProcessor)
    return processor_class(image_processor=images, tokenizer=tokenizer, video_processor=None,
                           image_seq_len=tokens_per_tile, chat_template=SMOLVLM_CHAT_TEMPLATE)


def save_tiny_smolvlm(folder: str | Path, *, layers: int = 4, seed: int = 0) -> Path:
    """Build and save a tiny SmolVLM (32 px tiles of 4 x 4 tokens), its tokenizer and processor into ``folder``."""
    from pilot.testing import random_models as rm

    folder = Path(folder)
    processor = build_smolvlm_processor()
    tokenizer = processor.tokenizer
    ids = [tokenizer.convert_tokens_to_ids(t) for t in ("<fake_token_around_image>", "<global-img>", "<image>",
                                                        "<row_1_col_1>", "<row_3_col_3>")]
    assert ids == [rm.SMOLVLM_FAKE_TOKEN, rm.SMOLVLM_GLOBAL_IMG, rm.SMOLVLM_IMAGE_TOKEN, rm.SMOLVLM_FIRST_ROW_COL,
                   rm.SMOLVLM_FIRST_ROW_COL + 8], ids
    model = rm.random_smolvlm(layers=layers, vocab=len(tokenizer), seed=seed, dtype=torch.float32)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.save_pretrained(folder, safe_serialization=True)
    processor.save_pretrained(folder)
    return folder
