"""The overview as files for a meeting: a self-contained HTML report and a CSV of the KPIs per arm.

Pure functions of the report dict (``pilot.summaries.build_report``), the budget and the cost inputs. The HTML
embeds its charts as base64 PNG images (Altair through vl-convert-python) and links nothing outside itself.
"""

from __future__ import annotations

import base64
import csv
import html
import io
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from dashboard import costs, verdicts
from dashboard import formatting as fmt
from pilot.metrics import SCORE_METRICS, metric_key
from pilot.summaries import BASELINE

CSV_COLUMNS = [
    "run", "arm", "strategy", "n", "errors", "accuracy", "f1_macro", "f1_delta", "f1_delta_ci_low",
    "f1_delta_ci_high", "verdict", "compute_saved", "paper_tflops_ratio", "full_tflops_ratio", "prefill_ms_p50",
    "prefill_ms_p95", "prefill_change", "total_ms_p50", "total_ms_p95", "total_change", "invalid_rate", "agreement",
    "agreement_ci_low", "agreement_ci_high", "n_labelled", "mcnemar_p",
    "visual_tokens_kept", "gpu_hours_per_month", "cost_per_month", "money_saved_per_month",
    "max_drop", "images_per_month", "price_per_gpu_hour", "utilisation", "batch_size", "machine",
]


def kpi_rows(report: Mapping[str, Any], inputs: costs.CostInputs, max_drop: float = 0.01,
             metric: str = "f1") -> list[dict]:
    """One flat row per arm: quality, verdict, compute, latency and cost (raw numbers, not formatted)."""
    cost_by_arm = {row["arm"]: row for row in costs.cost_rows(report, inputs)}
    machine = fmt.machine_text(report.get("machine"))
    rows = []
    for arm in report.get("arms") or []:
        vs = arm.get("vs_baseline") or {}
        ci = vs.get("f1_delta_ci") or [None, None]
        prefill, total = fmt.num(vs.get("prefill_ratio")), fmt.num(vs.get("total_ratio"))
        cost = cost_by_arm.get(arm["name"], {})
        rows.append({
            "run": report.get("name"), "arm": arm["name"], "strategy": arm["strategy"], "n": arm.get("n"),
            "errors": arm.get("errors"), "accuracy": arm.get("accuracy"), "f1_macro": arm.get("f1_macro"),
            "f1_delta": vs.get("f1_delta"), "f1_delta_ci_low": ci[0], "f1_delta_ci_high": ci[1],
            "verdict": "baseline" if not arm.get("vs_baseline") and arm["strategy"] == BASELINE
            else verdicts.verdict(arm, max_drop, metric).label,
            "compute_saved": verdicts.compute_saved(arm), "paper_tflops_ratio": vs.get("paper_tflops_ratio"),
            "full_tflops_ratio": vs.get("full_tflops_ratio"),
            "prefill_ms_p50": arm.get("prefill_ms_p50"), "prefill_ms_p95": arm.get("prefill_ms_p95"),
            "prefill_change": None if prefill is None else prefill - 1,
            "total_ms_p50": arm.get("total_ms_p50"), "total_ms_p95": arm.get("total_ms_p95"),
            "total_change": None if total is None else total - 1,
            "invalid_rate": arm.get("invalid_rate"), "agreement": vs.get("agreement"), "mcnemar_p": vs.get("mcnemar_p"),
            "agreement_ci_low": (vs.get("agreement_ci") or [None, None])[0],
            "agreement_ci_high": (vs.get("agreement_ci") or [None, None])[1], "n_labelled": arm.get("n_labelled"),
            "visual_tokens_kept": arm.get("visual_tokens_kept"),
            "gpu_hours_per_month": cost.get("gpu_hours"), "cost_per_month": cost.get("cost"),
            "money_saved_per_month": cost.get("money_saved"),
            "max_drop": max_drop, "images_per_month": inputs.images_per_month,
            "price_per_gpu_hour": inputs.price_per_gpu_hour, "utilisation": inputs.utilisation,
            "batch_size": report.get("batch_size"), "machine": machine,
        })
    return rows


