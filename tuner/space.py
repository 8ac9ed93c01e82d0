"""The search space: a TransPrune schedule drawn from an Optuna trial, and the known-good points it starts from.

Stages: 1 to 3, after strictly increasing layers in [1, depth - 1]. Ratio mode: the *final* keep ratio is drawn
directly (``keep_final``, log-uniform), and each earlier stage keeps a share of the way from it back to 1
(``between_i``: stage i keeps ``final + (1 - final) * between_0 * ... * between_i``), so the ratios are
non-increasing by construction. The final ratio decides most of the compute (the last stage runs through most
layers), so one parameter moves a trial along the compute axis and TPE can follow it; before, the final ratio was
a product of three shares and a cheaper schedule needed three parameters to move together. Mass mode: a
score-mass threshold per stage. Plus the accumulation start (up to the first prune layer), alpha and the position
numbering after a drop (the authors renumber; a model whose answers lean on where its image tokens sit can lose far
less with the original positions, so both are searched where the model's family allows both). The parameters are
named so that a stored trial reproduces its strategy.

Warm start (``warm_start_points``): the paper's schedule shape (stages after layers 7/9/12 of 32, mapped onto the
model's depth; ratios 1 - (1 - r)/7, 1 - 3(1 - r)/7, r) at several final keep ratios r, in every position mode the
family allows: the tuner enqueues them as its first trials, so the search sees at least what that grid sees.
"""

from __future__ import annotations

import optuna

from pilot.pruning import TransPrune
from pilot.pruning.strategies import PAPER_PRUNE_AFTER, POSITION_MODES, map_layers_to_depth

MODES = ("ratio", "mass")
MIN_KEEP = 0.02  # the smallest final keep ratio searched
WARM_START_KEEP = (0.5, 0.25, 0.125)  # final keep ratios of the paper-shaped warm-start points
# The paper's shape between the stages: stage 1 keeps 6/7 of the way back to 1, stage 2 keeps 4/7 (= 6/7 * 2/3).
PAPER_BETWEEN = (6 / 7, 2 / 3)


def _round(value: float) -> float:
    return round(value, 4)


def suggest(trial: optuna.trial.BaseTrial, depth: int, mode: str = "ratio", max_stages: int = 3,
            position_modes: tuple[str, ...] = POSITION_MODES) -> TransPrune:
    """Draw a valid schedule for a ``depth``-layer LLM (every draw is a valid strategy).

    ``position_modes`` are the numberings the model's family accepts (M-RoPE families: original only).
    """
    if mode not in MODES:
        raise ValueError(f"mode {mode!r}: use one of {MODES}")
    stages = trial.suggest_int("stages", 1, min(max_stages, depth - 1))
    layers: list[int] = []
    for stage in range(stages):
        low = layers[-1] + 1 if layers else 1
        high = depth - 1 - (stages - stage - 1)  # leave room for the later stages
        layers.append(trial.suggest_int(f"layer_{stage}", low, high))
    ratios: list[float] = []
    if mode == "mass":
        for stage in range(stages):
            ratios.append(round(trial.suggest_float(f"mass_{stage}", 0.3, 0.99), 3))
    else:
        final = trial.suggest_float("keep_final", MIN_KEEP, 1.0, log=True)
        way_back = 1.0
        for stage in range(stages - 1):
            way_back *= trial.suggest_float(f"between_{stage}", 0.0, 1.0)
            ratios.append(final + (1 - final) * way_back)
        ratios.append(final)
        ratios = [max(0.01, _round(r)) for r in ratios]
        ratios = [max(ratios[i:]) for i in range(len(ratios))]  # rounding must not make them grow
    accumulate_from = trial.suggest_int("accumulate_from", 1, layers[0])
    alpha = round(trial.suggest_float("alpha", 0.0, 1.0), 3)
    schedule = {"mass": tuple(ratios)} if mode == "mass" else {"keep": tuple(ratios)}
    positions = trial.suggest_categorical("positions", position_modes)
    return TransPrune(prune_after=tuple(layers), accumulate_from=accumulate_from, alpha=alpha, positions=positions,
                      **schedule)


def warm_start_points(depth: int, position_modes: tuple[str, ...] = POSITION_MODES,
                      final_keep: tuple[float, ...] = WARM_START_KEEP, max_stages: int = 3) -> list[dict]:
    """Parameters of the paper-shaped schedules (ratio mode) at each final keep ratio in each position mode, for
    ``study.enqueue_trial``: ``suggest`` turns each into ``paper_shaped(depth, r, positions)``."""
    stages = min(max_stages, len(PAPER_PRUNE_AFTER), depth - 1)
    layers = map_layers_to_depth(PAPER_PRUNE_AFTER[-stages:], depth)
    points = []
    for keep in final_keep:
        for positions in position_modes:
            params: dict = {"stages": stages, **{f"layer_{i}": layer for i, layer in enumerate(layers)},
                            "keep_final": keep, "accumulate_from": layers[0], "alpha": 0.5, "positions": positions}
            params.update({f"between_{i}": share for i, share in enumerate(PAPER_BETWEEN[: stages - 1])})
            points.append(params)
    return points


def paper_shaped(depth: int, final_keep: float, positions: str | None = None) -> TransPrune:
    """The schedule a warm-start point stands for (also what ``bench/tradeoff.py`` and ``bench/tuner.py`` run):
    the paper's 3-stage shape mapped to ``depth``, its final keep ratio set to ``final_keep``."""
    trial = optuna.trial.FixedTrial(warm_start_points(depth, (positions or "compact",), (final_keep,))[0])
    strategy = suggest(trial, depth)
    if positions is None:
        return TransPrune(prune_after=strategy.prune_after, keep=strategy.keep, alpha=strategy.alpha,
                          accumulate_from=strategy.accumulate_from)
    return strategy
