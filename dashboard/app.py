"""The executive KPI dashboard: ``streamlit run dashboard/app.py -- --db URL`` (or ``pilot dashboard``).

Reads the result store read-only (URL from ``--db`` after ``--``, else ``$PILOT_DB``, else ``sqlite:///pilot.db``)
and shows, for a run or a tuning study: KPI tiles and verdicts against the accuracy budget, the monthly cost, the
trade-off charts, the evidence (latencies, per-class F1, the samples the pruned arm answers differently with the
patches it kept) and the exports. No torch: the page starts in seconds.
"""

from __future__ import annotations

import sys
from pathlib import Path

try:
    import dashboard  # noqa: F401 - installed (pip install -e .)
except ImportError:  # run from a checkout without installing
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import pandas as pd
import streamlit as st
from sqlalchemy.exc import SQLAlchemyError

from dashboard import charts, costs, data, export, review_page, store, verdicts
from dashboard import formatting as fmt
from dashboard.studies import OPEN_DROPS, list_studies, load_trials, trial_points
from pilot.metrics import SCORE_METRICS, VS_BASELINE_METRICS, metric_key
from pilot.report import open_ended
from pilot.summaries import BASELINE

PAGE_SIZE = 6
VERDICT_BOX = {"met_with_confidence": st.success, "met": st.warning, "not_met": st.error, "unknown": st.info}
TITLE = "TransPrune pilot"


# ---------------------------------------------------------------- cached reads


@st.cache_resource(show_spinner=False)
def _engine(url: str):
    return store.connect(url)


@st.cache_data(show_spinner=False, max_entries=32)
def _report(url: str, run_id: int, key: tuple) -> dict:
    return store.load_report(_engine(url), run_id)


@st.cache_data(show_spinner="Loading per-sample results…", max_entries=8)
def _samples(url: str, run_id: int, key: tuple) -> pd.DataFrame:
    return data.load_samples(_engine(url), run_id)


@st.cache_data(show_spinner=False, ttl=30, max_entries=8)
def _trials(url: str, optuna_study_name: str) -> pd.DataFrame:
    return load_trials(url, optuna_study_name)


@st.cache_data(show_spinner=False, max_entries=8)
def _image_paths(manifest: str | None, labels: tuple[str, ...], template: str | None, demo: bool,
                 options: tuple[tuple[str, str], ...] = ()) -> dict:
    return data.image_paths(manifest, labels, template, demo, options)


def _run_images(info: dict, labels) -> dict:
    """Sample id -> image of the run's dataset (its manifest or Hugging Face dataset, with the run's options)."""
    settings = info["settings"]
    return _image_paths(info.get("manifest_path"), tuple(labels), settings.get("prompt_template"),
                        settings.get("dataset") is None, data.dataset_options(settings))


def _page(n_rows: int, key: str) -> int:
    """The page of ``PAGE_SIZE`` rows to show (a number input when there is more than one)."""
    pages = (n_rows + PAGE_SIZE - 1) // PAGE_SIZE
    if pages <= 1:
        return 1
    return int(st.number_input(f"Page (of {pages})", min_value=1, max_value=pages, value=1, step=1, key=key))


@st.cache_data(show_spinner=False, ttl=10)
def _list_studies(url: str) -> list[dict]:
    return list_studies(_engine(url), url)


def _studies(url: str) -> list[dict]:
    """The tuning studies, or none when Optuna's tables cannot be read (the runs still show)."""
    try:
        return _list_studies(url)
    except (SQLAlchemyError, ImportError, RuntimeError, ValueError):
        return []


# ---------------------------------------------------------------- sidebar


def _metric_choices(url: str, view: str, selection: object) -> dict[str, str]:
    """The "Budget on" choices for what is shown: the label metrics, and the open-ended ones the run or study has
    (a run in progress has no report yet: the label metrics only)."""
    if view == "Run" and selection is not None:
        info = store.run_info(_engine(url), int(selection))
        if info["status"] in store.IN_PROGRESS:
            return verdicts.metric_choices()
        report = _report(url, info["run_id"], store.stamp(info))
        return verdicts.metric_choices(verdicts.run_metrics(report), verdicts.resolve_metric("auto", report))
    if view == "Tuning study" and isinstance(selection, dict):
        own = (selection.get("settings") or {}).get("metric")
        try:
            trials = _trials(url, selection["optuna_study_name"])
        except KeyError:  # the Optuna study is not in the database (yet); the study view says so
            return verdicts.metric_choices()
        return verdicts.metric_choices(verdicts.trial_metrics(trials, own), metric_key(own) if own else None)
    return verdicts.metric_choices()


