"""How many paired samples a verdict needs: sample-size planning for a pruned arm against the baseline.

No torch here (the dashboard imports it).

The verdict (``pilot.metrics.budget_verdict``) says a budget B is met *with confidence* when the upper end U
of the drop's 95% interval is at most B. The report's intervals are two-sided 95% (2.5th and 97.5th
percentiles of the paired bootstrap), so U is a one-sided 97.5% bound and ``Z = 1.96``.

Accuracy (from first principles). Per sample, d_i = correct_baseline - correct_pruned is -1, 0 or 1, with mean
D (the drop) and variance ``var(d) = q - D**2``, where q, the discordance, is the share of samples whose
correctness differs between the arms (McNemar's discordant pairs / n). With the normal approximation of the
mean of the paired differences, ``U ~ D + Z * sd / sqrt(n)``, so U falls under B once

    n = ceil((Z * sqrt(q - D**2) / (B - D)) ** 2)

paired samples are behind it. At that n, U <= B in about half of the repetitions of the pilot when the true
drop and discordance equal the observed ones (the point estimate lands on either side of D alike); more
samples give more certainty (tests/test_plan.py checks this against simulation).

Macro-F1 (scaled bootstrap). Macro-F1's drop is not a mean of per-sample differences, so its spread is read
from the report's own bootstrap interval: its upper half-width ``U - D`` on the n_now samples behind it shrinks
as 1/sqrt(n), which gives ``n = ceil(n_now * ((U - D) / (B - D)) ** 2)`` (for accuracy this is the same
number as above, up to the bootstrap's own noise). Without a usable interval the accuracy discordance stands
in as the proxy for the spread.

Agreement (pilots without labels). The drop is the share p of answers that change, and its interval is the
Wilson score interval (``pilot.metrics.wilson_interval``), whose upper end falls under B exactly when
``(B - p)**2 >= Z**2 * B * (1 - B) / n``, i.e. at

    n = ceil(Z**2 * B * (1 - B) / (B - p)**2)

paired samples (no labels needed); unlike the normal approximation it stays finite and honest when no answer
changed at all (p = 0: 188 samples for B = 2%).

Open-ended scores (ANLS, exact match, token F1, relaxed accuracy, JSON field F1 against references). The drop
is the mean of the per-sample paired differences d_i = score_baseline - score_pruned, whose interval is a
bootstrap of that mean; from the observed standard deviation s of the d_i, the normal approximation gives

    n = ceil((Z * s / (B - D)) ** 2)

(tests/test_plan.py checks it against simulation). The label-free similarities to the baseline (ANLS or token
F1 of each pruned answer against the baseline's) are the same with d_i = 1 - similarity_i.

All assume that the observed drop and spread hold on more data of the same kind. When the observed drop is
already at or over the budget, more samples will not show the budget met: ``samples_needed`` is then ``None``
with a ``reason``, as it is when there is no paired result or no discordance information.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from pilot.metrics import _BUDGET_TOL, SCORE_METRICS, VS_BASELINE_METRICS, budget_verdict, metric_key

Z = 1.959963984540054  # two-sided 95% interval -> its upper end is a one-sided 97.5% bound
TITLES = {"f1": "macro-F1", "accuracy": "accuracy", "agreement": "answer change", "anls": "ANLS",
          "exact_match": "exact match", "token_f1": "token F1", "relaxed_accuracy": "relaxed accuracy",
          "relaxed_accuracy_lenient": "relaxed accuracy (lenient numbers)",
          "field_f1": "JSON field F1", "field_precision": "JSON field precision", "field_recall": "JSON field recall",
          "anls_vs_baseline": "ANLS to baseline", "token_f1_vs_baseline": "token F1 to baseline"}

MET = "met with confidence on the current samples"
WILL_NOT_HELP = "the observed drop already reaches the budget: more samples will not help"
NO_PAIRS = "no paired results with the baseline"
NO_DISCORDANCE = "no discordance information"
ASSUMES = "if the observed drop and discordance hold on more samples"


def _normal_n(variance: float, gap: float, z: float = Z) -> int | None:
    """``ceil((z * sqrt(variance) / gap)**2)``, at least 1; None without a positive gap or spread."""
    if gap <= _BUDGET_TOL or variance <= 0:
        return None
    return max(1, math.ceil((z * math.sqrt(variance) / gap) ** 2 - 1e-9))


def samples_for_accuracy(drop: float, discordance: float, max_drop: float, z: float = Z) -> int | None:
    """Paired samples for the upper bound of the accuracy drop to reach ``max_drop``:
    ``ceil((z * sqrt(discordance - drop**2) / (max_drop - drop))**2)``; None when ``drop >= max_drop`` (or no
    discordance at all: then there is no spread to shrink)."""
    if not 0 <= discordance <= 1 or abs(drop) > discordance + 1e-12:
        raise ValueError(f"discordance {discordance} and drop {drop}: need |drop| <= discordance <= 1")
    return _normal_n(discordance - drop * drop, max_drop - drop, z)


def samples_for_agreement(disagreement: float, max_drop: float, z: float = Z) -> int | None:
    """Paired samples for the Wilson upper bound of the share of changed answers to reach ``max_drop``:
    ``ceil(z**2 * B * (1 - B) / (B - p)**2)``; None when ``p >= B`` (or B is not a share in (0, 1))."""
    gap = max_drop - disagreement
    if gap <= _BUDGET_TOL or not 0 < max_drop < 1:
        return None
    return max(1, math.ceil(z * z * max_drop * (1 - max_drop) / (gap * gap) - 1e-9))


def samples_by_scaling(n_now: int, drop: float, drop_ci_high: float, max_drop: float) -> int | None:
    """Paired samples for an upper bound at ``drop_ci_high`` on ``n_now`` samples to reach ``max_drop``, with the
    interval's half-width shrinking as 1/sqrt(n): ``ceil(n_now * ((U - D) / (B - D))**2)``."""
    gap = max_drop - drop
    if gap <= _BUDGET_TOL:
        return None
    half = drop_ci_high - drop
    return max(1, math.ceil(n_now * (half / gap) ** 2 - 1e-9))


