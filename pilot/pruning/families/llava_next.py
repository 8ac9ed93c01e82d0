"""LLaVA-NeXT (``LlavaNextForConditionalGeneration``, anyres): every image is a square base grid
followed by a high-resolution grid whose rows each end with one ``image_newline`` token; the
grid size depends on the image size. 1-D positions; plain causal attention."""

from __future__ import annotations

from typing import TYPE_CHECKING

from pilot.pruning.families.base import Family, GridSegment, assign_to_samples, visual_counts
from pilot.pruning.families.dims import ModelDims
from pilot.pruning.families.llava import Llava, grid_side

if TYPE_CHECKING:
    import torch
    from torch import nn


def next_image_grids(config, image_size) -> list[GridSegment]:
    """The base grid and the unpadded high-resolution grid of one image (height, width)."""
    import torch
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
    max_images = 1  # one image per prompt, as LLaVA-1.5
    typical_crops = 5  # the paper's LLaVA-NeXT figure: 5 x 576 = 2880 visual tokens
    presets = {"llava-next-7b": {
        **Llava.presets["llava-1.5-7b"], "model_type": "llava_next",
        "image_grid_pinpoints": [[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]],
    }}

    def dims(self, config: dict) -> ModelDims:
        """LLaVA-1.5's tower and projector, on the base crop and the anyres tiles."""
        return self.crop_dims(config, default_feature_layer=-2, vision_cls=True)

    def tower_size(self, dims: ModelDims, model, inputs: dict, row: int, n_visual: int,
                   image_grid_thw: list | None) -> dict:
        """Exact crops from the image size, the base and the anyres tiles (the count alone rounds)."""
        from transformers.models.llava_next.modeling_llava_next import image_size_to_num_patches

        config = model.config
        return {"crops": image_size_to_num_patches(inputs["image_sizes"][row].tolist(), config.image_grid_pinpoints,
                                                   config.vision_config.image_size)}

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
