"""Sample-size planning (pilot/plan.py): the formula against simulation, the edge cases, `pilot plan`."""

import json
import math

import numpy as np
import pytest

from pilot.metrics import Outcome, budget_verdict, compare
from pilot.plan import (
    MET,
    NO_DISCORDANCE,
    NO_PAIRS,
    WILL_NOT_HELP,
    Z,
    plan_comparison,
    plan_report,
    plan_sentence,
    samples_by_scaling,
    samples_for_accuracy,
)

LABELS = ["a", "b", "c"]


def _paired_draws(n, drop, discordance, rng):
    """Per-sample d = correct_baseline - correct_pruned in {-1, 0, 1} with mean ``drop`` and P(d != 0) =
    ``discordance``: the paired outcomes of a pruned arm with a known true drop and discordance."""
    u = rng.random(n)
    return np.where(u < (discordance + drop) / 2, 1, np.where(u < discordance, -1, 0))


def _upper_ends(d_rows, rng, resamples=1000):
    """The report's upper end of the accuracy drop for each row of paired differences: percentile bootstrap
    (the drop's 97.5th percentile = minus the delta's 2.5th), as ``pilot.metrics.compare`` computes it.
    A bootstrap resample of values in {-1, 0, 1} is a multinomial draw of their counts, so it is drawn so."""
    out = []
    for d in d_rows:
        n = len(d)
        shares = [np.mean(d == 1), np.mean(d == -1), np.mean(d == 0)]
        counts = rng.multinomial(n, shares, size=resamples)
        drops = (counts[:, 0] - counts[:, 1]) / n
        out.append(float(np.percentile(drops, 97.5)))
    return np.array(out)


def _share_met(n, drop, discordance, budget, rng, sims):
    rows = [_paired_draws(n, drop, discordance, rng) for _ in range(sims)]
    return float(np.mean(_upper_ends(rows, rng) <= budget + 1e-9))


def _outcomes(d, rng):
    """Baseline and pruned outcomes (accuracy only matters) for paired differences ``d``."""
    base_ok = np.where(d == 1, 1, np.where(d == -1, 0, rng.random(len(d)) < 0.8))
    prun_ok = base_ok - d
    base = [Outcome(f"s{i}", "a", "a" if ok else "b") for i, ok in enumerate(base_ok)]
    prun = [Outcome(f"s{i}", "a", "a" if ok else "b") for i, ok in enumerate(prun_ok)]
    return base, prun


def test_formula_by_hand():
    # drop 1 pt, 6% of samples change correctness, budget 3 pts: (1.96 * sqrt(0.06 - 0.0001) / 0.02)^2 = 575.1
    assert samples_for_accuracy(0.01, 0.06, 0.03) == math.ceil((Z * math.sqrt(0.06 - 0.01**2) / 0.02) ** 2) == 576
    assert samples_for_accuracy(0.03, 0.06, 0.03) is None  # at the budget: no n is enough
    assert samples_for_accuracy(0.05, 0.06, 0.03) is None
    assert samples_for_accuracy(0.0, 0.0, 0.03) is None  # no discordance: no spread to shrink
    with pytest.raises(ValueError):
        samples_for_accuracy(0.1, 0.05, 0.2)  # a drop larger than the discordance is impossible