def samples_for_mean(drop: float, sd: float, max_drop: float, z: float = Z) -> int | None:
    """Paired samples for the upper bound of a mean paired difference (spread ``sd`` per sample) to reach
    ``max_drop``: ``ceil((z * sd / (max_drop - drop))**2)``; None when ``drop >= max_drop`` or ``sd`` is 0."""
    if sd < 0:
        raise ValueError(f"sd {sd}: a standard deviation is >= 0")
    return _normal_n(sd * sd, max_drop - drop, z)


def plan_comparison(comparison: Mapping[str, Any] | None, max_drop: float, metric: str = "f1") -> dict:
    """The sample-size plan of one pruned arm from its ``vs_baseline`` comparison (``pilot.metrics.compare``).

    Keys: ``metric``, ``max_drop``, ``n`` (paired samples now), ``drop``, ``drop_ci_high``, ``discordance``,
    ``met_with_confidence``, ``samples_needed`` (paired samples in all, or None), ``more_needed`` (beyond ``n``,
    or None), ``method`` ("discordance" / "bootstrap scaling" / "wilson" / None) and ``reason`` (always a
    sentence). ``n`` counts the labelled pairs for macro-F1 and accuracy, every pair for agreement.
    """
    key = metric_key(metric)
    comparison = comparison or {}
    n = int(comparison.get("n_paired") or 0)
    out: dict[str, Any] = {"metric": key, "max_drop": max_drop, "n": n, "drop": None, "drop_ci_high": None,
                           "discordance": None, "met_with_confidence": None, "samples_needed": None,
                           "more_needed": None, "method": None, "reason": NO_PAIRS}
    verdict = budget_verdict(comparison, key, max_drop)
    if not n or verdict["drop"] is None:
        return out
    drop, high = verdict["drop"], verdict["drop_ci_high"]
    discordant = comparison.get("discordant") or {}
    discordance = None
    sd = None
    if key == "agreement":
        discordance = drop  # the share of answers that change
    elif key in SCORE_METRICS:
        n, sd = int(comparison.get(f"{key}_n") or 0), comparison.get(f"{key}_delta_sd")
    elif key in VS_BASELINE_METRICS:
        n, sd = int(comparison.get("vs_baseline_n") or 0), comparison.get(f"{key}_sd")
    else:
        n = int(comparison.get("n_labelled", n) or 0)  # the label-based drops are on the labelled pairs
        if n and "baseline_only" in discordant and "pruned_only" in discordant:
            discordance = (int(discordant["baseline_only"]) + int(discordant["pruned_only"])) / n
    out["n"] = n
    out.update(drop=drop, drop_ci_high=high, discordance=discordance,
               met_with_confidence=verdict["met_with_confidence"])
    if verdict["met_with_confidence"]:
        return {**out, "samples_needed": n, "more_needed": 0, "reason": MET}
    if max_drop - drop <= _BUDGET_TOL:
        return {**out, "reason": WILL_NOT_HELP}

    needed, method = None, None
    if key == "agreement":
        needed, method = samples_for_agreement(drop, max_drop), "wilson"
    elif key in SCORE_METRICS or key in VS_BASELINE_METRICS:
        needed, method = (None, None) if sd is None else (samples_for_mean(drop, sd, max_drop), "observed spread")
    elif key == "f1" and high is not None and high - drop > 1e-12:
        needed, method = samples_by_scaling(n, drop, high, max_drop), "bootstrap scaling"
    elif discordance is not None:
        # accuracy: its own drop; macro-F1 without an interval: the accuracy discordance as the proxy of the spread
        acc_drop = (int(discordant["baseline_only"]) - int(discordant["pruned_only"])) / n
        needed, method = _normal_n(discordance - acc_drop * acc_drop, max_drop - drop), "discordance"
    if needed is None:
        return {**out, "reason": NO_DISCORDANCE}
    # Not met on n samples: at least one more, whatever the approximation says.
    needed = max(needed, n + 1)
    return {**out, "samples_needed": needed, "more_needed": needed - n, "method": method, "reason": ASSUMES}


