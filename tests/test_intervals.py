"""Intervals valid at any n (issue 24): coverage by simulation at n = 5 ... 200 with rare changes, equal pairs, the
baseline's floor, and the verdict `pilot report --json` carries.

    .venv/bin/pytest -q -s tests/test_intervals.py   # prints the coverage tables (docs/sample-sizes.md)
"""

import json
import math

import numpy as np
import pytest

from pilot.bounds import betting_interval, betting_upper, clopper_pearson
from pilot.metrics import Outcome, budget_verdict, compare
from pilot.plan import plan_comparison, plan_sentence

NS = (5, 10, 20, 50, 100, 200)
CHANGE = (0.01, 0.05, 0.2)  # the share of pairs whose answers differ
PILOTS = 400  # per cell: a coverage of 0.975 is estimated to +-0.008 (one standard error)


def _bootstrap_upper(d, rng, resamples=400):
    """The upper end before issue 24: the percentile bootstrap's 97.5th percentile of the mean drop."""
    n = len(d)
    means = d[rng.integers(0, n, size=(resamples, n))].mean(axis=1)
    return float(np.percentile(means, 97.5))


def _losses(n, q, rng, continuous):
    """Paired drops (baseline - pruned) at the budget's edge: a share ``q`` of pairs changes and every change is
    a loss (the hardest case for an upper bound: all the drop sits in rare events). ``continuous``: each loss is
    U(0, 1) (an ANLS-like score), true mean drop q / 2; else 1 (accuracy), true mean drop q."""
    changed = rng.random(n) < q
    size = rng.random(n) if continuous else np.ones(n)
    return np.where(changed, size, 0.0), (q / 2 if continuous else q)


def _coverage_table(continuous, seed):
    rng = np.random.default_rng(seed)
    table = {}
    for n in NS:
        for q in CHANGE:
            new = old = 0
            for _ in range(PILOTS):
                d, true = _losses(n, q, rng, continuous)
                new += betting_upper(d, -1.0, 1.0) >= true - 1e-12
                old += _bootstrap_upper(d, rng) >= true - 1e-12
            table[n, q] = (new / PILOTS, old / PILOTS)
    return table


def _print(title, table):
    print(f"\n{title}: coverage of the 95% upper end (nominal 0.975), new bound / bootstrap before, "
          f"{PILOTS} pilots per cell")
    print("    n  " + "  ".join(f"change {q:<13}" for q in CHANGE))
    for n in NS:
        print(f"  {n:>3}  " + "  ".join(f"{table[n, q][0]:.3f} / {table[n, q][1]:.3f}    " for q in CHANGE))


@pytest.mark.parametrize("continuous", [False, True], ids=["accuracy-like", "anls-like"])
def test_betting_bound_covers_at_every_n_with_rare_changes(continuous):
    """The betting bound's upper end holds its coverage in every cell; the bootstrap's did not (it is [0, 0]
    whenever no pair changed, which at n = 20 and 5% changes is a third of the pilots)."""
    table = _coverage_table(continuous, seed=1 + continuous)
    _print("per-sample mean drop, " + ("ANLS-like losses U(0, 1)" if continuous else "accuracy-like losses of 1"),
           table)
    assert min(new for new, _ in table.values()) >= 0.95
    assert min(old for _, old in table.values()) < 0.7  # the check can fail: the old interval fails it


def test_clopper_pearson_covers_the_share_of_changed_answers():
    """The agreement budget's bound on the share of changed answers: exact, so at least 0.975 in every cell
    (computed, not simulated: the binomial probability of each count)."""
    from scipy import stats

    print("\nchanged-answer share: coverage of the Clopper-Pearson 97.5% upper end (exact binomial sums)")
    worst = 1.0
    for n in NS:
        counts = np.arange(n + 1)
        upper = clopper_pearson(counts, np.full(n + 1, n))[1]
        row = []
        for q in (*CHANGE, 0.5):
            covered = float(stats.binom.pmf(counts, n, q)[upper >= q].sum())
            worst = min(worst, covered)
            row.append(f"{covered:.3f}")
        print(f"  n={n:>3}  " + "  ".join(f"q={q}: {c}" for q, c in zip((*CHANGE, 0.5), row, strict=True)))
    assert worst >= 0.975 - 1e-12


