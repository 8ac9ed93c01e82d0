"""KPIs of one arm, and the paired comparison of a pruned arm with the baseline.

Definitions follow docs/kpis.md: accuracy, macro-F1 (scikit-learn's, ``invalid`` answers count as wrong),
invalid rate, agreement; intervals valid at every n and McNemar's test for the differences to baseline; mean of
per-sample FLOP ratios and ratio of means; latency percentiles.

Intervals (docs/sample-sizes.md): every difference that is a mean of per-sample values in a known range (accuracy,
the open-ended scores, the similarities to the baseline) gets a betting interval (``pilot.bounds``, Waudby-Smith
and Ramdas), each end a 97.5% bound at any n, also when every pair is equal; the share of changed answers an
exact Clopper-Pearson interval; macro-F1, not a per-sample mean, the paired bootstrap widened to at least the
accuracy interval's half-widths (so that few discordant pairs cannot give a point). A verdict is refused when the
baseline scores at the floor of the metric (``budget_verdict``'s ``reason``).

Pilots without labels: a sample whose label is ``""`` (``pilot.data.manifest.UNLABELLED``) counts for
everything but the label-based KPIs (accuracy, macro-F1, their differences, McNemar), which use the labelled
samples only (``n_labelled``). Agreement with the baseline's answer (both normalised to a label or ``invalid``)
uses every paired sample, with a Clopper-Pearson 95% interval (``agreement_ci``; a percentile bootstrap of a share
near 1 collapses to a point when no answer changed), and ``answer_changes`` gives, per baseline answer, how many
samples had it and how many of them the pruned arm answers otherwise. ``budget_verdict(..., "agreement")``
reads the budget as the largest share of changed answers. An empty label set means free-text answers: any
answer but ``invalid`` is valid.

Every function returns plain Python numbers, lists, dicts and ``None`` (never NaN), so results can be
written with ``json.dumps(..., allow_nan=False)``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats
from sklearn.metrics import f1_score

from pilot.bounds import betting_interval, clopper_pearson
from pilot.scoring import TEXT_METRICS, score_vs_baseline

INVALID = "invalid"
UNLABELLED = ""  # pilot.data.manifest.UNLABELLED (no torch or data imports here)
OPEN_TASKS = ("text", "json")
# Per-sample scores of open-ended answers against their references (pilot.scoring): text, then json fields;
# each in [0, 1].
SCORE_METRICS = (*TEXT_METRICS, "field_precision", "field_recall", "field_f1")
# Label-free, open-ended: each pruned answer scored against the baseline's answer (1.0: the same text).
VS_BASELINE_METRICS = ("anls_vs_baseline", "token_f1_vs_baseline")
METRICS = ("f1", "accuracy", "agreement", *SCORE_METRICS, *VS_BASELINE_METRICS)
# Other spellings of a budget metric: the tuner's name for macro-F1, and a short one for accuracy.
METRIC_ALIASES = {"f1_macro": "f1", "acc": "accuracy"}
Z95 = 1.959963984540054

# A verdict's refusal when the baseline scores at the metric's floor (no drop is possible on these samples).
FLOOR = "the baseline scores at the floor of {metric} on every paired sample, so no drop can show: no verdict"
FLOOR_START = FLOOR.split("{")[0]  # how a refused verdict's reason starts

# McNemar: below this many discordant pairs the exact binomial test is used, at or above it the
# chi-square approximation with continuity correction.
EXACT_BELOW = 25
# A budget is compared with a tolerance so that float noise (0.80 - 0.81 = -0.010000000000000009)
# does not fail a drop of exactly the budget.
_BUDGET_TOL = 1e-9


def metric_key(metric: str | None) -> str:
    """A budget metric as the CLI, the tuner's settings or the dashboard name it -> its key in a comparison with the
    baseline (``budget_verdict``, ``metric_drop``): one of ``METRICS``, or an alias (``METRIC_ALIASES``: "f1_macro"
    is "f1"); None or "" is macro-F1, case and spaces around do not matter. An unknown name raises ValueError (a
    typo must not quietly become macro-F1)."""
    name = (metric or "f1").strip().lower()
    key = METRIC_ALIASES.get(name, name)
    if key not in METRICS:
        raise ValueError(f"metric {metric!r}: use one of {', '.join((*METRICS, *METRIC_ALIASES))}")
    return key


@dataclass(frozen=True)
class Outcome:
    """One sample's result in one arm."""

    sample_id: str
    label: str
    prediction: str | None  # a label, "invalid", or None when the sample errored
    prefill_ms: float | None = None
    total_ms: float | None = None
    paper_tflops: float | None = None
    full_tflops: float | None = None
    visual_tokens_kept: int | None = None
    error: str | None = None
    # Open-ended tasks and generation (None for results stored before them: a label task).
    task: str | None = None
    scores: dict | None = None  # pilot.scoring's metrics of this answer against its references
    answer_text: str | None = None
    output_tokens: int | None = None
    ttft_ms: float | None = None
    tpot_ms: float | None = None
    kv_cache_bytes: int | None = None
    finish_reason: str | None = None  # "stop" or "length"
    utf8_valid: bool | None = None

    @property
    def open_ended(self) -> bool:
        return self.task in OPEN_TASKS

    def score(self, metric: str) -> float | None:
        """This answer's ``metric`` (SCORE_METRICS) against its references; None without one."""
        value = (self.scores or {}).get(metric)
        return None if value is None else float(value)

    @property
    def errored(self) -> bool:
        return self.error is not None or self.prediction is None

    @property
    def labelled(self) -> bool:
        return self.label is not None and self.label != UNLABELLED

    @property
    def correct(self) -> bool:
        """The prediction equals the label; ``invalid`` (or an error) never matches."""
        return self.prediction is not None and self.prediction != INVALID and self.prediction == self.label


