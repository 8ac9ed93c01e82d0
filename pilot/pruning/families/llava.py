"""LLaVA-1.5 (``LlavaForConditionalGeneration``): every image is a square grid of
``(image_size / patch_size) ** 2`` visual tokens (24 x 24 = 576 for CLIP ViT-L/14-336); 1-D
positions; plain causal attention."""

from __future__ import annotations

import torch
from torch import nn

from pilot.pruning.families.base import Family, GridSegment, visual_counts


def grid_side(config) -> int:
    return config.vision_config.image_size // config.vision_config.patch_size


class Llava(Family):
    name = "llava"
    classes = ("LlavaForConditionalGeneration",)
    # compact first: renumbering after each drop is what the TransPrune authors' code does.
    position_modes = ("compact", "original")

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
