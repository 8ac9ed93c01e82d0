"""Plain-text rendering of a run's report for the terminal (fits 120 columns)."""

from __future__ import annotations

import math
import textwrap
from collections.abc import Callable, Sequence

WIDTH = 120
GAP = "  "
MISSING = "-"
_ARM_MAX = 20  # longer arm names are shortened in the tables


# ---------------------------------------------------------------- cell formatting


def finite_number(value) -> float | None:
    """A float for a finite number (None, booleans, NaN and text give None)."""
    if value is None or isinstance(value, bool):
        return None
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def _fixed(value, digits: int = 3) -> str:
    v = finite_number(value)
    return MISSING if v is None else f"{v:.{digits}f}"


def _tflops(value) -> str:
    """Four significant digits: a 7B model shows 3.817, the small demo model 0.0003412."""
    v = finite_number(value)
    return MISSING if v is None else f"{v:.4g}"


def _signed(value, digits: int = 3) -> str:
    v = finite_number(value)
    if v is None:
        return MISSING
    if round(v, digits) == 0:
        v = 0.0  # no "-0.000"
    return f"{v:+.{digits}f}"


def _delta_ci(delta, ci) -> str:
    text = _signed(delta)
    if text == MISSING:
        return MISSING
    if isinstance(ci, list | tuple) and len(ci) == 2 and all(finite_number(v) is not None for v in ci):
        text += f" [{_signed(ci[0])}, {_signed(ci[1])}]"
    return text


def _share_ci(value, ci) -> str:
    """A share with its interval: ``0.973 [0.951, 0.986]``."""
    text = _fixed(value)
    if text != MISSING and isinstance(ci, list | tuple) and len(ci) == 2 \
            and all(finite_number(v) is not None for v in ci):
        text += f" [{_fixed(ci[0])}, {_fixed(ci[1])}]"
    return text


def _pvalue(value) -> str:
    v = finite_number(value)
    if v is None:
        return MISSING
    return f"{v:.3f}" if v >= 0.001 else f"{v:.1e}"


def _ms(value) -> str:
    return _fixed(value, 1)


def _int(value) -> str:
    v = finite_number(value)
    return MISSING if v is None else f"{int(v)}" if v == int(v) else f"{v:.1f}"


def _tokens(value) -> str:
    v = finite_number(value)
    if v is None:
        return MISSING
    return f"{int(v)}" if v == int(v) else f"{v:.1f}"


def _short(name: str, width: int = _ARM_MAX) -> str:
    """``name`` in at most ``width`` characters: the middle gives way to "~", so the strategy's family and its
    last options stay visible (``fastv:aft~=original``)."""
    if len(name) <= width:
        return name
    head = (width - 1) // 2
    tail = width - 1 - head
    return name[:head] + "~" + name[len(name) - tail:]


def arm_labels(names: Sequence[str], width: int = _ARM_MAX) -> dict[str, str]:
    """A distinct table label of at most ``width`` characters per arm name: the name when it fits, else shortened
    by ``_short``; shortened names that would still coincide (they differ only in the middle) are numbered,
    ``transpru~original[1]``, ``[2]``: the report lists every shortened name in full below its tables."""
    labels = {name: _short(name, width) for name in dict.fromkeys(names)}
    groups: dict[str, list[str]] = {}
    for name, label in labels.items():
        groups.setdefault(label, []).append(name)
    for group in groups.values():
        if len(group) > 1:
            for number, name in enumerate(group, 1):
                mark = f"[{number}]"
                labels[name] = _short(name, width - len(mark)) + mark
    return labels


def _wrap(text: str, width: int) -> list[str]:
    """``text`` in lines of at most ``width`` characters, broken after commas where possible."""
    lines: list[str] = []
    rest = text
    while len(rest) > width:
        cut = rest.rfind(",", 0, width) + 1 or width
        lines.append(rest[:cut])
        rest = rest[cut:]
    return [*lines, rest]


# ---------------------------------------------------------------- tables