def sidebar(url: str, runs: list[dict], studies: list[dict]) -> tuple[str, object, float, str, costs.CostInputs]:
    """The selection ("run", run_id) or ("study", study dict), the budget, its metric choice and the cost inputs.

    Without a deep link the page lands on the tuner's verified recommendation when it is newer than the latest
    pilot run (``store.default_study``), else on the latest pilot run."""
    bar = st.sidebar
    bar.header("What to show")
    views = (["Run"] if runs else []) + (["Tuning study"] if studies else [])
    names = [s["name"] for s in reversed(studies)]
    ids = [r["run_id"] for r in reversed(runs)]
    # deep links: ?run=ID or ?study=NAME pick the first view
    linked_study = st.query_params.get("study")
    linked_run = st.query_params.get("run")
    linked_run = int(linked_run) if linked_run and linked_run.isdigit() and int(linked_run) in ids else None
    landing = store.default_study(runs, studies) if not linked_run else None
    linked_study = linked_study or landing
    first = "Tuning study" if linked_study in names else "Run"
    view = (bar.radio("View", views, key="view", horizontal=True, index=views.index(first)) if len(views) > 1
            else (views[0] if views else "Run"))
    selection: object = None
    if view == "Run" and runs:
        by_id = {r["run_id"]: r for r in runs}
        default = linked_run or store.default_run_id(runs)
        selection = bar.selectbox(
            "Run", ids, index=ids.index(default), key="run_id",
            format_func=lambda i: f"#{i} {by_id[i]['name']} ({by_id[i]['status']})",
            help="The latest completed run is shown first.")
    elif view == "Tuning study" and studies:
        chosen = bar.selectbox("Tuning study", names, key="study",
                               index=names.index(linked_study) if linked_study in names else 0)
        selection = next(s for s in studies if s["name"] == chosen)
    bar.header("Accuracy budget")
    choices = _metric_choices(url, view, selection)
    metric = bar.selectbox("Budget on", list(choices), format_func=choices.get, key="metric",
                           help="Without labels the budget is the largest share of answers that change; open-ended "
                                "answers offer their scores against the references, or their similarity to the "
                                "baseline's answers")
    # Landing on (or linked to) a study: its own budget first, so the page repeats the verdict it was verified at.
    landed = next((row for row in studies if row["name"] == linked_study), None) if first == "Tuning study" else None
    budget = fmt.num(((landed or {}).get("settings") or {}).get("max_drop"))
    max_drop = bar.number_input("Max drop", min_value=0.0, max_value=1.0,
                                value=budget if budget is not None and 0 <= budget <= 1 else 0.01, step=0.005,
                                format="%.3f", key="max_drop",
                                help="0.01 = one point of macro-F1 (or accuracy), or 1% of answers changed")
    bar.header("Cost inputs")
    images = bar.number_input("Images per month", min_value=0, value=1_000_000, step=100_000, key="images_per_month")
    price = bar.number_input("Price per GPU-hour", min_value=0.0, value=2.50, step=0.10, format="%.2f",
                             key="price_per_gpu_hour")
    utilisation = bar.number_input("GPU utilisation", min_value=0.01, max_value=1.0, value=0.6, step=0.05,
                                   format="%.2f", key="utilisation",
                                   help="Share of paid GPU time spent on useful inference")
    currency = bar.text_input("Currency symbol", value="$", max_chars=4, key="currency")
    bar.divider()
    bar.caption(f"Database (read-only): `{store.display_url(url)}`")
    inputs = costs.CostInputs(float(images), float(price), float(utilisation), currency or "")
    return ("study" if view == "Tuning study" else "run"), selection, float(max_drop), metric, inputs


# ---------------------------------------------------------------- sections


def run_header(info: dict) -> None:
    st.subheader(f"Run: {info['name']}")
    created = info["created_at"].strftime("%Y-%m-%d %H:%M UTC") if info.get("created_at") else "–"
    st.caption(f"#{info['run_id']} · status **{info['status']}** · dataset {info['dataset']} "
               f"({info['dataset_size']:,} samples) · model {info['model']} · created {created}")


def progress_panel(info: dict, in_progress: bool) -> None:
    stored, expected = info["stored"], info["expected"]
    share = stored / expected if expected else 0.0
    if in_progress:
        st.info(f"**Run in progress** ({info['status']}): {stored:,} of {expected:,} results stored ({share:.0%}). "
                "Final KPIs appear here when the run completes; reload the page to update.")
    else:
        resume = f"`pilot run --resume {info['run_id']}`"
        st.warning(f"**Run {info['status']}**: {stored:,} of {expected:,} results stored ({share:.0%}). "
                   f"{info.get('error') or ''} Finish it with {resume}. The KPIs below use only the stored results "
                   "and are not final.")
    for arm in info["arms"]:
        fraction = min(1.0, arm["stored"] / arm["expected"]) if arm["expected"] else 0.0
        errors = f", {arm['errors']} errors" if arm["errors"] else ""
        st.progress(fraction, text=f"{arm['name']}: {arm['stored']:,} / {arm['expected']:,} results{errors}")
    if info.get("heartbeat_at") or info.get("started_at"):
        when = info.get("heartbeat_at") or info.get("started_at")
        st.caption(f"Last activity {when.strftime('%Y-%m-%d %H:%M:%S UTC')}.")
    if in_progress:
        st.button("Refresh", key="refresh")