def test_betting_bound_by_hand():
    # all equal: the worst distribution with mean m (a share m of losses of 1) gives six zeros with probability
    # (1 - m)**6, so no valid bound is under 1 - 0.025**(1/6) = 0.459; this one is 0.549 (its bets stop at 3/4
    # of the most that keeps the wealth positive, so that one large loss cannot ruin it)
    upper = betting_upper(np.zeros(6), -1, 1)
    assert 1 - 0.025 ** (1 / 6) < upper < 0.56
    assert betting_upper(np.zeros(300), -1, 1) < 0.017  # exact: 0.0122
    assert betting_upper(np.ones(10), -1, 1) == 1.0 and betting_upper([], -1, 1) is None
    low, high = betting_interval(np.zeros(6), -1, 1)
    assert low == pytest.approx(-upper) and high == pytest.approx(upper)
    with pytest.raises(ValueError):
        betting_upper([0.5, 2.0], 0, 1)
    # at n = 300 with 1.2% of pairs discordant (the demo's held-out split) it is about 2 points wide
    rng = np.random.default_rng(0)
    d = rng.choice([1.0, -1.0, 0.0], size=302, p=[0.006, 0.006, 0.988])
    assert betting_upper(d, -1, 1) - d.mean() < 0.03


def _text_pairs(n, base_score=0.8):
    base = [Outcome(f"s{i}", "", "a", task="text", answer_text="the answer",
                    scores={"anls": base_score, "exact_match": float(base_score > 0)}) for i in range(n)]
    return base, [Outcome(o.sample_id, o.label, o.prediction, task="text", answer_text=o.answer_text,
                          scores=dict(o.scores)) for o in base]


def _label_pairs(n, correct=True):
    base = [Outcome(f"s{i}", ["a", "b"][i % 2], ["a", "b"][(i + (not correct)) % 2]) for i in range(n)]
    return base, [Outcome(o.sample_id, o.label, o.prediction) for o in base]


def test_six_equal_pairs_need_more_not_met():
    """The finding: six equal answers gave "met with confidence" on ANLS ([0, 0]). Now every metric says how many
    more pairs a verdict needs, from the bound."""
    text = compare(*_text_pairs(6), [])
    labels = compare(*_label_pairs(6), ["a", "b"])
    for comparison, metric in ((text, "anls"), (text, "exact_match"), (text, "anls_vs_baseline"),
                               (text, "agreement"), (labels, "f1"), (labels, "accuracy"), (labels, "agreement")):
        verdict = budget_verdict(comparison, metric, 0.02)
        assert verdict["met"] and verdict["met_with_confidence"] is False, metric
        assert verdict["drop_ci_high"] > 1 - 0.025 ** (1 / 6) - 1e-9, metric  # no valid bound is under 0.459
        plan = plan_comparison(comparison, 0.02, metric)
        assert plan["more_needed"] > 100 and plan["samples_needed"] == 6 + plan["more_needed"], metric
        assert f"needs {plan['more_needed']:,} more paired samples" in plan_sentence(plan)
    # the number comes from the bound: at that many equal pairs it falls under 2 points, at 3% fewer it does not
    needed = plan_comparison(text, 0.02, "anls")["samples_needed"]
    assert betting_upper(np.zeros(needed), -1, 1) <= 0.02 < betting_upper(np.zeros(int(needed * 0.97)), -1, 1)
    assert plan_comparison(text, 0.02, "agreement")["samples_needed"] == math.ceil(math.log(0.025) / math.log(0.98))


