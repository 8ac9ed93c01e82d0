"""Statistics of blind pairwise judgements: outcome shares clustered by item, agreement, position bias, screens.

Pure functions on plain lists (no store): ``pilot.review.results`` feeds them what the store holds, the tests
feed them simulations.

Intervals. A task (one item: one sample's baseline and pruned answers) may be judged by several reviewers, whose
judgements of it are not independent. Each share is the weighted mean over tasks of the share of that task's
judgements with the outcome (weight: the changed pairs of the task's stratum per task drawn from it), and its
interval is a Wilson score interval at the effective sample size of that clustered mean (Korn and Graubard 1998):
``n_eff = p (1 - p) / var(p)`` with ``var(p)`` the linearised variance of the weighted mean over tasks, ``n_eff``
at most the number of judgements; when every task agrees (``p`` = 0 or 1, no variance to estimate) ``n_eff`` is the
number of tasks, so the boundary keeps a non-degenerate interval. ``tests/test_review_stats.py`` checks coverage
by simulation at small n and at the boundary.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats

OUTCOMES = ("pruned_worse", "equal", "pruned_better", "both_wrong")
Z95 = 1.959963984540054
# The product of two shares (changed x worse among changed) gets each factor at 97.5%: by Bonferroni the product
# of the bounds covers the product at least 95% of the time.
Z975 = float(stats.norm.ppf(1 - 0.025 / 2))
# Check pairs (equal answers): a reviewer choosing A or B on more of them than this is flagged when a one-sided
# binomial test rejects this rate at FLAG_ALPHA. A reviewer who picks at random among the four choices picks A or
# B half of the time.
CHECK_SLIP_RATE = 0.1
FLAG_ALPHA = 0.05
MIN_SIDED = 10  # A/B choices before a reviewer's side preference is tested


def outcome(choice: str, pruned_side: str) -> str:
    """The outcome of one choice for the pruned arm: ``A``/``B`` name a side, the task knows which is pruned."""
    if choice == "tie":
        return "equal"
    if choice == "both_wrong":
        return "both_wrong"
    if choice not in ("A", "B"):
        raise ValueError(f"choice {choice!r} is not one of A, B, tie, both_wrong")
    return "pruned_better" if choice == pruned_side else "pruned_worse"


def wilson(p: float, n: float, z: float = Z95) -> tuple[float, float]:
    """The Wilson score interval of a share ``p`` over ``n`` (effective) observations; (0, 1) when ``n`` is 0."""
    if n <= 0:
        return 0.0, 1.0
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    # at the boundary the bound is the share itself (the formula leaves a rounding error there)
    return (0.0 if p <= 0 else max(0.0, centre - half)), (1.0 if p >= 1 else min(1.0, centre + half))


@dataclass(frozen=True)
class Share:
    share: float | None
    ci: tuple[float, float] | None
    n_eff: float


def clustered_share(per_task: Sequence[tuple[float, int, float]], z: float = Z95) -> Share:
    """The weighted share over tasks and its Wilson interval at the clustered effective size.

    ``per_task``: per task (its share of judgements with the outcome, its number of judgements, its weight).
    """
    rows = [(y, m, w) for y, m, w in per_task if m > 0]
    if not rows:
        return Share(None, None, 0.0)
    y = np.array([r[0] for r in rows], dtype=float)
    m = np.array([r[1] for r in rows], dtype=float)
    w = np.array([r[2] for r in rows], dtype=float)
    k = len(rows)
    p = float(np.sum(w * y) / np.sum(w))
    if k > 1:
        # linearised variance of a ratio mean (with-replacement approximation over tasks)
        u = w * (y - p)
        var = float(k / (k - 1) * np.sum(u * u) / np.sum(w) ** 2)
    else:
        var = 0.0
    # no spread to estimate (every task alike): the tasks are the sample
    n_eff = float(k) if var <= 0 or p <= 0 or p >= 1 else min(float(np.sum(m)), p * (1 - p) / var)
    return Share(p, wilson(p, n_eff, z), n_eff)


def outcome_shares(tasks: Sequence[Mapping], z: float = Z95) -> dict[str, Share]:
    """Per outcome, its clustered share among ``tasks`` (each: ``outcomes``, a list of its judgements' outcomes,
    and ``weight``)."""
    result = {}
    for name in OUTCOMES:
        per_task = [(sum(o == name for o in t["outcomes"]) / len(t["outcomes"]) if t["outcomes"] else 0.0,
                     len(t["outcomes"]), float(t.get("weight", 1.0))) for t in tasks]
        result[name] = clustered_share(per_task, z)
    return result


def krippendorff_alpha(units: Sequence[Mapping[str, str]]) -> float | None:
    """Nominal Krippendorff's alpha of the outcomes (``krippendorff`` package): ``units`` maps each task's reviewers
    to their outcome. None when no task has two judgements or every judgement is the same outcome."""
    import krippendorff

    reviewers = sorted({r for unit in units for r in unit})
    pairable = [unit for unit in units if len(unit) >= 2]
    if len(reviewers) < 2 or not pairable:
        return None
    codes = {name: i for i, name in enumerate(OUTCOMES)}
    values = {o for unit in pairable for o in unit.values()}
    if len(values) < 2:
        return None  # one outcome throughout: alpha is undefined (no disagreement expected or observed)
    data = np.full((len(reviewers), len(pairable)), np.nan)
    for j, unit in enumerate(pairable):
        for reviewer, value in unit.items():
            data[reviewers.index(reviewer), j] = codes[value]
    return float(krippendorff.alpha(reliability_data=data, level_of_measurement="nominal"))


def position_bias(per_task: Sequence[Sequence[str]]) -> dict:
    """The share of A among the A/B choices (near half when sides are random and reviewers look at the content),
    with its 95% interval clustered by task like the outcome shares (``per_task``: each task's choices)."""
    rows = [(sum(c == "A" for c in sided) / len(sided), len(sided), 1.0)
            for sided in ([c for c in choices if c in ("A", "B")] for choices in per_task) if sided]
    share = clustered_share(rows)
    return {"share_a": share.share, "ci": list(share.ci) if share.ci else None, "n": sum(r[1] for r in rows)}


def reviewer_flags(choices: Sequence[str], check_choices: Sequence[str]) -> list[str]:
    """Why a reviewer's choices look random (empty: they do not): A or B chosen on check pairs (equal answers)
    significantly more often than ``CHECK_SLIP_RATE``, or one side chosen regardless of content."""
    flags = []
    slips = sum(c in ("A", "B") for c in check_choices)
    if check_choices and slips and \
            stats.binomtest(slips, len(check_choices), CHECK_SLIP_RATE, alternative="greater").pvalue < FLAG_ALPHA:
        flags.append(f"chose A or B on {slips} of {len(check_choices)} check pairs with equal answers")
    sided = [c for c in choices if c in ("A", "B")]
    if len(sided) >= MIN_SIDED:
        a = sum(c == "A" for c in sided)
        if stats.binomtest(a, len(sided), 0.5).pvalue < FLAG_ALPHA / 5:  # stricter: sides are random per task
            side = "A" if a * 2 > len(sided) else "B"
            flags.append(f"chose side {side} in {max(a, len(sided) - a)} of {len(sided)} A/B choices")
    return flags


MIN_SHARED = 10  # tasks shared with at least two other reviewers before agreement is screened
PERMUTATIONS = 999


def agrees_by_chance(mine: Sequence[str], others: Sequence[Sequence[str]], seed: int = 0) -> str | None:
    """Whether a reviewer agrees with the others no more than chance: a flag's text, else None.

    ``mine``: their outcome per shared task; ``others``: the other reviewers' outcomes of the same tasks (at least
    two per task: with one other, who of the two is random cannot be told). Agreement is the mean share of the
    others' outcomes equal to theirs; chance is the same after shuffling their outcomes over the tasks (a
    permutation test that keeps how often they chose each outcome). Flagged when at least ``MIN_SHARED`` tasks are
    shared and the observed agreement is not above the permutations' median (p >= 0.5)."""
    rows = [(m, list(o)) for m, o in zip(mine, others, strict=True) if len(o) >= 2]
    if len(rows) < MIN_SHARED:
        return None
    values = np.array([m for m, _ in rows])
    kinds = sorted(OUTCOMES)
    # per task, the share of the others choosing each outcome: agreement of an outcome vector is a lookup
    table = np.array([[o.count(k) / len(o) for k in kinds] for _, o in rows])
    index = np.array([kinds.index(v) for v in values])

    def agreement(codes: np.ndarray) -> float:
        return float(table[np.arange(len(codes)), codes].mean())

    observed = agreement(index)
    rng = np.random.default_rng(seed)
    shuffled = np.array([agreement(rng.permutation(index)) for _ in range(PERMUTATIONS)])
    if shuffled.std() == 0:
        return None  # nothing to tell apart (every task alike for the others, or one outcome throughout)
    p_value = (1 + int(np.sum(shuffled >= observed - 1e-12))) / (PERMUTATIONS + 1)
    if p_value < 0.5:
        return None
    return (f"agrees with the other reviewers no more than chance on {len(rows)} shared tasks "
            f"({observed:.0%} vs {float(shuffled.mean()):.0%} shuffled)")


def worse_of_all(changed: int, paired: int, worse: Share) -> dict:
    """The estimated share of all requests whose answer gets worse: (changed / paired) x (worse among changed),
    with a 95% interval from the product of each factor's 97.5% Wilson bounds (Bonferroni)."""
    if paired <= 0 or worse.share is None:
        return {"share": None, "ci": None}
    changed_share = changed / paired
    changed_ci = wilson(changed_share, paired, Z975)
    worse_ci = wilson(worse.share, worse.n_eff, Z975)
    return {"share": changed_share * worse.share,
            "ci": [changed_ci[0] * worse_ci[0], changed_ci[1] * worse_ci[1]]}


def budget_plan(changed: int, paired: int, worse: Share, max_worse: float, tasks_reviewed: int,
                judgements_per_task: float) -> dict:
    """The verdict on "at most ``max_worse`` of all answers get worse" and, while it is open, how many more changed
    pairs to review for it, if the observed shares hold (as ``pilot plan`` does for a drop).

    ``verdict``: "met" (the 95% upper bound is within the budget), "not_met" (the lower bound is above it),
    "open" (more reviews can decide it), "needs_more_requests" (reviewing every changed pair of this run would not
    be enough: run more requests), "will_not_help" (the estimate itself is over the budget), "no_reviews".
    """
    whole = worse_of_all(changed, paired, worse)
    result = {"max_worse": max_worse, "verdict": "no_reviews", "more_tasks": None, "more_judgements": None,
              "worse_of_all": whole["share"], "worse_of_all_ci": whole["ci"]}
    if whole["share"] is None:
        return result
    low, high = whole["ci"]
    if high <= max_worse:
        return {**result, "verdict": "met", "more_tasks": 0, "more_judgements": 0}
    if low > max_worse:
        return {**result, "verdict": "not_met", "more_tasks": 0, "more_judgements": 0}
    if whole["share"] >= max_worse:
        return {**result, "verdict": "will_not_help"}
    changed_high = wilson(changed / paired, paired, Z975)[1]
    # the effective size per reviewed task seen so far carries over to the tasks still to review
    eff_per_task = worse.n_eff / tasks_reviewed if tasks_reviewed else 1.0

    def meets(tasks: int) -> bool:
        return changed_high * wilson(worse.share, tasks * eff_per_task, Z975)[1] <= max_worse

    if not meets(changed):
        return {**result, "verdict": "needs_more_requests"}
    lo, hi = tasks_reviewed, changed  # smallest number of reviewed tasks that meets it (bisection)
    while lo < hi:
        mid = (lo + hi) // 2
        if meets(mid):
            hi = mid
        else:
            lo = mid + 1
    more = max(0, lo - tasks_reviewed)
    return {**result, "verdict": "open", "more_tasks": more,
            "more_judgements": int(math.ceil(more * max(1.0, judgements_per_task)))}


def sample_size(precision: float, population: int, z: float = Z95) -> int:
    """Tasks per pruned arm for a 95% interval of half-width ``precision`` on a share, at the worst case p = 1/2,
    with the finite-population correction for ``population`` changed pairs: ``n0 = z^2 / (4 h^2)``,
    ``n = n0 / (1 + (n0 - 1) / N)``."""
    if not 0 < precision < 0.5:
        raise ValueError(f"--precision {precision}: give a half-width between 0 and 0.5 (e.g. 0.05)")
    n0 = z * z / (4 * precision * precision)
    return min(population, int(math.ceil(n0 / (1 + (n0 - 1) / population)))) if population else 0