def arm_block(arm: dict, base: dict | None, max_drop: float, recommended: str | None, metric: str = "f1") -> None:
    with st.container(border=True):
        star = "  ★ **recommended**" if arm["name"] == recommended else ""
        st.markdown(f"#### {arm['name']}{star}")
        if arm["strategy"] != arm["name"]:
            st.caption(f"strategy `{arm['strategy']}`")
        v = verdicts.verdict(arm, max_drop, metric)
        VERDICT_BOX[v.status](f"**{v.label}.** {v.text}")
        if metric in ("f1", "accuracy") and (arm.get("vs_baseline") or {}).get("agreement") is not None \
                and (arm.get("n_labelled") or 0) < (arm.get("n") or 0):
            other = verdicts.verdict(arm, max_drop, "agreement")  # labels on some rows only: the other view too
            st.caption(f"On every sample, labelled or not: {other.text}")
        columns = st.columns(5)
        for column, tile in zip(columns, verdicts.arm_tiles(arm, base, metric), strict=True):
            column.metric(tile.label, tile.value, tile.delta, delta_color=tile.delta_color, help=tile.help,
                          delta_arrow="off" if tile.delta_color == "off" else "auto", border=True)
        vs = arm.get("vs_baseline") or {}
        ci = vs.get("agreement_ci") or [None, None]
        st.caption(f"Agreement with baseline {fmt.pct(vs.get('agreement'))} (95% CI {fmt.pct(ci[0])}–"
                   f"{fmt.pct(ci[1])}) · McNemar p = "
                   f"{fmt.fixed(vs.get('mcnemar_p'))} · {vs.get('n_paired', 0)} paired samples · accuracy change "
                   f"{fmt.pts(vs.get('accuracy_delta'))} · paper TFLOPs ratio "
                   f"{fmt.fixed(vs.get('paper_tflops_ratio'))}"
                   f" (ratio of means {fmt.fixed(vs.get('paper_tflops_ratio_of_means'))}) · full-prefill TFLOPs ratio "
                   f"{fmt.fixed(vs.get('full_tflops_ratio'))}")
        if open_ended([arm]):
            st.caption(open_ended_text(arm, base or {}))
        changes = vs.get("answer_changes") or {}
        if changes and (metric == "agreement" or (metric in ("f1", "accuracy")
                                                  and (arm.get("n_labelled") or 0) < (arm.get("n") or 0))):
            with st.expander("Answer changes per baseline answer"):
                st.dataframe(pd.DataFrame([{"baseline answer": answer, "samples": c["n"], "changed": c["changed"],
                                            "share changed": fmt.pct(c["rate"])} for answer, c in changes.items()]),
                             hide_index=True, width="stretch")


def open_ended_text(arm: dict, base: dict) -> str:
    """One line of an arm's open-ended KPIs beside the baseline's: scores against references, similarity to the
    baseline's answers, answer length and generation."""
    vs = arm.get("vs_baseline") or {}
    bits = [f"{verdicts.metric_title(m)} {fmt.fixed(arm.get(m))} vs {fmt.fixed(base.get(m))}"
            for m in ("anls", "exact_match", "token_f1", "relaxed_accuracy", "relaxed_accuracy_lenient", "field_f1")
            if arm.get(m) is not None]
    if arm.get("json_invalid_rate") is not None:
        bits.append(f"JSON not parsable {fmt.pct(arm.get('json_invalid_rate'))} vs "
                    f"{fmt.pct(base.get('json_invalid_rate'))}")
    if vs.get("anls_vs_baseline") is not None:
        ci = vs.get("answers_changed_ci") or [None, None]
        bits.append(f"ANLS to baseline {fmt.fixed(vs.get('anls_vs_baseline'))} · answers changed "
                    f"{fmt.pct(vs.get('answers_changed'))} (95% CI {fmt.pct(ci[0])}–{fmt.pct(ci[1])}) · length "
                    f"change {fmt.fixed(vs.get('length_change_chars'), 1)} chars")
    if arm.get("output_tokens") is not None:
        bits.append(f"output tokens {fmt.fixed(arm.get('output_tokens'), 1)} vs "
                    f"{fmt.fixed(base.get('output_tokens'), 1)}")
    if arm.get("ttft_ms_p50") is not None:
        bits.append(f"TTFT p50 {fmt.short_ms(arm.get('ttft_ms_p50'))} vs {fmt.short_ms(base.get('ttft_ms_p50'))}")
    if arm.get("truncated_rate") is not None:
        bits.append(f"cut at the token limit {fmt.pct(arm.get('truncated_rate'))}")
    return "Open-ended answers: " + " · ".join(bits)


