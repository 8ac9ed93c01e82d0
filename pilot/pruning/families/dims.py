"""The dimensions the cost model reads off a config, and the arithmetic of image grids it shares.

Torch-free on purpose: ``pilot flops``, the controls and the dashboard size a model from its
``config.json`` without loading torch. Each family's adapter builds its ``ModelDims`` from a
config dict (``Family.dims``); ``pilot.pruning.flops`` does the language model's arithmetic.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class ModelDims:
    """The dimensions the cost model needs, read from the config of a supported family.

    Widths are in features, ``patch`` and ``image_size`` / ``vision_window_size`` in pixels.
    """

    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    vision_hidden: int
    vision_intermediate: int
    vision_layers: int
    patch: int
    image_size: int = 0  # crop (tile) side; 0 for dynamic-resolution families
    feature_layers: int = 1  # vision layers concatenated into the projector input
    vision_cls: bool = True  # the tower adds a CLS token (CLIP, InternViT; not SigLIP, Pixtral)
    downsample: int = 1  # pixel shuffle: downsample x downsample patches per LM token (InternVL, SmolVLM)
    family: str = "llava"  # the config's model_type (``pilot.pruning.families.by_name`` finds its adapter)
    # Dynamic resolution (Qwen, Pixtral): the tower runs on each image's own patch grid, no fixed crop.
    dynamic_resolution: bool = False
    spatial_merge: int = 1  # merger folds spatial_merge x spatial_merge patches into one token
    temporal_patch: int = 1  # frames per patch (images are repeated to fill them)
    vision_out_hidden: int = 0  # merger output width (the LM's hidden size)
    vision_gated_mlp: bool = False  # Qwen2.5-VL, Pixtral: gate/up/down; Qwen3-VL and CLIP: fc1/fc2
    vision_window_size: int = 0  # Qwen2.5-VL attention window side; 0 = every block attends the whole image
    vision_full_attention_blocks: tuple[int, ...] = ()  # 0-indexed blocks attending the whole image
    deepstack_mergers: int = 0  # Qwen3-VL: one extra merger per deepstack_visual_indexes entry
    # Mixture-of-experts LM (Qwen3-VL-MoE): every layer sparse.
    experts: int = 0
    experts_per_token: int = 0
    moe_intermediate: int = 0

    @property
    def patches_per_crop(self) -> int:
        if self.dynamic_resolution:
            raise ValueError(f"{self.family}: dynamic resolution has no fixed crop; size the tower by its tokens")
        return (self.image_size // self.patch) ** 2

    @property
    def tokens_per_crop(self) -> int:
        """LM tokens of one crop (tile): its patches, fewer after a pixel shuffle."""
        return self.patches_per_crop // self.downsample**2

    @property
    def q_width(self) -> int:
        return self.heads * self.head_dim

    @property
    def kv_width(self) -> int:
        return self.kv_heads * self.head_dim

    @property
    def mlp_macs_per_token(self) -> int:
        """Multiply-adds of one token through one LM MLP (MoE: the active experts plus the router)."""
        if self.experts:
            return 3 * self.hidden * self.experts_per_token * self.moe_intermediate + self.hidden * self.experts
        return 3 * self.hidden * self.intermediate

    @classmethod
    def from_config(cls, config) -> ModelDims:
        """From a transformers config object or its dict (``config.json`` of a checkpoint): its
        family's adapter reads it (``Family.dims``)."""
        from pilot.pruning.families import by_name

        data = config if isinstance(config, dict) else config.to_dict()
        model_type = data.get("model_type")
        try:
            family = by_name(model_type)
        except ValueError:
            from pilot.pruning.families import MODEL_TYPES

            raise ValueError(f"model_type {model_type!r} is not supported "
                             f"(supported: {', '.join(MODEL_TYPES)})") from None
        try:
            return family.dims(data)
        except KeyError as missing:
            raise ValueError(f"model_type {model_type!r}: its config has no {missing}") from None


def side(value) -> int:
    """A square size given as an int or as [height, width] (InternVL)."""
    return int(value[0]) if isinstance(value, (list, tuple)) else int(value)


def feature_layers(data: dict, default: int) -> int:
    """Vision layers concatenated into the projector input (``vision_feature_layer``: one or a list)."""
    feature_layer = data.get("vision_feature_layer", default)
    return 1 if isinstance(feature_layer, int) else len(feature_layer)


def text_dims(text: dict) -> dict:
    """The language model's ``ModelDims`` fields from its config dict."""
    heads = text["num_attention_heads"]
    return dict(
        hidden=text["hidden_size"],
        intermediate=text["intermediate_size"],
        layers=text["num_hidden_layers"],
        heads=heads,
        kv_heads=text.get("num_key_value_heads") or heads,
        head_dim=text.get("head_dim") or text["hidden_size"] // heads,
        vocab=text["vocab_size"],
    )


def frames(dims: ModelDims, image_grids: Sequence[Sequence[int]]) -> list[tuple[int, int]]:
    """Per attended frame, its (rows, cols) in vision patches, from ``image_grid_thw`` rows (t, h, w)."""
    out = []
    for grid in image_grids:
        t, h, w = (int(v) for v in grid)
        if h % dims.spatial_merge or w % dims.spatial_merge:
            raise ValueError(f"image grid {(t, h, w)}: sides must be multiples of "
                             f"spatial_merge_size {dims.spatial_merge}")
        out += [(h, w)] * t
    return out


def merged_tokens(dims: ModelDims, image_grids: Sequence[Sequence[int]]) -> int:
    """LM tokens of ``image_grid_thw`` rows: their patches over the merger's spatial_merge^2."""
    return sum(h * w for h, w in frames(dims, image_grids)) // dims.spatial_merge**2
