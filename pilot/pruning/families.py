"""What the engine needs to know about each supported model family.

LLaVA-1.5: every image is a square grid of ``(image_size / patch_size) ** 2`` visual tokens.
LLaVA-NeXT (anyres): every image is a square base grid followed by a high-resolution grid whose
rows each end with one ``image_newline`` token; the grid size depends on the image size.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

SUPPORTED_CLASSES = ("LlavaForConditionalGeneration", "LlavaNextForConditionalGeneration")
SUPPORTED_ATTENTION = ("sdpa", "eager")


@dataclass(frozen=True)
class GridSegment:
    """A rows x cols grid of visual tokens starting at ``start`` in the sample's visual tokens.

    With ``newline`` each row is followed by one newline token (row stride cols + 1).
    """

    start: int
    rows: int
    cols: int
    newline: bool = False

    @property
    def length(self) -> int:
        return self.rows * (self.cols + int(self.newline))


def check_supported(model: nn.Module) -> nn.Module:
    """Return the language model (decoder stack) of a supported LLaVA model, or raise ValueError."""
    name = type(model).__name__
    if name not in SUPPORTED_CLASSES:
        raise ValueError(
            f"{name} is not supported by the pruning engine; supported: {', '.join(SUPPORTED_CLASSES)}"
        )
    language_model = model.model.language_model
    lm_name = type(language_model).__name__
    for attr in ("layers", "norm", "rotary_emb"):
        if not hasattr(language_model, attr):
            raise ValueError(f"{name}: its language model {lm_name} has no '{attr}'; not supported")
    layer = language_model.layers[0]
    for attr in ("input_layernorm", "self_attn", "post_attention_layernorm", "mlp"):
        if not hasattr(layer, attr):
            raise ValueError(f"{name}: decoder layer {type(layer).__name__} has no '{attr}'; not supported")
    for attr in ("q_proj", "k_proj", "head_dim", "scaling"):
        if not hasattr(layer.self_attn, attr):
            raise ValueError(f"{name}: attention {type(layer.self_attn).__name__} has no '{attr}'")
    impl = language_model.config._attn_implementation
    if impl not in SUPPORTED_ATTENTION:
        raise ValueError(
            f"{name}: attention implementation {impl!r} is not supported; load the model with "
            f"attn_implementation='sdpa' or 'eager'"
        )
    return language_model


def _grid_side(config) -> int:
    return config.vision_config.image_size // config.vision_config.patch_size


def next_image_grids(config, image_size) -> list[GridSegment]:
    """LLaVA-NeXT: the base grid and the unpadded high-resolution grid of one image (height, width)."""
    from transformers.models.llava_next.modeling_llava_next import (
        get_anyres_image_grid_shape,
        unpad_image,
    )

    side = _grid_side(config)
    patches_h, patches_w = get_anyres_image_grid_shape(
        image_size, config.image_grid_pinpoints, config.vision_config.image_size
    )
    rows, cols = unpad_image(torch.empty(0, patches_h * side, patches_w * side), image_size).shape[1:]
    return [GridSegment(0, side, side), GridSegment(side * side, rows, cols, newline=True)]


def image_grids(model: nn.Module, visual_tokens: torch.Tensor) -> list[list[GridSegment]]:
    """The grids of each image among one sample's visual tokens [n, hidden], in order.

    LLaVA-NeXT's high-resolution grid is read off the tokens themselves: each of its rows ends
    with the model's ``image_newline`` vector (``generate`` does not pass image sizes on).
    """
    side = _grid_side(model.config)
    base = side * side
    count = visual_tokens.shape[0]
    if type(model).__name__ != "LlavaNextForConditionalGeneration":
        if count % base:
            raise ValueError(
                f"pooling needs square {side}x{side} grids of visual tokens, got {count} tokens "
                "(vision_feature_select_strategy='full' keeps the CLS token)"
            )
        return [[GridSegment(0, side, side)] for _ in range(count // base)]

    newline = model.model.image_newline.to(visual_tokens.dtype)
    is_newline = (visual_tokens == newline).all(dim=-1).tolist()
    images, start = [], 0
    while start < count:
        grid_start = start + base
        if grid_start >= count or not any(is_newline[grid_start:]):
            raise ValueError(f"cannot read the LLaVA-NeXT grid of an image at visual token {start}")
        cols = is_newline.index(True, grid_start) - grid_start
        rows = 0
        while grid_start + rows * (cols + 1) + cols < count and is_newline[grid_start + rows * (cols + 1) + cols]:
            rows += 1
        images.append([GridSegment(0, side, side), GridSegment(base, rows, cols, newline=True)])
        start = grid_start + rows * (cols + 1)
    return images


def pool_visual(
    embeddings: torch.Tensor, grids: list[GridSegment], factor: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Average-pool one image's visual tokens [n, hidden] grid by grid.

    Returns the pooled tokens and, for each, the index of the original token at the top-left of
    its window (newline tokens are kept, one per pooled row). Tokens outside every grid (a
    trailing newline) pass through.
    """
    pieces, origins = [], []
    covered = 0
    for grid in grids:
        stride = grid.cols + int(grid.newline)
        block = embeddings[grid.start : grid.start + grid.length].view(grid.rows, stride, -1)
        cells = block[:, : grid.cols].permute(2, 0, 1).float()
        pooled = nn.functional.avg_pool2d(cells[None], factor, factor, ceil_mode=True)[0]
        out_rows, out_cols = pooled.shape[1:]
        pooled = pooled.permute(1, 2, 0).to(embeddings.dtype)
        row_index = torch.arange(out_rows) * factor
        col_index = torch.arange(out_cols) * factor
        origin = grid.start + row_index[:, None] * stride + col_index[None, :]
        if grid.newline:
            pooled = torch.cat([pooled, block[row_index, grid.cols][:, None]], dim=1)
            origin = torch.cat([origin, (grid.start + row_index * stride + grid.cols)[:, None]], dim=1)
        pieces.append(pooled.reshape(-1, embeddings.shape[-1]))
        origins.append(origin.reshape(-1))
        covered = grid.start + grid.length
    if covered < embeddings.shape[0]:
        pieces.append(embeddings[covered:])
        origins.append(torch.arange(covered, embeddings.shape[0]))
    return torch.cat(pieces), torch.cat(origins).to(embeddings.device)