def headline(report: dict, max_drop: float, inputs: costs.CostInputs, recommended: str | None,
             metric: str = "f1") -> None:
    """One sentence for the decision: the recommended arm's savings and quality, or why there is none."""
    pruned = verdicts.pruned_arms(report)
    if not pruned or verdicts.baseline_arm(report) is None:
        return
    arm = next((a for a in pruned if a["name"] == recommended), None)
    with st.container(border=True):
        if arm is None:
            budget = (f"at most {fmt.pct(max_drop)} of answers changed" if metric == "agreement" else
                      f"max {verdicts.metric_title(metric)} drop {fmt.pts(max_drop, signed=False)}")
            st.markdown(f"**No arm meets the budget** ({budget}) with confidence yet: see the verdicts below, or "
                        "loosen the budget.")
            return
        vs = arm["vs_baseline"] or {}
        tiles = {t.key: t for t in verdicts.arm_tiles(arm, verdicts.baseline_arm(report), metric)}
        cost = next((r for r in costs.cost_rows(report, inputs) if r["arm"] == arm["name"]), {})
        chosen = verdicts.quality_tile(vs, metric)
        if chosen is not None:
            quality = f"{chosen.label} {chosen.value} (95% {chosen.delta})"
        elif "f1_change" in tiles:
            quality = (f"macro-F1 {tiles['f1_change'].value} (95% CI {fmt.ci_pts(vs.get('f1_delta_ci'))})")
        else:
            quality = f"answers unchanged {tiles['agreement'].value} ({tiles['agreement'].delta})"
        st.markdown(
            f"**Recommendation: `{arm['strategy']}`** — {tiles['compute_saved'].value} less compute, prefill "
            f"{tiles['prefill'].value}, {quality}"
            f"; saves **{fmt.money(cost.get('money_saved'), inputs.currency)} per month** at "
            f"{inputs.images_per_month:,.0f} images. {verdicts.verdict(arm, max_drop, metric).label}.")


def overview(report: dict, max_drop: float, recommended: str | None, metric: str = "f1") -> None:
    base = verdicts.baseline_arm(report)
    pruned = verdicts.pruned_arms(report)
    st.markdown("### Overview")
    if base:
        st.markdown(f"**Baseline** · macro-F1 {fmt.fixed(base.get('f1_macro'))} · accuracy "
                    f"{fmt.pct(base.get('accuracy'))} · prefill p50 {fmt.ms(base.get('prefill_ms_p50'))} · total "
                    f"p50 {fmt.ms(base.get('total_ms_p50'))} · {base.get('n', 0):,} samples")
    else:
        st.info("This run has no baseline arm, so there is nothing to compare against.")
    if base and not pruned:
        st.info("This run has only the baseline arm: add a pruned arm (`pilot run --arm transprune`) to compare.")
    for arm in pruned:
        arm_block(arm, base, max_drop, recommended, metric)


def cost_panel(report: dict, inputs: costs.CostInputs, arms: list[str] | None = None) -> None:
    st.markdown("### Monthly cost")
    st.caption(f"**Inputs:** {inputs.describe()}. Per-image time: p50 total latency measured on "
               f"**{fmt.machine_text(report.get('machine'))}** at batch size **{report.get('batch_size')}** "
               "(latencies are comparable only within one machine). GPU-hours = images × latency / 3.6e6 ms / "
               "utilisation; money = GPU-hours × price.")
    rows = costs.cost_rows(report, inputs)
    if arms is not None:
        rows = [r for r in rows if r["strategy"] == BASELINE or r["arm"] in arms]
    base = next((r for r in rows if r["strategy"] == BASELINE), None)
    pruned = [r for r in rows if r["strategy"] != BASELINE]
    tiles = ([base] if base else []) + pruned
    if tiles:
        columns = st.columns(min(4, len(tiles)))
        for i, row in enumerate(tiles):
            column = columns[i % len(columns)]
            if row is base:
                column.metric("Baseline: cost / month", fmt.money(row["cost"], inputs.currency),
                              f"{fmt.hours(row['gpu_hours'])} GPU time", delta_color="off", delta_arrow="off",
                              border=True)
            else:
                column.metric(f"Saved / month · {row['arm']}", fmt.money(row["money_saved"], inputs.currency),
                              f"{fmt.hours(row['gpu_hours_saved'])} GPU time ({fmt.pct(row['saved_share'])})",
                              delta_color="normal", border=True)
    table = pd.DataFrame([{
        "arm": r["arm"], "total latency p50": fmt.ms(r["total_ms_p50"]),
        "GPU-hours / month": fmt.hours(r["gpu_hours"]),
        "cost / month": fmt.money(r["cost"], inputs.currency),
        "GPU-hours saved": fmt.hours(r["gpu_hours_saved"]) if r["strategy"] != BASELINE else "",
        "money saved / month": fmt.money(r["money_saved"], inputs.currency) if r["strategy"] != BASELINE else "",
    } for r in rows])
    if len(table):
        st.dataframe(table, hide_index=True, width="stretch")


