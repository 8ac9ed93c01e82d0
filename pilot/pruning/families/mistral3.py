"""Mistral 3 (``Mistral3ForConditionalGeneration``: Mistral Small 3.1 / 3.2, Devstral): a Pixtral
vision tower whose patches are merged 2 x 2, a Mistral LM; 1-D positions; plain causal attention.

Visual tokens (``config.image_token_id``, ``[IMG]``): an image of h x w pixels gives h/28 rows of
w/28 tokens (patch 14, merge 2). The processor writes each row's ``[IMG]`` tokens followed by
``[IMG_BREAK]``, the last row's by ``[IMG_END]`` instead: the separators are text tokens, so
they are never pruning candidates, and every row of an image is its own run of visual tokens.

Grids: each image's rows are read off the token ids (``prompt_grids``: a run of ``[IMG]`` is a
row, ``[IMG_END]`` closes an image); without them, consecutive equal runs one separator apart
form an image (``pixtral_image_grids``). Pooling gathers an image's tokens by visual index, puts
each pooled token in its window's top-left token's place and leaves the separators where they are.

Sliding windows: a Mistral LM with ``sliding_window`` set masks keys more than that many tokens
back on every layer; the engine does the same (``decoder_layer_types``), and its decode masks
follow the sliding caches.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from pilot.pruning.families.base import Family, GridSegment
from pilot.pruning.families.dims import ModelDims, feature_layers, frames, side, text_dims
from pilot.pruning.families.internvl import prompt_rows, token_runs

if TYPE_CHECKING:
    import torch
    from torch import nn


def pixtral_images(run_lengths: list[int], visual_positions: torch.Tensor) -> list[tuple[int, int, int]]:
    """Group the runs of ``[IMG]`` tokens (one per image row) into images: (first visual index,
    rows, cols) each.

    Runs belong to one image while they have the same length and one separator token between
    them (positions two apart). Two images of the same width written back to back
    (``...[IMG_END][IMG]...``) read as one: positions cannot tell ``[IMG_END]`` from
    ``[IMG_BREAK]``; telling them apart needs the prompt's token ids.
    """
    images: list[tuple[int, int, int]] = []
    offset = 0
    previous_end = None
    for run in run_lengths:
        first = int(visual_positions[offset, 0])
        if images and previous_end is not None and run == images[-1][2] and first == previous_end + 2:
            start, rows, cols = images[-1]
            images[-1] = (start, rows + 1, cols)
        else:
            images.append((offset, 1, run))
        previous_end = int(visual_positions[offset + run - 1, 0])
        offset += run
    return images


def pixtral_image_grids(run_lengths: list[int], visual_positions: torch.Tensor) -> list[list[GridSegment]]:
    """Each image's rows x cols grid, its ``start`` counted in the image's own visual tokens."""
    return [[GridSegment(0, rows, cols)] for _, rows, cols in pixtral_images(run_lengths, visual_positions)]


class Mistral3(Family):
    name = "mistral3"
    classes = ("Mistral3ForConditionalGeneration",)
    position_modes = ("compact", "original")
    required_inputs = (("pixel_values", "image_sizes", "sizes each image's tiles and token grid"),)
    typical_tokens = 1024  # ``pilot flops``' default, as for Qwen: 1024 merged tokens (an 896 x 896 image)
    # Public config.json dimensions of mistralai/Mistral-Small-3.1-24B-Instruct-2503 (Pixtral, Mistral Small 24B).
    presets = {"mistral-small-3.1-24b": {
        "model_type": "mistral3",
        "text_config": {"hidden_size": 5120, "intermediate_size": 32768, "num_hidden_layers": 40,
                        "num_attention_heads": 32, "num_key_value_heads": 8, "head_dim": 128, "vocab_size": 131072},
        "vision_config": {"hidden_size": 1024, "intermediate_size": 4096, "num_hidden_layers": 24,
                          "num_attention_heads": 16, "head_dim": 64, "patch_size": 14, "image_size": 1540},
        "spatial_merge_size": 2,
        "vision_feature_layer": -1,
    }}

    # -- the cost model ----------------------------------------------------------------------------
    def dims(self, config: dict) -> ModelDims:
        """Dynamic resolution: a Pixtral tower (gated MLP, no CLS token) on every patch of each image."""
        text, vision = config["text_config"], config["vision_config"]
        return ModelDims(
            **text_dims(text),
            vision_hidden=vision["hidden_size"],
            vision_intermediate=vision["intermediate_size"],
            vision_layers=vision["num_hidden_layers"],
            patch=side(vision["patch_size"]),
            family=config["model_type"],
            feature_layers=feature_layers(config, -1),
            dynamic_resolution=True,
            spatial_merge=config.get("spatial_merge_size", 2),
            vision_out_hidden=text["hidden_size"],
            vision_gated_mlp=True,
            vision_cls=False,
        )

    def typical_visual_tokens(self, dims: ModelDims) -> int:
        return self.typical_tokens

    def vision_flops(self, dims: ModelDims, *, crops: int = 0, merged_tokens: int = 0,
                     image_grids: Sequence[Sequence[int]] | None = None) -> float:
        """The Pixtral tower over all images' patches as one sequence (the block-diagonal mask
        leaves the square to compute), the patch merger and two linears."""
        s, dv, mv, d = dims.spatial_merge, dims.vision_hidden, dims.vision_intermediate, dims.hidden
        patches = (sum(h * w for h, w in frames(dims, image_grids)) if image_grids is not None
                   else merged_tokens * s * s)
        embed = 2 * patches * 3 * dims.patch**2 * dv
        layer = 2 * patches * 4 * dv * dv + 4 * patches * patches * dv + 2 * 3 * patches * dv * mv
        merged = patches // (s * s)
        projector = 2 * merged * (dv * s * s * dv + dv * dims.feature_layers * d + d * d)
        return float(embed + dims.vision_layers * layer + projector)

    def image_grids(self, model: nn.Module, visual_tokens: torch.Tensor, visual_positions: torch.Tensor,
                    run_lengths: list[int]) -> list[list[GridSegment]]:
        """From the runs alone (the prompt's token ids, when given, tell images apart exactly:
        ``prompt_grids``)."""
        return pixtral_image_grids(run_lengths, visual_positions)

    def prompt_grids(self, model: nn.Module, inputs: dict) -> list[list[list[GridSegment]] | None]:
        """Per sample, its images' grids read off the prompt's token ids (exact, for pictures)."""
        return [pixtral_prompt_images(ids, model.config.image_token_id) for ids in prompt_rows(inputs)]


def pixtral_prompt_images(ids: torch.Tensor, image_token: int) -> list[list[GridSegment]] | None:
    """One sample's images read off its token ids, exactly: a run of ``[IMG]`` is a row, the token
    after it ``[IMG_BREAK]`` or, after an image's last row, ``[IMG_END]`` (the token after the
    prompt's last row). None when the rows of an image differ in length."""
    runs = token_runs(ids, image_token)
    if not runs:
        return []
    after = [int(ids[start + length]) if start + length < len(ids) else -1 for start, length in runs]
    end, images, rows = after[-1], [], []
    for (_, length), token in zip(runs, after, strict=True):
        rows.append(length)
        if token == end:
            if len(set(rows)) != 1:
                return None
            images.append([GridSegment(0, len(rows), rows[0])])
            rows = []
    return images
