"""InternVL (``InternVLForConditionalGeneration``, InternVL 2.5 / 3 in the Hugging Face layout): a
Qwen2 (or Qwen3, Llama) LM; 1-D positions; plain causal attention.

Visual tokens (``config.image_token_id``, ``<IMG_CONTEXT>``): every 448-px tile (the dynamic
tiles of an image and its thumbnail, or one video frame) gives (448/14)^2 patches that the pixel
shuffle (``downsample_ratio`` 0.5) folds into a 16 x 16 grid = 256 tokens, in row-major order.
An image is one run ``<img>`` + tiles x 256 tokens + ``</img>``: the ``<img>`` / ``</img>``
separators are text tokens, never pruning candidates. Pooling pools each tile's grid.
"""

from __future__ import annotations

import torch
from torch import nn

from pilot.pruning.families.base import Family, GridSegment


def token_runs(ids: torch.Tensor, token: int) -> list[tuple[int, int]]:
    """(start, length) of each run of ``token`` in a 1-D tensor of token ids."""
    edges = torch.diff(nn.functional.pad((ids == token).long(), (1, 1)))
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