def tradeoff_section(points: pd.DataFrame, max_drop: float, metric: str, what: str) -> None:
    st.markdown("### Trade-off")
    if len(points) < 2:
        st.info("Nothing to compare yet: the trade-off needs the baseline and at least one pruned arm with results.")
        return
    title = verdicts.metric_title(metric)
    left, right = st.columns(2)
    left.altair_chart(charts.tradeoff_chart(points, "compute_ratio", "Paper TFLOPs ratio (vs baseline)", max_drop,
                                            title, title=f"Compute vs {title}"), width="stretch")
    right.altair_chart(charts.tradeoff_chart(points, "prefill_ratio", "Prefill latency ratio (p50, vs baseline)",
                                             max_drop, title, title=f"Prefill latency vs {title}"), width="stretch")
    st.caption(f"Each point is {what}. Left and down is cheaper and worse. Orange rings and line: the Pareto front "
               "(nothing else is both cheaper and better). Diamond: the recommended schedule. Dashed red line: the "
               "budget. Vertical bars: 95% intervals of the change. Hover a point for its strategy string.")


def evidence(url: str, info: dict, report: dict, key: tuple, metric: str = "f1") -> None:
    st.markdown("### Evidence")
    samples = _samples(url, info["run_id"], key)
    names = ["Latency", "Per-class F1", "Disagreements with baseline", "Tokens per layer"]
    if open_ended(report.get("arms") or []):
        names.insert(2, "Worst-hit answers")
    tabs = dict(zip(names, st.tabs(names), strict=True))
    with tabs["Latency"]:
        if samples.empty or samples["prefill_ms"].notna().sum() == 0:
            st.info("No timed samples stored.")
        else:
            left, right = st.columns(2)
            left.altair_chart(charts.latency_chart(samples, "prefill_ms", "Prefill latency per sample (ms)"),
                              width="stretch")
            right.altair_chart(charts.latency_chart(samples, "total_ms", "Total latency per sample (ms)"),
                               width="stretch")
            st.caption(f"Per-sample times (a batch's time divided by its size, batch size {report.get('batch_size')}) "
                       f"on {fmt.machine_text(report.get('machine'))}.")
    with tabs["Per-class F1"]:
        frame = charts.per_class_frame(report)
        if frame.empty:
            st.info("No per-class F1 yet.")
        else:
            st.altair_chart(charts.per_class_chart(report), width="stretch")
            wide = frame.pivot(index="label", columns="arm", values="f1")
            order = [a["name"] for a in report["arms"]]
            wide = wide.reindex(index=report.get("labels") or wide.index, columns=order)
            st.dataframe(wide.map(lambda v: fmt.fixed(v)), width="stretch")
    if "Worst-hit answers" in tabs:
        with tabs["Worst-hit answers"]:
            worst_hit_section(info, report, samples, metric)
    with tabs["Disagreements with baseline"]:
        disagreement_section(info, report, samples)
    with tabs["Tokens per layer"]:
        per_layer = data.tokens_per_layer(samples)
        if per_layer.empty:
            st.info("No per-layer token counts stored.")
        else:
            st.altair_chart(charts.tokens_chart(per_layer), width="stretch")
            st.caption("Visual tokens each LLM decoder layer processes under each arm's schedule (from one sample; "
                       "the area under a line is what the layers pay for).")


