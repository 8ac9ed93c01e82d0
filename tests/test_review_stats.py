"""Statistics of the blind review (pilot.review.stats), checked by simulation: coverage of the clustered shares at
small n and at the boundary, position bias with random sides, the reviewer screens, alpha and the budget plan."""

from __future__ import annotations

import numpy as np
import pytest

from pilot.review import stats


def _coverage(rng, tasks: int, p: float, correlated: bool, reviewers: int = 2, reps: int = 600) -> float:
    """Share of ``reps`` simulated reviews whose interval holds the true share ``p``. ``correlated``: every
    reviewer of a task sees the same thing (the worst case for clustering), else each judges independently."""
    hits = 0
    for _ in range(reps):
        per_item = (rng.random(tasks) < p).astype(float) if correlated else np.full(tasks, p)
        judged = rng.binomial(reviewers, per_item) / reviewers
        share = stats.clustered_share([(y, reviewers, 1.0) for y in judged])
        hits += share.ci[0] <= p <= share.ci[1]
    return hits / reps


@pytest.mark.parametrize("tasks", [10, 40])
@pytest.mark.parametrize("p", [0.0, 0.05, 0.3, 0.5])
@pytest.mark.parametrize("correlated", [True, False])
def test_clustered_interval_holds_its_coverage(tasks, p, correlated):
    rng = np.random.default_rng(int(tasks * 1000 + p * 100 + correlated))
    coverage = _coverage(rng, tasks, p, correlated)
    # 95% nominal; Wilson at n = 10 swings a little either side; 600 reps: standard error 0.009
    assert coverage >= 0.91, coverage


def test_boundary_keeps_a_real_interval():
    none = stats.clustered_share([(0.0, 3, 1.0)] * 20)
    assert none.share == 0.0 and none.ci[0] == 0.0 and 0.1 < none.ci[1] < 0.2  # Wilson at 20 tasks: 0.161
    every = stats.clustered_share([(1.0, 2, 1.0)] * 8)
    assert every.ci[1] == 1.0 and every.ci[0] < 0.8
    assert stats.clustered_share([]).share is None


def test_correlated_reviewers_widen_the_interval():
    """Three reviewers who always agree carry the information of one: the interval is that of the tasks."""
    rng = np.random.default_rng(5)
    items = (rng.random(60) < 0.3).astype(float)
    clustered = stats.clustered_share([(y, 3, 1.0) for y in items])
    independent = stats.wilson(float(items.mean()), 180)
    assert clustered.n_eff == pytest.approx(60 * 59 / 60, rel=0.05)  # ~ the tasks, not the 180 judgements
    assert clustered.ci[1] - clustered.ci[0] > 1.5 * (independent[1] - independent[0])


def _simulate(rng, tasks: int, prefer_baseline: float, reviewers: int = 3):
    """Random sides per task; each reviewer picks the baseline's side with ``prefer_baseline``, else "tie"."""
    units, choices = [], []  # choices: per task
    for _ in range(tasks):
        pruned_side = rng.choice(["A", "B"])
        base_side = "B" if pruned_side == "A" else "A"
        picked = [base_side if rng.random() < prefer_baseline else "tie" for _ in range(reviewers)]
        choices.append(picked)
        units.append({"outcomes": [stats.outcome(c, pruned_side) for c in picked], "weight": 1.0})
    return units, choices


def test_random_sides_with_reviewers_who_always_pick_the_baseline():
    rng = np.random.default_rng(11)
    units, choices = _simulate(rng, 200, prefer_baseline=1.0)
    shares = stats.outcome_shares(units)
    bias = stats.position_bias(choices)
    assert shares["pruned_worse"].share == 1.0 and shares["pruned_worse"].ci[0] > 0.98
    assert shares["pruned_better"].share == 0.0
    assert abs(bias["share_a"] - 0.5) < 0.08 and bias["ci"][0] < 0.5 < bias["ci"][1]
    assert stats.reviewer_flags([c[0] for c in choices], []) == []  # content-driven: not flagged for a side


def test_the_pruned_worse_share_is_found():
    """Reviewers who pick the baseline 30% of the time: the share found, in its interval, sides still balanced."""
    found = 0
    for seed in range(40):
        rng = np.random.default_rng(100 + seed)
        units, choices = _simulate(rng, 80, prefer_baseline=0.3, reviewers=2)
        worse = stats.outcome_shares(units)["pruned_worse"]
        found += worse.ci[0] <= 0.3 <= worse.ci[1]
        assert abs(stats.position_bias(choices)["share_a"] - 0.5) < 0.2
    assert found >= 36  # about 95% of 40


def test_screens_flag_random_and_one_sided_reviewers():
    rng = np.random.default_rng(2)
    random_choices = list(rng.choice(["A", "B", "tie", "both_wrong"], 40))
    random_checks = ["A", "tie", "B", "B", "both_wrong", "A"]
    flags = stats.reviewer_flags(random_choices, random_checks)
    assert any("check pairs" in f for f in flags)
    assert stats.reviewer_flags(["A"] * 18 + ["B"] * 2, []) == ["chose side A in 18 of 20 A/B choices"]
    careful = stats.reviewer_flags(list(rng.choice(["A", "B", "tie"], 30)), ["tie"] * 5 + ["A"])
    assert careful == []  # one slip in six checks is not enough


