"""The budget's metric, the verdicts of the pruned arms, their KPI tiles and trade-off points.

The verdicts are ``pilot.metrics.budget_verdict`` and the samples they need ``pilot.plan.plan_comparison``;
this module only picks the metric and words and formats them. No Streamlit, no torch.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pandas as pd

from dashboard.formatting import MISSING, ci_pts, fixed, num, pct, pts, short_ms, signed_pct
from pilot.metrics import SCORE_METRICS, VS_BASELINE_METRICS, budget_verdict, metric_drop, metric_key
from pilot.plan import TITLES, plan_comparison
from pilot.summaries import BASELINE


def metric_title(metric: str) -> str:
    key = metric_key(metric)
    return {"f1": "macro-F1", "accuracy": "accuracy", "agreement": "agreement with baseline"}.get(key, TITLES[key])


METRIC_CHOICES = {"auto": "auto (macro-F1; agreement without labels)", "f1": "macro-F1", "accuracy": "accuracy",
                  "agreement": "answers changed (no labels needed)"}
# Continuous metrics of open-ended answers the sidebar offers when a run (or a study's trials) has them.
OPEN_CHOICES = {"anls": "ANLS (against references)", "exact_match": "exact match (against references)",
                "token_f1": "token F1 (against references)",
                "relaxed_accuracy": "relaxed accuracy (against references)",
                "relaxed_accuracy_lenient": "relaxed accuracy, lenient numbers (against references)",
                "field_f1": "JSON field F1 (against references)",
                "anls_vs_baseline": "ANLS to baseline (no references needed)",
                "token_f1_vs_baseline": "token F1 to baseline (no references needed)"}


def has_labels(report: Mapping[str, Any]) -> bool:
    """Whether any sample of the run carries a label (reports from before label-free pilots always do)."""
    arms = report.get("arms") or []
    return not arms or any(a.get("n_labelled") is None or a.get("n_labelled") > 0 for a in arms)


def run_metrics(report: Mapping[str, Any]) -> list[str]:
    """The open-ended metrics (``OPEN_CHOICES`` order) a run has values of: a score against references when an arm
    has its mean or a pruned arm its paired change, a similarity to the baseline when a pruned arm has it."""
    arms = report.get("arms") or []
    out = []
    for metric in OPEN_CHOICES:
        if metric in VS_BASELINE_METRICS:
            present = any((a.get("vs_baseline") or {}).get(metric) is not None for a in arms)
        else:
            present = any(a.get(metric) is not None or (a.get("vs_baseline") or {}).get(f"{metric}_delta") is not None
                          for a in arms)
        if present:
            out.append(metric)
    return out


def trial_metrics(trials: pd.DataFrame, study_metric: str | None = None) -> list[str]:
    """The open-ended metrics a study's trials carry a drop of (``{key}_drop``), and the study's own metric."""
    own = metric_key(study_metric) if study_metric else None
    return [m for m in OPEN_CHOICES if m == own or (f"{m}_drop" in trials and trials[f"{m}_drop"].notna().any())]


def metric_choices(metrics: Sequence[str] = (), auto: str | None = None) -> dict[str, str]:
    """The sidebar's "Budget on" choices: ``METRIC_CHOICES`` (exactly, without ``metrics``), then the open-ended
    ``metrics`` the run or study has; ``auto`` is what "auto" resolves to, named in its label when it is one of
    them."""
    extra = {m: OPEN_CHOICES[m] for m in metrics if m in OPEN_CHOICES}
    if not extra:
        return dict(METRIC_CHOICES)
    label = f"auto ({metric_title(auto)})" if auto else METRIC_CHOICES["auto"]
    return {**METRIC_CHOICES, "auto": label, **extra}


def resolve_metric(choice: str | None, report: Mapping[str, Any]) -> str:
    """The sidebar's metric choice for a run: "auto" is macro-F1, or without labels the run's open-ended score
    against references (ANLS, else JSON field F1), else ANLS to the baseline's open-ended answers, else agreement."""
    if choice in (None, "auto"):
        if has_labels(report):
            return "f1"
        present = run_metrics(report)
        return next((m for m in ("anls", "field_f1", "anls_vs_baseline") if m in present), "agreement")
    return metric_key(choice)