def disagreement_section(info: dict, report: dict, samples: pd.DataFrame) -> None:
    pruned = [a["name"] for a in verdicts.pruned_arms(report)]
    base = verdicts.baseline_arm(report)
    if not pruned or base is None:
        st.info("Disagreements need a baseline and a pruned arm.")
        return
    arm = st.selectbox("Pruned arm", pruned, key="disagree_arm") if len(pruned) > 1 else pruned[0]
    labels = report.get("labels") or info["labels"]
    rows = data.disagreements(samples, arm, labels, base["name"])
    if rows.empty:
        st.success(f"None disagree: {arm} answers every sample as the baseline does.")
        return
    st.markdown(f"**{len(rows)}** sample(s) where **{arm}** answers differently from the baseline. Each picture: "
                "dimmed patches were dropped, outlined patches kept, one picture per pruning stage.")
    page = _page(len(rows), "disagree_page")
    paths = _run_images(info, labels)
    chunk = rows.iloc[(page - 1) * PAGE_SIZE: page * PAGE_SIZE]
    columns = st.columns(2)
    for i, row in enumerate(chunk.itertuples(index=False)):
        with columns[i % 2].container(border=True):
            mark = {True: "✓", False: "✗"}
            label = f"label `{row.label}`" if row.label else "no label"
            st.markdown(f"**{row.sample_id}** · {label} · baseline `{row.baseline}` "
                        f"{mark.get(row.baseline_correct, '')} · pruned `{row.pruned}` "
                        f"{mark.get(row.pruned_correct, '')}")
            kept_patches(paths.get(row.sample_id), row)


def kept_patches(path: Path | None, row, width: int = 135) -> None:
    """The pictures of what the pruned arm kept of one sample (``row``: its visual_tokens, kept_indices, strategy,
    tokens_per_layer and image_grids), or why there are none."""
    if path is None:
        st.caption("Image not found (the run's manifest is not readable from here).")
        return
    pictures, captions, note = charts.kept_overlays(path, row.visual_tokens, row.kept_indices, row.strategy,
                                                    row.tokens_per_layer, image_grids=row.image_grids)
    if note:
        st.image(str(path), caption="input", width=150)
        st.caption(note)
    else:
        st.image(pictures, caption=captions, width=width)


ANSWER_BOX = ("<div style='white-space:pre-wrap;overflow-wrap:anywhere;border:1px solid rgba(128,128,128,0.35);"
              "border-radius:6px;padding:6px 8px;min-height:2.2em'>{}</div>")


def answer_box(content: str) -> str:
    """Already-escaped answer HTML in a box (``st.markdown(..., unsafe_allow_html=True)``)."""
    return ANSWER_BOX.format(content or "<em>(empty answer)</em>")


def worst_hit_line(row) -> str:
    """The scores of one worst-hit sample, as Markdown."""
    similar = verdicts.metric_title(row.similarity_basis)
    if fmt.num(row.baseline_score) is None:  # no references: the drop is 1 - the similarity to the baseline's
        line = f"{similar} {fmt.fixed(row.similarity)} (drop {fmt.pts(row.drop, signed=False)})"
    else:
        line = (f"{verdicts.metric_title(row.basis)} {fmt.fixed(row.baseline_score)} → {fmt.fixed(row.pruned_score)} "
                f"(drop {fmt.pts(row.drop, signed=False)}) · {similar} {fmt.fixed(row.similarity)}")
        scores = row.pruned_scores or {}
        if row.task == "json" and "fields_matched" in scores:
            line += (f" · fields matched {(row.baseline_scores or {}).get('fields_matched', fmt.MISSING)} → "
                     f"{scores['fields_matched']} of {scores.get('fields_reference', fmt.MISSING)}")
    if row.pruned_finish == "length":
        line += " · pruned answer cut at the token limit"
    return line


def worst_hit_section(info: dict, report: dict, samples: pd.DataFrame, metric: str) -> None:
    pruned = [a["name"] for a in verdicts.pruned_arms(report)]
    base = verdicts.baseline_arm(report)
    if not pruned or base is None:
        st.info("Worst-hit answers need a baseline and a pruned arm.")
        return
    arm = st.selectbox("Pruned arm", pruned, key="worst_arm") if len(pruned) > 1 else pruned[0]
    rows = data.worst_hit_answers(samples, arm, metric, base["name"])
    hit = rows[rows["drop"] > 0]
    if hit.empty:
        st.success(f"No open-ended answer got worse under {arm} ({len(rows)} compared with the baseline's).")
        return
    title = verdicts.metric_title(metric)
    if metric in VS_BASELINE_METRICS:
        ranked = f"1 − the {title} of each pruned answer (no references needed)"
    else:
        score = (f"{title} against the references (baseline − pruned; rows without it: ANLS for text, field F1 "
                 "for JSON)" if metric in SCORE_METRICS else "each answer's score against the references "
                 "(baseline − pruned; ANLS for text, field F1 for JSON)")
        ranked = (f"the drop of {score}, samples without references by 1 − the ANLS of the pruned answer to the "
                  "baseline's")
    st.markdown(f"**{len(hit)}** of {len(rows)} open-ended answers lost under **{arm}**, worst first: ranked by "
                f"{ranked}. Struck through in red: words of the baseline's answer the pruned arm dropped; green: "
                "words it added. Right: the patches it kept (dimmed: dropped).")
    page = _page(len(hit), "worst_page")
    paths = _run_images(info, report.get("labels") or info["labels"])
    for row in hit.iloc[(page - 1) * PAGE_SIZE: page * PAGE_SIZE].itertuples(index=False):
        with st.container(border=True):
            st.markdown(f"**{row.sample_id}** · {row.task} · {worst_hit_line(row)}")
            before, after = data.word_diff(row.baseline_text, row.pruned_text)
            columns = st.columns([3, 3, 2, 4])
            columns[0].caption("Baseline answer")
            columns[0].markdown(answer_box(before), unsafe_allow_html=True)
            columns[1].caption("Pruned answer")
            columns[1].markdown(answer_box(after), unsafe_allow_html=True)
            columns[2].caption("References" if len(row.references) > 1 else "Reference")
            references = "<br>".join(data.html_text(r) for r in row.references)
            columns[2].markdown(answer_box(references or "<em>(none: compared with the baseline's answer)</em>"),
                                unsafe_allow_html=True)
            with columns[3]:
                kept_patches(paths.get(row.sample_id), row, width=95)


