"""Random-weight models of every supported family built from configs: for tests and benchmarks.

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


def _text_config(layers, hidden, intermediate, heads, kv_heads, vocab, **extra):
    return dict(
        vocab_size=vocab, hidden_size=hidden, intermediate_size=intermediate or hidden * 2,
        num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv_heads or heads,
        max_position_embeddings=8192, pad_token_id=0, bos_token_id=1, eos_token_id=2, **extra,
    )


def _build(model_class, config, attn, dtype, device):
    config._attn_implementation = attn
    with torch.device(device):
        model = model_class(config)
    return _init_small(model, 0.08).eval().to(dtype)


def _qwen_text(layers, hidden, intermediate, heads, kv_heads, vocab, mrope_section, **extra):
    rope = {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": list(mrope_section)}
    return _text_config(layers, hidden, intermediate, heads, kv_heads, vocab, rope_parameters=rope, **extra)


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
    return _build(Qwen2_5_VLForConditionalGeneration, config, attn, dtype, device)


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
    return _build(getattr(transformers, f"{prefix}ForConditionalGeneration"), config, attn, dtype, device)


def preset_qwen(name: str, *, layers: int | None = None, hidden: int | None = None, **kwargs):
    """A random Qwen2.5-VL / Qwen3-VL with a preset's layout (e.g. ``qwen2.5-vl-7b``), optionally narrowed.

    Narrowed models keep the head count's share of the width, the grouped-query ratio (at least
    one K/V head), the patch and merge sizes, and a two-block vision tower.
    """
    preset = PRESETS[name]
    text, vision = preset["text_config"], preset["vision_config"]
    hidden = hidden or text["hidden_size"]
    scale = hidden / text["hidden_size"]
    heads = max(1, round(text["num_attention_heads"] * scale)) if scale != 1 else text["num_attention_heads"]
    kv_heads = max(1, round(text["num_key_value_heads"] * scale)) if scale != 1 else text["num_key_value_heads"]
    common = dict(
        layers=layers or text["num_hidden_layers"], hidden=hidden,
        intermediate=int(text["intermediate_size"] * scale) // 8 * 8, heads=heads, kv_heads=kv_heads,
        vocab=text["vocab_size"], patch=vision["patch_size"],
        vision_hidden=vision["hidden_size"] if scale == 1 else max(64, int(vision["hidden_size"] * scale) // 16 * 16),
        vision_layers=vision["depth"] if scale == 1 else 2,
        vision_heads=vision["num_heads"] if scale == 1 else 4,
    )
    if preset["model_type"] == "qwen2_5_vl":
        return random_qwen2_5_vl(window_size=vision["window_size"], **common, **kwargs)
    deepstack = tuple(vision["deepstack_visual_indexes"]) if scale == 1 else (0, 1)
    return random_qwen3_vl(deepstack_layers=deepstack, **common, **kwargs)


# Token ids of the other families' tiny vocabularies (pad 0, bos 1, eos 2 throughout; the real
# models' ids are in their configs and tokenizers). The image placeholder is 5 in every family;
# 3 and 4 are the family's separators, text tokens of the prompt.
ONEVISION_IMAGE_TOKEN, ONEVISION_VIDEO_TOKEN = 5, 6
INTERNVL_IMG_START, INTERNVL_IMG_END, INTERNVL_IMAGE_TOKEN = 3, 4, 5  # <img>, </img>, <IMG_CONTEXT>
PIXTRAL_IMG_BREAK, PIXTRAL_IMG_END, PIXTRAL_IMAGE_TOKEN = 3, 4, 5  # [IMG_BREAK], [IMG_END], [IMG]
# <fake_token_around_image>, <global-img>, <image>; <row_i_col_j> are 7 + 3 * (i - 1) + (j - 1) (i, j <= 3)
SMOLVLM_FAKE_TOKEN, SMOLVLM_GLOBAL_IMG, SMOLVLM_IMAGE_TOKEN, SMOLVLM_FIRST_ROW_COL = 3, 4, 5, 7


def random_llava_onevision(
    *,
    layers: int = 6,
    hidden: int = 64,
    intermediate: int | None = None,
    heads: int = 4,
    kv_heads: int | None = 2,
    vocab: int = 64,
    image_size: int = 24,
    patch: int = 4,
    vision_hidden: int = 32,
    vision_layers: int = 2,
    vision_heads: int = 2,
    vision_aspect_ratio: str = "anyres_max_9",
    attn: str = "sdpa",
    dtype: torch.dtype = torch.float32,
    seed: int = 0,
    device: str | torch.device = "cpu",
):
    """A LLaVA-OneVision with random weights: SigLIP crops of (image_size / patch)^2 tokens (6x6),
    anyres grids up to 2x2 crops with a newline feature per row, a Qwen2 LM.

    Token ids: image 5, video 6. A single image per sample gets the base grid and the anyres grid;
    with ``batch_num_images`` > 1 each image is its base grid followed by one newline feature.
    """
    from transformers import LlavaOnevisionConfig, LlavaOnevisionForConditionalGeneration

    torch.manual_seed(seed)
    pinpoints = [[image_size, 2 * image_size], [2 * image_size, image_size], [2 * image_size, 2 * image_size]]
    config = LlavaOnevisionConfig(
        text_config=dict(model_type="qwen2", **_text_config(layers, hidden, intermediate, heads, kv_heads, vocab)),
        vision_config=dict(
            model_type="siglip_vision_model", image_size=image_size, patch_size=patch, hidden_size=vision_hidden,
            intermediate_size=vision_hidden * 2, num_hidden_layers=vision_layers, num_attention_heads=vision_heads,
            vision_use_head=False,  # as the released configs: no attention-pooling head
        ),
        image_token_index=ONEVISION_IMAGE_TOKEN, video_token_index=ONEVISION_VIDEO_TOKEN,
        image_grid_pinpoints=pinpoints, vision_aspect_ratio=vision_aspect_ratio, vision_feature_layer=-1,
        vision_feature_select_strategy="full",
    )
    return _build(LlavaOnevisionForConditionalGeneration, config, attn, dtype, device)


def random_internvl(
    *,
    layers: int = 6,
    hidden: int = 64,
    intermediate: int | None = None,
    heads: int = 4,
    kv_heads: int | None = 2,
    vocab: int = 64,
    image_size: int = 32,
    patch: int = 4,
    vision_hidden: int = 32,
    vision_layers: int = 2,
    vision_heads: int = 2,
    lm: str = "qwen2",
    attn: str = "sdpa",
    dtype: torch.dtype = torch.float32,
    seed: int = 0,
    device: str | torch.device = "cpu",
):
    """An InternVL with random weights: each tile of ``image_size`` pixels gives (image_size / patch)^2
    patches, pixel-shuffled by 0.5 into a 4x4 grid of 16 tokens; a Qwen2 LM (``lm="qwen3"``: a
    Qwen3 LM, as in InternVL3.5).

    Token ids: <img> 3, </img> 4, <IMG_CONTEXT> 5.
    """
    from transformers import InternVLConfig, InternVLForConditionalGeneration

    torch.manual_seed(seed)
    side = image_size // patch // 2
    config = InternVLConfig(
        text_config=dict(model_type=lm, **_text_config(layers, hidden, intermediate, heads, kv_heads, vocab,
                                                       head_dim=hidden // heads)),
        vision_config=dict(
            image_size=image_size, patch_size=patch, hidden_size=vision_hidden, intermediate_size=vision_hidden * 2,
            num_hidden_layers=vision_layers, num_attention_heads=vision_heads,
        ),
        image_token_id=INTERNVL_IMAGE_TOKEN, image_seq_length=side * side, downsample_ratio=0.5,
    )
    return _build(InternVLForConditionalGeneration, config, attn, dtype, device)


def random_mistral3(
    *,
    layers: int = 6,
    hidden: int = 64,
    intermediate: int | None = None,
    heads: int = 4,
    kv_heads: int | None = 2,
    vocab: int = 64,
    image_size: int = 64,
    patch: int = 4,
    vision_hidden: int = 32,
    vision_layers: int = 2,
    vision_heads: int = 2,
    sliding_window: int | None = None,
    attn: str = "sdpa",
    dtype: torch.dtype = torch.float32,
    seed: int = 0,
    device: str | torch.device = "cpu",
):
    """A Mistral 3 (Pixtral vision tower, patches merged 2x2, a Mistral LM) with random weights.

    An image of h x w pixels (multiples of 2 * patch, at most ``image_size``) gives h/8 rows of w/8
    tokens. Token ids: [IMG_BREAK] 3 after each row but the last, [IMG_END] 4 after the last, [IMG] 5.
    """
    from transformers import Mistral3Config, Mistral3ForConditionalGeneration

    torch.manual_seed(seed)
    text = _text_config(layers, hidden, intermediate, heads, kv_heads, vocab, head_dim=hidden // heads,
                        sliding_window=sliding_window)
    config = Mistral3Config(
        text_config=dict(model_type="mistral", **text),
        vision_config=dict(
            model_type="pixtral", image_size=image_size, patch_size=patch, hidden_size=vision_hidden,
            intermediate_size=vision_hidden * 2, num_hidden_layers=vision_layers, num_attention_heads=vision_heads,
            head_dim=vision_hidden // vision_heads,
        ),
        image_token_index=PIXTRAL_IMAGE_TOKEN, spatial_merge_size=2, vision_feature_layer=-1,
    )
    return _build(Mistral3ForConditionalGeneration, config, attn, dtype, device)


def random_smolvlm(
    *,
    layers: int = 6,
    hidden: int = 64,
    intermediate: int | None = None,
    heads: int = 4,
    kv_heads: int | None = 2,
    vocab: int = 64,
    image_size: int = 32,
    patch: int = 4,
    scale_factor: int = 2,
    vision_hidden: int = 32,
    vision_layers: int = 2,
    vision_heads: int = 2,
    idefics3: bool = False,
    attn: str = "sdpa",
    dtype: torch.dtype = torch.float32,
    seed: int = 0,
    device: str | torch.device = "cpu",
):
    """A SmolVLM (or, with ``idefics3``, an Idefics3) with random weights: each tile and the global
    image of ``image_size`` pixels gives (image_size / patch / scale_factor)^2 = 4x4 tokens after
    the pixel shuffle; a Llama LM. Token ids as in ``SMOLVLM_*``.
    """
    import transformers

    torch.manual_seed(seed)
    prefix = "Idefics3" if idefics3 else "SmolVLM"
    config = getattr(transformers, f"{prefix}Config")(
        text_config=dict(model_type="llama", **_text_config(layers, hidden, intermediate, heads, kv_heads, vocab)),
        vision_config=dict(
            image_size=image_size, patch_size=patch, hidden_size=vision_hidden, intermediate_size=vision_hidden * 2,
            num_hidden_layers=vision_layers, num_attention_heads=vision_heads,
        ),
        image_token_id=SMOLVLM_IMAGE_TOKEN, scale_factor=scale_factor, pad_token_id=0,
    )
    return _build(getattr(transformers, f"{prefix}ForConditionalGeneration"), config, attn, dtype, device)


GEMMA_BOI, GEMMA_EOI, GEMMA_IMAGE_TOKEN = 3, 4, 5


def random_gemma3(
    *,
    layers: int = 6,
    hidden: int = 64,
    heads: int = 4,
    kv_heads: int = 2,
    vocab: int = 64,
    sliding_window: int = 12,
    tokens_per_image: int = 16,
    image_size: int = 32,
    patch: int = 4,
    attn: str = "sdpa",
    dtype: torch.dtype = torch.float32,
    seed: int = 0,
    device: str | torch.device = "cpu",
):
    """A Gemma 3 with random weights: sliding-window layers (two of every three), a global layer,
    bidirectional attention inside each image, ``tokens_per_image`` pooled tokens per image.

    Token ids: pad 0, bos 1, eos 2, begin of image 3, end of image 4, image 5.
    """
    from transformers import Gemma3Config, Gemma3ForConditionalGeneration

    torch.manual_seed(seed)
    head_dim = hidden // heads
    config = Gemma3Config(
        text_config=dict(
            vocab_size=vocab, hidden_size=hidden, intermediate_size=hidden * 2, num_hidden_layers=layers,
            num_attention_heads=heads, num_key_value_heads=kv_heads, head_dim=head_dim,
            query_pre_attn_scalar=head_dim, sliding_window=sliding_window,
            layer_types=[("full_attention" if (i + 1) % 3 == 0 else "sliding_attention") for i in range(layers)],
            max_position_embeddings=4096, pad_token_id=0, bos_token_id=1, eos_token_id=2,
        ),
        vision_config=dict(model_type="siglip_vision_model", image_size=image_size, patch_size=patch,
                           hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                           vision_use_head=False),  # as the released configs: the head's output is unused
        mm_tokens_per_image=tokens_per_image, boi_token_index=GEMMA_BOI, eoi_token_index=GEMMA_EOI,
        image_token_index=GEMMA_IMAGE_TOKEN,
    )
    return _build(Gemma3ForConditionalGeneration, config, attn, dtype, device)
