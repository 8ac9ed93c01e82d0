"""Cost model: the paper's visual-token TFLOPs (Eq. 7) and the whole prefill's TFLOPs.

Two conventions, on purpose:

* ``paper_tflops`` follows the TransPrune paper (Eq. 7), over the LLM layers and visual tokens
  only, counting one multiply-add as one FLOP: ``sum_i 4 n_i d^2 + 2 n_i^2 d + 3 n_i d m``.
  With LLaVA-1.5-7B dimensions this gives the published 3.82 (576 tokens) and 1.56 (default
  schedule) and is the figure to set beside published tables.
* ``full_tflops`` counts the whole prefill of one sample as ``torch.utils.flop_counter`` does
  (two FLOPs per multiply-add): vision tower, projector, every LLM layer with all its tokens
  (text too, attention over the full square as the kernels compute it), the pruning scores,
  and the LM head on the last position.

Eq. 7 on models the paper did not cover. The paper's ``4 n d^2`` is the Q, K, V and O
projections, each ``n d^2`` multiply-adds, which holds only when K and V are as wide as Q.
Here the projections are counted as they are: ``n d (2 q_width + 2 kv_width)`` multiply-adds
with ``q_width = heads * head_dim`` and ``kv_width = kv_heads * head_dim`` (grouped-query
attention has narrower K/V), and the attention term is ``2 n^2 q_width`` (the kernels compute
every query head). For LLaVA-1.5-7B (``kv_width = q_width = d``) this is exactly the paper's
formula, so its published figures are unchanged. Qwen2.5-VL's ``head_dim`` is
``hidden / heads``; Qwen3-VL gives ``head_dim`` explicitly (for the 8B, ``32 * 128 = 4096 = d``
anyway). The MLP term ``3 n d m`` becomes, for a mixture of experts, the active experts plus
the router: ``n (3 d k m_expert + d E)`` (``k`` experts per token, ``E`` experts).

Vision towers:

* LLaVA / LLaVA-NeXT: a CLIP tower on fixed 336 px crops (1 per image; NeXT adds anyres tiles),
  then a two-layer projector. Sized by ``crops``.
* The other fixed-crop towers, sized by ``crops`` too (from a count alone: the visual tokens over
  the LM tokens per crop): LLaVA-OneVision, a SigLIP tower (no CLS token) on 384 px crops, the
  base crop and the anyres crops, and LLaVA's two-layer projector on every crop patch (the
  anyres grid is unpadded and may be shrunk afterwards, and a newline feature ends each row, so
  its token count only approximates crops x 729); InternVL, an InternViT tower (CLS token) on
  448 px tiles, pixel-shuffled by ``downsample_ratio`` (4 patches per token) into a norm + two
  linears projector; SmolVLM / Idefics3, a SigLIP tower on 384 / 512 px tiles and the global
  image, pixel-shuffled by ``scale_factor`` into one linear. Every crop's tokens attend to
  each other only.
* Mistral 3 (dynamic resolution): a Pixtral tower (gated MLP) on every 14 px patch of each image,
  then the projector: patch merger (2x2 patches into one), two linears. The images of a batch
  run as one sequence with a block-diagonal mask, so the kernels compute the full square over
  all their patches. Sized like Qwen: ``visual_tokens_original`` (one image) or ``image_grids``
  rows (1, h / 14, w / 14). (Batched with a larger image, an image's patch embedding also runs
  on its padding: not counted.)
* Qwen2.5-VL / Qwen3-VL (dynamic resolution): each image (or video frame) is cut into
  ``patch x patch`` pixel patches (``temporal_patch`` frames deep), the tower runs on all
  ``merged tokens * spatial_merge^2`` patches, and the merger folds each 2x2 block into one LLM
  token. Attention is per image (per frame); Qwen2.5-VL's blocks outside
  ``fullatt_block_indexes`` attend within windows of ``window_size`` pixels. Qwen3-VL runs one
  extra merger per DeepStack layer. The tower's cost is set by the sample's *original* visual
  tokens (``visual_tokens_original``) or, exactly, by its ``image_grid_thw`` rows
  (``image_grids``); pooling (``pool:factor=N``) acts after the tower, so the tower still sees
  the original tokens. From a count alone the sample is taken as one image and every attention
  window as full (an upper bound on the windowed blocks' attention, exact when the merged grid's
  sides are multiples of the window).

Not counted (as FlopCounterMode does not count them): norms, activations, rotary / position
embeddings, biases (``addmm`` counts the matmul only), DeepStack's additions. FlopCounterMode
does not see CPU sdpa kernels nor ``grouped_mm`` experts; compare against it with eager
attention and eager experts.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from pilot.pruning.strategies import Strategy, kept_count, parse

LLAVA_FAMILIES = ("llava", "llava_next")
QWEN_FAMILIES = ("qwen2_5_vl", "qwen3_vl", "qwen3_vl_moe")
# Fixed-size crops (tiles) like LLaVA's, other towers and projectors.
CROP_FAMILIES = ("llava_onevision", "internvl", "smolvlm", "idefics3", "gemma3")
PIXTRAL_FAMILIES = ("mistral3",)  # dynamic resolution
SUPPORTED_MODEL_TYPES = LLAVA_FAMILIES + QWEN_FAMILIES + CROP_FAMILIES + PIXTRAL_FAMILIES

# The ``pilot flops`` default for dynamic-resolution models: 1024 merged tokens, a 896x896 image
# for Qwen2.5-VL (28 px per token) and 1024x1024 for Qwen3-VL (32 px per token).
QWEN_DEFAULT_VISUAL_TOKENS = 1024
# Typical images of the other families: InternVL, a 4:3 image in 3x2 tiles and the thumbnail;
# SmolVLM, a square image at the processor's largest size (4x4 tiles and the global image);
# LLaVA-OneVision, a square image in 3x3 crops (anyres_max_9's budget) and the base crop;
# Mistral 3, as Qwen, 1024 merged tokens (an 896x896 image).
# Gemma 3: one 896-px crop (256 tokens) per image, pan-and-scan off as in its processor's default.
CROPS_PER_IMAGE = {"internvl": 7, "smolvlm": 17, "idefics3": 17, "gemma3": 1}
ONEVISION_DEFAULT_CROPS_SIDE = 3


@dataclass(frozen=True)
class ModelDims:
    """The dimensions the cost model needs, read from the config of a supported family
    (``SUPPORTED_MODEL_TYPES``).

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
    next: bool = False  # LLaVA-NeXT (anyres crops)
    vision_cls: bool = True  # the tower adds a CLS token (CLIP, InternViT; not SigLIP, Pixtral)
    downsample: int = 1  # pixel shuffle: downsample x downsample patches per LM token (InternVL, SmolVLM)
    family: str = "llava"  # one of SUPPORTED_MODEL_TYPES
    # Dynamic-resolution (Qwen) vision tower.
    spatial_merge: int = 1  # merger folds spatial_merge x spatial_merge patches into one token
    temporal_patch: int = 1  # frames per patch (images are repeated to fill them)
    vision_out_hidden: int = 0  # merger output width (the LM's hidden size)
    vision_gated_mlp: bool = False  # Qwen2.5-VL: gate/up/down; Qwen3-VL and CLIP: fc1/fc2
    vision_window_size: int = 0  # Qwen2.5-VL attention window side; 0 = every block attends the whole image
    vision_full_attention_blocks: tuple[int, ...] = ()  # 0-indexed blocks attending the whole image
    deepstack_mergers: int = 0  # Qwen3-VL: one extra merger per deepstack_visual_indexes entry
    # Mixture-of-experts LM (Qwen3-VL-MoE): every layer sparse.
    experts: int = 0
    experts_per_token: int = 0
    moe_intermediate: int = 0

    @property
    def dynamic_resolution(self) -> bool:
        return self.family in QWEN_FAMILIES + PIXTRAL_FAMILIES

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
        """From a transformers config object or its dict (``config.json`` of a checkpoint)."""
        data = config if isinstance(config, dict) else config.to_dict()
        model_type = data.get("model_type")
        if model_type in LLAVA_FAMILIES:
            return cls._from_llava(data)
        if model_type in QWEN_FAMILIES:
            return cls._from_qwen(data)
        if model_type in CROP_FAMILIES + PIXTRAL_FAMILIES:
            try:
                return cls._from_crops_or_pixtral(data)
            except KeyError as missing:
                raise ValueError(f"model_type {model_type!r}: its config has no {missing}") from None
        raise ValueError(f"model_type {model_type!r} is not supported (supported: {', '.join(SUPPORTED_MODEL_TYPES)})")

    @classmethod
    def _from_llava(cls, data: dict) -> ModelDims:
        text, vision = data["text_config"], data["vision_config"]
        feature_layer = data.get("vision_feature_layer", -2)
        return cls(
            **_text_dims(text),
            vision_hidden=vision["hidden_size"],
            vision_intermediate=vision["intermediate_size"],
            vision_layers=vision["num_hidden_layers"],
            patch=vision["patch_size"],
            image_size=vision["image_size"],
            feature_layers=1 if isinstance(feature_layer, int) else len(feature_layer),
            next=data["model_type"] == "llava_next",
            family=data["model_type"],
        )

    @classmethod
    def _from_qwen(cls, data: dict) -> ModelDims:
        family = data["model_type"]
        # Qwen2.5-VL checkpoints keep the LM's fields at the top level of config.json; configs
        # saved by transformers 5 nest them under text_config.
        nested = data.get("text_config") or {}
        text = nested if "hidden_size" in nested else data
        vision = data["vision_config"]
        moe = {}
        if family == "qwen3_vl_moe":
            if text.get("mlp_only_layers") or text.get("decoder_sparse_step", 1) != 1:
                raise ValueError(f"{family}: dense layers among the MoE ones (mlp_only_layers / decoder_sparse_step) "
                                 "are not modelled; every layer must be sparse")
            moe = dict(experts=text.get("num_experts") or text["num_local_experts"],
                       experts_per_token=text["num_experts_per_tok"],
                       moe_intermediate=text["moe_intermediate_size"])
        return cls(
            **_text_dims(text),
            vision_hidden=vision["hidden_size"],
            vision_intermediate=vision["intermediate_size"],
            vision_layers=vision["depth"],
            patch=vision["patch_size"],
            family=family,
            spatial_merge=vision.get("spatial_merge_size", 2),
            temporal_patch=vision.get("temporal_patch_size", 2),
            vision_out_hidden=vision.get("out_hidden_size") or text["hidden_size"],
            vision_gated_mlp=family == "qwen2_5_vl",
            vision_window_size=vision.get("window_size", 0) if family == "qwen2_5_vl" else 0,
            vision_full_attention_blocks=tuple(vision.get("fullatt_block_indexes") or ()),
            deepstack_mergers=len(vision.get("deepstack_visual_indexes") or ()),
            **moe,
        )


    @classmethod
    def _from_crops_or_pixtral(cls, data: dict) -> ModelDims:
        """LLaVA-OneVision, InternVL, SmolVLM / Idefics3, Gemma 3 (fixed crops) and Mistral 3 (Pixtral)."""
        family = data["model_type"]
        text, vision = data["text_config"], data["vision_config"]
        feature_layer = data.get("vision_feature_layer", -1)
        common = dict(
            **_text_dims(text),
            vision_hidden=vision["hidden_size"],
            vision_intermediate=vision["intermediate_size"],
            vision_layers=vision["num_hidden_layers"],
            patch=_side(vision["patch_size"]),
            family=family,
            feature_layers=1 if isinstance(feature_layer, int) else len(feature_layer),
        )
        if family == "mistral3":
            return cls(**common, spatial_merge=data.get("spatial_merge_size", 2), vision_out_hidden=text["hidden_size"],
                       vision_gated_mlp=True, vision_cls=False)
        downsample = 1
        if family == "internvl":
            downsample = round(1 / data.get("downsample_ratio", 0.5))
        elif family in ("smolvlm", "idefics3"):
            downsample = data.get("scale_factor", 2)
        elif family == "gemma3":  # the SigLIP grid average-pooled to mm_tokens_per_image tokens
            side = _side(vision["image_size"]) // _side(vision["patch_size"])
            downsample = side // math.isqrt(data.get("mm_tokens_per_image", 256))
        return cls(**common, image_size=_side(vision["image_size"]), vision_cls=family == "internvl",
                   downsample=downsample)