@dataclass(frozen=True)
class Verdict:
    status: str  # "met_with_confidence", "met", "not_met", "unknown"
    label: str
    text: str
    detail: dict
    plan: Mapping[str, Any] | None = None  # pilot.plan.plan_comparison: the paired samples the verdict needs


def verdict(arm: Mapping[str, Any], max_drop: float, metric: str = "f1") -> Verdict:
    """The budget verdict of a pruned arm (``pilot.metrics.budget_verdict`` on its ``vs_baseline``)."""
    key = metric_key(metric)
    name = metric_title(key)
    comparison = arm.get("vs_baseline")
    if not comparison:
        return Verdict("unknown", "No verdict", "No comparison with a baseline arm.", {})
    v = budget_verdict(comparison, key, max_drop)
    if v.get("reason"):  # refused: the baseline scores at the floor of the metric
        return Verdict("unknown", "No verdict", f"{v['reason'][0].upper()}{v['reason'][1:]} (baseline {name} 0).", v)
    if v["met"] is None:
        if key in SCORE_METRICS and comparison.get("n_paired"):
            return Verdict("unknown", "No verdict", f"No paired samples with reference answers, so no {name} "
                           "verdict: set the budget on ANLS to baseline (sidebar).", v)
        if key in VS_BASELINE_METRICS and comparison.get("n_paired"):
            return Verdict("unknown", "No verdict", f"No open-ended answers paired with the baseline's, so no {name} "
                           "verdict.", v)
        if key != "agreement" and comparison.get("n_paired") and not comparison.get("n_labelled", 1):
            return Verdict("unknown", "No verdict", f"No labelled samples, so no {name} verdict: set the budget on "
                           "answers changed (sidebar).", v)
        return Verdict("unknown", "No verdict", "No paired results with the baseline yet.", v)
    if key == "agreement":
        budget = f"{pct(max_drop)} of answers changed"
        change = f"{pct(v['drop'])} of answers change"
        high = pct(v["drop_ci_high"])
    elif key in VS_BASELINE_METRICS:  # a similarity to the baseline's answers: 1 when nothing changed
        budget = pts(max_drop, signed=False)
        change = f"{name} {fixed(1 - v['drop'])}, a drop of {pts(v['drop'], signed=False)} from identical answers"
        high = pts(v["drop_ci_high"], signed=False) if v["drop_ci_high"] is not None else MISSING
    else:
        budget = pts(max_drop, signed=False)
        change = (f"{name} drop {pts(v['drop'], signed=False)}" if v["drop"] >= 0
                  else f"{name} rises by {pts(-v['drop'], signed=False)}")
        high = pts(v["drop_ci_high"], signed=False) if v["drop_ci_high"] is not None else MISSING
    plan = plan_comparison(comparison, max_drop, key)
    if v["met_with_confidence"]:
        return Verdict("met_with_confidence", "Budget met with confidence",
                       f"{change}; even the 95% upper bound of the drop ({high}) is within the budget of {budget}.", v,
                       plan)
    if v["met"]:
        settle = "more samples would settle it."
        if plan["more_needed"]:
            verb = ("run about" if key in ("agreement", *VS_BASELINE_METRICS) else
                    "get reference answers for about" if key in SCORE_METRICS else "label about")
            spread = "spread" if key in (*SCORE_METRICS, *VS_BASELINE_METRICS) else "discordance"
            settle = (f"{verb} {plan['more_needed']:,} more images ({plan['samples_needed']:,} paired samples in "
                      f"all) to settle it, if the observed drop and {spread} hold.")
        return Verdict("met", "Budget met (not yet with confidence)",
                       f"{change}, within the budget of {budget}, but the 95% upper bound of the drop is {high}: "
                       f"{settle}", v, plan)
    return Verdict("not_met", "Budget not met",
                   f"{change} (95% upper bound {high}) exceeds the budget of {budget}; the observed drop is over it, "
                   "so more samples will not show it met.", v, plan)


