"""KPIs, paired comparison, budget verdicts and the terminal report, on hand-computed examples."""

import json
import math
import re
import time

import numpy as np
import pytest
from scipy import stats
from sklearn.metrics import f1_score

from pilot.metrics import (
    INVALID,
    Outcome,
    arm_kpis,
    budget_verdict,
    compare,
    f1_macro_resampled,
    mcnemar_p,
)
from pilot.report import format_report

LABELS = ["cat", "dog", "bird"]


def _arm(pairs, **fields):
    """Outcomes with ids s0, s1, ... from (label, prediction) pairs; extra fields as per-sample lists."""
    out = []
    for i, (label, prediction) in enumerate(pairs):
        extra = {k: v[i] for k, v in fields.items()}
        out.append(Outcome(f"s{i}", label, prediction, **extra))
    return out


# ---------------------------------------------------------------- one arm


def _six():
    return [
        Outcome("s1", "cat", "cat", prefill_ms=10, total_ms=100, paper_tflops=1.0, visual_tokens_kept=72),
        Outcome("s2", "cat", "dog", prefill_ms=20, total_ms=200, paper_tflops=2.0, visual_tokens_kept=72),
        Outcome("s3", "dog", "dog", prefill_ms=30, total_ms=300, paper_tflops=3.0, visual_tokens_kept=72),
        Outcome("s4", "dog", INVALID, prefill_ms=40, total_ms=400, paper_tflops=4.0, visual_tokens_kept=72),
        Outcome("s5", "bird", "bird", prefill_ms=50, total_ms=500, paper_tflops=5.0, visual_tokens_kept=144),
        Outcome("s6", "bird", "cat", prefill_ms=60, total_ms=600, paper_tflops=6.0, visual_tokens_kept=144),
        # errored: excluded from everything but `errors` (its huge latency must not leak into the percentiles)
        Outcome("s7", "bird", None, prefill_ms=9999, total_ms=9999, paper_tflops=99.0, error="CUDA OOM"),
    ]


def test_arm_kpis_by_hand():
    k = arm_kpis(_six(), LABELS)
    assert k["n"] == 6 and k["errors"] == 1
    # invalid: s4 only -> 1 of 6
    assert k["invalid"] == 1 and k["invalid_rate"] == pytest.approx(1 / 6)
    # correct: s1, s3, s5 -> 3 / 6
    assert k["accuracy"] == pytest.approx(0.5)
    # cat : TP s1; FP s6 (bird->cat); FN s2 (cat->dog)      P = 1/2, R = 1/2, F1 = 1/2
    # dog : TP s3; FP s2 (cat->dog);  FN s4 (dog->invalid)  P = 1/2, R = 1/2, F1 = 1/2
    # bird: TP s5; FP none;           FN s6 (bird->cat)     P = 1,   R = 1/2, F1 = 2/3
    assert k["f1_per_class"] == pytest.approx({"cat": 0.5, "dog": 0.5, "bird": 2 / 3})
    # macro = (1/2 + 1/2 + 2/3) / 3 = 5/9
    assert k["f1_macro"] == pytest.approx(5 / 9)
    # prefill over s1..s6 = 10..60: p50 = 35; p95 at position 0.95 * 5 = 4.75 -> 50 + 0.75 * 10 = 57.5
    assert k["prefill_ms_p50"] == pytest.approx(35.0) and k["prefill_ms_p95"] == pytest.approx(57.5)
    assert k["total_ms_p50"] == pytest.approx(350.0) and k["total_ms_p95"] == pytest.approx(575.0)
    assert k["latency_n"] == 6
    assert k["paper_tflops"] == pytest.approx(3.5)  # (1 + ... + 6) / 6
    assert k["full_tflops"] is None  # never measured
    assert k["visual_tokens_kept"] == pytest.approx(96.0)  # (4 * 72 + 2 * 144) / 6
    json.dumps(k, allow_nan=False)


