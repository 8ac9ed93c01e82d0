"""InternVL (``InternVLForConditionalGeneration``, InternVL 2.5 / 3 in the Hugging Face layout): a
Qwen2 (or Qwen3, Llama) LM; 1-D positions; plain causal attention.

Visual tokens (``config.image_token_id``, ``<IMG_CONTEXT>``): every 448-px tile (the dynamic
tiles of an image and its thumbnail, or one video frame) gives (448/14)^2 patches that the pixel
shuffle (``downsample_ratio`` 0.5) folds into a 16 x 16 grid = 256 tokens, in row-major order.
An image is one run ``<img>`` + tiles x 256 tokens + ``</img>``: the ``<img>`` / ``</img>``
separators are text tokens, never pruning candidates. Pooling pools each tile's grid.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pilot.pruning.families.base import Family, GridSegment
from pilot.pruning.families.dims import ModelDims

if TYPE_CHECKING:
    import torch
    from torch import nn


def token_runs(ids: torch.Tensor, token: int) -> list[tuple[int, int]]:
    """(start, length) of each run of ``token`` in a 1-D tensor of token ids."""
    import torch

    edges = torch.diff(torch.nn.functional.pad((ids == token).long(), (1, 1)))
    starts, ends = torch.nonzero(edges > 0).flatten().tolist(), torch.nonzero(edges < 0).flatten().tolist()
    return [(start, end - start) for start, end in zip(starts, ends, strict=True)]


def prompt_rows(inputs: dict) -> list[torch.Tensor]:
    """Each sample's token ids, padding removed."""
    ids, mask = inputs["input_ids"], inputs.get("attention_mask")
    return [row if mask is None else row[mask[i].bool()] for i, row in enumerate(ids)]


def _first(value) -> int:
    return int(value[0]) if isinstance(value, (list, tuple)) else int(value)


def tile_side(config) -> int:
    """Rows (= columns) of one tile's token grid: patches per side times the downsample ratio."""
    vision = config.vision_config
    return int(_first(vision.image_size) // _first(vision.patch_size) * config.downsample_ratio)


class InternVL(Family):
    name = "internvl"
    classes = ("InternVLForConditionalGeneration",)
    position_modes = ("compact", "original")
    typical_crops = 7  # a 4:3 image in 3 x 2 tiles and the thumbnail
    # Public config.json dimensions (transformers layout) of OpenGVLab/InternVL3-8B-hf (InternViT-300M, Qwen2.5-7B).
    presets = {"internvl3-8b": {
        "model_type": "internvl",
        "text_config": {"hidden_size": 3584, "intermediate_size": 18944, "num_hidden_layers": 28,
                        "num_attention_heads": 28, "num_key_value_heads": 4, "vocab_size": 151674},
        "vision_config": {"hidden_size": 1024, "intermediate_size": 4096, "num_hidden_layers": 24,
                          "num_attention_heads": 16, "patch_size": [14, 14], "image_size": [448, 448]},
        "downsample_ratio": 0.5,
        "vision_feature_layer": -1,
    }}

    def dims(self, config: dict) -> ModelDims:
        """InternViT (CLS token) on 448-px tiles, pixel-shuffled by ``downsample_ratio``."""
        return self.crop_dims(config, vision_cls=True, downsample=round(1 / config.get("downsample_ratio", 0.5)))

    def projector_flops(self, dims: ModelDims) -> int:
        """A norm and two linears on every pixel-shuffled token."""
        shuffled = dims.vision_hidden * dims.feature_layers * dims.downsample**2
        return 2 * dims.tokens_per_crop * (shuffled * dims.hidden + dims.hidden * dims.hidden)

    def image_grids(self, model: nn.Module, visual_tokens: torch.Tensor, visual_positions: torch.Tensor,
                    run_lengths: list[int]) -> list[list[GridSegment]]:
        side = tile_side(model.config)
        tile = side * side
        images = []
        for run in run_lengths:  # one image (or video frame) per run, between <img> and </img>
            if run % tile:
                raise ValueError(
                    f"{type(model).__name__}: an image of {run} tokens is not a whole number of "
                    f"{side}x{side} tiles"
                )
            images.append([GridSegment(k * tile, side, side) for k in range(run // tile)])
        return images

    def prompt_grids(self, model: nn.Module, inputs: dict) -> list[list[list[GridSegment]] | None]:
        """Per sample, its images' grids read off the processor's inputs (for pictures)."""
        token = model.config.image_token_id
        return [self.image_grids(model, None, None, [n for _, n in token_runs(ids, token)])
                for ids in prompt_rows(inputs)]
