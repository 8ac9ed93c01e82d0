"""How many paired samples a verdict needs: sample-size planning for a pruned arm against the baseline.

No torch here (the dashboard imports it).

The verdict (``pilot.metrics.budget_verdict``) says a budget B is met *with confidence* when the upper end U of
the drop's 95% interval is at most B. Each end of the report's intervals is a one-sided 97.5% bound valid at any n
(``pilot.bounds``; docs/sample-sizes.md), so the number of samples a verdict needs is read from that bound itself:
the smallest n at which the bound, computed on n samples that look like the ones observed, falls under B.

Agreement (the share p of changed answers; no labels needed). The upper end is the exact Clopper-Pearson bound
``beta(0.975; k + 1, n - k)``; ``samples_for_agreement`` finds the smallest n with ``k = round(p * n)`` whose bound
is at most B. With no answer changed the bound is ``1 - 0.025**(1/n)``, so ``n = ceil(log(0.025) / log(1 - B))``
(183 samples for B = 2%, 121 for 3%, 367 for 1%).

Accuracy and the open-ended scores (means of per-sample paired differences d_i in [-1, 1]: ANLS, exact match,
token F1, relaxed accuracy, JSON field scores against references; and d_i = 1 - similarity in [0, 1] for the
label-free similarities to the baseline). The upper end is the betting bound of Waudby-Smith and Ramdas;
``samples_for_bound`` evaluates it on n synthetic differences with the observed mean D and spread s, on the
lumpiest distribution with them (values -1, 0 and 1, or 0 and a for [0, 1]: the hardest case for the bound, so
the estimate errs on the safe side), doubling n and then bisecting to 2%. For accuracy the differences are -1,
0, 1, and D with the discordance q (the share of samples whose correctness differs) fix the distribution exactly.
Past ``EXACT_UP_TO`` samples the bound's large-n width ``s * sqrt(2 * log(1/0.025) / n)`` gives
``n = ceil(2 * log(40) * s**2 / (B - D)**2)`` (an over-estimate: the bound is a little narrower).

Macro-F1 (not a per-sample mean). Its interval is the paired bootstrap's, widened to at least the accuracy
bound's half-width; so the plan is the larger of two numbers: the samples for the accuracy bound's half-width to
fit the gap ``B - D``, and the bootstrap's upper half-width ``U_boot - D`` on the n_now samples behind it scaled
as 1/sqrt(n), ``ceil(n_now * ((U_boot - D) / (B - D))**2)``.

All assume that the observed drop and spread hold on more data of the same kind. When the observed drop is
already at or over the budget, more samples will not show the budget met: ``samples_needed`` is then ``None``
with a ``reason``, as it is when there is no paired result, and when the verdict is refused because the baseline
scores at the floor of the metric.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from pilot.bounds import ALPHA, betting_upper, clopper_pearson
from pilot.metrics import (
    _BUDGET_TOL,
    FLOOR_START,
    METRICS,
    SCORE_METRICS,
    VS_BASELINE_METRICS,
    budget_verdict,
    metric_key,
)

Z = 1.959963984540054  # the normal quantile of a one-sided 97.5% bound (the large-n width of macro-F1's bootstrap)
_TITLES = {"f1": "macro-F1", "accuracy": "accuracy", "agreement": "answer change", "anls": "ANLS",
           "exact_match": "exact match", "token_f1": "token F1", "relaxed_accuracy": "relaxed accuracy",
           "relaxed_accuracy_lenient": "relaxed accuracy (lenient numbers)",
           "field_f1": "JSON field F1", "field_precision": "JSON field precision", "field_recall": "JSON field recall",
           "anls_vs_baseline": "ANLS to baseline", "token_f1_vs_baseline": "token F1 to baseline"}
# Every metric has a title, also a text metric added to pilot.scoring later (its name, spaced).
TITLES = {key: _TITLES.get(metric_key(key), key.replace("_", " ")) for key in (*_TITLES, *METRICS, "f1_macro", "acc")}
# Past this many samples the bound's large-n width stands in for evaluating it (each evaluation is O(n)).
EXACT_UP_TO = 100_000
_LARGEST = 10**9  # no search beyond a billion samples

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


def _smallest(ok: Callable[[int], bool], start: int, precision: float = 0.0) -> int | None:
    """The smallest n >= start with ``ok(n)`` (``ok`` about monotone: false, then true): doubling, then
    bisection to a share ``precision`` of n (0: exact); None when not even ``_LARGEST`` is enough."""
    low, high = max(start, 1) - 1, max(start, 1)
    while not ok(high):
        if high >= _LARGEST:
            return None
        low, high = high, min(2 * high, _LARGEST)
    while high - low > max(1, int(high * precision)):
        mid = (low + high) // 2
        low, high = (low, mid) if ok(mid) else (mid, high)
    return high


def samples_for_agreement(disagreement: float, max_drop: float) -> int | None:
    """Paired samples for the Clopper-Pearson upper bound of the share of changed answers to reach ``max_drop``
    if a share ``disagreement`` of answers keeps changing; None when that share is at or over the budget (or the
    budget is not a share in (0, 1))."""
    if max_drop - disagreement <= _BUDGET_TOL or not 0 < max_drop < 1:
        return None

    def ok(n: int) -> bool:
        return clopper_pearson(round(disagreement * n), n, ALPHA)[1] <= max_drop + _BUDGET_TOL

    return _smallest(ok, 1)


def _lumpy(n: int, drop: float, second_moment: float, low: float) -> np.ndarray:
    """n differences in [low, 1] with mean ``drop`` and mean square ``second_moment`` on the fewest values: -1, 0
    and 1 (low = -1), or 0 and a (low = 0); in a fixed shuffled order."""
    out = np.zeros(n)
    if low < 0:
        m2 = min(max(second_moment, abs(drop)), 1.0)
        plus, minus = round(n * (m2 + drop) / 2), round(n * (m2 - drop) / 2)
        out[:plus], out[plus:plus + minus] = 1.0, -1.0
    elif drop > 0:
        a = min(1.0, max(second_moment / drop, drop))
        out[:round(n * drop / a)] = a
    return np.random.default_rng(0).permutation(out)


def samples_for_bound(drop: float, sd: float, max_drop: float, low: float = -1.0, target: float | None = None,
                      ) -> int | None:
    """Paired samples for the betting upper bound (``pilot.bounds``) of a mean paired difference in [low, 1]
    (mean ``drop``, spread ``sd``) to reach ``max_drop`` (or its half-width to reach ``target``); None when
    ``drop >= max_drop``."""
    if sd < 0:
        raise ValueError(f"sd {sd}: a standard deviation is >= 0")
    gap = (max_drop - drop) if target is None else target
    if gap <= _BUDGET_TOL:
        return None
    second = sd * sd + drop * drop
    guess = max(math.ceil(2 * math.log(1 / ALPHA) * sd * sd / (gap * gap)), 1)
    if guess > EXACT_UP_TO:
        return guess

    def ok(n: int) -> bool:
        sample = _lumpy(n, drop, second, low)
        return betting_upper(sample, low, 1.0) - float(sample.mean()) <= gap + _BUDGET_TOL

    found = _smallest(ok, max(1, guess // 4), precision=0.02)  # each try costs O(n): 2% is close enough
    return found if found is not None else guess


def samples_for_accuracy(drop: float, discordance: float, max_drop: float, target: float | None = None,
                         ) -> int | None:
    """Paired samples for the betting upper bound of the accuracy drop to reach ``max_drop`` (or its half-width
    ``target``), with per-sample differences -1, 0, 1 of mean ``drop`` and a share ``discordance`` of them not 0;
    None when ``drop >= max_drop``."""
    if not 0 <= discordance <= 1 or abs(drop) > discordance + 1e-12:
        raise ValueError(f"discordance {discordance} and drop {drop}: need |drop| <= discordance <= 1")
    return samples_for_bound(drop, math.sqrt(max(discordance - drop * drop, 0.0)), max_drop, -1.0, target)


def samples_by_scaling(n_now: int, drop: float, drop_ci_high: float, max_drop: float) -> int | None:
    """Paired samples for an upper bound at ``drop_ci_high`` on ``n_now`` samples to reach ``max_drop``, with the
    interval's half-width shrinking as 1/sqrt(n): ``ceil(n_now * ((U - D) / (B - D))**2)``."""
    gap = max_drop - drop
    if gap <= _BUDGET_TOL:
        return None
    half = drop_ci_high - drop
    return max(1, math.ceil(n_now * (half / gap) ** 2 - 1e-9))


