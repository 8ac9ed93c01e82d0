"""Early stopping of trials that already break the budget, with a statistical margin."""

from __future__ import annotations

import optuna


class BudgetPruner(optuna.pruners.BasePruner):
    """Prune a trial once the *lower* end of its drop's 95% interval exceeds the budget.

    Trials report, after each chunk of the tuning split, the lower bound of the paired-bootstrap
    95% interval of the metric's drop versus baseline. Even the optimistic end of that interval
    breaking the budget means the full split is very unlikely to meet it; a noisy early estimate
    alone never prunes.
    """

    def __init__(self, max_drop: float, min_samples: int = 0):
        self.max_drop = max_drop
        self.min_samples = min_samples

    def prune(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> bool:
        step = trial.last_step
        if step is None:
            return False
        evaluated = trial.user_attrs.get("evaluated_samples", 0)
        return evaluated >= self.min_samples and trial.intermediate_values[step] > self.max_drop
