"""Gemma 3 (``Gemma3ForConditionalGeneration``).

Visual tokens: each image is a SigLIP grid average-pooled to ``mm_tokens_per_image`` tokens (256
= 16 x 16 for the released models), between begin- and end-of-image text tokens; 1-D positions.

Attention in prefill, as the stock model builds it from ``token_type_ids``: causal, except that
the tokens of one image see each other both ways; and on the sliding-window layers (five of
every six) a query sees only the last ``sliding_window`` tokens. The engine's own masks do the
same on each stage's tokens: image blocks follow the pruning (a kept image token still sees the
image's other kept tokens both ways), and the window counts the tokens still present in that
layer, as its KV cache does (a sliding layer's cache keeps its last ``sliding_window - 1``
tokens while decoding). Local (sliding) and global layers have their own rotary bases.

The decoder layer normalises each sub-module's output before the residual add, so TTV reads a
sub-module's output after that norm (what the layer adds to the residual stream).

Refused: ``use_bidirectional_attention`` (EmbeddingGemma-style encoders) and attention-logit
soft-capping, which the engine's scoring does not reproduce.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from pilot.pruning.families.base import Family, GridSegment, VisualInputs, visual_counts
from pilot.pruning.families.dims import ModelDims, side

if TYPE_CHECKING:
    import torch
    from torch import nn


class Gemma3(Family):
    name = "gemma3"
    classes = ("Gemma3ForConditionalGeneration",)
    position_modes = ("compact", "original")
    layer_norms = ("input_layernorm", "post_attention_layernorm", "pre_feedforward_layernorm",
                   "post_feedforward_layernorm")
    layer_types = ("full_attention", "sliding_attention")
    required_inputs = (
        ("pixel_values", "token_type_ids", "marks each image's tokens, which see each other both ways in prefill"),
    )
    typical_crops = 1  # one 896-px crop (256 tokens) per image, pan-and-scan off as in its processor's default
    # Public config.json dimensions of google/gemma-3-12b-it (Gemma 3 LM, SigLIP so400m tower at 896 px).
    presets = {"gemma-3-12b": {
        "model_type": "gemma3",
        "text_config": {"hidden_size": 3840, "intermediate_size": 15360, "num_hidden_layers": 48,
                        "num_attention_heads": 16, "num_key_value_heads": 8, "head_dim": 256, "vocab_size": 262208},
        "vision_config": {"hidden_size": 1152, "intermediate_size": 4304, "num_hidden_layers": 27,
                          "num_attention_heads": 16, "patch_size": 14, "image_size": 896},
        "mm_tokens_per_image": 256,
    }}

    def dims(self, config: dict) -> ModelDims:
        """SigLIP (no CLS token) on one crop, its grid average-pooled to ``mm_tokens_per_image`` tokens."""
        vision = config["vision_config"]
        grid = side(vision["image_size"]) // side(vision["patch_size"])
        return self.crop_dims(config, downsample=grid // math.isqrt(config.get("mm_tokens_per_image", 256)))

    def projector_flops(self, dims: ModelDims) -> int:
        """Average pooling (no matmul), then one projection per pooled token."""
        return 2 * dims.tokens_per_crop * dims.vision_hidden * dims.hidden

    def check(self, model: nn.Module) -> nn.Module:
        language_model = super().check(model)
        config = language_model.config
        if getattr(config, "use_bidirectional_attention", False):
            raise ValueError(f"{type(model).__name__}: use_bidirectional_attention (an encoder) is not supported")
        if getattr(config, "attn_logit_softcapping", None):
            raise ValueError(f"{type(model).__name__}: attention-logit soft-capping is not supported by the scoring")
        return language_model

    def visual_inputs(self, model: nn.Module, inputs: dict) -> VisualInputs:
        from transformers.models.gemma3.modeling_gemma3 import get_block_sequence_ids_for_mask

        token_type_ids = inputs.get("token_type_ids")
        block = None
        if token_type_ids is not None:  # as the stock model: without them, prefill is plain causal
            block = get_block_sequence_ids_for_mask(token_type_ids, device=token_type_ids.device)
        visual = super().visual_inputs(model, inputs)
        return VisualInputs(visual.mask, visual.attention_mask, block, visual.grids)

    def prompt_grids(self, model: nn.Module, inputs: dict) -> list[list[list[GridSegment]] | None]:
        side = math.isqrt(model.config.mm_tokens_per_image)
        return [[[GridSegment(0, side, side)]] * (n // side**2) if n % side**2 == 0 else None
                for n in visual_counts(model, self, inputs)]

    def rotary(self, language_model: nn.Module, hidden: torch.Tensor, positions: torch.Tensor,
               layer_type: str = "full_attention"):
        return language_model.rotary_emb(hidden, positions[..., 0], layer_type)

    def image_grids(self, model: nn.Module, visual_tokens: torch.Tensor, visual_positions: torch.Tensor,
                    run_lengths: list[int]) -> list[list[GridSegment]]:
        images = []
        for run in run_lengths:  # one image per run of image tokens: a square pooled grid
            side = math.isqrt(run)
            if side * side != run:
                raise ValueError(f"{type(model).__name__}: an image of {run} tokens is not a square grid")
            images.append([GridSegment(0, side, side)])
        return images
