"""SmolVLM / SmolVLM2 (``SmolVLMForConditionalGeneration``) and Idefics3
(``Idefics3ForConditionalGeneration``): a SigLIP tower, a pixel-shuffle connector, a Llama LM at
``model.model.text_model``; 1-D positions; plain causal attention.

Visual tokens (``config.image_token_id``, ``<image>``): an image is split into tiles of
``vision_config.image_size`` pixels plus a downscaled global image (or only the global image);
each gives (image_size / patch_size / scale_factor)^2 tokens, a row-major grid: 9 x 9 = 81 for
SmolVLM(2)-2.2B (384 px, patch 14, scale 3), 8 x 8 = 64 for the 256M / 500M models (512 px, patch
16, scale 4), 13 x 13 = 169 for Idefics3-8B (364 px, patch 14, scale 2).
The processor wraps each tile in text markers, ``<fake_token_around_image><row_i_col_j>``
before a tile, a newline after each row of tiles, ``<fake_token_around_image><global-img>``
before the global image and ``<fake_token_around_image>`` after it (a video frame is a global
image after its timestamp). The markers are text tokens, never pruning candidates, so every
tile is its own run of visual tokens; pooling pools each tile's grid. ``image_grids`` returns
one entry per tile: grouping the tiles of one image needs the marker tokens, which it does not
receive, and pooling does not need it.
"""

from __future__ import annotations

import torch
from torch import nn

from pilot.pruning.families.base import Family, GridSegment
from pilot.pruning.families.internvl import prompt_rows, token_runs


def tile_side(config) -> int:
    """Rows (= columns) of one tile's token grid after the pixel shuffle."""
    vision = config.vision_config
    return vision.image_size // vision.patch_size // config.scale_factor


class SmolVLM(Family):
    name = "smolvlm"
    classes = ("SmolVLMForConditionalGeneration",)
    position_modes = ("compact", "original")

    def language_model(self, model: nn.Module) -> nn.Module:
        return model.model.text_model

    def image_grids(self, model: nn.Module, visual_tokens: torch.Tensor, visual_positions: torch.Tensor,
                    run_lengths: list[int]) -> list[list[GridSegment]]:
        side = tile_side(model.config)
        tile = side * side
        grids = []
        for run in run_lengths:  # one tile (or global image) per run, between marker tokens
            if run % tile:
                raise ValueError(
                    f"{type(model).__name__}: a run of {run} image tokens is not whole {side}x{side} tiles"
                )
            grids += [[GridSegment(k * tile, side, side)] for k in range(run // tile)]
        return grids

    def prompt_grids(self, model: nn.Module, inputs: dict) -> list[list[list[GridSegment]] | None]:
        """Per sample, one grid per tile (and global image), read off the prompt (for pictures)."""
        token = model.config.image_token_id
        return [self.image_grids(model, None, None, [n for _, n in token_runs(ids, token)])
                for ids in prompt_rows(inputs)]


class Idefics3(SmolVLM):
    name = "idefics3"
    classes = ("Idefics3ForConditionalGeneration",)