def test_invalid_answer_lowers_recall_of_its_true_class():
    fixed = [o if o.sample_id != "s4" else Outcome("s4", "dog", "dog") for o in _six()]
    k = arm_kpis(fixed, LABELS)
    # dog: TP s3, s4; FP s2; FN none -> 2*2 / (2*2 + 1 + 0) = 0.8 (was 0.5 with s4 invalid)
    assert k["f1_per_class"]["dog"] == pytest.approx(0.8)
    assert k["f1_per_class"]["cat"] == pytest.approx(0.5)  # other classes unchanged
    assert k["invalid"] == 0 and k["accuracy"] == pytest.approx(4 / 6)


def test_a_label_called_invalid_still_never_matches_an_invalid_answer():
    k = arm_kpis([Outcome("a", "cat", INVALID), Outcome("b", "dog", "dog")], ["cat", "dog"])
    assert k["accuracy"] == 0.5 and k["f1_per_class"]["cat"] == 0.0


@pytest.mark.parametrize("outcomes", [[], [Outcome("a", "cat", None, error="boom"), Outcome("b", "dog", None)]])
def test_arm_kpis_empty(outcomes):
    k = arm_kpis(outcomes, LABELS)
    assert k["n"] == 0 and k["errors"] == len(outcomes)
    for key in ("invalid_rate", "accuracy", "f1_macro", "prefill_ms_p50", "total_ms_p95", "paper_tflops"):
        assert k[key] is None
    assert k["f1_per_class"] == {"cat": None, "dog": None, "bird": None}
    json.dumps(k, allow_nan=False)


# ---------------------------------------------------------------- McNemar


def _discordant_arms(b, c, both_right=3, both_wrong=2):
    """Paired arms (true label "cat") with b baseline-only and c pruned-only correct samples."""
    kinds = [("cat", "cat")] * both_right + [("dog", "bird")] * both_wrong  # (baseline, pruned) predictions
    kinds += [("cat", "dog")] * b + [("dog", "cat")] * c
    base = [Outcome(f"s{i}", "cat", pb) for i, (pb, _) in enumerate(kinds)]
    prun = [Outcome(f"s{i}", "cat", pp) for i, (_, pp) in enumerate(kinds)]
    return base, prun


def test_mcnemar_exact_small():
    base, prun = _discordant_arms(1, 6)
    result = compare(base, prun, LABELS, resamples=200)
    assert result["discordant"] == {"baseline_only": 1, "pruned_only": 6}
    # 2 * P(X <= 1 | n = 7, p = 1/2) = 2 * (1 + 7) / 128 = 0.125
    assert result["mcnemar_p"] == pytest.approx(0.125)
    assert result["mcnemar_p"] == pytest.approx(stats.binomtest(1, 7, 0.5).pvalue)
    assert mcnemar_p(6, 1) == pytest.approx(0.125)


def test_mcnemar_chi_square_large():
    # b + c = 40 >= 25: chi2 = (|30 - 10| - 1)^2 / 40 = 9.025, p = P(chi2_1 > 9.025) = erfc(sqrt(9.025 / 2))
    assert mcnemar_p(30, 10) == pytest.approx(math.erfc(math.sqrt(9.025 / 2)))
    assert mcnemar_p(30, 10) == pytest.approx(0.002663, abs=1e-6)
    # the boundary: 25 discordant pairs uses the chi-square form, 24 the exact one
    assert mcnemar_p(20, 5) == pytest.approx(math.erfc(math.sqrt((15 - 1) ** 2 / 25 / 2)))
    assert mcnemar_p(19, 5) == pytest.approx(stats.binomtest(5, 24, 0.5).pvalue)


def test_mcnemar_no_discordant_pairs():
    base, prun = _discordant_arms(0, 0)
    result = compare(base, prun, LABELS, resamples=100)
    assert result["mcnemar_p"] == 1.0 and result["discordant"] == {"baseline_only": 0, "pruned_only": 0}
    assert mcnemar_p(0, 0) == 1.0


