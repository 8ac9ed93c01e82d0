"""Qwen2.5-VL (``Qwen2_5_VLForConditionalGeneration``).

Visual tokens: 14-px patches merged 2x2, so an image of h x w pixels (resized to multiples of
28) gives (h/28) x (w/28) tokens, between vision-start and vision-end tokens; dynamic
resolution, so counts differ per image and per sample. A video gives t frames of such a grid
(one run of t x rows x cols tokens). Video tokens are pruned like image tokens.

Positions: M-RoPE. Every token's position is a (temporal, height, width) triple; a text token
has the same value on all three axes; an image's tokens share the temporal value and count rows
and columns from the image's start; the text after an image continues from start + max(rows,
cols). Decoding continues at the prompt's largest position + 1 on every axis (``rope_deltas``).

Only ``positions=original`` is defined: a kept token keeps its own triple. "compact" is refused,
because the text axis after an image advances by the image's extent (max(rows, cols)), not by its
token count: dropping tokens leaves no gap on that axis to close, and renumbering the kept visual
tokens would erase the rows and columns M-RoPE gives them. With original positions the decoded
tokens' positions are the stock model's, so ``model.model.rope_deltas`` stays valid.

Attention: plain causal in the LM (the windowed attention is inside the vision tower).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from pilot.pruning.families.base import Family, GridSegment, assign_to_samples, compact_positions, visual_counts
from pilot.pruning.families.dims import ModelDims, frames, text_dims

if TYPE_CHECKING:
    import torch
    from torch import nn


class Qwen2_5_VL(Family):
    name = "qwen2_5_vl"
    classes = ("Qwen2_5_VLForConditionalGeneration",)
    position_modes = ("original",)
    position_axes = 3
    layer_types = ("full_attention",)  # use_sliding_window (off in the released models) is not reproduced
    required_inputs = (
        ("pixel_values", "image_grid_thw", "sizes each image's patch grid for the vision tower"),
        ("pixel_values", "mm_token_type_ids", "marks the visual tokens that M-RoPE numbers by row and column"),
        ("pixel_values_videos", "video_grid_thw", "sizes each video's frames for the vision tower"),
        ("pixel_values_videos", "mm_token_type_ids", "marks the visual tokens that M-RoPE numbers by row and column"),
    )
    position_modes_reason = (
        "M-RoPE places each visual token by its row and column, and the text after an image continues "
        "from the image's extent, not its token count, so there is no gap to close after a drop."
    )
    vision_gated_mlp = True  # the tower's MLP: gate, up, down
    vision_windows = True  # blocks outside fullatt_block_indexes attend within windows
    # ``pilot flops``' default: 1024 merged tokens, an 896 x 896 image (28 px per token).
    typical_tokens = 1024
    # Public config.json dimensions of Qwen/Qwen2.5-VL-7B-Instruct (laid out as transformers 5
    # saves them, LM fields under text_config).
    presets = {"qwen2.5-vl-7b": {
        "model_type": "qwen2_5_vl",
        "text_config": {"hidden_size": 3584, "intermediate_size": 18944, "num_hidden_layers": 28,
                        "num_attention_heads": 28, "num_key_value_heads": 4, "vocab_size": 152064},
        "vision_config": {"depth": 32, "hidden_size": 1280, "intermediate_size": 3420, "num_heads": 16,
                          "patch_size": 14, "spatial_merge_size": 2, "temporal_patch_size": 2, "window_size": 112,
                          "fullatt_block_indexes": [7, 15, 23, 31], "out_hidden_size": 3584},
    }}

    # -- the cost model ----------------------------------------------------------------------------
    def dims(self, config: dict) -> ModelDims:
        """Dynamic resolution: ``patch`` px patches, ``temporal_patch`` frames deep, merged
        ``spatial_merge`` x ``spatial_merge`` into one LM token."""
        # Qwen2.5-VL checkpoints keep the LM's fields at the top level of config.json; configs
        # saved by transformers 5 nest them under text_config.
        nested = config.get("text_config") or {}
        text = nested if "hidden_size" in nested else config
        vision = config["vision_config"]
        return ModelDims(
            **text_dims(text),
            vision_hidden=vision["hidden_size"],
            vision_intermediate=vision["intermediate_size"],
            vision_layers=vision["depth"],
            patch=vision["patch_size"],
            family=config["model_type"],
            dynamic_resolution=True,
            spatial_merge=vision.get("spatial_merge_size", 2),
            temporal_patch=vision.get("temporal_patch_size", 2),
            vision_out_hidden=vision.get("out_hidden_size") or text["hidden_size"],
            vision_gated_mlp=self.vision_gated_mlp,
            vision_window_size=vision.get("window_size", 0) if self.vision_windows else 0,
            vision_full_attention_blocks=tuple(vision.get("fullatt_block_indexes") or ()),
            deepstack_mergers=len(vision.get("deepstack_visual_indexes") or ()),
            **self.moe_dims(config["model_type"], text),
        )

    def moe_dims(self, model_type: str, text: dict) -> dict:
        """The mixture-of-experts fields of ``ModelDims`` (none: a dense LM)."""
        return {}

    def typical_visual_tokens(self, dims: ModelDims) -> int:
        return self.typical_tokens

    def vision_flops(self, dims: ModelDims, *, crops: int = 0, merged_tokens: int = 0,
                     image_grids: Sequence[Sequence[int]] | None = None) -> float:
        """The tower: patch embedding, blocks, merger (and Qwen3-VL's DeepStack mergers).

        Attention costs ``4 L^2 d_v`` per segment of ``L`` patches; the segments are the frames
        (full attention) or, for Qwen2.5-VL's other blocks, the windows of each frame. From
        ``merged_tokens`` alone: one image, every window full (exact for one image whose merged
        sides are multiples of the window).
        """
        s, dv, mv = dims.spatial_merge, dims.vision_hidden, dims.vision_intermediate
        window_merged = dims.vision_window_size // s // dims.patch if dims.vision_window_size else 0
        if image_grids is not None:
            sample_frames = frames(dims, image_grids)
            patches = sum(h * w for h, w in sample_frames)
            full_square_sum = sum((h * w) ** 2 for h, w in sample_frames)
            window_square_sum = full_square_sum
            if window_merged:
                window_square_sum = sum(
                    s**4 * _window_square_sum(h // s, window_merged) * _window_square_sum(w // s, window_merged)
                    for h, w in sample_frames
                )
        else:
            patches = merged_tokens * s * s
            full_square_sum = patches**2
            window_square_sum = full_square_sum
            if window_merged:
                window_square_sum = patches * min(patches, (window_merged * s) ** 2)
        embed = 2 * patches * 3 * dims.temporal_patch * dims.patch**2 * dv
        mlp_matrices = 3 if dims.vision_gated_mlp else 2
        block_linear = 2 * patches * 4 * dv * dv + 2 * mlp_matrices * patches * dv * mv
        full_blocks = dims.vision_layers
        if window_merged:
            full_blocks = sum(1 for b in dims.vision_full_attention_blocks if b < dims.vision_layers)
        attention = 4 * dv * (full_blocks * full_square_sum + (dims.vision_layers - full_blocks) * window_square_sum)
        merged = patches // (s * s)
        merger_width = dv * s * s
        merger = 2 * merged * merger_width * (merger_width + dims.vision_out_hidden)
        return float(embed + dims.vision_layers * block_linear + attention + (1 + dims.deepstack_mergers) * merger)


    def visual_token_ids(self, config) -> tuple[int, ...]:
        return (config.image_token_id, config.video_token_id)

    def image_grids(self, model: nn.Module, visual_tokens: torch.Tensor, visual_positions: torch.Tensor,
                    run_lengths: list[int]) -> list[list[GridSegment]]:
        """Read off the M-RoPE positions: within a run of visual tokens (one image, or one video
        whose frames follow each other), a frame is the tokens sharing a temporal value, its rows
        and columns the spread of the height and width values. ``generate`` encodes the images
        before the forward and passes no ``image_grid_thw`` on, but the positions always come."""
        images, offset = [], 0
        for run in run_lengths:
            positions = visual_positions[offset : offset + run]
            segments, start = [], 0
            while start < run:
                end = start
                while end < run and positions[end, 0] == positions[start, 0]:
                    end += 1
                frame = positions[start:end]
                rows = int(frame[:, 1].max() - frame[:, 1].min()) + 1
                cols = int(frame[:, 2].max() - frame[:, 2].min()) + 1
                if rows * cols != end - start:
                    raise ValueError(
                        f"{type(model).__name__}: cannot read an image grid off the positions (a frame of "
                        f"{end - start} tokens spans {rows} x {cols}); pass mm_token_type_ids so that the "
                        "model numbers its visual tokens with M-RoPE"
                    )
                segments.append(GridSegment(start, rows, cols))
                start = end
            images.append(segments)
            offset += run
        return images

    def prompt_grids(self, model: nn.Module, inputs: dict) -> list[list[list[GridSegment]] | None] | None:
        """From the processor's ``image_grid_thw`` (patches per image; 2x2 merge into one token).
        None with videos (their frames' grids come from the positions) or without the grids (as
        in ``generate``, which encodes the images first and does not pass them on)."""
        thw = inputs.get("image_grid_thw")
        if thw is None or inputs.get("video_grid_thw") is not None:
            return None
        merge = model.config.vision_config.spatial_merge_size
        images = [[GridSegment(k * (h // merge) * (w // merge), h // merge, w // merge) for k in range(t)]
                  for t, h, w in thw.tolist()]
        owners = assign_to_samples([sum(g.length for g in image) for image in images],
                                   visual_counts(model, self, inputs))
        return [None if index is None else [images[i] for i in index] for index in owners]

    def prefill_positions(self, position_ids: torch.Tensor | None, valid: torch.Tensor) -> torch.Tensor:
        if position_ids is None:
            return compact_positions(valid).expand(-1, -1, 3)
        if position_ids.ndim == 2:
            return position_ids.expand(valid.shape[0], -1)[..., None].expand(-1, -1, 3).to(valid.device)
        if position_ids.shape[0] == 4:  # generate() prepends the plain text positions
            position_ids = position_ids[1:]
        return position_ids.permute(1, 2, 0).to(valid.device)

    def rotary(self, language_model: nn.Module, hidden: torch.Tensor, positions: torch.Tensor,
               layer_type: str = "full_attention"):
        return language_model.rotary_emb(hidden, positions.permute(2, 0, 1))


def _window_square_sum(side_merged: int, window_merged: int) -> int:
    """Sum over the windows along one axis of their length squared (the last window may be partial)."""
    return (side_merged // window_merged) * window_merged**2 + (side_merged % window_merged) ** 2