def _render(headers: Sequence[str], rows: Sequence[Sequence[str]], right: Sequence[bool]) -> list[str]:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]

    def line(cells: Sequence[str]) -> str:
        parts = [c.rjust(w) if r else c.ljust(w) for c, w, r in zip(cells, widths, right, strict=True)]
        return GAP.join(parts).rstrip()

    return [line(headers), GAP.join("-" * w for w in widths), *(line(r) for r in rows)]


def _table(
    headers: Sequence[str], rows: Sequence[Sequence[str]], right: Sequence[bool], width: int = WIDTH
) -> list[str]:
    """A table whose first column is a key; columns that do not fit ``width`` go to further tables."""
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
    chunks: list[list[int]] = []
    current: list[int] = []
    used = widths[0]
    for i in range(1, len(headers)):
        need = len(GAP) + widths[i]
        if current and used + need > width:
            chunks.append(current)
            current, used = [], widths[0]
        current.append(i)
        used += need
    chunks.append(current)

    lines: list[str] = []
    for chunk in chunks:
        cols = [0, *chunk]
        if lines:
            lines.append("")
        lines += _render([headers[c] for c in cols], [[r[c] for c in cols] for r in rows], [right[c] for c in cols])
    return lines


# ---------------------------------------------------------------- sections


def _machine(machine) -> str:
    if not machine:
        return MISSING
    if isinstance(machine, dict):
        return ", ".join(f"{k} {v}" for k, v in machine.items() if v not in (None, ""))
    return str(machine)


def _header(report: dict, width: int = WIDTH) -> list[str]:
    def get(key: str) -> str:
        value = report.get(key)
        return MISSING if value is None or value == "" else str(value)

    segments = [
        f"Run {get('run_id')}: {get('name')}",
        f"status: {get('status')}",
        f"dataset: {get('dataset')}",
        f"model: {get('model')}",
        f"machine: {_machine(report.get('machine'))}",
        f"batch size: {get('batch_size')} (latencies are per sample = batch time / batch size)",
    ]
    workers = report.get("workers") or []
    if len(workers) > 1:  # a run shared by workers: who computed how much, where
        segments.append(f"workers: {len(workers)} (" + ", ".join(
            f"{w['worker']} on {w['device']}: {w['results']} results" for w in workers) + ")")
    if report.get("latency_note"):
        segments.append(f"note: {report['latency_note']}")
    lines: list[str] = []
    open_line = False  # whether the last line may take another segment
    for segment in segments:
        if open_line and len(lines[-1]) + 3 + len(segment) <= width:
            lines[-1] += " | " + segment
            continue
        wrapped = textwrap.wrap(segment, width, subsequent_indent="    ", break_on_hyphens=False) or [segment]
        lines += wrapped
        open_line = len(wrapped) == 1
    return lines


_Cell = Callable[[dict, dict], str]


def _quality_columns() -> list[tuple[str, _Cell]]:
    return [
        ("n", lambda a, v: _int(a.get("n"))),
        ("errors", lambda a, v: _int(a.get("errors"))),
        ("invalid", lambda a, v: _int(a.get("invalid"))),
        ("accuracy", lambda a, v: _fixed(a.get("accuracy"))),
        ("macro-F1", lambda a, v: _fixed(a.get("f1_macro"))),
        ("ΔF1 [95% CI]", lambda a, v: _delta_ci(v.get("f1_delta"), v.get("f1_delta_ci"))),
        ("ΔAcc", lambda a, v: _signed(v.get("accuracy_delta"))),
        ("McNemar p", lambda a, v: _pvalue(v.get("mcnemar_p"))),
        ("agreement [95% CI]", lambda a, v: _share_ci(v.get("agreement"), v.get("agreement_ci"))),
    ]