@dataclass(frozen=True)
class Tile:
    key: str
    label: str
    value: str
    delta: str | None = None
    delta_color: str = "off"
    help: str | None = None


def baseline_arm(report: Mapping[str, Any]) -> dict | None:
    arms = report.get("arms") or []
    return next((a for a in arms if a.get("strategy") == BASELINE), None)


def pruned_arms(report: Mapping[str, Any]) -> list[dict]:
    return [a for a in report.get("arms") or [] if a.get("strategy") != BASELINE]


def _neg(value: Any) -> float | None:
    v = num(value)
    return None if v is None else -v + 0.0


def compute_saved(arm: Mapping[str, Any]) -> float | None:
    ratio = num((arm.get("vs_baseline") or {}).get("paper_tflops_ratio"))
    return None if ratio is None else 1.0 - ratio


def quality_tile(vs: Mapping[str, Any], metric: str) -> Tile | None:
    """The quality tile of an open-ended ``metric`` (its change against references, or the similarity to the
    baseline's answers) with its 95% interval; None for the label metrics."""
    key = metric_key(metric)
    title = metric_title(key)
    if key in SCORE_METRICS:
        return Tile(f"{key}_change", f"{title[0].upper()}{title[1:]} change", pts(vs.get(f"{key}_delta")),
                    f"CI {ci_pts(vs.get(f'{key}_delta_ci'))}", "off",
                    f"Pruned minus baseline mean {title} against the reference answers, on the same samples "
                    f"({vs.get(f'{key}_n') or 0} with references), in points; below: paired bootstrap 95% CI")
    if key in VS_BASELINE_METRICS:
        ci = vs.get(f"{key}_ci") or [None, None]
        return Tile(key, title, fixed(vs.get(key)), f"CI [{fixed(ci[0])}, {fixed(ci[1])}]", "off",
                    f"Mean {title.removesuffix(' to baseline')} of each pruned answer against the baseline's answer "
                    "(1 = unchanged; no references needed); below: bootstrap 95% CI")
    return None


def arm_tiles(arm: Mapping[str, Any], baseline: Mapping[str, Any] | None, metric: str | None = None) -> list[Tile]:
    """The KPI tiles of a pruned arm against the baseline, formatted as the page shows them; the quality tile
    follows ``metric`` when it is an open-ended one (macro-F1, or agreement without labels, otherwise)."""
    vs = arm.get("vs_baseline") or {}
    base = baseline or {}
    kept, total = num(arm.get("visual_tokens_kept")), num(base.get("visual_tokens_kept"))
    tokens = None if kept is None else (f"{kept:,.0f}/{total:,.0f} tokens" if total else f"{kept:,.0f} tokens")
    prefill, total_ratio = num(vs.get("prefill_ratio")), num(vs.get("total_ratio"))
    invalid, base_invalid = num(arm.get("invalid_rate")), num(base.get("invalid_rate"))
    quality = quality_tile(vs, metric) if metric else None
    if quality is None and vs.get("f1_delta") is None and vs.get("agreement") is not None:  # no labels: agreement
        ci = vs.get("agreement_ci") or [None, None]
        quality = Tile("agreement", "Answers unchanged", pct(vs.get("agreement")),
                       f"CI [{pct(ci[0])}, {pct(ci[1])}]", "off",
                       "Share of samples the pruned arm answers as the baseline does (no labels needed); below: "
                       "Wilson 95% interval")
    elif quality is None:
        quality = Tile("f1_change", "Macro-F1 change", pts(vs.get("f1_delta")), f"CI {ci_pts(vs.get('f1_delta_ci'))}",
                       "off", "Pruned minus baseline macro-F1 on the same samples, in points; below: paired bootstrap "
                       "95% CI")
    return [
        Tile("compute_saved", "Compute saved", pct(compute_saved(arm)), tokens, "off",
             "1 − paper TFLOPs ratio (pruned / baseline, mean of per-sample ratios); below: visual tokens kept"),
        Tile("prefill", "Prefill latency", signed_pct(None if prefill is None else prefill - 1),
             f"{short_ms(arm.get('prefill_ms_p50'))} vs {short_ms(base.get('prefill_ms_p50'))}", "off",
             "Change of the median time to first token against the baseline (p50 pruned vs baseline below)"),
        Tile("total", "Total latency", signed_pct(None if total_ratio is None else total_ratio - 1),
             f"{short_ms(arm.get('total_ms_p50'))} vs {short_ms(base.get('total_ms_p50'))}", "off",
             "Change of the median time of the whole answer against the baseline (p50 pruned vs baseline below)"),
        quality,
        Tile("invalid", "Invalid answers", pct(invalid),
             None if invalid is None or base_invalid is None else pts(invalid - base_invalid),
             "inverse" if invalid is not None and base_invalid is not None and invalid != base_invalid else "off",
             "Share of answers that match no label; below: the change against the baseline"),
    ]


