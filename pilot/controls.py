"""Control arms at matched compute: for a TransPrune arm, the FastV, PDrop, DivPrune and random
arms whose paper TFLOPs (Eq. 7, visual tokens only, per sample) equal it within 1%.

Each control has one free parameter, solved over the token counts it can actually keep (keep
ratios are fractions of a whole number of tokens, so a solution is the count whose TFLOPs come
nearest): FastV's ``keep`` (after its layer K), PDrop's ``ratio``, DivPrune's ``keep``. Random
takes TransPrune's own schedule (the same counts per layer, so exactly matched). Pooling has only
whole factors: the nearest one is added and marked not matched.

The counts are those of a sample with ``n_visual`` visual tokens (the run uses its first sample's
count); with dynamic resolution other images land near, not exactly at, 1%.
"""

from __future__ import annotations

from dataclasses import dataclass

from pilot.pruning.flops import ModelDims, paper_flops, visual_tokens_per_layer
from pilot.pruning.strategies import DivPrune, FastV, PDrop, RandomPrune, Strategy, TokenPool, TransPrune, parse

TOLERANCE = 0.01
POOL_FACTORS = (2, 3, 4, 5, 6, 7, 8)


@dataclass(frozen=True)
class Control:
    """One control arm for a TransPrune arm: its strategy string and how close its compute is."""

    strategy: str
    matches: str  # the TransPrune arm it is matched to
    paper_tflops: float
    relative_error: float  # (control - target) / target
    matched: bool  # within TOLERANCE


def _tflops(strategy: Strategy | str, n_visual: int, dims: ModelDims) -> float:
    return paper_flops(dims, visual_tokens_per_layer(strategy, n_visual, dims)) / 1e12


def _ratio_text(count: int, n_visual: int) -> float:
    """A keep ratio, as short as possible, that keeps exactly ``count`` of ``n_visual`` tokens."""
    from pilot.pruning.strategies import kept_count

    for digits in (2, 3, 4, 6, 8):
        ratio = round(count / n_visual, digits)
        if 0 < ratio <= 1 and kept_count(n_visual, ratio) == count:
            return ratio
    return count / n_visual


def _nearest(candidates, target: float, n_visual: int, dims: ModelDims) -> tuple[Strategy, float]:
    best = min(candidates, key=lambda s: abs(_tflops(s, n_visual, dims) - target))
    return best, _tflops(best, n_visual, dims)


def matched_controls(arm: str | TransPrune, dims: ModelDims, n_visual: int, fastv_after: int = 2) -> list[Control]:
    """FastV, PDrop, DivPrune and random arms matched to ``arm``, then the nearest pooling arm."""
    transprune = parse(arm).resolve(dims.layers)
    if not isinstance(transprune, TransPrune) or transprune.mass:
        raise ValueError(f"{arm}: matched controls need a TransPrune arm with keep ratios (not score mass)")
    target = _tflops(transprune, n_visual, dims)
    counts = range(1, n_visual + 1)
    positions = transprune.positions
    fastv = [FastV(after=fastv_after, keep=_ratio_text(k, n_visual), positions=positions) for k in counts]
    divprune = [DivPrune(keep=_ratio_text(k, n_visual)) for k in counts]
    pdrop_layers = PDrop(paper_schedule=True).resolve(dims.layers).prune_after
    # PDrop's ratio keeps round(ratio * present) per stage: try the ratios that keep k after the first.
    pdrop = [PDrop(prune_after=pdrop_layers, ratio=_ratio_text(k, n_visual), positions=positions) for k in counts]
    random = RandomPrune(prune_after=transprune.prune_after, keep=transprune.keep, positions=positions)
    pools = [TokenPool(factor) for factor in POOL_FACTORS]
    controls = []
    for candidates in (fastv, pdrop, divprune, [random], pools):
        strategy, tflops = _nearest(candidates, target, n_visual, dims)
        error = (tflops - target) / target
        matched = abs(error) <= TOLERANCE and not isinstance(strategy, TokenPool)
        controls.append(Control(str(strategy), str(parse(arm)), tflops, error, matched))
    return controls