# ---------------------------------------------------------------- helpers


def _labels(labels: Sequence[str]) -> list[str]:
    out = list(dict.fromkeys(labels))
    if not out:
        raise ValueError("labels must not be empty")
    return out


def _ok(outcomes: Iterable[Outcome]) -> list[Outcome]:
    return [o for o in outcomes if not o.errored]


def _finite(values: Iterable[float | int | None]) -> list[float]:
    out = []
    for v in values:
        if v is None:
            continue
        v = float(v)
        if math.isfinite(v):
            out.append(v)
    return out


def _mean(values: Iterable[float | int | None]) -> float | None:
    vals = _finite(values)
    return float(np.mean(vals)) if vals else None


def _percentile(values: Iterable[float | int | None], q: float) -> float | None:
    vals = _finite(values)
    return float(np.percentile(vals, q, method="linear")) if vals else None


def _ratio(num: float | None, den: float | None) -> float | None:
    if num is None or den is None or den == 0:
        return None
    out = num / den
    return float(out) if math.isfinite(out) else None


def _y_pred(outcomes: Sequence[Outcome], labels: list[str]) -> list[str]:
    """Predictions for scikit-learn: anything that is not a label becomes a string outside the label set."""
    invalid = INVALID
    while invalid in labels:  # a label literally called "invalid" must still not match
        invalid = "_" + invalid
    allowed = set(labels)
    return [o.prediction if o.prediction in allowed else invalid for o in outcomes]


def _norm_prediction(prediction: str | None, allowed: set[str]) -> str | None:
    """A label, or ``invalid``; with an empty label set (free-text answers) the answer itself."""
    if prediction is None:
        return None
    if not allowed:
        return prediction
    return prediction if prediction in allowed else INVALID


def wilson_interval(successes: int, n: int, z: float = Z95) -> list[float] | None:
    """The Wilson score interval of a share ``successes / n`` (two-sided 95% by default); None when n is 0."""
    if n <= 0:
        return None
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    low = 0.0 if successes == 0 else max(0.0, centre - half)  # exact at the ends (no float dust)
    high = 1.0 if successes == n else min(1.0, centre + half)
    return [low, high]


def clopper_pearson_interval(successes: int, n: int) -> list[float] | None:
    """The exact (Clopper-Pearson) two-sided 95% interval of a share ``successes / n``; None when n is 0."""
    if n <= 0:
        return None
    low, high = clopper_pearson(successes, n)
    return [float(low) + 0.0, float(high) + 0.0]


