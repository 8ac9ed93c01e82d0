"""The search space: a TransPrune schedule drawn from an Optuna trial.

Stages: 1 to 3, after strictly increasing layers in [1, depth - 1]. Ratio mode: keep ratios
non-increasing (each stage keeps a fraction of the previous stage's ratio). Mass mode: a
score-mass threshold per stage. Plus the accumulation start (up to the first prune layer),
alpha and the position numbering after a drop (the authors renumber; a model whose answers lean
on where its image tokens sit can lose far less with the original positions, so it is searched,
not assumed). The parameters are named so that a stored trial reproduces its strategy.
"""

from __future__ import annotations

import optuna

from pilot.pruning import TransPrune
from pilot.pruning.strategies import POSITION_MODES

MODES = ("ratio", "mass")


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
    for stage in range(stages):
        if mode == "mass":
            ratios.append(round(trial.suggest_float(f"mass_{stage}", 0.3, 0.99), 3))
        else:
            # A share of the previous ratio keeps the ratios non-increasing by construction.
            share = trial.suggest_float(f"share_{stage}", 0.05, 1.0)
            ratios.append(round(max(0.01, (ratios[-1] if ratios else 1.0) * share), 4))
    accumulate_from = trial.suggest_int("accumulate_from", 1, layers[0])
    alpha = round(trial.suggest_float("alpha", 0.0, 1.0), 3)
    schedule = {"mass": tuple(ratios)} if mode == "mass" else {"keep": tuple(ratios)}
    positions = trial.suggest_categorical("positions", position_modes)
    return TransPrune(prune_after=tuple(layers), accumulate_from=accumulate_from, alpha=alpha, positions=positions,
                      **schedule)