@pytest.mark.parametrize("drop, discordance, budget", [(0.01, 0.06, 0.03), (0.0, 0.15, 0.05), (-0.01, 0.1, 0.02)])
def test_formula_against_simulation(drop, discordance, budget):
    """At the n the formula gives, with the true drop and discordance equal to the observed ones, the report's 95%
    upper end falls under the budget in about half of the pilots (the point estimate lands on either side of the
    true drop alike); at half that n clearly fewer, at twice clearly more (Phi(z/sqrt 2 - z) = 0.28 and
    Phi(z(sqrt 2 - 1)) = 0.79 under the normal approximation). 300 pilots per point, fixed seed."""
    rng = np.random.default_rng(12)
    n = samples_for_accuracy(drop, discordance, budget)
    half, at_n, double = (_share_met(m, drop, discordance, budget, rng, 300) for m in (n // 2, n, 2 * n))
    print(f"\nn={n}: met with confidence in {half:.2f} of pilots at n/2, {at_n:.2f} at n, {double:.2f} at 2n")
    assert 0.40 <= at_n <= 0.65
    assert half <= 0.40 and double >= 0.70
    assert half < at_n < double


def test_simulated_upper_end_is_the_reports_upper_end():
    """The simulation's multinomial bootstrap agrees with compare()'s paired bootstrap on the same data."""
    rng = np.random.default_rng(3)
    d = _paired_draws(600, 0.01, 0.08, rng)
    base, prun = _outcomes(d, rng)
    report = budget_verdict(compare(base, prun, ["a", "b"], resamples=4000), "accuracy", 0.03)
    simulated = np.median(_upper_ends([d] * 5, rng, resamples=4000))
    assert report["drop"] == pytest.approx(np.mean(d))
    assert simulated == pytest.approx(report["drop_ci_high"], abs=0.002)


def _labelled(n, rng, p_both=0.84, p_base_only=0.05, p_pruned_only=0.02):
    """Three balanced classes; joint correctness (baseline, pruned) drawn with the given shares."""
    labels = rng.integers(0, 3, size=n)
    u = rng.random(n)
    base_ok = u < p_both + p_base_only
    prun_ok = (u < p_both) | ((u >= p_both + p_base_only) & (u < p_both + p_base_only + p_pruned_only))
    wrong_b = (labels + rng.integers(1, 3, size=n)) % 3
    wrong_p = (labels + rng.integers(1, 3, size=n)) % 3
    base = [Outcome(f"s{i}", LABELS[t], LABELS[t if ok else w]) for i, (t, ok, w) in
            enumerate(zip(labels, base_ok, wrong_b, strict=True))]
    prun = [Outcome(f"s{i}", LABELS[t], LABELS[t if ok else w]) for i, (t, ok, w) in
            enumerate(zip(labels, prun_ok, wrong_p, strict=True))]
    return base, prun


def test_macro_f1_plan_against_simulation():
    """Macro-F1: the bootstrap half-width scaled as 1/sqrt(n). A large pilot (its drop and spread close to the
    truth) gives the drop and the upper end; fresh pilots of the planned size meet the budget with confidence
    about half of the time."""
    rng = np.random.default_rng(5)
    joint = dict(p_both=0.75, p_base_only=0.10, p_pruned_only=0.07)
    verdict = budget_verdict(compare(*_labelled(6000, rng, **joint), LABELS, resamples=1000), "f1", 0.06)
    n = samples_by_scaling(6000, verdict["drop"], verdict["drop_ci_high"], 0.06)
    assert 200 < n < 2000
    met = []
    for seed in range(60):
        b, p = _labelled(n, rng, **joint)
        met.append(budget_verdict(compare(b, p, LABELS, resamples=400, seed=seed), "f1", 0.06)["met_with_confidence"])
    share = float(np.mean(met))
    print(f"\nmacro-F1: drop {verdict['drop']:.4f}, n={n}: met with confidence in {share:.2f} of 60 pilots")
    assert 0.3 <= share <= 0.8


def _comparison(nb, nc, n, ci_high=None):
    drop = (nb - nc) / n
    high = drop + 0.02 if ci_high is None else ci_high
    return {"n_paired": n, "accuracy_delta": -drop, "accuracy_delta_ci": [-high, -drop + 0.02],
            "f1_delta": -drop, "f1_delta_ci": [-high, -drop + 0.02],
            "discordant": {"baseline_only": nb, "pruned_only": nc}}


def test_plan_edge_cases():
    # met with confidence: the current samples suffice
    met = plan_comparison(_comparison(2, 1, 100, ci_high=0.02), 0.03, "accuracy")
    assert met["samples_needed"] == 100 and met["more_needed"] == 0 and met["reason"] == MET
    # observed drop over (or at) the budget: more samples will not help
    over = plan_comparison(_comparison(8, 2, 100), 0.03, "accuracy")
    assert over["samples_needed"] is None and over["reason"] == WILL_NOT_HELP
    assert "more samples will not" in plan_sentence(over)
    at = plan_comparison(_comparison(5, 2, 100), 0.03, "accuracy")
    assert at["samples_needed"] is None and at["reason"] == WILL_NOT_HELP
    # under the budget but not with confidence: a number, with its assumption
    mid = plan_comparison(_comparison(6, 5, 100, ci_high=0.06), 0.03, "accuracy")
    assert mid["samples_needed"] == samples_for_accuracy(0.01, 0.11, 0.03) and mid["more_needed"] > 0
    assert mid["method"] == "discordance" and "label about" in plan_sentence(mid)
    # macro-F1 scales the bootstrap half-width: U - D = 0.05 on 100 samples, B - D = 0.02 -> 100 * 2.5^2
    f1 = plan_comparison(_comparison(6, 5, 100, ci_high=0.06), 0.03, "f1_macro")
    assert f1["samples_needed"] == 625 and f1["method"] == "bootstrap scaling"
    # macro-F1 without an interval: the accuracy discordance stands in
    proxy = plan_comparison({**_comparison(6, 5, 100), "f1_delta_ci": None}, 0.03, "f1")
    assert proxy["method"] == "discordance" and proxy["samples_needed"] == mid["samples_needed"]
    # no pairs, no discordance information
    assert plan_comparison({"n_paired": 0, "f1_delta": None}, 0.03)["reason"] == NO_PAIRS
    assert plan_comparison(None, 0.03)["samples_needed"] is None
    bare = {"n_paired": 100, "accuracy_delta": -0.01, "accuracy_delta_ci": [-0.06, 0.02]}
    assert plan_comparison(bare, 0.03, "accuracy")["reason"] == NO_DISCORDANCE
    with pytest.raises(ValueError):
        plan_comparison(_comparison(1, 1, 10), 0.03, "recall")
    json.dumps([met, over, mid, f1, proxy], allow_nan=False)


def test_plan_report_lists_every_pruned_arm():
    report = {"arms": [{"name": "baseline", "strategy": "baseline", "vs_baseline": None},
                       {"name": "tp", "strategy": "transprune", "vs_baseline": _comparison(6, 5, 100, 0.06)},
                       {"name": "fv", "strategy": "fastv:after=2,keep=0.5", "vs_baseline": _comparison(9, 1, 100)}]}
    plans = plan_report(report, 0.03, "accuracy")
    assert [p["strategy"] for p in plans] == ["transprune", "fastv:after=2,keep=0.5"]
    assert isinstance(plans[0]["samples_needed"], int) and plans[1]["samples_needed"] is None


def test_dashboard_verdict_panel_says_how_many_more_images():
    from dashboard import data

    pending = data.verdict({"vs_baseline": _comparison(6, 5, 100, ci_high=0.06)}, 0.03)
    assert pending.status == "met" and pending.plan["samples_needed"] == 625
    assert "label about 525 more images (625 paired samples in all)" in pending.text
    over = data.verdict({"vs_baseline": _comparison(9, 1, 100)}, 0.03)
    assert over.status == "not_met" and "more samples will not show it met" in over.text
    assert data.verdict({"vs_baseline": _comparison(2, 1, 100, ci_high=0.02)}, 0.03).plan["more_needed"] == 0
