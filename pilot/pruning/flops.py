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

Vision towers are each family's: its adapter answers, torch-free, the tower's and projector's
FLOPs (``Family.vision_flops``), its dimensions (``Family.dims``), a typical image's visual tokens
and its presets (see pilot/pruning/families and docs/cost-model.md). This module asks the adapter
and counts the language model. Fixed-crop towers are sized by ``crops``; dynamic-resolution ones
(``ModelDims.dynamic_resolution``) by the sample's *original* visual tokens
(``visual_tokens_original``: pooling acts after the tower, so the tower still sees them) or,
exactly, by its ``image_grid_thw`` rows (``image_grids``).

Not counted (as FlopCounterMode does not count them): norms, activations, rotary / position
embeddings, biases (``addmm`` counts the matmul only), DeepStack's additions. FlopCounterMode
does not see CPU sdpa kernels nor ``grouped_mm`` experts; compare against it with eager
attention and eager experts.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path

from pilot.pruning.families import by_name, presets
from pilot.pruning.families.dims import ModelDims, frames, merged_tokens
from pilot.pruning.strategies import Strategy, kept_count, parse

# Public dimensions of released models, by preset name: each family's ``presets``.
PRESETS: dict[str, dict] = presets()


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
    """Visual tokens of one typical image of the model's family (``pilot flops``' default): a
    LLaVA crop (576), the paper's LLaVA-NeXT 2880, 1024 for the dynamic-resolution families, ...
    (``Family.typical_visual_tokens``)."""
    return by_name(dims.family).typical_visual_tokens(dims)


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
                merged = [(h // s, w // s) for h, w in frames(dims, image_grids)]
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

    * fixed crops: ``crops`` (LLaVA-1.5: 1 per image; LLaVA-NeXT: base + high-resolution tiles); by
      default estimated from ``visual_tokens_original`` or else ``tokens_per_layer[0]`` divided
      by the LM tokens per crop.
    * dynamic resolution (Qwen2.5-VL, Qwen3-VL, Mistral 3): ``image_grids`` (the sample's
      ``image_grid_thw`` rows, exact), else ``visual_tokens_original`` (the merged tokens before
      any pruning or pooling; one image assumed), else ``tokens_per_layer[0]``. ``crops`` is ignored.

    The family's adapter computes the tower (``Family.vision_flops``); a run asks it how to size
    each sample's tower (``Family.tower_size``).

    A pooled strategy shrinks ``tokens_per_layer[0]`` below what the tower saw, so it needs
    ``crops`` / ``visual_tokens_original`` / ``image_grids``.
    """
    strategy = parse(strategy).resolve(dims.layers)
    pooled = strategy.pool_factor > 1
    family = by_name(dims.family)
    if dims.dynamic_resolution:
        if image_grids is not None:
            merged = merged_tokens(dims, image_grids)
            if visual_tokens_original is not None and visual_tokens_original != merged:
                raise ValueError(f"visual_tokens_original {visual_tokens_original} disagrees with image_grids "
                                 f"{[list(g) for g in image_grids]} ({merged} merged tokens)")
        elif visual_tokens_original is not None:
            merged = visual_tokens_original
        elif pooled:
            raise ValueError("give visual_tokens_original (or image_grids) for a pooled strategy")
        else:
            merged = tokens_per_layer[0] if tokens_per_layer else 0
        total = family.vision_flops(dims, merged_tokens=merged, image_grids=image_grids) if merged else 0.0
    else:
        if crops is None:
            original = visual_tokens_original
            if original is None:
                if pooled:
                    raise ValueError("give crops (or visual_tokens_original) explicitly for a pooled strategy")
                original = tokens_per_layer[0] if tokens_per_layer else 0
            crops = max(1, round(original / dims.tokens_per_crop)) if original else 0
        total = family.vision_flops(dims, crops=crops) if crops else 0.0
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