def test_equal_pairs_at_the_demos_size_still_reach_a_verdict():
    labels = compare(*_label_pairs(302), ["a", "b"])
    assert budget_verdict(labels, "f1", 0.03)["met_with_confidence"]
    assert budget_verdict(labels, "accuracy", 0.03)["met_with_confidence"]


def test_a_baseline_at_the_floor_gets_no_verdict():
    """Defect 5: a baseline that scores 0 on every row cannot drop; the verdict is refused with the reason."""
    text = compare(*_text_pairs(400, base_score=0.0), [])
    labels = compare(*_label_pairs(400, correct=False), ["a", "b"])
    for comparison, metric in ((text, "anls"), (text, "exact_match"), (labels, "f1"), (labels, "accuracy")):
        verdict = budget_verdict(comparison, metric, 0.05)
        assert verdict["met"] is None and verdict["met_with_confidence"] is None, metric
        assert "floor" in verdict["reason"], metric
        plan = plan_comparison(comparison, 0.05, metric)
        assert plan["samples_needed"] is None and plan["reason"] == verdict["reason"]
        assert "floor" in plan_sentence(plan)
    from pilot.report import format_report

    arm = {"n": 400, "n_labelled": 400, "accuracy": 0.0, "f1_macro": 0.0, "f1_per_class": {"a": 0.0, "b": 0.0}}
    report = {"run_id": 1, "name": "floor", "arms": [{**arm, "name": "baseline", "strategy": "baseline",
                                                      "vs_baseline": None},
                                                     {**arm, "name": "tp", "strategy": "tp", "vs_baseline": labels}]}
    assert "baseline at the floor: no verdict" in format_report(report, 0.05)
    # agreement has no floor: 400 equal answers meet 1% of changed answers with confidence
    assert budget_verdict(labels, "agreement", 0.01)["met_with_confidence"]
    # one baseline row above the floor is enough for a verdict
    base, prun = _text_pairs(400, base_score=0.0)
    base[0] = Outcome("s0", "", "a", task="text", answer_text="the answer", scores={"anls": 1.0})
    assert budget_verdict(compare(base, prun, []), "anls", 0.05)["reason"] is None


def _macro_f1_population(q, priors, rng, n=400_000):
    """Baseline and pruned predictions for three classes of the given priors: the baseline is right 80% of the
    time; with probability q the pruned arm turns a right answer wrong (every change a loss)."""
    labels = rng.choice(3, size=n, p=priors)
    base = np.where(rng.random(n) < 0.8, labels, (labels + rng.integers(1, 3, size=n)) % 3)
    flip = (rng.random(n) < q) & (base == labels)
    prun = np.where(flip, (labels + rng.integers(1, 3, size=n)) % 3, base)
    return labels, base, prun


def _macro_f1(labels, pred):
    f1 = []
    for c in range(3):
        tp = np.sum((labels == c) & (pred == c))
        denom = np.sum(labels == c) + np.sum(pred == c)
        f1.append(2 * tp / denom if denom else 0.0)
    return float(np.mean(f1))


def test_macro_f1_interval_covers_with_rare_changes():
    """Macro-F1 is not a per-sample mean: its paired bootstrap is widened to at least the accuracy bound's
    half-widths. Coverage of the true (population) drop at small n, balanced and imbalanced classes."""
    rng = np.random.default_rng(7)
    print("\nmacro-F1: coverage of the 95% upper end of the drop (nominal 0.975), new / bootstrap before, "
          "100 pilots per cell")
    worst_new, worst_old = 1.0, 1.0
    for priors in ((1 / 3, 1 / 3, 1 / 3), (0.6, 0.3, 0.1)):
        for q in (0.05, 0.2):
            labels, base, prun = _macro_f1_population(q, priors, rng)
            true = _macro_f1(labels, base) - _macro_f1(labels, prun)
            cells = []
            for n in (10, 50, 200):
                new = old = 0
                for seed in range(100):
                    idx = rng.integers(0, len(labels), size=n)
                    b = [Outcome(f"s{i}", "abc"[labels[j]], "abc"[base[j]]) for i, j in enumerate(idx)]
                    p = [Outcome(f"s{i}", "abc"[labels[j]], "abc"[prun[j]]) for i, j in enumerate(idx)]
                    out = compare(b, p, ["a", "b", "c"], resamples=300, seed=seed)
                    new += -out["f1_delta_ci"][0] >= true - 1e-12
                    old += -out["f1_delta_ci_bootstrap"][0] >= true - 1e-12
                cells.append(f"n={n}: {new / 100:.2f} / {old / 100:.2f}")
                worst_new, worst_old = min(worst_new, new / 100), min(worst_old, old / 100)
            print(f"  classes {tuple(round(x, 2) for x in priors)}, change {q} (true drop {true:.3f}): "
                  + ", ".join(cells))
    assert worst_new >= 0.94  # 100 pilots: 0.975 is estimated to +-0.016
    assert worst_old < 0.9  # the bootstrap alone does not hold