# ---------------------------------------------------------------- bootstrap


def _noisy(n=200, seed=3):
    rng = np.random.default_rng(seed)
    labels = rng.choice(LABELS, n)
    choices = [*LABELS, INVALID]
    pb = [str(lab) if rng.random() < 0.8 else str(rng.choice(choices)) for lab in labels]
    pp = [str(lab) if rng.random() < 0.7 else str(rng.choice(choices)) for lab in labels]
    return _arm(list(zip(labels, pb, strict=True))), _arm(list(zip(labels, pp, strict=True)))


def test_identical_arms_have_zero_delta_and_an_interval_of_positive_width():
    # 200 equal pairs do not prove a zero drop: the upper end is a valid 97.5% bound (about 1 - 0.025**(1/200)),
    # not the bootstrap's degenerate [0, 0] (the expectation before issue 24)
    base, _ = _noisy()
    result = compare(base, list(base), LABELS)
    assert result["f1_delta"] == 0.0 and result["f1_delta_ci_bootstrap"] == [0.0, 0.0]
    assert result["accuracy_delta"] == 0.0
    for key in ("f1_delta_ci", "accuracy_delta_ci"):
        low, high = result[key]
        assert -0.04 < low < -(1 - 0.025 ** (1 / 200)) and 1 - 0.025 ** (1 / 200) < high < 0.04
    assert result["f1_delta_ci"] == result["accuracy_delta_ci"]  # the bootstrap is widened to the accuracy bound
    assert result["agreement"] == 1.0 and result["mcnemar_p"] == 1.0


def test_bootstrap_is_deterministic_under_the_seed():
    base, prun = _noisy()
    first = compare(base, prun, LABELS, seed=7)
    assert compare(base, prun, LABELS, seed=7) == first
    assert compare(base, prun, LABELS, seed=8)["f1_delta_ci_bootstrap"] != first["f1_delta_ci_bootstrap"]


def test_vectorised_f1_equals_sklearn_on_resamples():
    base, prun = _noisy(n=150)
    y_true = [o.label for o in base]
    rng = np.random.default_rng(11)
    indices = rng.integers(0, len(y_true), size=(5, len(y_true)))
    for arm in (base, prun):
        y_pred = [o.prediction for o in arm]
        fast = f1_macro_resampled(y_true, y_pred, LABELS, indices)
        for row, idx in enumerate(indices):
            slow = f1_score(
                [y_true[i] for i in idx], [y_pred[i] for i in idx], labels=LABELS, average="macro", zero_division=0
            )
            assert fast[row] == pytest.approx(slow, abs=1e-12)


def test_vectorised_f1_with_a_class_missing_from_the_resample():
    # "bird" is neither true nor predicted: its F1 is 0 (zero_division=0) and still counts in the mean
    y_true, y_pred = ["cat", "dog", "cat"], ["cat", "dog", INVALID]
    expected = f1_score(y_true, y_pred, labels=LABELS, average="macro", zero_division=0)
    assert f1_macro_resampled(y_true, y_pred, LABELS, np.array([[0, 1, 2]]))[0] == pytest.approx(expected)


def test_interval_contains_the_point_estimate_in_a_noisy_example():
    base, prun = _noisy()
    result = compare(base, prun, LABELS)
    kb, kp = arm_kpis(base, LABELS), arm_kpis(prun, LABELS)
    assert result["n_paired"] == 200
    assert result["f1_delta"] == pytest.approx(kp["f1_macro"] - kb["f1_macro"])
    assert result["accuracy_delta"] == pytest.approx(kp["accuracy"] - kb["accuracy"])
    for key in ("f1", "accuracy"):
        low, high = result[f"{key}_delta_ci"]
        assert low < result[f"{key}_delta"] < high
    assert result["f1_delta"] < 0  # the pruned arm is noisier
    json.dumps(result, allow_nan=False)


