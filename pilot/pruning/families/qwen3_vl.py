"""Qwen3-VL (``Qwen3VLForConditionalGeneration``) and its MoE variant
(``Qwen3VLMoeForConditionalGeneration``: the same layout, sparse MLPs in the decoder layers).

Visual tokens: 16-px patches merged 2x2, dynamic resolution, between vision-start and vision-end
tokens; a video's frames are separate runs with timestamp text between them. Video tokens are
pruned like image tokens.

Positions: interleaved M-RoPE, numbered as in Qwen2.5-VL (see ``qwen2_5_vl``), so the same rule
holds: only ``positions=original``.

DeepStack: features from several vision blocks are added to the hidden states of the first LM
layers at the visual positions (``deepstack_visual_embeds``, after layer i for i < their count).
The engine indexes them by each token's original visual index and adds them to the tokens still
present after that layer, so a dropped token's DeepStack features go with it, also when a
pruning stage falls inside the DeepStack layers; pooling pools them with the same windows.
"""

from __future__ import annotations

import torch

from pilot.pruning.families.base import per_sample_visual
from pilot.pruning.families.qwen2_5_vl import Qwen2_5_VL


class Qwen3VL(Qwen2_5_VL):
    name = "qwen3_vl"
    classes = ("Qwen3VLForConditionalGeneration", "Qwen3VLMoeForConditionalGeneration")

    def visual_additions(self, lm_kwargs: dict, visual_mask: torch.Tensor) -> dict[int, torch.Tensor]:
        features = lm_kwargs.get("deepstack_visual_embeds")
        positions = lm_kwargs.get("visual_pos_masks")
        if features is None or positions is None:
            return {}
        positions = positions.to(visual_mask.device)
        if not torch.equal(positions, visual_mask):
            raise ValueError("DeepStack's visual positions differ from the visual tokens the engine found")
        return {layer: per_sample_visual(values, positions) for layer, values in enumerate(features)}

    def lm_kwargs_handled(self) -> tuple[str, ...]:
        return ("visual_pos_masks", "deepstack_visual_embeds")
