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


# Qwen-family token ids in the tiny vocabularies (the real models use 151652-151656).
QWEN_VISION_START, QWEN_VISION_END, QWEN_IMAGE_TOKEN, QWEN_VIDEO_TOKEN = 3, 4, 5, 6


def _qwen_text(layers, hidden, intermediate, heads, kv_heads, vocab, mrope_section, **extra):
    return dict(
        vocab_size=vocab, hidden_size=hidden, intermediate_size=intermediate or hidden * 2,
        num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv_heads or heads,
        max_position_embeddings=8192, pad_token_id=0, bos_token_id=1, eos_token_id=2,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": list(mrope_section)},
        **extra,
    )


def _qwen_ids():
    return dict(image_token_id=QWEN_IMAGE_TOKEN, video_token_id=QWEN_VIDEO_TOKEN,
                vision_start_token_id=QWEN_VISION_START, vision_end_token_id=QWEN_VISION_END)


def _init_small(model, std: float):
    """Random weights around ``std``: large enough that a dropped token visibly changes outputs."""
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if parameter.ndim >= 2 or "norm" not in name:
                parameter.normal_(0.0, std)
    return model


def random_qwen2_5_vl(
    *,
    layers: int = 6,
    hidden: int = 64,
    intermediate: int | None = None,
    heads: int = 4,
    kv_heads: int | None = 2,
    vocab: int = 64,
    patch: int = 4,
    vision_hidden: int = 32,
    vision_layers: int = 2,
    vision_heads: int = 2,
    window_size: int = 16,
    attn: str = "sdpa",
    dtype: torch.dtype = torch.float32,
    seed: int = 0,
    device: str | torch.device = "cpu",
):
    """A Qwen2.5-VL with random weights: 2x2 merged patches, M-RoPE, windowed vision attention.

    Token ids: pad 0, bos 1, eos 2, vision start 3, vision end 4, image 5, video 6.
    """
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    torch.manual_seed(seed)
    head_dim = hidden // heads
    quarter = head_dim // 4
    section = (head_dim // 2 - 2 * quarter, quarter, quarter)
    config = Qwen2_5_VLConfig(
        text_config=_qwen_text(layers, hidden, intermediate, heads, kv_heads, vocab, section),
        vision_config=dict(
            depth=vision_layers, hidden_size=vision_hidden, intermediate_size=vision_hidden * 2,
            num_heads=vision_heads, patch_size=patch, spatial_merge_size=2, temporal_patch_size=2,
            window_size=window_size, out_hidden_size=hidden, fullatt_block_indexes=[vision_layers - 1],
            tokens_per_second=2,
        ),
        **_qwen_ids(),
    )
    config._attn_implementation = attn
    with torch.device(device):
        model = Qwen2_5_VLForConditionalGeneration(config)
    return _init_small(model, 0.08).eval().to(dtype)


def random_qwen3_vl(
    *,
    layers: int = 6,
    hidden: int = 64,
    intermediate: int | None = None,
    heads: int = 4,
    kv_heads: int | None = 2,
    vocab: int = 64,
    patch: int = 4,
    vision_hidden: int = 32,
    vision_layers: int = 3,
    vision_heads: int = 2,
    deepstack_layers: tuple[int, ...] = (0, 1),
    moe: bool = False,
    attn: str = "sdpa",
    dtype: torch.dtype = torch.float32,
    seed: int = 0,
    device: str | torch.device = "cpu",
):
    """A Qwen3-VL (or Qwen3-VL-MoE) with random weights: interleaved M-RoPE and DeepStack.

    DeepStack adds the features of ``deepstack_layers`` vision blocks to the hidden states of the
    first ``len(deepstack_layers)`` LM layers at the visual positions. Token ids as in
    ``random_qwen2_5_vl``.
    """
    import transformers

    torch.manual_seed(seed)
    head_dim = hidden // heads
    quarter = head_dim // 4
    section = (head_dim // 2 - 2 * quarter, quarter, quarter)
    text = _qwen_text(layers, hidden, intermediate, heads, kv_heads, vocab, section, head_dim=head_dim)
    text["rope_parameters"]["mrope_interleaved"] = True
    if moe:
        text.update(num_experts=4, num_experts_per_tok=2, moe_intermediate_size=hidden, decoder_sparse_step=1)
    vision = dict(
        depth=vision_layers, hidden_size=vision_hidden, intermediate_size=vision_hidden * 2,
        num_heads=vision_heads, patch_size=patch, spatial_merge_size=2, temporal_patch_size=2,
        out_hidden_size=hidden, num_position_embeddings=64, deepstack_visual_indexes=list(deepstack_layers),
    )
    prefix = "Qwen3VLMoe" if moe else "Qwen3VL"
    config = getattr(transformers, f"{prefix}Config")(text_config=text, vision_config=vision, **_qwen_ids())
    config._attn_implementation = attn
    with torch.device(device):
        model = getattr(transformers, f"{prefix}ForConditionalGeneration")(config)
    return _init_small(model, 0.08).eval().to(dtype)
