"""LLaVA-1.5 (``LlavaForConditionalGeneration``): every image is a square grid of
``(image_size / patch_size) ** 2`` visual tokens (24 x 24 = 576 for CLIP ViT-L/14-336); 1-D
positions; plain causal attention."""

from __future__ import annotations

from typing import TYPE_CHECKING

from pilot.pruning.families.base import Family, GridSegment, visual_counts
from pilot.pruning.families.dims import ModelDims

if TYPE_CHECKING:
    import torch
    from torch import nn


def grid_side(config) -> int:
    return config.vision_config.image_size // config.vision_config.patch_size


class Llava(Family):
    name = "llava"
    classes = ("LlavaForConditionalGeneration",)
    # compact first: renumbering after each drop is what the TransPrune authors' code does.
    position_modes = ("compact", "original")
    max_images = 1  # LLaVA-1.5 was trained on one image per prompt
    # Public dimensions of the model the paper reports (Vicuna-7B + CLIP ViT-L/14-336).
    presets = {
        "llava-1.5-7b": {
            "model_type": "llava",
            "text_config": {"hidden_size": 4096, "intermediate_size": 11008, "num_hidden_layers": 32,
                            "num_attention_heads": 32, "num_key_value_heads": 32, "vocab_size": 32064},
            "vision_config": {"hidden_size": 1024, "intermediate_size": 4096, "num_hidden_layers": 24,
                              "patch_size": 14, "image_size": 336, "num_attention_heads": 16},
            "vision_feature_layer": -2,
        },
    }

    def dims(self, config: dict) -> ModelDims:
        """A CLIP tower (CLS token) on fixed crops, LLaVA's two-layer projector on every patch."""
        return self.crop_dims(config, default_feature_layer=-2, vision_cls=True)

    def image_grids(self, model: nn.Module, visual_tokens: torch.Tensor, visual_positions: torch.Tensor,
                    run_lengths: list[int]) -> list[list[GridSegment]]:
        side = grid_side(model.config)
        count = visual_tokens.shape[0]
        if count % (side * side):
            raise ValueError(
                f"pooling needs square {side}x{side} grids of visual tokens, got {count} tokens "
                "(vision_feature_select_strategy='full' keeps the CLS token)"
            )
        return [[GridSegment(0, side, side)] for _ in range(count // (side * side))]

    def prompt_grids(self, model: nn.Module, inputs: dict) -> list[list[list[GridSegment]] | None]:
        side = grid_side(model.config)
        return [[[GridSegment(0, side, side)]] * (n // side**2) if n % side**2 == 0 else None
                for n in visual_counts(model, self, inputs)]