def build_csv(report: Mapping[str, Any], inputs: costs.CostInputs, max_drop: float = 0.01, metric: str = "f1") -> str:
    """The KPIs per arm as CSV (one header line, one line per arm; empty cells for missing values)."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in kpi_rows(report, inputs, max_drop, metric):
        writer.writerow({k: "" if row.get(k) is None else row[k] for k in CSV_COLUMNS})
    return buffer.getvalue()


# ---------------------------------------------------------------- charts as images


def chart_png(chart: Any, scale: float = 1.5) -> bytes | None:
    """A PNG of an Altair chart (needs vl-convert-python); None when it cannot be rendered here."""
    try:
        import vl_convert as vlc

        return vlc.vegalite_to_png(chart.to_json(), scale=scale)
    except Exception:  # noqa: BLE001 - a missing renderer must not break the report
        return None


def report_charts(report: Mapping[str, Any], max_drop: float = 0.01, metric: str = "f1",
                  recommended: str | None = None) -> dict[str, Any]:
    """The report's Altair charts by title: compute vs. metric, latency vs. metric, per-class F1."""
    from dashboard import charts

    points = verdicts.run_points(report, max_drop, metric, recommended)
    title = verdicts.metric_title(metric)
    out: dict[str, Any] = {}
    if len(points) > 1:
        out[f"Compute vs {title}"] = charts.tradeoff_chart(points, "compute_ratio", "Paper TFLOPs ratio (vs baseline)",
                                                           max_drop, title, width=620, height=320)
        out[f"Prefill latency vs {title}"] = charts.tradeoff_chart(points, "prefill_ratio",
                                                                   "Prefill latency ratio (p50, vs baseline)",
                                                                   max_drop, title, width=620, height=320)
    if any(arm.get("f1_per_class") for arm in report.get("arms") or []):
        out["F1 per class"] = charts.per_class_chart(dict(report), width=620)
    return out


# ---------------------------------------------------------------- HTML


_CSS = """
body{font-family:-apple-system,Segoe UI,Helvetica,Arial,sans-serif;color:#1f2328;margin:32px auto;max-width:1100px;
padding:0 16px}h1{margin-bottom:4px}h2{margin-top:32px;border-bottom:1px solid #d0d7de;padding-bottom:4px}
.meta{color:#57606a;margin-top:0}table{border-collapse:collapse;width:100%;font-size:13px;margin:8px 0}
th,td{border:1px solid #d0d7de;padding:5px 8px;text-align:right}th{background:#f6f8fa}
td.l,th.l{text-align:left}.verdict{padding:8px 12px;border-radius:6px;margin:6px 0}
.met_with_confidence{background:#dafbe1}.met{background:#fff8c5}.not_met{background:#ffebe9}.unknown{background:#eaeef2}
.note{color:#57606a;font-size:12px}img{max-width:100%;border:1px solid #eaeef2;margin:8px 0}
code{background:#f6f8fa;padding:1px 4px;border-radius:4px}
"""


def _when(iso: str | None) -> str:
    """An ISO timestamp as "2026-11-28 05:13 UTC" (as given when it does not parse)."""
    if not iso:
        return "–"
    try:
        return datetime.fromisoformat(iso).astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")
    except ValueError:
        return iso


def _e(value: Any) -> str:
    return html.escape("" if value is None else str(value))


