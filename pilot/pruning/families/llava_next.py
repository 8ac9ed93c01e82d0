"""LLaVA-NeXT (``LlavaNextForConditionalGeneration``, anyres): every image is a square base grid
followed by a high-resolution grid whose rows each end with one ``image_newline`` token; the
grid size depends on the image size. 1-D positions; plain causal attention."""

from __future__ import annotations

import torch
from torch import nn

from pilot.pruning.families.base import Family, GridSegment, assign_to_samples, visual_counts
from pilot.pruning.families.llava import grid_side


def next_image_grids(config, image_size) -> list[GridSegment]:
    """The base grid and the unpadded high-resolution grid of one image (height, width)."""
    from transformers.models.llava_next.modeling_llava_next import (
        get_anyres_image_grid_shape,
        unpad_image,
    )

    side = grid_side(config)
    patches_h, patches_w = get_anyres_image_grid_shape(
        image_size, config.image_grid_pinpoints, config.vision_config.image_size
    )
    rows, cols = unpad_image(torch.empty(0, patches_h * side, patches_w * side), image_size).shape[1:]
    return [GridSegment(0, side, side), GridSegment(side * side, rows, cols, newline=True)]


def newline_grids(model: nn.Module, visual_tokens: torch.Tensor) -> list[list[GridSegment]]:
    """The grids of a sample's images, read off its visual tokens: after each square base grid
    comes either the high-resolution grid, whose rows each end with the model's ``image_newline``
    feature, or (LLaVA-OneVision's multi-image samples) that newline at once, as a 1 x 1 grid."""
    side = grid_side(model.config)
    base = side * side
    count = visual_tokens.shape[0]
    newline = model.model.image_newline.to(visual_tokens.dtype)
    is_newline = (visual_tokens == newline).all(dim=-1).tolist()
    images, start = [], 0
    while start < count:
        grid_start = start + base
        if grid_start >= count or not any(is_newline[grid_start:]):
            raise ValueError(
                f"{type(model).__name__}: cannot read the grid of an image at visual token {start} "
                f"(no newline feature after its {side}x{side} base grid)"
            )
        if is_newline[grid_start]:
            images.append([GridSegment(0, side, side), GridSegment(base, 1, 1)])
            start = grid_start + 1
            continue
        cols = is_newline.index(True, grid_start) - grid_start
        rows = 0
        while grid_start + rows * (cols + 1) + cols < count and is_newline[grid_start + rows * (cols + 1) + cols]:
            rows += 1
        images.append([GridSegment(0, side, side), GridSegment(base, rows, cols, newline=True)])
        start = grid_start + rows * (cols + 1)
    return images


class LlavaNext(Family):
    name = "llava_next"
    classes = ("LlavaNextForConditionalGeneration",)
    position_modes = ("compact", "original")
    required_inputs = (("pixel_values", "image_sizes", "sizes each image's tiles and token grid"),)

    def image_grids(self, model: nn.Module, visual_tokens: torch.Tensor, visual_positions: torch.Tensor,
                    run_lengths: list[int]) -> list[list[GridSegment]]:
        """Read off the tokens (``generate`` does not pass image sizes on)."""
        return newline_grids(model, visual_tokens)

    def prompt_grids(self, model: nn.Module, inputs: dict) -> list[list[list[GridSegment]] | None] | None:
        """From the processor's ``image_sizes`` (one per image, in batch order)."""
        if inputs.get("image_sizes") is None:
            return None
        images = [next_image_grids(model.config, size) for size in inputs["image_sizes"].tolist()]
        owners = assign_to_samples([sum(g.length for g in image) for image in images],
                                   visual_counts(model, self, inputs))
        return [None if index is None else [images[i] for i in index] for index in owners]