def _cost_columns() -> list[tuple[str, _Cell]]:
    return [
        ("paper TFLOPs", lambda a, v: _tflops(a.get("paper_tflops"))),
        ("ratio", lambda a, v: _fixed(v.get("paper_tflops_ratio"))),
        ("full TFLOPs", lambda a, v: _tflops(a.get("full_tflops"))),
        ("ratio", lambda a, v: _fixed(v.get("full_tflops_ratio"))),
        ("prefill p50", lambda a, v: _ms(a.get("prefill_ms_p50"))),
        ("p95", lambda a, v: _ms(a.get("prefill_ms_p95"))),
        ("ratio", lambda a, v: _fixed(v.get("prefill_ratio"))),
        ("total p50", lambda a, v: _ms(a.get("total_ms_p50"))),
        ("ratio", lambda a, v: _fixed(v.get("total_ratio"))),
        ("vis tokens", lambda a, v: _tokens(a.get("visual_tokens_kept"))),
    ]


def _score_columns(arms: list[dict]) -> list[tuple[str, _Cell]]:
    """Open-ended answers against their references: each score the run has, with its paired Δ and 95% CI."""
    titles = {"anls": "ANLS", "exact_match": "exact match", "token_f1": "token F1", "relaxed_accuracy": "relaxed acc",
              "relaxed_accuracy_lenient": "relaxed lenient",
              "field_f1": "field F1"}
    columns: list[tuple[str, _Cell]] = [("n ref", lambda a, v: _int(a.get("n_referenced")))]
    for metric, title in titles.items():
        if any(a.get(metric) is not None for a in arms):
            columns += [(title, lambda a, v, m=metric: _fixed(a.get(m))),
                        (f"Δ{title} [95% CI]", lambda a, v, m=metric: _delta_ci(v.get(f"{m}_delta"),
                                                                              v.get(f"{m}_delta_ci")))]
    if any(a.get("json_invalid_rate") is not None for a in arms):
        columns.append(("JSON invalid", lambda a, v: _fixed(a.get("json_invalid_rate"))))
    return columns


def _vs_baseline_columns() -> list[tuple[str, _Cell]]:
    """Open-ended answers compared with the baseline's (no reference needed)."""
    return [
        ("n", lambda a, v: _int(v.get("vs_baseline_n"))),
        ("ANLS to base [95% CI]", lambda a, v: _share_ci(v.get("anls_vs_baseline"), v.get("anls_vs_baseline_ci"))),
        ("token F1 to base", lambda a, v: _fixed(v.get("token_f1_vs_baseline"))),
        ("changed [95% CI]", lambda a, v: _share_ci(v.get("answers_changed"), v.get("answers_changed_ci"))),
        ("Δlength chars", lambda a, v: _signed(v.get("length_change_chars"), 1)),
    ]


def _generation_columns() -> list[tuple[str, _Cell]]:
    return [
        ("out tokens", lambda a, v: _tokens(a.get("output_tokens"))),
        ("TTFT p50", lambda a, v: _ms(a.get("ttft_ms_p50"))),
        ("p95", lambda a, v: _ms(a.get("ttft_ms_p95"))),
        ("TPOT p50", lambda a, v: _ms(a.get("tpot_ms_p50"))),
        ("KV cache MiB", lambda a, v: _fixed(None if a.get("kv_cache_bytes") is None else a["kv_cache_bytes"] / 2**20,
                                             2)),
        ("cut at limit", lambda a, v: _fixed(a.get("truncated_rate"))),
        ("not UTF-8", lambda a, v: _int(a.get("not_utf8"))),
    ]


def budget_metric(arms: Sequence[dict], metric: str) -> str:
    """``metric``, or what this run can give a verdict on when it is a label KPI and the run has no labels: ANLS
    against references, else ANLS to the baseline's open-ended answers, else the share of changed answers. A score
    against references (``anls``, ``token_f1``, ...) on a run without them (``--no-labels``, as the label-free
    tuner) becomes its similarity to the baseline's answers, as ``pilot tune --no-labels`` requires."""
    from pilot.metrics import SCORE_METRICS, metric_key

    key = metric_key(metric)
    if key in SCORE_METRICS and not any(a.get(key) is not None for a in arms):
        similar = "token_f1_vs_baseline" if key == "token_f1" else "anls_vs_baseline"
        if any((a.get("vs_baseline") or {}).get(similar) is not None for a in arms):
            return similar
        return "agreement"
    if not labelled_none(arms) or key not in ("f1", "accuracy"):
        return metric
    if any(a.get("anls") is not None for a in arms):
        return "anls"
    if any((a.get("vs_baseline") or {}).get("anls_vs_baseline") is not None for a in arms):
        return "anls_vs_baseline"
    return "agreement"


