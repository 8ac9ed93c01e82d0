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

import torch
from torch import nn

from pilot.pruning.families.base import Family, GridSegment, assign_to_samples, compact_positions, visual_counts


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
