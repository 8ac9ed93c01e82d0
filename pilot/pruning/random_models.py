"""Random-weight LLaVA models built from configs: for tests, benchmarks and the offline smoke demo.

Latency and FLOPs do not depend on the weights' values, so a random model with a real model's
dimensions measures what the real one would.
"""

from __future__ import annotations

import torch
from transformers import (
    CLIPVisionConfig,
    LlamaConfig,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaNextConfig,
    LlavaNextForConditionalGeneration,
)

from pilot.pruning.flops import PRESETS

IMAGE_TOKEN = 5


def random_llava(
    *,
    layers: int = 6,
    hidden: int = 64,
    intermediate: int | None = None,
    heads: int = 4,
    kv_heads: int | None = None,
    vocab: int = 64,
    image_size: int = 24,
    patch: int = 4,
    vision_hidden: int = 32,
    vision_layers: int = 2,
    vision_heads: int = 4,
    next: bool = False,
    attn: str = "sdpa",
    dtype: torch.dtype = torch.float32,
    seed: int = 0,
    device: str | torch.device = "cpu",
):
    """A LLaVA (or LLaVA-NeXT) with random weights; image token id 5, pad 0, bos 1, eos 2."""
    torch.manual_seed(seed)
    text = LlamaConfig(
        vocab_size=vocab, hidden_size=hidden, intermediate_size=intermediate or hidden * 2,
        num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv_heads or heads,
        max_position_embeddings=8192, pad_token_id=0, bos_token_id=1, eos_token_id=2,
    )
    vision = CLIPVisionConfig(
        image_size=image_size, patch_size=patch, hidden_size=vision_hidden,
        intermediate_size=vision_hidden * 4 if vision_hidden >= 256 else vision_hidden * 2,
        num_hidden_layers=vision_layers, num_attention_heads=vision_heads, projection_dim=vision_hidden,
    )
    common = dict(vision_config=vision, text_config=text, image_token_id=IMAGE_TOKEN,
                  vision_feature_layer=-2, vision_feature_select_strategy="default")
    if next:
        pinpoints = [[image_size, 2 * image_size], [2 * image_size, image_size], [2 * image_size, 2 * image_size]]
        config = LlavaNextConfig(**common, image_grid_pinpoints=pinpoints)
        model_class = LlavaNextForConditionalGeneration
    else:
        config = LlavaConfig(**common)
        model_class = LlavaForConditionalGeneration
    config._attn_implementation = attn
    with torch.device(device):
        model = model_class(config)
    return model.eval().to(dtype)


def preset_llava(name: str, *, layers: int | None = None, hidden: int | None = None, **kwargs):
    """A random model with a preset's layout (e.g. ``llava-1.5-7b``), optionally narrowed."""
    preset = PRESETS[name]
    text, vision = preset["text_config"], preset["vision_config"]
    hidden = hidden or text["hidden_size"]
    scale = hidden / text["hidden_size"]
    return random_llava(
        layers=layers or text["num_hidden_layers"], hidden=hidden,
        intermediate=int(text["intermediate_size"] * scale) // 8 * 8,
        heads=max(1, int(text["num_attention_heads"] * scale)), vocab=text["vocab_size"],
        image_size=vision["image_size"], patch=vision["patch_size"],
        vision_hidden=vision["hidden_size"] if scale == 1 else max(64, int(vision["hidden_size"] * scale)),
        vision_layers=vision["num_hidden_layers"] if scale == 1 else 2,
        vision_heads=vision["num_attention_heads"] if scale == 1 else 4,
        next=preset["model_type"] == "llava_next", **kwargs,
    )