def open_ended(arms: Sequence[dict]) -> bool:
    """Whether the run has open-ended answers (text or json tasks)."""
    return any(a.get("n_referenced") or (a.get("vs_baseline") or {}).get("vs_baseline_n") or
               a.get("truncated_rate") is not None for a in arms)


def _names(arms: list[dict]) -> dict[str, str]:
    return arm_labels([str(a.get("name", MISSING)) for a in arms])


def _arm_table(arms: list[dict], columns: list[tuple[str, _Cell]]) -> list[str]:
    headers = ["arm", *(h for h, _ in columns)]
    names = _names(arms)
    rows = []
    for arm in arms:
        vs = arm.get("vs_baseline") or {}
        rows.append([names[str(arm.get("name", MISSING))], *(cell(arm, vs) for _, cell in columns)])
    return _table(headers, rows, [False] + [True] * len(columns))


def _legend(arms: list[dict], width: int = WIDTH) -> list[str]:
    """Full names of the arms whose table label is shortened (long names wrap onto further lines)."""
    names = _names(arms)
    short = {name: label for name, label in names.items() if label != name}
    if not short:
        return []
    room = max(20, width - max(len(label) for label in short.values()) - len(GAP))
    rows = []
    for name, label in short.items():
        parts = _wrap(name, room)
        rows += [[label, parts[0]], *(["", part] for part in parts[1:])]
    return ["Arm names in full", *_render(["arm", "full name"], rows, [False, False])]


def _per_class(arms: list[dict]) -> list[str]:
    labels: list[str] = []
    for arm in arms:
        for label in arm.get("f1_per_class") or {}:
            if label not in labels:
                labels.append(label)
    if not labels:
        return []
    names = _names(arms)
    headers = ["class", *(names[str(a.get("name", MISSING))] for a in arms)]
    rows = [[label, *(_fixed((a.get("f1_per_class") or {}).get(label)) for a in arms)] for label in labels]
    return _table(headers, rows, [False] + [True] * len(arms))


def has_unlabelled(arms: Sequence[dict]) -> bool:
    """Whether some samples of the run carry no label (a pilot without labels, or labels on some rows only)."""
    return any(a.get("n_labelled") is not None and a["n_labelled"] < (a.get("n") or 0) for a in arms)


def labelled_none(arms: Sequence[dict]) -> bool:
    """Whether no sample of the run carries a label: only the agreement view has numbers."""
    return bool(arms) and all(a.get("n_labelled") == 0 for a in arms)


def _answer_changes(arms: list[dict]) -> list[str]:
    """Per baseline answer (rows) and pruned arm (columns): how many of the samples the baseline answered so the
    arm answers otherwise, ``changed/n``."""
    pruned = [a for a in arms if (a.get("vs_baseline") or {}).get("answer_changes")]
    if not pruned:
        return []
    answers: list[str] = []
    for arm in pruned:
        for answer in arm["vs_baseline"]["answer_changes"]:
            if answer not in answers:
                answers.append(answer)
    names = _names(arms)

    def cell(arm: dict, answer: str) -> str:
        change = arm["vs_baseline"]["answer_changes"].get(answer)
        return MISSING if not change else f"{change['changed']}/{change['n']}"

    headers = ["baseline answer", *(names[str(a.get("name", MISSING))] for a in pruned)]
    rows = [[_short(answer, 24), *(cell(a, answer) for a in pruned)] for answer in answers]
    return _table(headers, rows, [False] + [True] * len(pruned))


_PLAN_NOTES = {"met": "met with confidence", "will_not_help": "drop >= budget: more samples will not help",
               "assumes": "if the drop and its spread hold", "no_pairs": "no paired results",
               "no_discordance": "no discordance information", "floor": "baseline at the floor: no verdict"}