def test_bootstrap_is_fast():
    base, prun = _noisy(n=1000)
    compare(base, prun, LABELS, resamples=10)  # warm up imports and caches
    start = time.perf_counter()
    compare(base, prun, LABELS, resamples=2000)
    assert time.perf_counter() - start < 1.0


def test_compare_pairs_on_sample_id_and_skips_errors():
    base = [Outcome("a", "cat", "cat"), Outcome("b", "dog", "dog"), Outcome("c", "cat", None, error="x")]
    prun = [Outcome("c", "cat", "cat"), Outcome("b", "dog", "cat"), Outcome("d", "dog", "dog")]
    result = compare(base, prun, LABELS, resamples=50)
    assert result["n_paired"] == 1  # only "b": "a" and "d" are in one arm, "c" errored in the baseline
    assert result["accuracy_delta"] == -1.0 and result["agreement"] == 0.0


def test_compare_without_pairs():
    result = compare([], [Outcome("a", "cat", "cat")], LABELS)
    assert result["n_paired"] == 0 and result["f1_delta"] is None and result["f1_delta_ci"] is None
    assert result["mcnemar_p"] is None and result["paper_tflops_ratio"] is None
    json.dumps(result, allow_nan=False)


# ---------------------------------------------------------------- ratios


def test_mean_of_ratios_and_ratio_of_means_differ():
    # s0: a big image (2880 tokens), 10 -> 5 TFLOPs, ratio 0.5; s1: a small one, 2 -> 2, ratio 1.0
    base = _arm(
        [("cat", "cat"), ("dog", "dog")],
        paper_tflops=[10.0, 2.0],
        full_tflops=[20.0, 4.0],
        prefill_ms=[100.0, 300.0],
        total_ms=[1000.0, 3000.0],
    )
    prun = _arm(
        [("cat", "cat"), ("dog", "dog")],
        paper_tflops=[5.0, 2.0],
        full_tflops=[10.0, 4.0],
        prefill_ms=[50.0, 250.0],
        total_ms=[900.0, 2700.0],
    )
    result = compare(base, prun, LABELS, resamples=50)
    assert result["paper_tflops_ratio"] == pytest.approx(0.75)  # (0.5 + 1.0) / 2
    assert result["paper_tflops_ratio_of_means"] == pytest.approx(7 / 12)  # 3.5 / 6
    assert result["full_tflops_ratio"] == pytest.approx(0.75)
    assert result["prefill_ratio"] == pytest.approx(150 / 200)  # median 150 / median 200
    assert result["total_ratio"] == pytest.approx(1800 / 2000)


def test_ratios_are_none_when_baseline_is_missing_or_zero():
    base = _arm([("cat", "cat"), ("dog", "dog")], paper_tflops=[0.0, None], prefill_ms=[0.0, 0.0])
    prun = _arm([("cat", "cat"), ("dog", "dog")], paper_tflops=[1.0, 1.0], prefill_ms=[5.0, 5.0])
    result = compare(base, prun, LABELS, resamples=50)
    assert result["paper_tflops_ratio"] is None and result["paper_tflops_ratio_of_means"] is None
    assert result["prefill_ratio"] is None and result["full_tflops_ratio"] is None


# ---------------------------------------------------------------- budget


def test_budget_met_with_confidence():
    v = budget_verdict({"f1_delta": -0.005, "f1_delta_ci": [-0.008, 0.002]})
    assert v == {
        "metric": "f1",
        "max_drop": 0.01,
        "drop": pytest.approx(0.005),
        "drop_ci_high": pytest.approx(0.008),
        "met": True,
        "met_with_confidence": True,
        "reason": None,
    }