def _side(value) -> int:
    """A square size given as an int or as [height, width] (InternVL)."""
    return int(value[0]) if isinstance(value, (list, tuple)) else int(value)


def _text_dims(text: dict) -> dict:
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


# Public dimensions of the models the paper reports (Vicuna-7B + CLIP ViT-L/14-336).
PRESETS: dict[str, dict] = {
    "llava-1.5-7b": {
        "model_type": "llava",
        "text_config": {"hidden_size": 4096, "intermediate_size": 11008, "num_hidden_layers": 32,
                        "num_attention_heads": 32, "num_key_value_heads": 32, "vocab_size": 32064},
        "vision_config": {"hidden_size": 1024, "intermediate_size": 4096, "num_hidden_layers": 24,
                          "patch_size": 14, "image_size": 336, "num_attention_heads": 16},
        "vision_feature_layer": -2,
    },
}
PRESETS["llava-next-7b"] = {
    **PRESETS["llava-1.5-7b"], "model_type": "llava_next",
    "image_grid_pinpoints": [[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]],
}
# Public config.json dimensions of Qwen/Qwen2.5-VL-7B-Instruct and Qwen/Qwen3-VL-8B-Instruct
# (laid out as transformers 5 saves them, LM fields under text_config).
PRESETS["qwen2.5-vl-7b"] = {
    "model_type": "qwen2_5_vl",
    "text_config": {"hidden_size": 3584, "intermediate_size": 18944, "num_hidden_layers": 28,
                    "num_attention_heads": 28, "num_key_value_heads": 4, "vocab_size": 152064},
    "vision_config": {"depth": 32, "hidden_size": 1280, "intermediate_size": 3420, "num_heads": 16,
                      "patch_size": 14, "spatial_merge_size": 2, "temporal_patch_size": 2, "window_size": 112,
                      "fullatt_block_indexes": [7, 15, 23, 31], "out_hidden_size": 3584},
}
PRESETS["qwen3-vl-8b"] = {
    "model_type": "qwen3_vl",
    "text_config": {"hidden_size": 4096, "intermediate_size": 12288, "num_hidden_layers": 36,
                    "num_attention_heads": 32, "num_key_value_heads": 8, "head_dim": 128, "vocab_size": 151936},
    "vision_config": {"depth": 27, "hidden_size": 1152, "intermediate_size": 4304, "num_heads": 16,
                      "patch_size": 16, "spatial_merge_size": 2, "temporal_patch_size": 2, "out_hidden_size": 4096,
                      "deepstack_visual_indexes": [8, 16, 24], "num_position_embeddings": 2304},
}