def test_report_json_carries_the_verdict_and_plan(tmp_path, capsys):
    """Defect 8: `pilot report --json` ignored --metric and --max-drop; the JSON now has each arm's verdict."""
    from pilot import cli
    from tests.test_console import _store_with_a_run

    url = f"sqlite:///{tmp_path / 'report.db'}"
    _store_with_a_run(url)
    assert cli.main(["report", "1", "--json", "--metric", "accuracy", "--max-drop", "0.07", "--db", url]) == 0
    report = json.loads(capsys.readouterr().out)
    (entry,) = report["verdicts"]
    assert entry["metric"] == "accuracy" and entry["max_drop"] == 0.07
    assert entry["verdict"]["drop"] == pytest.approx(8 / 200) and entry["verdict"]["met_with_confidence"] is False
    assert entry["plan"]["samples_needed"] > 200 and entry["plan_text"].startswith("accuracy drop")
    assert cli.main(["report", "1", "--json", "--max-drop", "0.2", "--db", url]) == 0
    (entry,) = json.loads(capsys.readouterr().out)["verdicts"]
    assert entry["metric"] == "f1" and entry["verdict"]["met_with_confidence"] is True


def test_dashboard_verdict_says_why_there_is_none_at_the_floor():
    from dashboard import verdicts

    comparison = compare(*_text_pairs(50, base_score=0.0), [])
    verdict = verdicts.verdict({"vs_baseline": comparison}, 0.05, "anls")
    assert verdict.status == "unknown" and "floor" in verdict.text and verdict.label == "No verdict"
    assert verdicts.verdict({"vs_baseline": compare(*_text_pairs(6), [])}, 0.02, "anls").status == "met"


def test_confidence_sequence_holds_at_every_time_at_once():
    """pilot.bounds.betting_upper_path (for live guardrails): the chance that the upper bound is under the true
    mean at *any* of 200 looks stays under 2.5% (checked at the budget's edge with rare losses of 1)."""
    from pilot.bounds import betting_upper_path

    rng = np.random.default_rng(11)
    q, n, paths = 0.05, 200, 400
    crossed = 0
    for _ in range(paths):
        d = (rng.random(n) < q).astype(float)
        crossed += bool(np.any(betting_upper_path(d, -1.0, 1.0, grid=256) < q - 1e-12))
    print(f"\nconfidence sequence, change {q}, {n} looks: crossed the true drop in {crossed / paths:.3f} of "
          f"{paths} paths (at most 0.025)")
    assert crossed / paths <= 0.035  # 0.025 nominal, +-0.008 of simulation noise
    # the last value is the anytime-tuned bound at n, up to the grid's step
    d = (rng.random(n) < q).astype(float)
    end = betting_upper_path(d, -1.0, 1.0)[-1]
    assert betting_upper(d, -1.0, 1.0, horizon=0) <= end + 1e-9 <= betting_upper(d, -1.0, 1.0, horizon=0) + 2 / 1024
    assert betting_upper_path(np.zeros(6), -1, 1)[0] == 1.0  # one pair: nothing rules out the worst mean