def _codes(outcomes: Sequence[Outcome], labels: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Integer codes: label i -> i; a true label outside the set -> K; a prediction outside it -> K + 1."""
    index = {label: i for i, label in enumerate(labels)}
    k = len(labels)
    y_true = np.array([index.get(o.label, k) for o in outcomes], dtype=np.int64)
    y_pred = np.array([index.get(o.prediction, k + 1) for o in outcomes], dtype=np.int64)
    return y_true, y_pred


# ---------------------------------------------------------------- one arm


def arm_kpis(outcomes: Sequence[Outcome], labels: Sequence[str]) -> dict:
    """KPIs of one arm; errored samples count only in ``errors``. Accuracy and macro-F1 are on the labelled
    samples (``n_labelled``; None without any), the invalid rate on all."""
    labels = list(dict.fromkeys(labels))  # may be empty: free-text answers
    ok = _ok(outcomes)
    n = len(ok)
    errors = len(outcomes) - n
    allowed = set(labels)
    invalid = sum(1 for o in ok if (o.prediction not in allowed if allowed else o.prediction == INVALID))
    scored = [o for o in ok if o.labelled]

    f1_per_class = {label: None for label in labels}
    f1_macro = accuracy = None
    if scored and labels:
        y_true = [o.label for o in scored]
        y_pred = _y_pred(scored, labels)
        per_class = f1_score(y_true, y_pred, labels=labels, average=None, zero_division=0)
        f1_per_class = {label: float(v) for label, v in zip(labels, per_class, strict=True)}
        f1_macro = float(f1_score(y_true, y_pred, labels=labels, average="macro", zero_division=0))
    if scored:
        accuracy = sum(o.correct for o in scored) / len(scored)
    invalid_rate = invalid / n if n else None

    prefill = [o.prefill_ms for o in ok]
    total = [o.total_ms for o in ok]
    latency_n = sum(1 for o in ok if _finite([o.prefill_ms, o.total_ms]))
    return {**_open_ended_kpis(ok), **_generation_kpis(ok),
        "n": n,
        "n_labelled": len(scored),
        "errors": errors,
        "invalid": invalid,
        "invalid_rate": invalid_rate,
        "accuracy": accuracy,
        "f1_macro": f1_macro,
        "f1_per_class": f1_per_class,
        "prefill_ms_p50": _percentile(prefill, 50),
        "prefill_ms_p95": _percentile(prefill, 95),
        "total_ms_p50": _percentile(total, 50),
        "total_ms_p95": _percentile(total, 95),
        "latency_n": latency_n,
        "paper_tflops": _mean(o.paper_tflops for o in ok),
        "full_tflops": _mean(o.full_tflops for o in ok),
        "visual_tokens_kept": _mean(o.visual_tokens_kept for o in ok),
    }


def _open_ended_kpis(ok: Sequence[Outcome]) -> dict:
    """Means of the open-ended scores over the answers that have them (``n_referenced``), and the share of
    JSON answers that do not parse (counted wrong in the field scores, shown on their own)."""
    scored = [o for o in ok if o.scores]
    out: dict = {"n_referenced": len(scored)}
    for metric in SCORE_METRICS:
        out[metric] = _mean(o.score(metric) for o in scored)
    parsed = [o.scores["json_valid"] for o in scored if "json_valid" in o.scores]
    out["json_invalid_rate"] = (len(parsed) - sum(map(bool, parsed))) / len(parsed) if parsed else None
    return out


def _generation_kpis(ok: Sequence[Outcome]) -> dict:
    """Generation as it is served: output tokens, time to first token, time per output token, the KV cache held;
    open-ended answers cut at the token limit (``truncated_rate``) and answers that are not valid UTF-8."""
    opened = [o for o in ok if o.open_ended and o.finish_reason is not None]
    return {
        "output_tokens": _mean(o.output_tokens for o in ok),
        "ttft_ms_p50": _percentile((o.ttft_ms for o in ok), 50),
        "ttft_ms_p95": _percentile((o.ttft_ms for o in ok), 95),
        "tpot_ms_p50": _percentile((o.tpot_ms for o in ok), 50),
        "kv_cache_bytes": _mean(o.kv_cache_bytes for o in ok),
        "truncated_rate": sum(o.finish_reason == "length" for o in opened) / len(opened) if opened else None,
        "not_utf8": sum(o.utf8_valid is False for o in ok),
    }


# ---------------------------------------------------------------- vectorised F1


def _resample_counts(indices: np.ndarray, n: int) -> np.ndarray:
    """(R, n) index rows -> (R, n) float counts of how often each sample was drawn in each row."""
    r = indices.shape[0]
    flat = (np.arange(r, dtype=np.int64)[:, None] * n + indices).ravel()
    return np.bincount(flat, minlength=r * n).reshape(r, n).astype(np.float64)


def _macro_f1_from_counts(counts: np.ndarray, y_true: np.ndarray, y_pred: np.ndarray, k: int) -> np.ndarray:
    """Macro-F1 (zero_division=0) for each row of per-sample weights ``counts`` (R, n); codes as in _codes."""
    classes = np.arange(k)
    true_1h = (y_true[:, None] == classes).astype(np.float64)  # (n, K)
    pred_1h = (y_pred[:, None] == classes).astype(np.float64)
    tp_1h = true_1h * pred_1h
    tp = counts @ tp_1h  # (R, K)
    denom = counts @ true_1h + counts @ pred_1h  # 2TP + FP + FN
    f1 = np.divide(2.0 * tp, denom, out=np.zeros_like(tp), where=denom > 0)
    return f1.mean(axis=1)


def f1_macro_resampled(
    y_true: Sequence[str], y_pred: Sequence[str], labels: Sequence[str], indices: np.ndarray
) -> np.ndarray:
    """Macro-F1 of ``y_true[idx], y_pred[idx]`` for every row ``idx`` of ``indices`` (R, n), without a loop.

    Equal to ``f1_score(y_true[idx], y_pred[idx], labels=labels, average="macro", zero_division=0)``
    per row; predictions outside ``labels`` never match.
    """
    labels = _labels(labels)
    index = {label: i for i, label in enumerate(labels)}
    k = len(labels)
    t = np.array([index.get(v, k) for v in y_true], dtype=np.int64)
    p = np.array([index.get(v, k + 1) for v in y_pred], dtype=np.int64)
    indices = np.atleast_2d(np.asarray(indices, dtype=np.int64))
    return _macro_f1_from_counts(_resample_counts(indices, len(t)), t, p, k)


# ---------------------------------------------------------------- McNemar


def mcnemar_p(b: int, c: int) -> float:
    """Two-sided McNemar p-value for ``b`` and ``c`` discordant pairs.

    Exact binomial test (n = b + c, p = 0.5) when b + c < 25, else chi-square (1 df) with continuity
    correction; 1.0 when there are no discordant pairs.
    """
    n = b + c
    if n == 0:
        return 1.0
    if n < EXACT_BELOW:
        p = stats.binomtest(b, n, 0.5, alternative="two-sided").pvalue
    else:
        chi2 = (abs(b - c) - 1) ** 2 / n
        p = stats.chi2.sf(chi2, df=1)
    return float(min(1.0, p))


# ---------------------------------------------------------------- pairing


def _by_id(outcomes: Sequence[Outcome], arm: str) -> dict[str, Outcome]:
    out: dict[str, Outcome] = {}
    for o in _ok(outcomes):
        if o.sample_id in out:
            raise ValueError(f"{arm}: sample_id {o.sample_id!r} has more than one result")
        out[o.sample_id] = o
    return out


def _paired(baseline: Sequence[Outcome], pruned: Sequence[Outcome]) -> tuple[list[Outcome], list[Outcome]]:
    base = _by_id(baseline, "baseline")
    prun = _by_id(pruned, "pruned")
    ids = [sid for sid in base if sid in prun]  # baseline order
    for sid in ids:
        if base[sid].label != prun[sid].label:
            raise ValueError(f"sample_id {sid!r} has label {base[sid].label!r} vs {prun[sid].label!r}")
    return [base[s] for s in ids], [prun[s] for s in ids]


def _ci(values: np.ndarray) -> list[float]:
    lo, hi = np.percentile(values, [2.5, 97.5])
    return [float(lo), float(hi)]


def _mean_of_ratios(b: Sequence[Outcome], p: Sequence[Outcome], field: str) -> float | None:
    ratios = []
    for ob, op in zip(b, p, strict=True):
        r = _ratio(*_finite_pair(getattr(op, field), getattr(ob, field)))
        if r is not None:
            ratios.append(r)
    return float(np.mean(ratios)) if ratios else None


def _finite_pair(x: float | None, y: float | None) -> tuple[float | None, float | None]:
    fx, fy = _finite([x]), _finite([y])
    return (fx[0] if fx else None), (fy[0] if fy else None)


def _both(b: Sequence[Outcome], p: Sequence[Outcome], field: str) -> tuple[list[float], list[float]]:
    """Values of ``field`` over the paired samples where both arms have a finite value."""
    vb, vp = [], []
    for ob, op in zip(b, p, strict=True):
        x, y = _finite_pair(getattr(ob, field), getattr(op, field))
        if x is not None and y is not None:
            vb.append(x)
            vp.append(y)
    return vb, vp


def _ratio_of_means(b: Sequence[Outcome], p: Sequence[Outcome], field: str) -> float | None:
    vb, vp = _both(b, p, field)
    return _ratio(_mean(vp), _mean(vb)) if vb else None


def _ratio_of_medians(b: Sequence[Outcome], p: Sequence[Outcome], field: str) -> float | None:
    vb, vp = _both(b, p, field)
    return _ratio(_percentile(vp, 50), _percentile(vb, 50)) if vb else None


# ---------------------------------------------------------------- comparison


def compare(
    baseline: Sequence[Outcome],
    pruned: Sequence[Outcome],
    labels: Sequence[str],
    *,
    resamples: int = 2000,
    seed: int = 0,
) -> dict:
    """Paired comparison of ``pruned`` with ``baseline`` on the samples with a result in both arms.

    Label-based differences (macro-F1, accuracy, McNemar) on the labelled pairs (``n_labelled``), None without
    any; agreement, its Clopper-Pearson 95% interval and the answer changes per baseline answer on every pair.
    ``resamples`` and ``seed``: macro-F1's paired bootstrap (the other intervals are not resampled)."""
    labels = list(dict.fromkeys(labels))  # may be empty: free-text answers
    if resamples < 1:
        raise ValueError("resamples must be >= 1")
    b_all, p_all = _paired(baseline, pruned)
    n = len(b_all)
    scored = [i for i, o in enumerate(b_all) if o.labelled]
    b, p = [b_all[i] for i in scored], [p_all[i] for i in scored]
    n_labelled = len(b)
    out: dict = {"n_paired": n, "n_labelled": n_labelled, "resamples": resamples, "seed": seed}

    if n_labelled and labels:
        k = len(labels)
        t, pred_b = _codes(b, labels)
        _, pred_p = _codes(p, labels)
        correct_b = np.array([o.correct for o in b], dtype=np.float64)
        correct_p = np.array([o.correct for o in p], dtype=np.float64)

        ones = np.ones((1, n_labelled))
        f1_delta = _macro_f1_from_counts(ones, t, pred_p, k)[0] - _macro_f1_from_counts(ones, t, pred_b, k)[0]
        acc_delta = correct_p.mean() - correct_b.mean()

        rng = np.random.default_rng(seed)
        counts = _resample_counts(rng.integers(0, n_labelled, size=(resamples, n_labelled)), n_labelled)
        boot_f1 = _macro_f1_from_counts(counts, t, pred_p, k) - _macro_f1_from_counts(counts, t, pred_b, k)
        acc_ci = betting_interval(correct_p - correct_b, -1.0, 1.0)
        f1_boot = _ci(boot_f1)

        nb = int(np.sum((correct_b == 1) & (correct_p == 0)))
        nc = int(np.sum((correct_b == 0) & (correct_p == 1)))
        out.update(
            f1_delta=float(f1_delta),
            f1_delta_ci=_f1_interval(float(f1_delta), f1_boot, float(acc_delta), acc_ci),
            f1_delta_ci_bootstrap=f1_boot,
            f1_baseline=float(_macro_f1_from_counts(ones, t, pred_b, k)[0]),
            accuracy_delta=float(acc_delta),
            accuracy_delta_ci=acc_ci,
            accuracy_baseline=float(correct_b.mean()),
            mcnemar_p=mcnemar_p(nb, nc),
            discordant={"baseline_only": nb, "pruned_only": nc},
        )
    else:
        out.update(
            f1_delta=None,
            f1_delta_ci=None,
            f1_delta_ci_bootstrap=None,
            f1_baseline=None,
            accuracy_delta=None,
            accuracy_delta_ci=None,
            accuracy_baseline=None,
            mcnemar_p=None,
            discordant={"baseline_only": 0, "pruned_only": 0},
        )
    agree, changes = _agreement(b_all, p_all, labels)
    out.update(agreement=agree / n if n else None, agreement_ci=clopper_pearson_interval(agree, n),
               answer_changes=changes)
    out.update(_score_deltas(b_all, p_all))
    out.update(_vs_baseline(b_all, p_all))

    out.update(
        paper_tflops_ratio=_mean_of_ratios(b_all, p_all, "paper_tflops"),
        paper_tflops_ratio_of_means=_ratio_of_means(b_all, p_all, "paper_tflops"),
        full_tflops_ratio=_mean_of_ratios(b_all, p_all, "full_tflops"),
        full_tflops_ratio_of_means=_ratio_of_means(b_all, p_all, "full_tflops"),
        prefill_ratio=_ratio_of_medians(b_all, p_all, "prefill_ms"),
        total_ratio=_ratio_of_medians(b_all, p_all, "total_ms"),
    )
    return out


def _f1_interval(f1_delta: float, boot: list[float], acc_delta: float, acc_ci: list[float] | None) -> list[float]:
    """Macro-F1's interval: the paired bootstrap's, widened on each side to at least the accuracy interval's
    half-width there. The bootstrap alone is a point when every pair is equal and too narrow with few discordant
    pairs; the accuracy half-width (a betting bound, valid at any n) measures how far those discordant pairs
    can move a per-sample mean, and a changed answer moves macro-F1 about as far (by 1/(K * share of its class)
    instead of 1: more for rare classes, where the bootstrap itself is wide)."""
    if acc_ci is None:
        return boot
    low = min(boot[0], f1_delta - (acc_delta - acc_ci[0]))
    high = max(boot[1], f1_delta + (acc_ci[1] - acc_delta))
    return [max(low, -1.0) + 0.0, min(high, 1.0) + 0.0]


def _score_deltas(b: Sequence[Outcome], p: Sequence[Outcome]) -> dict:
    """Per open-ended score: the mean paired difference (pruned - baseline) over the samples scored in both
    arms, its betting 95% interval (``pilot.bounds``: each difference is in [-1, 1]), ``n``, and the baseline's
    mean on those samples (``{metric}_baseline``: 0 is the floor, where no drop can show)."""
    out: dict = {}
    for metric in SCORE_METRICS:
        pairs = np.array([(ob.score(metric), op.score(metric)) for ob, op in zip(b, p, strict=True)
                          if ob.score(metric) is not None and op.score(metric) is not None],
                         dtype=np.float64).reshape(-1, 2)
        diffs = pairs[:, 1] - pairs[:, 0]
        out[f"{metric}_delta"] = float(diffs.mean()) + 0.0 if len(diffs) else None
        out[f"{metric}_delta_ci"] = betting_interval(_unit(diffs, metric, -1.0), -1.0, 1.0)
        out[f"{metric}_delta_sd"] = float(diffs.std(ddof=1)) if len(diffs) > 1 else None  # for pilot.plan
        out[f"{metric}_n"] = len(diffs)
        out[f"{metric}_baseline"] = float(pairs[:, 0].mean()) if len(diffs) else None
    return out


def _unit(values: np.ndarray, metric: str, low: float) -> np.ndarray:
    """``values`` checked to lie in [low, 1] (float dust clipped): a score outside [0, 1] is a scoring bug."""
    if len(values) and (values.min() < low - 1e-9 or values.max() > 1 + 1e-9):
        raise ValueError(f"{metric}: per-sample values must lie in [{low:g}, 1], got [{values.min()}, {values.max()}]")
    return np.clip(values, low, 1.0)


def _vs_baseline(b: Sequence[Outcome], p: Sequence[Outcome]) -> dict:
    """Open-ended answers without references: each pruned answer scored against the baseline's (ANLS and token
    F1 with betting 95% intervals on [0, 1]), the share of answers that changed (Clopper-Pearson 95%) and the mean
    change in answer length (characters, pruned - baseline)."""
    pairs = [(ob, op) for ob, op in zip(b, p, strict=True)
             if ob.open_ended and ob.answer_text is not None and op.answer_text is not None]
    scores = [score_vs_baseline(op.answer_text, ob.answer_text) for ob, op in pairs]
    out: dict = {"vs_baseline_n": len(pairs)}
    for metric in VS_BASELINE_METRICS:
        values = np.array([s[metric] for s in scores], dtype=np.float64)
        out[metric] = float(values.mean()) if len(values) else None
        out[f"{metric}_ci"] = betting_interval(_unit(values, metric, 0.0), 0.0, 1.0)
        out[f"{metric}_sd"] = float(values.std(ddof=1)) if len(values) > 1 else None  # for pilot.plan
    changed = sum(bool(s["changed"]) for s in scores)
    out["answers_changed"] = changed / len(scores) if scores else None
    out["answers_changed_ci"] = clopper_pearson_interval(changed, len(scores))
    out["length_change_chars"] = _mean(s["length_change_chars"] for s in scores)
    return out


def _agreement(b: Sequence[Outcome], p: Sequence[Outcome], labels: list[str]) -> tuple[int, dict]:
    """Pairs whose normalised answers agree, and per baseline answer ``{"n", "changed", "rate"}`` (labels in
    their order, then ``invalid``, then free-text answers by how often the baseline gave them)."""
    allowed = set(labels)
    per: dict[str, list[int]] = {}
    agree = 0
    for ob, op in zip(b, p, strict=True):
        answer_b = _norm_prediction(ob.prediction, allowed)
        same = answer_b == _norm_prediction(op.prediction, allowed)
        agree += same
        counts = per.setdefault(answer_b, [0, 0])
        counts[0] += 1
        counts[1] += not same
    rank = {label: i for i, label in enumerate([*labels, INVALID])}
    order = sorted(per, key=lambda a: (rank.get(a, len(rank)), -per[a][0], a))
    return agree, {a: {"n": per[a][0], "changed": per[a][1], "rate": per[a][1] / per[a][0]} for a in order}


def metric_drop(comparison: dict, metric: str) -> tuple[float | None, float | None, float | None]:
    """(drop, low end, high end of its 95% interval) of ``metric`` (one of METRICS); None where the comparison has
    no value. f1, accuracy and the open-ended scores (SCORE_METRICS): drop = -delta, the mean paired difference.
    Agreement: drop = the share of changed answers, 1 - agreement, its interval from the agreement's
    Clopper-Pearson interval; the similarities to the baseline (VS_BASELINE_METRICS): drop = 1 - the mean similarity."""
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {', '.join(METRICS)}, not {metric!r}")
    if metric in ("agreement", *VS_BASELINE_METRICS):  # a similarity to the baseline: drop = 1 - it
        value, ci = comparison.get(metric), comparison.get(f"{metric}_ci")
        drop = None if value is None else 1.0 - float(value) + 0.0
        if not ci or ci[0] is None:
            return drop, None, None
        return drop, 1.0 - float(ci[1]) + 0.0, 1.0 - float(ci[0]) + 0.0
    delta, ci = comparison.get(f"{metric}_delta"), comparison.get(f"{metric}_delta_ci")
    drop = None if delta is None else -float(delta) + 0.0
    if not ci or ci[0] is None:
        return drop, None, None
    return drop, -float(ci[1]) + 0.0, -float(ci[0]) + 0.0


def baseline_floor(comparison: dict, metric: str) -> bool:
    """Whether the baseline scores at the floor of ``metric`` on the paired samples (macro-F1, accuracy or an
    open-ended score of 0 on every one): the pruned arm cannot score lower there, so a drop of 0 says nothing
    about the budget. Never for agreement and the similarities to the baseline (they start at "identical")."""
    if metric in ("agreement", *VS_BASELINE_METRICS):
        return False
    value = comparison.get(f"{metric}_baseline")
    return value is not None and float(value) <= _BUDGET_TOL


def budget_verdict(comparison: dict, metric: str = "f1", max_drop: float = 0.01) -> dict:
    """Whether a pruned arm meets a quality budget (docs/kpis.md, docs/sample-sizes.md).

    drop = -delta (``agreement``: the share of answers that change, 1 - agreement); ``met`` when drop <= max_drop,
    ``met_with_confidence`` when the upper end of the drop's 95% interval (valid at any n) is too. ``None`` where
    the comparison has no value, and both ``None`` with a ``reason`` when the verdict is refused: the baseline
    scores at the floor of the metric on every paired sample (``baseline_floor``).
    """
    drop, _, drop_ci_high = metric_drop(comparison, metric)
    out = {
        "metric": metric,
        "max_drop": max_drop,
        "drop": drop,
        "drop_ci_high": drop_ci_high,
        "met": None if drop is None else drop <= max_drop + _BUDGET_TOL,
        "met_with_confidence": None if drop_ci_high is None else drop_ci_high <= max_drop + _BUDGET_TOL,
        "reason": None,
    }
    if drop is not None and baseline_floor(comparison, metric):
        out.update(met=None, met_with_confidence=None, reason=FLOOR.format(metric=metric))
    return out