# Public config.json dimensions (transformers layout) of OpenGVLab/InternVL3-8B-hf (InternViT-300M,
# Qwen2.5-7B), llava-hf/llava-onevision-qwen2-7b-ov-hf (SigLIP-so400m without its last layer,
# Qwen2-7B), mistralai/Mistral-Small-3.1-24B-Instruct-2503 (Pixtral, Mistral Small 24B) and
# HuggingFaceTB/SmolVLM2-2.2B-Instruct (SigLIP-so400m, SmolLM2-1.7B).
# Public config.json dimensions of google/gemma-3-12b-it (Gemma 3 LM, SigLIP so400m tower at 896 px).
PRESETS["gemma-3-12b"] = {
    "model_type": "gemma3",
    "text_config": {"hidden_size": 3840, "intermediate_size": 15360, "num_hidden_layers": 48,
                    "num_attention_heads": 16, "num_key_value_heads": 8, "head_dim": 256, "vocab_size": 262208},
    "vision_config": {"hidden_size": 1152, "intermediate_size": 4304, "num_hidden_layers": 27,
                      "num_attention_heads": 16, "patch_size": 14, "image_size": 896},
    "mm_tokens_per_image": 256,
}
PRESETS["internvl3-8b"] = {
    "model_type": "internvl",
    "text_config": {"hidden_size": 3584, "intermediate_size": 18944, "num_hidden_layers": 28,
                    "num_attention_heads": 28, "num_key_value_heads": 4, "vocab_size": 151674},
    "vision_config": {"hidden_size": 1024, "intermediate_size": 4096, "num_hidden_layers": 24,
                      "num_attention_heads": 16, "patch_size": [14, 14], "image_size": [448, 448]},
    "downsample_ratio": 0.5,
    "vision_feature_layer": -1,
}
PRESETS["llava-onevision-7b"] = {
    "model_type": "llava_onevision",
    "text_config": {"hidden_size": 3584, "intermediate_size": 18944, "num_hidden_layers": 28,
                    "num_attention_heads": 28, "num_key_value_heads": 4, "vocab_size": 152128},
    "vision_config": {"hidden_size": 1152, "intermediate_size": 4304, "num_hidden_layers": 26,
                      "num_attention_heads": 16, "patch_size": 14, "image_size": 384},
    "vision_feature_layer": -1,
    "vision_aspect_ratio": "anyres_max_9",
}
PRESETS["mistral-small-3.1-24b"] = {
    "model_type": "mistral3",
    "text_config": {"hidden_size": 5120, "intermediate_size": 32768, "num_hidden_layers": 40,
                    "num_attention_heads": 32, "num_key_value_heads": 8, "head_dim": 128, "vocab_size": 131072},
    "vision_config": {"hidden_size": 1024, "intermediate_size": 4096, "num_hidden_layers": 24,
                      "num_attention_heads": 16, "head_dim": 64, "patch_size": 14, "image_size": 1540},
    "spatial_merge_size": 2,
    "vision_feature_layer": -1,
}
PRESETS["smolvlm2-2.2b"] = {
    "model_type": "smolvlm",
    "text_config": {"hidden_size": 2048, "intermediate_size": 8192, "num_hidden_layers": 24,
                    "num_attention_heads": 32, "num_key_value_heads": 32, "vocab_size": 49280},
    "vision_config": {"hidden_size": 1152, "intermediate_size": 4304, "num_hidden_layers": 27,
                      "num_attention_heads": 16, "patch_size": 14, "image_size": 384},
    "scale_factor": 3,
}