def _plan_note(plan: dict) -> str:
    from pilot import plan as planning
    from pilot.metrics import FLOOR_START

    if str(plan.get("reason") or "").startswith(FLOOR_START):
        return _PLAN_NOTES["floor"]
    return _PLAN_NOTES[{planning.MET: "met", planning.WILL_NOT_HELP: "will_not_help", planning.ASSUMES: "assumes",
                        planning.NO_PAIRS: "no_pairs"}.get(plan["reason"], "no_discordance")]


def format_plan(plans: Sequence[dict], max_drop: float, metric: str = "f1") -> list[str]:
    """The sample-size plan of each pruned arm (``pilot.plan.plan_report``) as a table under a title line."""
    from pilot.metrics import metric_key
    from pilot.plan import TITLES

    title = TITLES[metric_key(metric)]
    budget = (f"at most {max_drop * 100:.1f}% of answers changed" if metric_key(metric) == "agreement" else
              f"{title} drop at most {max_drop * 100:.1f} points")
    lines = [f"Samples for a verdict ({budget} with confidence; another budget: pilot plan RUN --max-drop X)"]
    names = arm_labels([str(p.get("arm") or p.get("strategy") or MISSING) for p in plans])
    rows = [[names[str(p.get("arm") or p.get("strategy") or MISSING)], _int(p["n"]), _signed(p["drop"]),
             _signed(p["drop_ci_high"]), _int(p["samples_needed"]), _int(p["more_needed"]), _plan_note(p)]
            for p in plans]
    return lines + _table(["arm", "n", "drop", "95% upper", "needed", "more", "note"], rows,
                          [False, True, True, True, True, True, False])


def budget_verdicts(report: dict, max_drop: float, metric: str = "f1") -> list[dict]:
    """Each pruned arm's verdict on a budget (``pilot.metrics.budget_verdict``) with its sample-size plan and the
    plan as a sentence: what ``pilot report --json`` adds under ``verdicts``. ``metric`` as ``budget_metric``
    resolves it for the run (a run without labels: the drop it has instead)."""
    from pilot.metrics import budget_verdict, metric_key
    from pilot.plan import plan_report, plan_sentence

    key = metric_key(budget_metric(list(report.get("arms") or []), metric))
    by_name = {arm.get("name"): arm for arm in report.get("arms") or []}
    out = []
    for plan in plan_report(report, max_drop, key):
        comparison = (by_name.get(plan["arm"]) or {}).get("vs_baseline") or {}
        out.append({"arm": plan["arm"], "strategy": plan["strategy"], "metric": key, "max_drop": max_drop,
                    "verdict": budget_verdict(comparison, key, max_drop),
                    "plan": {k: v for k, v in plan.items() if k not in ("arm", "strategy")},
                    "plan_text": plan_sentence(plan)})
    return out


def format_report(report: dict, max_drop: float | None = 0.01, metric: str = "f1") -> str:
    """The run's report as aligned plain-text tables: quality, compute and latency, per-class F1, and the samples a
    verdict at ``max_drop`` (of ``metric``'s drop) needs (left out when ``max_drop`` is None)."""
    arms = list(report.get("arms") or [])
    lines = _header(report)
    if not arms:
        return "\n".join([*lines, "", "(no arms)"]) + "\n"
    lines += ["", "Quality (Δ = pruned - baseline, paired; 95% CI valid at any n: docs/sample-sizes.md)"]
    lines += _arm_table(arms, _quality_columns())
    lines += [
        "",
        "Compute and latency (ratio = pruned / baseline; latencies in ms per sample; vis tokens = visual tokens kept)",
    ]
    lines += _arm_table(arms, _cost_columns())
    if open_ended(arms):
        if any(a.get("n_referenced") for a in arms):
            lines += ["", "Open-ended answers against their references (means per sample; Δ paired, 95% CI)"]
            lines += _arm_table(arms, _score_columns(arms))
        if any((a.get("vs_baseline") or {}).get("vs_baseline_n") for a in arms):
            lines += ["", "Open-ended answers against the baseline's (no reference needed)"]
            lines += _arm_table([a for a in arms if a.get("vs_baseline")], _vs_baseline_columns())
        lines += ["", "Generation (TTFT: time to first token; TPOT: per later token; KV cache held per sample at its "
                  "last token)"]
        lines += _arm_table(arms, _generation_columns())
    per_class = _per_class(arms) if not labelled_none(arms) else []
    if per_class:
        lines += ["", "Per-class F1", *per_class]
    if has_unlabelled(arms) and not (open_ended(arms) and labelled_none(arms)):  # open-ended: the tables above
        labelled = max((a.get("n_labelled") or 0 for a in arms), default=0)
        lines += ["", f"Without labels: agreement uses every sample; accuracy and macro-F1 the {labelled:,} labelled "
                  "ones. Answer changes per baseline answer (changed / samples the baseline answered so)"]
        lines += _answer_changes(arms)
    metric = budget_metric(arms, metric)
    if max_drop is not None:
        from pilot.plan import plan_report

        plans = plan_report(report, max_drop, metric)
        if plans:
            lines += ["", *format_plan(plans, max_drop, metric)]
    matched = _matched_groups(report)
    if matched:
        lines += ["", *matched]
    review = format_review(report.get("review"))
    if review:
        lines += ["", *review]
    legend = _legend(arms)
    if legend:
        lines += ["", *legend]
    lines += format_errors(report)
    return "\n".join(lines) + "\n"


