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

from typing import TYPE_CHECKING

from pilot.pruning.families.base import Family, GridSegment
from pilot.pruning.families.dims import ModelDims
from pilot.pruning.families.internvl import prompt_rows, token_runs

if TYPE_CHECKING:
    import torch
    from torch import nn


def tile_side(config) -> int:
    """Rows (= columns) of one tile's token grid after the pixel shuffle."""
    vision = config.vision_config
    return vision.image_size // vision.patch_size // config.scale_factor


class SmolVLM(Family):
    name = "smolvlm"
    classes = ("SmolVLMForConditionalGeneration",)
    position_modes = ("compact", "original")
    typical_crops = 17  # a square image at the processor's largest size: 4 x 4 tiles and the global image
    # Public config.json dimensions of HuggingFaceTB/SmolVLM2-2.2B-Instruct (SigLIP-so400m, SmolLM2-1.7B).
    presets = {"smolvlm2-2.2b": {
        "model_type": "smolvlm",
        "text_config": {"hidden_size": 2048, "intermediate_size": 8192, "num_hidden_layers": 24,
                        "num_attention_heads": 32, "num_key_value_heads": 32, "vocab_size": 49280},
        "vision_config": {"hidden_size": 1152, "intermediate_size": 4304, "num_hidden_layers": 27,
                          "num_attention_heads": 16, "patch_size": 14, "image_size": 384},
        "scale_factor": 3,
    }}

    def dims(self, config: dict) -> ModelDims:
        """SigLIP (no CLS token) on the tiles and the global image, pixel-shuffled by ``scale_factor``."""
        return self.crop_dims(config, downsample=config.get("scale_factor", 2))

    def projector_flops(self, dims: ModelDims) -> int:
        """One linear on every pixel-shuffled token."""
        shuffled = dims.vision_hidden * dims.feature_layers * dims.downsample**2
        return 2 * dims.tokens_per_crop * shuffled * dims.hidden

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
    # Public config.json dimensions of HuggingFaceM4/Idefics3-8B-Llama3 (SigLIP-so400m at 364 px, Llama 3.1 8B).
    presets = {"idefics3-8b": {
        "model_type": "idefics3",
        "text_config": {"hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32,
                        "num_attention_heads": 32, "num_key_value_heads": 8, "vocab_size": 128259},
        "vision_config": {"hidden_size": 1152, "intermediate_size": 4304, "num_hidden_layers": 27,
                          "num_attention_heads": 16, "patch_size": 14, "image_size": 364},
        "scale_factor": 2,
    }}