def load_dims(config: str | Path | dict) -> ModelDims:
    """Dimensions from a preset name, a ``config.json`` path, a checkpoint folder or a dict."""
    if isinstance(config, dict):
        return ModelDims.from_config(config)
    if str(config) in PRESETS:
        return ModelDims.from_config(PRESETS[str(config)])
    path = Path(config)
    if path.is_dir():
        path = path / "config.json"
    if not path.is_file():
        raise ValueError(f"model config {config}: no such file (give a config.json, a checkpoint "
                         f"folder, or one of {', '.join(PRESETS)})")
    try:
        data = json.loads(path.read_text())
        return ModelDims.from_config(data)
    except (json.JSONDecodeError, KeyError, ValueError) as error:
        raise ValueError(f"{path}: not a supported model config ({error})") from None


def default_visual_tokens(dims: ModelDims) -> int:
    """Visual tokens of one typical image: a LLaVA crop (576), the paper's LLaVA-NeXT 2880, 1024 for
    Qwen and Mistral 3, and for the other crop families ``CROPS_PER_IMAGE`` / a 3x3-crop OneVision
    image (base grid plus the anyres grid with a newline per row)."""
    if dims.dynamic_resolution:
        return QWEN_DEFAULT_VISUAL_TOKENS
    if dims.family == "llava_onevision":
        side = dims.image_size // dims.patch * ONEVISION_DEFAULT_CROPS_SIDE
        return dims.patches_per_crop + side * (side + 1)
    if dims.family in CROPS_PER_IMAGE:
        return dims.tokens_per_crop * CROPS_PER_IMAGE[dims.family]
    return dims.patches_per_crop * (5 if dims.next else 1)