def test_alpha_from_the_krippendorff_package():
    perfect = [{"ana": o, "bo": o} for o in ["pruned_worse", "equal", "equal", "both_wrong", "pruned_better"]]
    assert stats.krippendorff_alpha(perfect) == pytest.approx(1.0)
    rng = np.random.default_rng(4)
    noise = [{"ana": rng.choice(stats.OUTCOMES), "bo": rng.choice(stats.OUTCOMES)} for _ in range(400)]
    assert abs(stats.krippendorff_alpha(noise)) < 0.08
    assert stats.krippendorff_alpha([{"ana": "equal"}]) is None  # nothing to agree on
    assert stats.krippendorff_alpha([{"ana": "equal", "bo": "equal"}] * 3) is None


def test_worse_of_all_is_the_product_with_a_bonferroni_interval():
    rng = np.random.default_rng(9)
    paired, p_changed, p_worse, hits = 300, 0.3, 0.2, 0
    for _ in range(300):
        changed = int(rng.binomial(paired, p_changed))
        worse = rng.random(changed) < p_worse
        share = stats.clustered_share([(float(w), 1, 1.0) for w in worse])
        whole = stats.worse_of_all(changed, paired, share)
        assert whole["share"] == pytest.approx(changed / paired * worse.mean())
        hits += whole["ci"][0] <= p_changed * p_worse <= whole["ci"][1]
    assert hits / 300 >= 0.95


def test_budget_verdicts_and_reviews_needed():
    none_worse = stats.clustered_share([(0.0, 2, 1.0)] * 400)
    assert stats.budget_plan(400, 4000, none_worse, 0.01, 400, 2)["verdict"] == "met"
    half = stats.clustered_share([(1.0, 2, 1.0)] * 10 + [(0.0, 2, 1.0)] * 10)
    assert stats.budget_plan(20, 40, half, 0.01, 20, 2)["verdict"] == "not_met"
    assert stats.budget_plan(20, 40, half, 0.2, 20, 2)["verdict"] == "will_not_help"  # 0.25 estimated
    few = stats.clustered_share([(0.0, 2, 1.0)] * 9 + [(1.0, 2, 1.0)])  # 1 in 10 worse, 100 of 1000 changed
    plan = stats.budget_plan(100, 1000, few, 0.05, 10, 2)
    assert plan["verdict"] == "open" and plan["more_tasks"] > 0 and plan["more_judgements"] == 2 * plan["more_tasks"]
    # with that many more tasks reviewed and the same share, the bound is within the budget; with one fewer not
    def upper(tasks: int) -> float:
        eff = few.n_eff / 10 * tasks
        return stats.wilson(0.1, 1000, stats.Z975)[1] * stats.wilson(0.1, eff, stats.Z975)[1]

    assert upper(10 + plan["more_tasks"]) <= 0.05 < upper(10 + plan["more_tasks"] - 1)
    assert stats.budget_plan(100, 1000, few, 0.015, 10, 2)["verdict"] == "needs_more_requests"
    assert stats.budget_plan(0, 10, stats.clustered_share([]), 0.01, 0, 2)["verdict"] == "no_reviews"


def test_outcome_of_each_choice():
    assert [stats.outcome(c, "A") for c in ("A", "B", "tie", "both_wrong")] == \
        ["pruned_better", "pruned_worse", "equal", "both_wrong"]
    with pytest.raises(ValueError, match="'C' is not one of"):
        stats.outcome("C", "A")


def test_stratum_weights_recover_the_whole_arm():
    """A sample of 50 tasks from each of two slices (900 pairs at 10% worse, 100 at 90%): weighted back, the share
    of the whole arm (18%) is in the interval about 95% of the time; unweighted it would be about 50%."""
    rng = np.random.default_rng(21)
    hits = 0
    for _ in range(400):
        big = rng.random(50) < 0.1
        small = rng.random(50) < 0.9
        share = stats.clustered_share([(float(w), 2, 900 / 50) for w in big] + [(float(w), 2, 100 / 50) for w in small])
        hits += share.ci[0] <= 0.18 <= share.ci[1]
    assert hits / 400 >= 0.92


def test_a_reviewer_who_agrees_by_chance_is_flagged():
    """Three careful reviewers see what the pair shows (with a slip now and then); a fourth picks at random."""
    rng = np.random.default_rng(8)
    flagged = {"careful": 0, "random": 0}
    for trial in range(20):
        truth = rng.choice(stats.OUTCOMES, 30, p=[0.4, 0.4, 0.1, 0.1])
        careful = [[t if rng.random() < 0.85 else rng.choice(stats.OUTCOMES) for t in truth] for _ in range(3)]
        noise = list(rng.choice(stats.OUTCOMES, 30))
        others = [[c[i] for c in careful] for i in range(30)]
        flagged["random"] += stats.agrees_by_chance(noise, others, seed=trial) is not None
        mates = [[careful[1][i], careful[2][i], noise[i]] for i in range(30)]
        flagged["careful"] += stats.agrees_by_chance(careful[0], mates, seed=trial) is not None
    assert flagged["random"] >= 7 and flagged["careful"] == 0  # about half of the random ones; no careful one
    assert stats.agrees_by_chance(["equal"] * 30, [["equal", "equal"]] * 30) is None  # nothing to tell apart
    assert stats.agrees_by_chance(["equal"] * 9, [["equal", "pruned_worse"]] * 9) is None  # too few tasks