def export_section(report: dict, inputs: costs.CostInputs, max_drop: float, recommended: str | None,
                   metric: str = "f1") -> None:
    st.markdown("### Export")
    left, right = st.columns(2)
    name = report.get("name") or f"run-{report.get('run_id')}"
    left.download_button("Download report (HTML)",
                         data=lambda: export.build_html(report, inputs, max_drop, metric, recommended=recommended),
                         file_name=f"{name}-report.html", mime="text/html", key="download_html", on_click="ignore",
                         help="KPI table, verdicts, cost panel and charts in one self-contained file")
    right.download_button("Download KPIs (CSV)", data=export.build_csv(report, inputs, max_drop, metric),
                          file_name=f"{name}-kpis.csv", mime="text/csv", key="download_csv", on_click="ignore")


# ---------------------------------------------------------------- views


def run_view(url: str, run_id: int, max_drop: float, inputs: costs.CostInputs, choice: str = "auto") -> None:
    engine = _engine(url)
    info = store.run_info(engine, run_id)
    run_header(info)
    if info["status"] in store.IN_PROGRESS:
        progress_panel(info, in_progress=True)
        return
    if info["status"] != "completed":
        progress_panel(info, in_progress=False)
    key = store.stamp(info)
    report = _report(url, run_id, key)
    studies = [s for s in _studies(url) if s.get("recommended_strategy")]
    tuned = next((s["recommended_strategy"] for s in reversed(studies)
                  if run_id in (s.get("baseline_run_id"), s.get("verification_run_id"))), None)
    metric = verdicts.resolve_metric(choice, report)
    recommended = verdicts.recommended_arm(report, max_drop, metric, tuned)
    st.caption(f"Latencies measured on {fmt.machine_text(report.get('machine'))}, batch size "
               f"{report.get('batch_size')}.")
    if metric in SCORE_METRICS:
        st.caption(f"Open-ended answers: each pruned arm is judged by the change of its mean "
                   f"{verdicts.metric_title(metric)} against the reference answers, paired with the baseline on the "
                   "same samples (bootstrap 95% intervals).")
    elif metric in VS_BASELINE_METRICS:
        st.caption(f"Open-ended answers: each pruned arm is judged by the {verdicts.metric_title(metric)} of its "
                   "answers (1 = the baseline's answer; no references needed), with a bootstrap 95% interval.")
    elif not verdicts.has_labels(report):
        st.caption("No labels in this run: each pruned arm is judged by how many of the baseline's answers it "
                   "changes (agreement), not by accuracy.")
    headline(report, max_drop, inputs, recommended, metric)
    overview(report, max_drop, recommended, metric)
    cost_panel(report, inputs)
    points = verdicts.run_points(report, max_drop, metric, recommended)
    tradeoff_section(points, max_drop, metric, "an arm of this run (same samples, paired against the baseline)")
    if recommended is None and verdicts.pruned_arms(report):
        st.caption("No arm is marked recommended: none meets the budget with confidence.")
    evidence(url, info, report, key, metric)
    review_page.results_section(url, run_id)
    export_section(report, inputs, max_drop, recommended, metric)