POINT_COLUMNS = ["label", "name", "strategy", "kind", "compute_ratio", "prefill_ratio", "change", "change_lo",
                 "change_hi", "feasible", "recommended", "trial", "state"]


def recommended_arm(report: Mapping[str, Any], max_drop: float, metric: str = "f1",
                    recommended_strategy: str | None = None) -> str | None:
    """The arm to recommend: the tuner's recommendation when it is an arm of this run, else the cheapest arm
    (lowest paper TFLOPs ratio) that meets the budget with confidence; None when none does."""
    arms = pruned_arms(report)
    if recommended_strategy:
        for arm in arms:
            if arm["strategy"] == recommended_strategy:
                return arm["name"]
    confident = [a for a in arms if verdict(a, max_drop, metric).status == "met_with_confidence"
                 and num((a.get("vs_baseline") or {}).get("paper_tflops_ratio")) is not None]
    if not confident:
        return None
    return min(confident, key=lambda a: a["vs_baseline"]["paper_tflops_ratio"])["name"]


def run_points(report: Mapping[str, Any], max_drop: float, metric: str = "f1",
               recommended: str | None = None) -> pd.DataFrame:
    """One trade-off point per arm: compute and prefill ratios vs. baseline and the metric change (with its CI)."""
    key = metric_key(metric)
    rows = []
    for arm in report.get("arms") or []:
        vs = arm.get("vs_baseline")
        if arm.get("strategy") == BASELINE:
            rows.append({"label": arm["name"], "name": arm["name"], "strategy": arm["strategy"], "kind": "baseline",
                         "compute_ratio": 1.0, "prefill_ratio": 1.0, "change": 0.0, "change_lo": None,
                         "change_hi": None, "feasible": True, "recommended": False, "trial": None, "state": None})
            continue
        if not vs:
            continue
        drop, drop_lo, drop_hi = metric_drop(vs, key)
        v = verdict(arm, max_drop, key)
        rows.append({"label": arm["name"], "name": arm["name"], "strategy": arm["strategy"], "kind": "arm",
                     "compute_ratio": num(vs.get("paper_tflops_ratio")), "prefill_ratio": num(vs.get("prefill_ratio")),
                     "change": _neg(drop), "change_lo": _neg(drop_hi), "change_hi": _neg(drop_lo),
                     "feasible": v.status in ("met", "met_with_confidence"), "recommended": arm["name"] == recommended,
                     "trial": None, "state": None})
    return pd.DataFrame(rows, columns=POINT_COLUMNS)
