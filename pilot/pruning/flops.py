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
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

from pilot.pruning.strategies import FastV, Strategy, TransPrune, kept_count, parse


@dataclass(frozen=True)
class ModelDims:
    """The dimensions the cost model needs, read from a LLaVA / LLaVA-NeXT config."""

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
    image_size: int
    feature_layers: int = 1  # vision layers concatenated into the projector input
    next: bool = False  # LLaVA-NeXT (anyres crops)

    @property
    def patches_per_crop(self) -> int:
        return (self.image_size // self.patch) ** 2

    @classmethod
    def from_config(cls, config) -> ModelDims:
        """From a transformers config object or its dict (``config.json`` of a checkpoint)."""
        data = config if isinstance(config, dict) else config.to_dict()
        text, vision = data["text_config"], data["vision_config"]
        heads = text["num_attention_heads"]
        feature_layer = data.get("vision_feature_layer", -2)
        return cls(
            hidden=text["hidden_size"],
            intermediate=text["intermediate_size"],
            layers=text["num_hidden_layers"],
            heads=heads,
            kv_heads=text.get("num_key_value_heads") or heads,
            head_dim=text.get("head_dim") or text["hidden_size"] // heads,
            vocab=text["vocab_size"],
            vision_hidden=vision["hidden_size"],
            vision_intermediate=vision["intermediate_size"],
            vision_layers=vision["num_hidden_layers"],
            patch=vision["patch_size"],
            image_size=vision["image_size"],
            feature_layers=1 if isinstance(feature_layer, int) else len(feature_layer),
            next=data.get("model_type") == "llava_next",
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
    except (json.JSONDecodeError, KeyError) as error:
        raise ValueError(f"{path}: not a LLaVA config ({error})") from None


def pooled_count(n_visual: int, factor: int, patches_per_crop: int) -> int:
    """Visual tokens left by pooling: square grids pooled exactly; others approximately n / f^2."""
    side = math.isqrt(patches_per_crop)
    if n_visual % patches_per_crop == 0:
        return (n_visual // patches_per_crop) * math.ceil(side / factor) ** 2
    return math.ceil(n_visual / factor**2)


def visual_tokens_per_layer(strategy: Strategy | str, n_visual: int, dims: ModelDims) -> list[int]:
    """How many visual tokens each LLM layer sees under ``strategy`` (schedule mapped to depth)."""
    strategy = parse(strategy).resolve(dims.layers)
    current = n_visual
    if strategy.pool_factor > 1:
        current = pooled_count(n_visual, strategy.pool_factor, dims.patches_per_crop)
    if getattr(strategy, "mass", None):
        raise ValueError(f"{strategy}: a score-mass schedule keeps a different count per image; measure it with a run")
    keep_after = dict(strategy.stages)
    counts = []
    for layer in range(1, dims.layers + 1):
        counts.append(current)
        if layer in keep_after:
            current = min(current, kept_count(n_visual, keep_after[layer]))
    return counts


def paper_flops(dims: ModelDims, tokens_per_layer: list[int]) -> float:
    """The paper's Eq. 7 over the LLM layers, visual tokens only (multiply-add = 1 FLOP)."""
    d, m = dims.hidden, dims.intermediate
    return float(sum(4 * n * d * d + 2 * n * n * d + 3 * n * d * m for n in tokens_per_layer))


def _vision_flops(dims: ModelDims, crops: int) -> float:
    patches, dv, mv = dims.patches_per_crop, dims.vision_hidden, dims.vision_intermediate
    tokens = patches + 1  # CLS
    embed = 2 * patches * 3 * dims.patch**2 * dv
    layer = 2 * tokens * 4 * dv * dv + 4 * tokens * tokens * dv + 4 * tokens * dv * mv
    projector = 2 * patches * (dv * dims.feature_layers * dims.hidden + dims.hidden * dims.hidden)
    return float(crops * (embed + dims.vision_layers * layer + projector))


def _llm_layer_flops(dims: ModelDims, tokens: int) -> float:
    d, q_width, kv_width = dims.hidden, dims.heads * dims.head_dim, dims.kv_heads * dims.head_dim
    projections = 2 * tokens * d * (2 * q_width + 2 * kv_width)
    attention = 4 * tokens * tokens * q_width
    mlp = 6 * tokens * d * dims.intermediate
    return float(projections + attention + mlp)


def _score_flops(dims: ModelDims, strategy: Strategy, tokens: int, queries: int) -> float:
    """Scoring at one stage: keys for every token, queries for the instruction rows, their product."""
    d, q_width, kv_width = dims.hidden, dims.heads * dims.head_dim, dims.kv_heads * dims.head_dim
    return float(2 * tokens * d * kv_width + 2 * queries * d * q_width + 2 * queries * tokens * q_width)


def full_prefill_flops(
    dims: ModelDims,
    tokens_per_layer: list[int],
    text_tokens: int,
    strategy: Strategy | str = "baseline",
    instruction_tokens: int = 0,
    crops: int | None = None,
) -> float:
    """FLOPs of one sample's prefill, as ``torch.utils.flop_counter.FlopCounterMode`` counts them.

    ``tokens_per_layer`` are the visual tokens per LLM layer; ``crops`` the vision-tower crops
    (LLaVA-1.5: 1 per image; LLaVA-NeXT: base + high-resolution tiles; by default estimated as
    original visual tokens / patches per crop).
    """
    strategy = parse(strategy).resolve(dims.layers)
    if crops is None:
        crops = max(1, round(tokens_per_layer[0] / dims.patches_per_crop)) if tokens_per_layer else 0
        if strategy.pool_factor > 1:
            raise ValueError("give crops explicitly for a pooled strategy")
    total = _vision_flops(dims, crops) if crops else 0.0
    total += sum(_llm_layer_flops(dims, text_tokens + n) for n in tokens_per_layer)
    queries = 1 if isinstance(strategy, FastV) else instruction_tokens
    if isinstance(strategy, TransPrune | FastV):
        for layer, _ in strategy.stages:
            total += _score_flops(dims, strategy, text_tokens + tokens_per_layer[layer - 1], queries)
    total += 2.0 * dims.hidden * dims.vocab  # LM head, last position
    return total


def estimate(
    dims: ModelDims,
    n_visual: int,
    strategy: Strategy | str,
    text_tokens: int = 64,
    instruction_tokens: int = 24,
) -> dict:
    """Baseline and pruned TFLOPs of one sample, both conventions (the ``pilot flops`` output)."""
    strategy = parse(strategy).resolve(dims.layers)
    crops = max(1, round(n_visual / dims.patches_per_crop))
    baseline_counts = [n_visual] * dims.layers
    pruned_counts = visual_tokens_per_layer(strategy, n_visual, dims)
    baseline_full = full_prefill_flops(dims, baseline_counts, text_tokens, "baseline", crops=crops)
    pruned_full = full_prefill_flops(dims, pruned_counts, text_tokens, strategy, instruction_tokens, crops=crops)
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