def study_view(url: str, study: dict, max_drop: float, inputs: costs.CostInputs, choice: str = "auto") -> None:
    settings = study.get("settings") or {}
    metric = metric_key(settings.get("metric")) if choice in (None, "auto") else metric_key(choice)
    st.subheader(f"Tuning study: {study['name']}")
    study_budget = fmt.num(settings.get("max_drop"))
    bits = [f"metric {settings.get('metric', 'f1_macro')}", f"objective {settings.get('objective', 'tflops')}"]
    if study_budget is not None:
        bits.append(f"tuned for a max drop of {fmt.pts(study_budget, signed=False)}")
    st.caption(" · ".join(bits))
    try:
        trials = _trials(url, study["optuna_study_name"])
    except KeyError:
        st.warning(f"The Optuna study {study['optuna_study_name']!r} is not in this database (yet).")
        return
    states = trials["state"].value_counts().to_dict() if len(trials) else {}
    complete = int(states.get("COMPLETE", 0))
    feasible = int(trials["feasible"].fillna(False).astype(bool).sum()) if len(trials) else 0
    columns = st.columns(4)
    columns[0].metric("Trials", f"{len(trials)}", f"{complete} complete", delta_color="off", delta_arrow="off",
                      border=True)
    columns[1].metric("Within budget", f"{feasible}", "on the tuning split", delta_color="off", delta_arrow="off",
                      border=True)
    columns[2].metric("Pruned early", f"{int(states.get('PRUNED', 0))}", f"{int(states.get('FAIL', 0))} failed",
                      delta_color="off", delta_arrow="off", border=True)
    recommended = study.get("recommended_strategy")
    columns[3].metric("Recommended", "yes" if recommended else "none yet", delta_arrow="off", border=True)
    if study_budget is not None and abs(study_budget - max_drop) > 1e-12:
        st.caption(f"Trial colours follow the study's own budget ({fmt.pts(study_budget, signed=False)}); the "
                   f"dashed line shows the budget set in the sidebar ({fmt.pts(max_drop, signed=False)}).")
    if recommended:
        st.success(f"**Recommended schedule:** `{recommended}`")
    else:
        st.warning("No recommended schedule: no trial has met the budget on held-out data yet.")
    verification = study.get("verification_run_id")
    if verification:
        info = store.run_info(_engine(url), verification)
        if info["status"] == "completed":
            report = _report(url, verification, store.stamp(info))
            pruned = verdicts.pruned_arms(report)
            arm = next((a for a in pruned if a["strategy"] == recommended), None if recommended else
                       next(iter(pruned), None))
            what = "verification" if recommended else "check of the best candidate (it did not hold the budget)"
            st.markdown(f"### Held-out {what}: run {info['name']}")
            if arm is None:
                st.info("The verification run has no arm with the recommended strategy.")
            else:
                if recommended:
                    headline(report, max_drop, inputs, arm["name"], metric)
                arm_block(arm, verdicts.baseline_arm(report), max_drop, arm["name"] if recommended else None, metric)
                cost_panel(report, inputs, arms=[arm["name"]])
        else:
            st.info(f"Held-out verification run #{verification} is {info['status']}.")
    points = trial_points(trials, metric, recommended, study_budget if study_budget is not None else max_drop)
    if len(points) <= 1:
        st.info("No finished trial with a strategy and a metric drop yet.")
    else:
        tradeoff_section(points, max_drop, metric, "a finished trial, measured on the tuning split")
    if len(trials):
        st.markdown("### Trials")
        values = trials["values"].map(lambda v: "" if v is None else ", ".join(f"{x:.4g}" for x in v))
        table = trials.assign(values=values)
        # open-ended drops only where the study has them (a label study's table stays as it was)
        table = table.drop(columns=[c for c in OPEN_DROPS if table[c].isna().all()])
        st.dataframe(table, hide_index=True, width="stretch")


def main() -> None:
    st.set_page_config(page_title=TITLE, layout="wide")
    url = store.resolve_db_url(sys.argv[1:])
    st.title(TITLE)
    if review_page.requested():  # a reviewer's personal link: the blind review page, nothing else
        review_page.render(url)
        return
    try:
        engine = _engine(url)
    except store.StoreUnavailable as error:
        st.sidebar.caption(f"Database: `{store.display_url(url)}`")
        (st.warning if error.kind != "unreachable" else st.error)(error.message)
        return
    try:
        runs = store.list_runs(engine)
        studies = _studies(url)
        kind, selection, max_drop, metric, inputs = sidebar(url, runs, studies)
        if not runs and not studies:
            st.info("No runs in this database yet. Start one with `pilot run` (or `pilot demo`), then reload.")
            return
        if kind == "study":
            study_view(url, selection, max_drop, inputs, metric)
        else:
            run_view(url, int(selection), max_drop, inputs, metric)
    except SQLAlchemyError as error:
        detail = str(getattr(error, "orig", None) or error).strip().splitlines()
        st.error(f"The database could not be read: {detail[0] if detail else error}. If it was created by an older "
                 "version of the pilot, run any `pilot` command once to upgrade it.")


main()
