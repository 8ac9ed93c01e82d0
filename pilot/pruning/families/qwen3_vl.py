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

from typing import TYPE_CHECKING

from pilot.pruning.families.base import per_sample_visual
from pilot.pruning.families.qwen2_5_vl import Qwen2_5_VL

if TYPE_CHECKING:
    import torch


class Qwen3VL(Qwen2_5_VL):
    name = "qwen3_vl"
    classes = ("Qwen3VLForConditionalGeneration", "Qwen3VLMoeForConditionalGeneration")
    model_types = ("qwen3_vl_moe",)
    vision_gated_mlp = False  # fc1 / fc2
    vision_windows = False  # every block attends the whole image
    # typical_tokens, as Qwen2.5-VL: 1024 merged tokens, here a 1024 x 1024 image (32 px per token).
    # Public config.json dimensions of Qwen/Qwen3-VL-8B-Instruct.
    presets = {"qwen3-vl-8b": {
        "model_type": "qwen3_vl",
        "text_config": {"hidden_size": 4096, "intermediate_size": 12288, "num_hidden_layers": 36,
                        "num_attention_heads": 32, "num_key_value_heads": 8, "head_dim": 128, "vocab_size": 151936},
        "vision_config": {"depth": 27, "hidden_size": 1152, "intermediate_size": 4304, "num_heads": 16,
                          "patch_size": 16, "spatial_merge_size": 2, "temporal_patch_size": 2, "out_hidden_size": 4096,
                          "deepstack_visual_indexes": [8, 16, 24], "num_position_embeddings": 2304},
    }}

    def moe_dims(self, model_type: str, text: dict) -> dict:
        """Qwen3-VL-MoE: every decoder layer sparse (dense layers among them are refused)."""
        if model_type != "qwen3_vl_moe":
            return {}
        if text.get("mlp_only_layers") or text.get("decoder_sparse_step", 1) != 1:
            raise ValueError(f"{model_type}: dense layers among the MoE ones (mlp_only_layers / decoder_sparse_step) "
                             "are not modelled; every layer must be sparse")
        return dict(experts=text.get("num_experts") or text["num_local_experts"],
                    experts_per_token=text["num_experts_per_tok"],
                    moe_intermediate=text["moe_intermediate_size"])

    def visual_additions(self, lm_kwargs: dict, visual_mask: torch.Tensor) -> dict[int, torch.Tensor]:
        import torch

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