def format_errors(report: dict) -> list[str]:
    """The run's failed results by message (``errors`` of :func:`pilot.summaries.build_report`), or nothing."""
    total = report.get("n_errors") or 0
    if not total:
        return []
    listed = report.get("errors") or []
    lines = ["", f"Errors: {total:,} failed result{'s' if total != 1 else ''} (not in the figures above)"
                 + (f"; the {len(listed)} most frequent messages" if len(listed) > 1 else "")]
    for entry in listed:
        samples = ", ".join(entry["sample_ids"]) + (", ..." if entry["count"] > len(entry["sample_ids"]) * len(
            entry["arms"]) else "")
        lines.append(f"  {entry['count']:>5} x {entry['message']}")
        lines.append(f"          arms: {', '.join(entry['arms'])}; samples: {samples}")
    return lines


def _matched_groups(report: dict) -> list[str]:
    """Each TransPrune arm beside its controls at the same paper TFLOPs (``pilot run --controls matched``)."""
    matched_to = report.get("matched_to") or {}
    if not matched_to:
        return []
    arms = report.get("arms") or []
    by_name = {arm["name"]: arm for arm in arms}
    # The quality each group is compared on: macro-F1, or ANLS for open-ended answers with references.
    key, title = ("anls", "ΔANLS") if labelled_none(arms) and any(a.get("anls") is not None for a in arms) else \
        ("f1", "ΔF1")
    lines = ["Matched compute: each TransPrune arm and its controls (paper TFLOPs within 1%; pooling has whole "
             "factors only: its nearest, marked)"]
    for leader in dict.fromkeys(entry["arm"] for entry in matched_to.values()):
        members = [(leader, None)] + [(name, entry) for name, entry in matched_to.items() if entry["arm"] == leader]
        lines.append(f"  {leader}")
        for name, entry in members:
            arm = by_name.get(name) or {}
            vs = arm.get("vs_baseline") or {}
            delta, ci = vs.get(f"{key}_delta"), vs.get(f"{key}_delta_ci")
            ratio = vs.get("paper_tflops_ratio")
            note = "" if entry is None else (f"  {entry['relative_error']:+.1%} TFLOPs" +
                                            ("" if entry["matched"] else ", not matched"))
            lines.append(f"    {name:<58} {title} {_delta_ci(delta, ci):<24} TFLOPs x{_fixed(ratio)}{note}")
    return lines


