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


def expand_arms(arms: list[str], dims: ModelDims, n_visual: int) -> tuple[list[str], dict[str, dict]]:
    """``arms`` plus, after each TransPrune arm, its matched controls (each arm once).

    Returns the arms and, per control arm, what it is matched to: ``{"arm": TransPrune arm,
    "relative_error": ..., "matched": bool}`` (the run keeps it in its settings, for the report).
    """
    expanded: list[str] = []
    matched_to: dict[str, dict] = {}
    for arm in arms:
        if arm not in expanded:
            expanded.append(arm)
        strategy = parse(arm)
        if not isinstance(strategy, TransPrune) or strategy.mass:
            continue
        for control in matched_controls(arm, dims, n_visual):
            if control.strategy in expanded:
                continue
            expanded.append(control.strategy)
            matched_to[control.strategy] = {"arm": control.matches, "relative_error": control.relative_error,
                                            "matched": control.matched}
    return expanded, matched_to


def expand_for_model(arms: list[str], model: str | None) -> tuple[list[str], dict[str, dict]]:
    """``expand_arms`` for a model folder (or ``demo``), matched for the family's typical image
    (``default_visual_tokens``: its adapter's ``typical_visual_tokens``)."""
    from pilot.models import resolve_path
    from pilot.pruning.flops import default_visual_tokens, load_dims

    _, path = resolve_path(model)
    dims = load_dims(path)
    return expand_arms(arms, dims, default_visual_tokens(dims))