def samples_for_mean(drop: float, sd: float, max_drop: float, low: float = -1.0) -> int | None:
    """Paired samples for the upper bound of a mean paired difference (in [low, 1], spread ``sd`` per sample) to
    reach ``max_drop`` (``samples_for_bound``); None when ``drop >= max_drop``."""
    return samples_for_bound(drop, sd, max_drop, low)


def plan_comparison(comparison: Mapping[str, Any] | None, max_drop: float, metric: str = "f1") -> dict:
    """The sample-size plan of one pruned arm from its ``vs_baseline`` comparison (``pilot.metrics.compare``).

    Keys: ``metric``, ``max_drop``, ``n`` (paired samples now), ``drop``, ``drop_ci_high``, ``discordance``,
    ``met_with_confidence``, ``samples_needed`` (paired samples in all, or None), ``more_needed`` (beyond ``n``,
    or None), ``method`` ("betting bound" / "bootstrap scaling" / "clopper-pearson" / None) and ``reason``
    (always a sentence). ``n`` counts the labelled pairs for macro-F1 and accuracy, every pair for agreement.
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
    if verdict.get("reason"):  # refused: the baseline scores at the floor
        return {**out, "reason": verdict["reason"]}
    if verdict["met_with_confidence"]:
        return {**out, "samples_needed": n, "more_needed": 0, "reason": MET}
    if max_drop - drop <= _BUDGET_TOL:
        return {**out, "reason": WILL_NOT_HELP}

    needed, method = None, None
    if key == "agreement":
        needed, method = samples_for_agreement(drop, max_drop), "clopper-pearson"
    elif key in SCORE_METRICS or key in VS_BASELINE_METRICS:
        if sd is None and n == 1:
            sd = 0.0  # one pair: no spread seen yet; the bound's own width says how many at the least
        if sd is not None:
            low = 0.0 if key in VS_BASELINE_METRICS else -1.0
            needed, method = samples_for_bound(drop, float(sd), max_drop, low), "betting bound"
    elif discordance is not None:
        acc_drop = (int(discordant["baseline_only"]) - int(discordant["pruned_only"])) / n
        # accuracy: its own bound; macro-F1: its interval is at least the accuracy bound's half-width wide
        needed = samples_for_accuracy(acc_drop, discordance, max_drop, target=max_drop - drop)
        method = "betting bound"
        boot = comparison.get("f1_delta_ci_bootstrap")
        if key == "f1" and boot and -float(boot[0]) - drop > 1e-12 and needed is not None:
            scaled = samples_by_scaling(n, drop, -float(boot[0]), max_drop)
            if scaled is not None and scaled > needed:
                needed, method = scaled, "bootstrap scaling"
    if needed is None:
        return {**out, "reason": NO_DISCORDANCE}
    # Not met on n samples: at least one more, whatever the projection says.
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
        if str(plan["reason"]).startswith(FLOOR_START):
            return f"{seen}: {plan['reason']}."
        return f"{seen}: no sample-size estimate ({plan['reason']})."
    return (f"{seen}: needs {plan['more_needed']:,} more paired samples ({plan['samples_needed']:,} in all) for the "
            f"upper end to fall under the budget of {budget}: {collect_verb(plan['metric'])} "
            f"{plan['more_needed']:,} more images, {ASSUMES}.")


def collect_verb(metric: str) -> str:
    """What more paired samples take: running more images (agreement, similarities to the baseline), reference
    answers (open-ended scores) or labels (macro-F1, accuracy)."""
    if metric in ("agreement", *VS_BASELINE_METRICS):
        return "run about"
    return "get reference answers for about" if metric in SCORE_METRICS else "label about"


def plan_rows(plans: Sequence[Mapping[str, Any]]) -> list[dict]:
    """The ``pilot plan --json`` rows: strategy, n, drop, drop_ci_high, samples_needed, reason (and a few more)."""
    keys = ("arm", "strategy", "metric", "max_drop", "n", "drop", "drop_ci_high", "discordance", "samples_needed",
            "more_needed", "method", "reason")
    return [{k: p.get(k) for k in keys} for p in plans]