def format_side_by_side(label_report: dict, text_report: dict) -> str:
    """The demo's two tasks per arm: the label task's macro-F1 change and the open-ended task's ANLS and exact
    match changes (paired, 95% CI), at each arm's paper TFLOPs ratio."""
    text_arms = {arm["name"]: arm for arm in text_report.get("arms") or []}
    rows = []
    for arm in label_report.get("arms") or []:
        other = text_arms.get(arm["name"])
        if other is None:
            continue
        vs, vt = arm.get("vs_baseline") or {}, other.get("vs_baseline") or {}
        rows.append([arm["name"], _fixed(vs.get("paper_tflops_ratio")), _delta_ci(vs.get("f1_delta"),
                     vs.get("f1_delta_ci")), _fixed(other.get("anls")),
                     _delta_ci(vt.get("anls_delta"), vt.get("anls_delta_ci")),
                     _delta_ci(vt.get("exact_match_delta"), vt.get("exact_match_delta_ci"))])
    headers = ["arm", "TFLOPs ratio", "label: ΔF1 [95% CI]", "text: ANLS", "ΔANLS [95% CI]", "Δexact match [95% CI]"]
    lines = ["Both tasks side by side (Δ = pruned - baseline on the same images; paper TFLOPs ratio of the label "
             "run)", *_table(headers, rows, [False] + [True] * 5)]
    return "\n".join(lines) + "\n"


_REVIEW_VERDICTS = {"met": "met with confidence", "not_met": "not met with confidence",
                    "open": "open: review {more_tasks} more changed pairs ({more_judgements} judgements)",
                    "will_not_help": "worse share >= budget: more reviews will not help",
                    "needs_more_requests": "open: even every changed pair of this run would not decide it; run more "
                                           "requests",
                    "no_reviews": "no judgements yet"}


def format_review(review: dict | None) -> list[str]:
    """The blind human review of a run (``report["review"]``, pilot.review): per pruned arm the shares of its
    reviewed changed pairs, the share of all answers that get worse, agreement, position bias and the budget."""
    if not review or not review.get("arms"):
        return []
    arms = review["arms"]
    names = arm_labels([a["arm"] for a in arms])
    lines = ["Blind review of changed answers (shares among the reviewed changed pairs; 95% CI clustered by item)"]
    rows = [[names[a["arm"]], f"{a['reviewed']}/{a['tasks']}", _int(a["n_judgements"]),
             _share_ci(a["pruned_worse"], a["pruned_worse_ci"]), _share_ci(a["equal"], a["equal_ci"]),
             _share_ci(a["pruned_better"], a["pruned_better_ci"]), _share_ci(a["both_wrong"], a["both_wrong_ci"]),
             _share_ci(a["worse_of_all"], a["worse_of_all_ci"]), _fixed(a["alpha"]),
             _share_ci(a["position_bias"], a["position_bias_ci"])] for a in arms]
    lines += _table(["arm", "reviewed", "judgements", "pruned worse", "equal", "pruned better", "both wrong",
                     "worse of all", "alpha", "A chosen"], rows, [False] + [True] * 9)
    lines += textwrap.wrap("worse of all: share of all answers that get worse (changed x worse among them); alpha: "
                           "Krippendorff's alpha between reviewers (1 = full agreement, 0 = chance); A chosen: share "
                           "of A among A/B choices (sides are random: near 0.5 unless the position sways reviewers)",
                           WIDTH, initial_indent="  ", subsequent_indent="    ")
    budget = review.get("max_worse")
    for arm in arms:
        plan = arm.get("budget") or {}
        note = _REVIEW_VERDICTS.get(plan.get("verdict"), str(plan.get("verdict"))).format(
            more_tasks=_int(plan.get("more_tasks")), more_judgements=_int(plan.get("more_judgements")))
        checks = (f"; check pairs: A or B chosen {arm['check_slips']} of {arm['check_judgements']} times"
                  if arm.get("check_judgements") else "")
        lines += textwrap.wrap(f"{names[arm['arm']]}: at most {budget * 100:.1f}% of answers worse: {note}{checks}",
                               WIDTH, initial_indent="  ", subsequent_indent="    ")
    flagged = [r for r in review.get("reviewers") or [] if r.get("flags")]
    for reviewer in flagged:
        lines += textwrap.wrap(f"reviewer {reviewer['reviewer']} looks random: {'; '.join(reviewer['flags'])}", WIDTH,
                               initial_indent="  ", subsequent_indent="    ")
    return lines