def test_budget_met_but_not_with_confidence():
    v = budget_verdict({"f1_delta": -0.005, "f1_delta_ci": [-0.03, 0.02]})
    assert v["met"] is True and v["met_with_confidence"] is False
    assert v["drop_ci_high"] == pytest.approx(0.03)


def test_budget_not_met():
    v = budget_verdict({"accuracy_delta": -0.02, "accuracy_delta_ci": [-0.04, -0.001]}, metric="accuracy")
    assert v["metric"] == "accuracy" and v["drop"] == pytest.approx(0.02)
    assert v["met"] is False and v["met_with_confidence"] is False


def test_budget_edges():
    # a drop of exactly the budget is met, float noise included (0.80 - 0.81 = -0.010000000000000009)
    assert budget_verdict({"f1_delta": 0.80 - 0.81, "f1_delta_ci": [-0.02, 0.0]})["met"] is True
    # an improvement is a negative drop
    assert budget_verdict({"f1_delta": 0.02, "f1_delta_ci": [0.01, 0.03]})["met_with_confidence"] is True
    none = budget_verdict({"f1_delta": None, "f1_delta_ci": None})
    assert none["met"] is None and none["met_with_confidence"] is None
    with pytest.raises(ValueError):
        budget_verdict({}, metric="recall")


# ---------------------------------------------------------------- report


def _report():
    base, prun = _noisy(n=60)
    arms = []
    for name, strategy, outcomes in [
        ("baseline", "baseline", base),
        ("transprune", "transprune", prun),
        ("random-control", "random", prun),
    ]:
        arm = {"name": name, "strategy": strategy, **arm_kpis(outcomes, LABELS)}
        arm["vs_baseline"] = None if name == "baseline" else compare(base, outcomes, LABELS, resamples=100)
        arms.append(arm)
    arms[1]["vs_baseline"].update(f1_delta=-0.012, f1_delta_ci=[-0.031, 0.004])
    arms[1].update(prefill_ms_p50=41.25, prefill_ms_p95=60.0, total_ms_p50=300.0, paper_tflops=1.56)
    return {
        "run_id": 3,
        "name": "pilot-a",
        "status": "completed",
        "dataset": "inspection-300",
        "model": "llava-1.5-7b",
        "machine": {"gpu": "NVIDIA H100", "threads": 16, "torch": "2.4.1", "transformers": "5.0.0"},
        "batch_size": 4,
        "arms": arms,
    }


def test_format_report():
    text = format_report(_report())
    for name in ("baseline", "transprune", "random-control"):
        assert name in text
    assert "-0.012 [-0.031, +0.004]" in text
    assert re.search(r"(^|\s)-(\s|$)", text, re.M)  # missing values (baseline's deltas, latencies) as "-"
    for expected in (
        "Run 3",
        "pilot-a",
        "completed",
        "inspection-300",
        "llava-1.5-7b",
        "NVIDIA H100",
        "batch size: 4",
        "batch time / batch size",
        "Per-class F1",
        "McNemar p",
        "41.2",
    ):
        assert expected in text
    assert all(len(line) <= 120 for line in text.splitlines())
    baseline_row = next(line for line in text.splitlines() if line.startswith("baseline "))
    assert baseline_row.split()[-1] == "-"  # agreement with itself is not reported: no comparison


def test_format_report_columns_are_aligned_and_tolerant():
    report = _report()
    report["arms"][2]["name"] = "a-very-long-arm-name-that-would-break-the-layout"
    report["arms"][2]["f1_macro"] = None
    text = format_report(report)
    assert all(len(line) <= 120 for line in text.splitlines())
    blocks = [b.splitlines() for b in text.split("\n\n")[1:]]
    for block in blocks:
        table = block[1:] if not block[0].startswith(("arm", "class")) else block
        header, rule = table[0], table[1]
        assert set(rule.replace(" ", "")) == {"-"}
        assert len(header.rstrip()) <= len(rule)
    assert format_report({"run_id": 1, "arms": []}).count("-") >= 1