def plan_report(report: Mapping[str, Any], max_drop: float, metric: str = "f1") -> list[dict]:
    """One plan per pruned arm of a run's report (``pilot.summaries.build_report``), with ``arm`` and
    ``strategy``."""
    plans = []
    for arm in report.get("arms") or []:
        if arm.get("strategy") == "baseline" and not arm.get("vs_baseline"):
            continue
        plans.append({"arm": arm.get("name"), "strategy": arm.get("strategy"),
                      **plan_comparison(arm.get("vs_baseline"), max_drop, metric)})
    return plans


def _pts(value: float | None) -> str:
    return "-" if value is None else f"{value * 100:.1f} pts"


def _share(value: float | None) -> str:
    return "-" if value is None else f"{value * 100:.1f}%"


def plan_sentence(plan: Mapping[str, Any]) -> str:
    """The plan as one sentence for a person (the dashboard's verdict panel, the tuner's closing message)."""
    title = TITLES[plan["metric"]]
    budget = _pts(plan["max_drop"])
    if plan["drop"] is None:
        return f"No verdict yet: {NO_PAIRS}."
    seen = (f"{title} drop {_pts(plan['drop'])} (95% upper end {_pts(plan['drop_ci_high'])}) on "
            f"{plan['n']:,} paired samples")
    if plan["metric"] == "agreement":
        budget = f"{_share(plan['max_drop'])} of answers changed"
        seen = (f"{_share(plan['drop'])} of answers change (95% upper end {_share(plan['drop_ci_high'])}) on "
                f"{plan['n']:,} paired samples")
    if plan["met_with_confidence"]:
        return f"{seen}: the budget of {budget} is met with confidence; no more samples needed."
    if plan["samples_needed"] is None:
        if plan["reason"] == WILL_NOT_HELP:
            return (f"{seen}: the observed drop already reaches the budget of {budget}, so more samples will not "
                    "show it met.")
        return f"{seen}: no sample-size estimate ({plan['reason']})."
    verb = "run about" if plan["metric"] == "agreement" else "label about"
    return (f"{seen}: {verb} {plan['more_needed']:,} more images ({plan['samples_needed']:,} paired samples "
            f"in all) for the upper end to fall under the budget of {budget}, {ASSUMES}.")


def plan_rows(plans: Sequence[Mapping[str, Any]]) -> list[dict]:
    """The ``pilot plan --json`` rows: strategy, n, drop, drop_ci_high, samples_needed, reason (and a few more)."""
    keys = ("arm", "strategy", "metric", "max_drop", "n", "drop", "drop_ci_high", "discordance", "samples_needed",
            "more_needed", "method", "reason")
    return [{k: p.get(k) for k in keys} for p in plans]
