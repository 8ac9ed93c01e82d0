"""LLaVA-OneVision (``LlavaOnevisionForConditionalGeneration``): a Qwen2 LM; 1-D positions; plain
causal attention.

Visual tokens (``config.image_token_id``), as ``LlavaOnevisionModel.pack_image_features`` lays
them out:

* one image in the sample (anyres): the square base grid of one SigLIP crop ((384/14)^2 = 27 x 27
  = 729 tokens), then the unpadded high-resolution grid of the anyres crops, each of its rows
  followed by the model's ``image_newline`` feature; with ``anyres_max_N`` a grid larger than
  N crops (by more than 10 %) is first shrunk by bilinear interpolation, so its size is read
  off the tokens, not computed from the image size;
* several images in the sample (``batch_num_images`` > 1): each image is its base grid followed
  by one ``image_newline`` feature.

The newline is a visual feature in the place of an image token, as in LLaVA-NeXT: it is a
pruning candidate like any image token, and pooling keeps one per pooled row (a lone trailing
newline is a 1 x 1 grid that pooling passes through unchanged).

Video tokens (``video_token_id``: pooled frames and one trailing newline) are not pruned: they
are text to the engine. Telling a video's frames from an image's grids among the visual tokens
needs each run's token id, which ``image_grids`` does not receive.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from pilot.pruning.families.base import Family, GridSegment
from pilot.pruning.families.dims import ModelDims
from pilot.pruning.families.internvl import prompt_rows
from pilot.pruning.families.llava import grid_side
from pilot.pruning.families.llava_next import newline_grids

if TYPE_CHECKING:
    import torch
    from torch import nn


def onevision_image_grids(config, image_size, multi_image: bool = False) -> list[GridSegment]:
    """The grids of one image of ``image_size`` (height, width) pixels, as the stock model packs
    them: the base grid, then the anyres grid with newlines (or, in a multi-image sample, one
    trailing newline as a 1 x 1 grid)."""
    import torch
    from transformers.models.llava_onevision.modeling_llava_onevision import (
        get_anyres_image_grid_shape,
        unpad_image,
    )

    side = grid_side(config)
    base = GridSegment(0, side, side)
    if multi_image:
        return [base, GridSegment(side * side, 1, 1)]
    patches_h, patches_w = get_anyres_image_grid_shape(
        image_size, config.image_grid_pinpoints, config.vision_config.image_size
    )
    rows, cols = unpad_image(torch.empty(0, patches_h * side, patches_w * side), image_size).shape[1:]
    max_crops = int(config.vision_aspect_ratio.removeprefix("anyres_max_"))
    ratio = math.sqrt(rows * cols / (max_crops * side**2))
    if ratio > 1.1:
        rows, cols = int(rows // ratio), int(cols // ratio)
    return [base, GridSegment(side * side, rows, cols, newline=True)]


class LlavaOnevision(Family):
    name = "llava_onevision"
    classes = ("LlavaOnevisionForConditionalGeneration",)
    # compact first, as for LLaVA: renumbering after each drop is what the TransPrune authors' code does.
    position_modes = ("compact", "original")
    required_inputs = (("pixel_values", "image_sizes", "sizes each image's tiles and token grid"),)
    typical_crops_side = 3  # a square image in 3 x 3 crops (anyres_max_9's budget) and the base crop
    # Public config.json dimensions of llava-hf/llava-onevision-qwen2-7b-ov-hf (SigLIP-so400m
    # without its last layer, Qwen2-7B).
    presets = {"llava-onevision-7b": {
        "model_type": "llava_onevision",
        "text_config": {"hidden_size": 3584, "intermediate_size": 18944, "num_hidden_layers": 28,
                        "num_attention_heads": 28, "num_key_value_heads": 4, "vocab_size": 152128},
        "vision_config": {"hidden_size": 1152, "intermediate_size": 4304, "num_hidden_layers": 26,
                          "num_attention_heads": 16, "patch_size": 14, "image_size": 384},
        "vision_feature_layer": -1,
        "vision_aspect_ratio": "anyres_max_9",
    }}

    def typical_visual_tokens(self, dims: ModelDims) -> int:
        """The base grid, then the anyres grid of 3 x 3 crops with a newline per row."""
        side = dims.image_size // dims.patch * self.typical_crops_side
        return dims.patches_per_crop + side * (side + 1)

    def image_grids(self, model: nn.Module, visual_tokens: torch.Tensor, visual_positions: torch.Tensor,
                    run_lengths: list[int]) -> list[list[GridSegment]]:
        """Read off the tokens (``generate`` passes no image sizes on), as for LLaVA-NeXT; a
        multi-image sample's base grids are each followed by one newline."""
        return newline_grids(model, visual_tokens)

    def prompt_grids(self, model: nn.Module, inputs: dict) -> list[list[list[GridSegment]] | None]:
        """Per sample, its images' grids from the processor's ``image_sizes`` and
        ``batch_num_images`` (for pictures); None where they do not add up to its image tokens."""
        rows = prompt_rows(inputs)
        sizes = inputs.get("image_sizes")
        if sizes is None:
            return [None] * len(rows)
        sizes = [tuple(int(v) for v in size) for size in sizes.tolist()]
        counts = [int((ids == model.config.image_token_id).sum()) for ids in rows]
        per_sample = inputs.get("batch_num_images")
        per_sample = per_sample.tolist() if per_sample is not None else [None] * len(rows)
        out, cursor = [], 0
        for count, n_images in zip(counts, per_sample, strict=True):
            images, covered = [], 0
            while covered < count and cursor < len(sizes) and (n_images is None or len(images) < n_images):
                images.append(onevision_image_grids(model.config, sizes[cursor], multi_image=(n_images or 1) > 1))
                covered += sum(g.length for g in images[-1])
                cursor += 1
            out.append(images if covered == count else None)
        return out