def _frames(dims: ModelDims, image_grids: Sequence[Sequence[int]]) -> list[tuple[int, int]]:
    """Per attended frame, its (rows, cols) in vision patches, from ``image_grid_thw`` rows (t, h, w)."""
    frames = []
    for grid in image_grids:
        t, h, w = (int(v) for v in grid)
        if h % dims.spatial_merge or w % dims.spatial_merge:
            raise ValueError(f"image grid {(t, h, w)}: sides must be multiples of "
                             f"spatial_merge_size {dims.spatial_merge}")
        frames += [(h, w)] * t
    return frames


def _merged_tokens(dims: ModelDims, image_grids: Sequence[Sequence[int]]) -> int:
    return sum(h * w for h, w in _frames(dims, image_grids)) // dims.spatial_merge**2


def pooled_count(
    n_visual: int,
    factor: int,
    patches_per_crop: int | None = None,
    grids: Sequence[tuple[int, int]] | None = None,
) -> int:
    """Visual tokens left by pooling each grid ``factor x factor`` (windows at the edges kept partial).

    ``grids``: (rows, cols) of each pooled grid (Qwen: each image's merged grid), pooled exactly.
    Otherwise ``n_visual`` is cut into square ``patches_per_crop`` grids when it divides, and
    approximated as ``ceil(n / f^2)`` when it does not or no crop size is given.
    """
    if grids is not None:
        return sum(math.ceil(rows / factor) * math.ceil(cols / factor) for rows, cols in grids)
    if patches_per_crop and n_visual % patches_per_crop == 0:
        side = math.isqrt(patches_per_crop)
        return (n_visual // patches_per_crop) * math.ceil(side / factor) ** 2
    return math.ceil(n_visual / factor**2)


def visual_tokens_per_layer(
    strategy: Strategy | str,
    n_visual: int,
    dims: ModelDims,
    image_grids: Sequence[Sequence[int]] | None = None,
) -> list[int]:
    """How many visual tokens each LLM layer sees under ``strategy`` (schedule mapped to depth).

    ``image_grids``: the sample's ``image_grid_thw`` rows (Qwen), for an exact pooled count.
    """
    strategy = parse(strategy).resolve(dims.layers)
    current = n_visual
    if strategy.pool_factor > 1:
        if dims.dynamic_resolution:
            merged = None
            if image_grids is not None:
                s = dims.spatial_merge
                merged = [(h // s, w // s) for h, w in _frames(dims, image_grids)]
            current = pooled_count(n_visual, strategy.pool_factor, grids=merged)
        else:
            current = pooled_count(n_visual, strategy.pool_factor, dims.tokens_per_crop)
    if getattr(strategy, "mass", None):
        raise ValueError(f"{strategy}: a score-mass schedule keeps a different count per image; measure it with a run")
    if strategy.before_lm_keep is not None:  # DivPrune; from a count alone, one image
        current = kept_count(n_visual, strategy.before_lm_keep)
    keep_after = dict(strategy.stages)
    counts = []
    for layer in range(1, dims.layers + 1):
        counts.append(current)
        if layer in keep_after:
            # PyramidDrop keeps a share of the tokens present; the others a share of the original.
            base = current if strategy.keep_of_present else n_visual
            current = min(current, kept_count(base, keep_after[layer]))
    return counts


def paper_flops(dims: ModelDims, tokens_per_layer: list[int]) -> float:
    """The paper's Eq. 7 over the LLM layers, visual tokens only (multiply-add = 1 FLOP).

    Projections counted at their real widths (grouped-query K/V narrower), see the module notes.
    """
    projection_macs = dims.hidden * (2 * dims.q_width + 2 * dims.kv_width)
    return float(sum(n * projection_macs + 2 * n * n * dims.q_width + n * dims.mlp_macs_per_token
                     for n in tokens_per_layer))


def _vision_flops(dims: ModelDims, crops: int) -> float:
    """Fixed-size crops: the tower (CLIP / InternViT with a CLS token, SigLIP without) and the
    projector, per crop. LLaVA, LLaVA-NeXT, LLaVA-OneVision: two linears on every patch;
    InternVL: two linears on every pixel-shuffled token; SmolVLM / Idefics3: one linear."""
    patches, dv, mv, d = dims.patches_per_crop, dims.vision_hidden, dims.vision_intermediate, dims.hidden
    tokens = patches + int(dims.vision_cls)
    embed = 2 * patches * 3 * dims.patch**2 * dv
    layer = 2 * tokens * 4 * dv * dv + 4 * tokens * tokens * dv + 4 * tokens * dv * mv
    shuffled = dv * dims.feature_layers * dims.downsample**2  # projector input width per LM token
    if dims.family == "internvl":
        projector = 2 * dims.tokens_per_crop * (shuffled * d + d * d)
    elif dims.family in ("smolvlm", "idefics3"):
        projector = 2 * dims.tokens_per_crop * shuffled * d
    elif dims.family == "gemma3":  # average pooling (no matmul), then one projection per pooled token
        projector = 2 * dims.tokens_per_crop * dv * d
    else:
        projector = 2 * patches * (shuffled * d + d * d)
    return float(crops * (embed + dims.vision_layers * layer + projector))


def _pixtral_vision_flops(dims: ModelDims, merged_tokens: int, image_grids: Sequence[Sequence[int]] | None) -> float:
    """Mistral 3: Pixtral tower (gated MLP) over all images' patches as one sequence (the
    block-diagonal mask leaves the square to compute), patch merger and two linears."""
    s, dv, mv, d = dims.spatial_merge, dims.vision_hidden, dims.vision_intermediate, dims.hidden
    patches = sum(h * w for h, w in _frames(dims, image_grids)) if image_grids is not None else merged_tokens * s * s
    embed = 2 * patches * 3 * dims.patch**2 * dv
    layer = 2 * patches * 4 * dv * dv + 4 * patches * patches * dv + 2 * 3 * patches * dv * mv
    merged = patches // (s * s)
    projector = 2 * merged * (dv * s * s * dv + dv * dims.feature_layers * d + d * d)
    return float(embed + dims.vision_layers * layer + projector)


def _window_square_sum(side_merged: int, window_merged: int) -> int:
    """Sum over the windows along one axis of their length squared (the last window may be partial)."""
    return (side_merged // window_merged) * window_merged**2 + (side_merged % window_merged) ** 2


def _qwen_vision_flops(dims: ModelDims, merged_tokens: int, image_grids: Sequence[Sequence[int]] | None) -> float:
    """Qwen2.5-VL / Qwen3-VL tower: patch embedding, blocks, merger (and DeepStack mergers).

    Attention costs ``4 L^2 d_v`` per segment of ``L`` patches; the segments are the frames (full
    attention) or, for Qwen2.5-VL's other blocks, the windows of each frame.
    """
    s, dv, mv = dims.spatial_merge, dims.vision_hidden, dims.vision_intermediate
    window_merged = dims.vision_window_size // s // dims.patch if dims.vision_window_size else 0
    if image_grids is not None:
        frames = _frames(dims, image_grids)
        patches = sum(h * w for h, w in frames)
        full_square_sum = sum((h * w) ** 2 for h, w in frames)
        window_square_sum = full_square_sum
        if window_merged:
            window_square_sum = sum(
                s**4 * _window_square_sum(h // s, window_merged) * _window_square_sum(w // s, window_merged)
                for h, w in frames
            )
    else:
        # One image, every window full: exact for one image whose merged sides are multiples of the window.
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


def _llm_layer_flops(dims: ModelDims, tokens: int) -> float:
    projections = 2 * tokens * dims.hidden * (2 * dims.q_width + 2 * dims.kv_width)
    attention = 4 * tokens * tokens * dims.q_width
    mlp = 2 * tokens * dims.mlp_macs_per_token
    return float(projections + attention + mlp)


def _score_flops(dims: ModelDims, strategy: Strategy, tokens: int, queries: int) -> float:
    """Scoring at one stage: keys for every token, queries for the instruction rows, their product."""
    d, q_width, kv_width = dims.hidden, dims.q_width, dims.kv_width
    return float(2 * tokens * d * kv_width + 2 * queries * d * q_width + 2 * queries * tokens * q_width)


def full_prefill_flops(
    dims: ModelDims,
    tokens_per_layer: list[int],
    text_tokens: int,
    strategy: Strategy | str = "baseline",
    instruction_tokens: int = 0,
    crops: int | None = None,
    *,
    visual_tokens_original: int | None = None,
    image_grids: Sequence[Sequence[int]] | None = None,
) -> float:
    """FLOPs of one sample's prefill, as ``torch.utils.flop_counter.FlopCounterMode`` counts them.

    ``tokens_per_layer`` are the visual tokens per LLM layer. The vision tower is sized by:

    * LLaVA: ``crops`` (LLaVA-1.5: 1 per image; LLaVA-NeXT: base + high-resolution tiles); by
      default estimated from ``visual_tokens_original`` or else ``tokens_per_layer[0]`` divided
      by the patches per crop.
    * Qwen2.5-VL / Qwen3-VL: ``image_grids`` (the sample's ``image_grid_thw`` rows, exact), else
      ``visual_tokens_original`` (the merged tokens before any pruning or pooling; one image
      assumed), else ``tokens_per_layer[0]``. ``crops`` is ignored.

    A pooled strategy shrinks ``tokens_per_layer[0]`` below what the tower saw, so it needs
    ``crops`` / ``visual_tokens_original`` / ``image_grids``.
    """
    strategy = parse(strategy).resolve(dims.layers)
    pooled = strategy.pool_factor > 1
    if dims.dynamic_resolution:
        if image_grids is not None:
            merged = _merged_tokens(dims, image_grids)
            if visual_tokens_original is not None and visual_tokens_original != merged:
                raise ValueError(f"visual_tokens_original {visual_tokens_original} disagrees with image_grids "
                                 f"{[list(g) for g in image_grids]} ({merged} merged tokens)")
        elif visual_tokens_original is not None:
            merged = visual_tokens_original
        elif pooled:
            raise ValueError("give visual_tokens_original (or image_grids) for a pooled strategy")
        else:
            merged = tokens_per_layer[0] if tokens_per_layer else 0
        tower = _pixtral_vision_flops if dims.family in PIXTRAL_FAMILIES else _qwen_vision_flops
        total = tower(dims, merged, image_grids) if merged else 0.0
    else:
        if crops is None:
            original = visual_tokens_original
            if original is None:
                if pooled:
                    raise ValueError("give crops (or visual_tokens_original) explicitly for a pooled strategy")
                original = tokens_per_layer[0] if tokens_per_layer else 0
            crops = max(1, round(original / dims.tokens_per_crop)) if original else 0
        total = _vision_flops(dims, crops) if crops else 0.0
    total += sum(_llm_layer_flops(dims, text_tokens + n) for n in tokens_per_layer)
    if strategy.score_queries is not None:  # attention scores: the last token, or the instruction
        queries = 1 if strategy.score_queries == "last" else instruction_tokens
        for layer, _ in strategy.stages:
            total += _score_flops(dims, strategy, text_tokens + tokens_per_layer[layer - 1], queries)
    if strategy.before_lm_keep is not None and tokens_per_layer:  # DivPrune's cosine similarities
        original = visual_tokens_original or tokens_per_layer[0]
        total += 2.0 * original * original * dims.hidden
    total += 2.0 * dims.hidden * dims.vocab  # LM head, last position
    return total


def estimate(
    dims: ModelDims,
    n_visual: int,
    strategy: Strategy | str,
    text_tokens: int = 64,
    instruction_tokens: int = 24,
    *,
    image_grids: Sequence[Sequence[int]] | None = None,
) -> dict:
    """Baseline and pruned TFLOPs of one sample, both conventions (the ``pilot flops`` output).

    ``image_grids``: Qwen only, the sample's ``image_grid_thw`` rows (else one image of ``n_visual`` tokens).
    """
    strategy = parse(strategy).resolve(dims.layers)
    tower: dict = {"visual_tokens_original": n_visual, "image_grids": image_grids}
    if not dims.dynamic_resolution:
        tower = {"crops": max(1, round(n_visual / dims.tokens_per_crop))}
    baseline_counts = [n_visual] * dims.layers
    pruned_counts = visual_tokens_per_layer(strategy, n_visual, dims, image_grids)
    baseline_full = full_prefill_flops(dims, baseline_counts, text_tokens, "baseline", **tower)
    pruned_full = full_prefill_flops(dims, pruned_counts, text_tokens, strategy, instruction_tokens, **tower)
    return {
        "strategy": str(strategy),
        "visual_tokens": n_visual,
        "text_tokens": text_tokens,
        "visual_tokens_per_layer": pruned_counts,
        "baseline_tflops": paper_flops(dims, baseline_counts) / 1e12,
        "pruned_tflops": paper_flops(dims, pruned_counts) / 1e12,
        "full_baseline_tflops": baseline_full / 1e12,
        "full_pruned_tflops": pruned_full / 1e12,
    }


def kv_cache_bytes(dims: ModelDims, visual_per_layer: Sequence[int], other_tokens: int,
                   windows: Sequence[int | None] | None = None, element_bytes: int = 2) -> int:
    """Bytes of one sample's KV cache: per layer, keys and values of its tokens there (the visual tokens that
    layer keeps, ``visual_per_layer[l]``, and ``other_tokens``: text and output), at most the layer's sliding
    window (``windows[l]``; None: full attention). This is what pruning frees per concurrent request."""
    per_token = 2 * dims.kv_heads * dims.head_dim * element_bytes
    windows = windows or [None] * len(visual_per_layer)
    if len(windows) != len(visual_per_layer):
        raise ValueError(f"{len(visual_per_layer)} layers of visual counts but {len(windows)} windows")
    total = 0
    for visual, window in zip(visual_per_layer, windows, strict=True):
        tokens = visual + other_tokens
        total += min(tokens, window) if window else tokens
    return total * per_token