def _table(headers: list[str], rows: list[list[str]], left: int = 1) -> str:
    head = "".join(f'<th class="{"l" if i < left else ""}">{_e(h)}</th>' for i, h in enumerate(headers))
    body = "".join("<tr>" + "".join(f'<td class="{"l" if i < left else ""}">{_e(c)}</td>' for i, c in enumerate(row))
                   + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def build_html(report: Mapping[str, Any], inputs: costs.CostInputs, max_drop: float = 0.01, metric: str = "f1",
               recommended: str | None = None, charts: Mapping[str, Any] | None = None,
               render_charts: bool = True) -> str:
    """A self-contained HTML report: KPI table, verdicts, cost panel and the charts as embedded PNG images.

    ``charts`` maps a title to PNG bytes or an Altair chart; by default the report's own charts are drawn
    (``render_charts=False`` leaves them out). Nothing in the page refers to anything outside it.
    """
    metric_name = verdicts.metric_title(metric)
    base = verdicts.baseline_arm(report)
    rec = recommended if recommended is not None else verdicts.recommended_arm(report, max_drop, metric)
    parts = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        f"<title>TransPrune pilot: {_e(report.get('name'))}</title><style>{_CSS}</style></head><body>",
        "<h1>TransPrune pilot</h1>",
        f"<p class='meta'>Run <b>{_e(report.get('name'))}</b> (#{_e(report.get('run_id'))}, {_e(report.get('status'))})"
        f" · dataset {_e(report.get('dataset'))} · model {_e(report.get('model'))} · created "
        f"{_e(_when(report.get('created_at')))}</p>",
        f"<p class='meta'>Latencies measured on {_e(fmt.machine_text(report.get('machine')))}, batch size "
        f"{_e(report.get('batch_size'))}: comparable only within one machine.</p>",
    ]
    if base:
        parts.append(f"<p>Baseline: macro-F1 {_e(fmt.fixed(base.get('f1_macro')))} · "
                     f"accuracy {_e(fmt.pct(base.get('accuracy')))} · "
                     f"prefill p50 {_e(fmt.ms(base.get('prefill_ms_p50')))} · total p50 "
                     f"{_e(fmt.ms(base.get('total_ms_p50')))} · {_e(base.get('n'))} samples</p>")

    budget = _e(fmt.pts(max_drop, signed=False))
    if metric_key(metric) == "agreement":
        parts.append(f"<h2>Verdicts against the budget (at most {_e(fmt.pct(max_drop))} of answers changed)</h2>")
    else:
        parts.append(f"<h2>Verdicts against the budget (max {metric_name} drop {budget})</h2>")
    pruned = verdicts.pruned_arms(report)
    if not pruned:
        parts.append("<p>This run has no pruned arm.</p>")
    for arm in pruned:
        v = verdicts.verdict(arm, max_drop, metric)
        star = " ★ recommended" if arm["name"] == rec else ""
        parts.append(f"<div class='verdict {v.status}'><b>{_e(arm['name'])}{star}: {_e(v.label)}.</b> "
                     f"{_e(v.text)}</div>")

    parts.append("<h2>KPIs per arm against baseline</h2>")
    headers = ["arm", "compute saved", "prefill latency", "total latency", f"{metric_name} change", "95% CI",
               "invalid answers", "agreement", "McNemar p", "verdict"]
    rows = []
    for arm in report.get("arms") or []:
        tiles = {t.key: t for t in verdicts.arm_tiles(arm, base, metric)}
        vs = arm.get("vs_baseline") or {}
        is_base = arm.get("strategy") == BASELINE
        chosen = verdicts.quality_tile(vs, metric)  # an open-ended metric's change or similarity, with its interval
        key = metric_key(metric)
        rows.append([
            arm["name"], "baseline" if is_base else tiles["compute_saved"].value,
            fmt.ms(arm.get("prefill_ms_p50")) if is_base else tiles["prefill"].value,
            fmt.ms(arm.get("total_ms_p50")) if is_base else tiles["total"].value,
            (fmt.fixed(arm.get(key)) if key in SCORE_METRICS else fmt.fixed(arm.get("f1_macro"))) if is_base
            else (chosen or tiles.get("f1_change") or tiles["agreement"]).value,
            "" if is_base else chosen.delta.removeprefix("CI ") if chosen
            else fmt.ci_pts(vs.get("f1_delta_ci")) if "f1_change" in tiles
            else tiles["agreement"].delta,
            tiles["invalid"].value, fmt.pct(vs.get("agreement")) if vs else "",
            fmt.fixed(vs.get("mcnemar_p")) if vs else "",
            "" if is_base else verdicts.verdict(arm, max_drop, metric).label,
        ])
    parts.append(_table(headers, rows))
    absolute = metric_name if metric_key(metric) in SCORE_METRICS else "macro-F1"
    parts.append("<p class='note'>Compute saved = 1 − paper TFLOPs ratio (mean of per-sample ratios). Latency changes "
                 f"compare medians. Baseline rows show absolute p50 latency and {_e(absolute)}.</p>")

    parts.append("<h2>Monthly cost</h2>")
    parts.append(f"<p>Inputs: {_e(inputs.describe())}. GPU-hours per month = images × p50 total latency / "
                 f"3,600,000 ms / utilisation; money = GPU-hours × price.</p>")
    cost_rows = []
    for row in costs.cost_rows(report, inputs):
        is_base = row["strategy"] == BASELINE
        cost_rows.append([row["arm"], fmt.ms(row["total_ms_p50"]), fmt.hours(row["gpu_hours"]),
                          fmt.money(row["cost"], inputs.currency),
                          "" if is_base else fmt.hours(row["gpu_hours_saved"]),
                          "" if is_base else fmt.money(row["money_saved"], inputs.currency),
                          "" if is_base else fmt.pct(row["saved_share"])])
    parts.append(_table(["arm", "total latency p50", "GPU-hours / month", "cost / month", "GPU-hours saved",
                         "money saved / month", "saved"], cost_rows))

    if charts is None and render_charts:
        charts = report_charts(report, max_drop, metric, rec)
    if charts:
        parts.append("<h2>Charts</h2>")
        for title, chart in charts.items():
            png = chart if isinstance(chart, bytes | bytearray) else chart_png(chart)
            if png:
                encoded = base64.b64encode(png).decode("ascii")
                parts.append(f"<h3>{_e(title)}</h3><img alt='{_e(title)}' src='data:image/png;base64,{encoded}'>")
            else:
                parts.append(f"<p class='note'>{_e(title)}: chart not rendered (install vl-convert-python).</p>")
    parts.append("</body></html>")
    return "\n".join(parts)
