"""The dashboard on open-ended answers: budgets on their scores, the worst-hit answers view, its data and diffs.

The store is built with the ORM (a baseline and a pruned arm over text and JSON samples with references, answers,
real per-sample scores from ``pilot.scoring``, kept indices and small PNG images behind a manifest), then
summarised with ``pilot.summaries.write_summaries`` as a finished run is: the dashboard only reads it.
"""

from __future__ import annotations

import csv
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

from dashboard import costs, data, verdicts
from dashboard import formatting as fmt
from dashboard.store import connect
from dashboard.studies import load_trials, trial_points
from pilot.metrics import metric_key

ROOT = Path(__file__).resolve().parents[1]
APP = str(ROOT / "dashboard" / "app.py")
PRUNED = "transprune:prune_after=1/2,keep=0.5/0.25"
# sample id, task, references, baseline answer, pruned answer (s4 has no reference: compared with the baseline's)
SAMPLES = [
    ("s1", "text", ["a red bus"], "a red bus", "a red bus"),
    ("s2", "text", ["the station clock shows ten past nine"], "the station clock shows ten past nine",
     "a blurry <i>sign</i> *maybe*"),
    ("s3", "text", ["42 apples"], "42 apples", "41 apples"),
    ("s4", "text", [], "a dog on the grass", "a cat on the grass"),
    ("s5", "json", ['{"tax": 1, "total": 12}'], '{"total": 12, "tax": 1}', '{"total": 13, "tax": 1}'),
]
WORST_FIRST = ["s2", "s5", "s4", "s3", "s1"]  # by the drop on ANLS (JSON: field F1; s4: 1 - ANLS to baseline)
KEPT = [[0, 1, 4, 5, 10, 11, 14, 15], [0, 5, 10, 15]]  # two stages on a 4 x 4 grid


def build_open_ended_store(folder: Path) -> dict:
    """A completed open-ended run (baseline + one pruned arm, the five SAMPLES) in ``folder / "pilot.db"``.

    Its dataset's manifest (``folder / "data" / "manifest.csv"``) lists one 64 x 64 PNG per sample, so the
    dashboard finds the images. Returns ``{"url", "path", "report", "manifest"}``; built once per folder.
    """
    from pilot.scoring import normalize_vqa, score_json, score_text
    from pilot.store import Arm, Dataset, ModelRecord, Run, SampleResult, open_store
    from pilot.summaries import build_report, write_summaries

    path = folder / "pilot.db"
    url = f"sqlite:///{path}"
    manifest = folder / "data" / "manifest.csv"
    if path.is_file():
        sessions = open_store(url)
        with sessions() as session:
            report = build_report(session, 1)
        sessions.kw["bind"].dispose()
        return {"url": url, "path": str(path), "report": report, "manifest": str(manifest)}
    manifest.parent.mkdir(parents=True, exist_ok=True)
    with manifest.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id", "image", "task", "question", "answer"])
        for i, (sample_id, task, references, _, _) in enumerate(SAMPLES):
            Image.new("RGB", (64, 64), (40 * i, 200 - 30 * i, 120)).save(manifest.parent / f"{sample_id}.png")
            writer.writerow([sample_id, f"{sample_id}.png", task, "What does it say?", references[0] if references
                             else ""])

    def scores(task: str, answer: str, references: list[str]) -> dict | None:
        if not references:
            return None
        return score_json(answer, json.loads(references[0])) if task == "json" else score_text(answer, references)

    sessions = open_store(url)  # creates the schema through the Alembic migrations
    with sessions() as session:
        dataset = Dataset(name="open", manifest_path=str(manifest), manifest_sha256="0" * 64, size=len(SAMPLES),
                          labels=[])
        model = ModelRecord(name="demo", path="/nowhere", config_sha256="0" * 64, model_class="Llava")
        run = Run(name="open-ended-run", dataset=dataset, model=model, status="completed",
                  settings={"batch_size": 1, "arms": ["baseline", PRUNED], "dataset": str(manifest)},
                  settings_sha256="1" * 64, machine={"cpu": "test cpu", "threads": 2})
        session.add(run)
        session.flush()
        arms = [Arm(run_id=run.id, name=name, strategy=name, position=i) for i, name in enumerate(["baseline", PRUNED])]
        session.add_all(arms)
        session.flush()
        for arm in arms:
            pruned = arm.strategy != "baseline"
            for i, (sample_id, task, references, base_answer, pruned_answer) in enumerate(SAMPLES):
                answer = pruned_answer if pruned else base_answer
                session.add(SampleResult(
                    arm_id=arm.id, sample_id=sample_id, label="", prediction=normalize_vqa(answer)[:255],
                    answer_text=answer, task=task, references=references or None,
                    scores=scores(task, answer, references), batch_size=1, prefill_ms=(6.0 if pruned else 10.0) + i,
                    total_ms=(20.0 if pruned else 30.0) + i, paper_tflops=0.4 if pruned else 1.0,
                    full_tflops=0.5 if pruned else 1.0, visual_tokens=16, visual_tokens_kept=4 if pruned else 16,
                    tokens_per_layer=[16, 8, 4] if pruned else [16, 16, 16], kept_indices=KEPT if pruned else None,
                    image_grids=[[4, 4]], output_tokens=len(answer.split()), ttft_ms=12.0 + i, tpot_ms=3.0,
                    finish_reason="stop", utf8_valid=True))
        session.commit()
        write_summaries(session, session.get(Run, run.id), [])
        session.commit()
        report = build_report(session, run.id)
    sessions.kw["bind"].dispose()
    return {"url": url, "path": str(path), "report": report, "manifest": str(manifest)}


@pytest.fixture(scope="session")
def open_store(tmp_path_factory) -> dict:
    return build_open_ended_store(tmp_path_factory.mktemp("open-ended"))


def app(monkeypatch, url: str):
    from streamlit.testing.v1 import AppTest

    monkeypatch.setenv("PILOT_DB", url)
    return AppTest.from_file(APP, default_timeout=60)


def pruned_arm(report: dict) -> dict:
    return next(a for a in report["arms"] if a["strategy"] != "baseline")


def baseline_arm(report: dict) -> dict:
    return next(a for a in report["arms"] if a["strategy"] == "baseline")


# ---------------------------------------------------------------- data: the worst-hit answers


def test_worst_hit_answers_rank_the_biggest_losses_first(open_store):
    from pilot.scoring import anls, score_vs_baseline, token_f1

    engine = connect(open_store["url"])
    samples = data.load_samples(engine, 1)
    engine.dispose()
    rows = data.worst_hit_answers(samples, PRUNED, "anls")
    assert list(rows["sample_id"]) == WORST_FIRST
    by_id = rows.set_index("sample_id")
    # against the references: baseline score - pruned score, on ANLS (JSON rows: their field F1)
    assert by_id.loc["s2", "basis"] == "anls" and by_id.loc["s2", "drop"] == pytest.approx(1.0)
    assert by_id.loc["s3", "drop"] == pytest.approx(1.0 - anls("41 apples", ["42 apples"]))
    assert by_id.loc["s5", "basis"] == "field_f1" and by_id.loc["s5", "drop"] == pytest.approx(0.5)
    # without references: 1 - ANLS of the pruned answer to the baseline's
    assert by_id.loc["s4", "basis"] == "anls_vs_baseline" and pd.isna(by_id.loc["s4", "baseline_score"])
    assert by_id.loc["s4", "drop"] == pytest.approx(1.0 - anls("a cat on the grass", ["a dog on the grass"]))
    assert by_id.loc["s1", "drop"] == 0.0 and not by_id.loc["s1", "changed"]
    worst = rows.iloc[0]
    assert worst["baseline_text"] == SAMPLES[1][3] and worst["pruned_text"] == SAMPLES[1][4]
    assert worst["references"] == SAMPLES[1][2]
    assert worst["kept_indices"] == KEPT and worst["image_grids"] == [[4, 4]] and worst["strategy"] == PRUNED
    assert worst["similarity"] == pytest.approx(score_vs_baseline(SAMPLES[1][4], SAMPLES[1][3])["anls_vs_baseline"])

    # budget on the similarity to the baseline: every sample by 1 - that similarity, references or not
    by_token = data.worst_hit_answers(samples, PRUNED, "token_f1_vs_baseline")
    assert set(by_token["basis"]) == {"token_f1_vs_baseline"}
    expected = {sid: 1.0 - token_f1(p, [b]) for sid, _, _, b, p in SAMPLES}
    assert list(by_token["drop"]) == pytest.approx(sorted(expected.values(), reverse=True))
    # exact match: "41 apples" loses all of it, as "the station clock ..." does; ties keep the baseline's order
    exact = data.worst_hit_answers(samples, PRUNED, "exact_match")
    assert list(exact["sample_id"])[:3] == ["s2", "s3", "s5"]


def test_worst_hit_answers_leave_out_errors_label_rows_and_missing_answers():
    def row(arm, strategy, sample_id, answer, task="text", scores=None, error=None):
        return {"arm": arm, "strategy": strategy, "position": 0 if arm == "base" else 1, "sample_id": sample_id,
                "prediction": answer, "answer_text": answer, "task": task, "references": ["x"] if scores else None,
                "scores": scores, "error": error, "finish_reason": "length", "visual_tokens": 4, "kept_indices": None,
                "tokens_per_layer": None, "image_grids": None}

    samples = pd.DataFrame([
        row("base", "baseline", "a", "one two", scores={"anls": 1.0}),
        row("base", "baseline", "b", "yes", task="label"),
        row("base", "baseline", "c", "three", error=None),
        row("base", "baseline", "d", None),
        row("p", "pruned", "a", "one", scores={"anls": 0.25}),
        row("p", "pruned", "b", "no", task="label"),
        row("p", "pruned", "c", "four", error="CUDA out of memory"),
        row("p", "pruned", "d", "five"),
    ])
    rows = data.worst_hit_answers(samples, "p", "anls")
    assert list(rows["sample_id"]) == ["a"] and rows.iloc[0]["drop"] == pytest.approx(0.75)
    assert rows.iloc[0]["pruned_finish"] == "length"
    assert data.worst_hit_answers(samples.iloc[0:0], "p", "anls").empty


def test_word_diff_marks_changed_words_and_escapes_the_answers():
    before, after = data.word_diff("the red bus stops", "the blue bus stops here")
    assert before == f'the <del style="{data.DEL_STYLE}">red</del> bus stops'
    assert after == f'the <ins style="{data.INS_STYLE}">blue</ins> bus stops <ins style="{data.INS_STYLE}">here</ins>'
    same = data.word_diff("a b c", "a b c")
    assert same == ("a b c", "a b c")
    # untrusted text: no tag, Markdown or LaTeX syntax of the answer survives; line breaks do, as <br>
    before, after = data.word_diff("<b>bold</b> & *x* $y$", "<script>alert('x')</script>\n\n# [link](http://e.x)")
    for text in (before, after):
        body = text.replace(f'<del style="{data.DEL_STYLE}">', "").replace(f'<ins style="{data.INS_STYLE}">', "")
        body = re.sub(r"&(#\d+|[a-z]+);", "", body.replace("</del>", "").replace("</ins>", "").replace("<br>", ""))
        assert not set(body) & set("<>*$#[]'\"`_\n&"), body
    assert "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;" in after and "<br><br>" in after
    assert "&lt;b&gt;bold&lt;/b&gt; &amp; &#42;x&#42; &#36;y&#36;" in before


# ---------------------------------------------------------------- data: metrics, verdicts, points


def test_metric_choices_follow_what_the_run_has(open_store):
    report = open_store["report"]
    assert verdicts.run_metrics(report) == ["anls", "exact_match", "token_f1", "relaxed_accuracy",
                                            "relaxed_accuracy_lenient", "field_f1", "anls_vs_baseline",
                                            "token_f1_vs_baseline"]
    choices = verdicts.metric_choices(verdicts.run_metrics(report), verdicts.resolve_metric("auto", report))
    assert list(choices)[:4] == list(verdicts.METRIC_CHOICES) and choices["auto"] == "auto (ANLS)"
    assert choices["anls_vs_baseline"] == "ANLS to baseline (no references needed)"
    # a label run: today's choices, exactly
    label_report = {"arms": [{"name": "baseline", "strategy": "baseline", "n_labelled": 8, "anls": None},
                             {"name": "p", "strategy": "p", "n_labelled": 8, "vs_baseline": {"f1_delta": 0.0}}]}
    assert verdicts.run_metrics(label_report) == [] and verdicts.metric_choices() == verdicts.METRIC_CHOICES
    assert verdicts.metric_choices([], "f1") == verdicts.METRIC_CHOICES
    assert verdicts.resolve_metric("auto", label_report) == "f1"
    # without labels: ANLS against references, else the similarity to the baseline's answers, else agreement
    assert verdicts.resolve_metric("auto", report) == "anls"
    no_refs = {"arms": [{**a, "anls": None, "field_f1": None,
                         "vs_baseline": a["vs_baseline"] and {**a["vs_baseline"], "anls_delta": None,
                                                              "field_f1_delta": None}} for a in report["arms"]]}
    assert verdicts.resolve_metric("auto", no_refs) == "anls_vs_baseline"
    assert verdicts.resolve_metric("token_f1", report) == "token_f1"
    assert metric_key("f1_macro") == "f1" and metric_key("relaxed_accuracy") == "relaxed_accuracy"
    assert metric_key("anls_vs_baseline") == "anls_vs_baseline" and metric_key("acc") == "accuracy"
    assert verdicts.metric_title("field_f1") == "JSON field F1" and verdicts.metric_title("f1") == "macro-F1"


def test_verdicts_on_open_ended_metrics_use_their_intervals():
    def arm(delta, lo, hi=0.01):
        return {"vs_baseline": {"n_paired": 50, "anls_delta": delta, "anls_delta_ci": [lo, hi], "anls_n": 50,
                                "anls_delta_sd": 0.05}}

    assert verdicts.verdict(arm(-0.005, -0.008), 0.01, "anls").status == "met_with_confidence"
    met = verdicts.verdict(arm(-0.005, -0.03), 0.01, "anls")
    assert met.status == "met" and met.text.startswith("ANLS drop 0.5 pts")
    assert "get reference answers for about" in met.text and "upper bound of the drop is 3.0 pts" in met.text
    assert verdicts.verdict(arm(-0.02, -0.04), 0.01, "anls").status == "not_met"
    # the same arm judged on macro-F1 has no verdict: this run has no labels
    assert verdicts.verdict(arm(-0.005, -0.008), 0.01, "f1").status == "unknown"
    missing = verdicts.verdict({"vs_baseline": {"n_paired": 5, "anls_delta": None, "anls_n": 0}}, 0.01, "anls")
    assert missing.status == "unknown" and "No paired samples with reference answers" in missing.text

    similar = {"vs_baseline": {"n_paired": 40, "vs_baseline_n": 40, "anls_vs_baseline": 0.995,
                               "anls_vs_baseline_ci": [0.992, 1.0], "anls_vs_baseline_sd": 0.01}}
    v = verdicts.verdict(similar, 0.01, "anls_vs_baseline")
    assert v.status == "met_with_confidence" and v.text.startswith("ANLS to baseline 0.995, a drop of 0.5 pts")
    assert verdicts.verdict(similar, 0.005, "anls_vs_baseline").status == "met"  # upper bound 0.8 pts
    tile = verdicts.arm_tiles({**similar, "name": "p"}, None, "anls_vs_baseline")[3]
    assert (tile.label, tile.value, tile.delta) == ("ANLS to baseline", "0.995", "CI [0.992, 1.000]")


def test_tiles_points_and_recommendation_on_anls(open_store):
    report = open_store["report"]
    arm = pruned_arm(report)
    vs = arm["vs_baseline"]
    assert vs["anls_delta"] < 0 and vs["anls_delta_ci"][0] < vs["anls_delta_ci"][1]
    tile = verdicts.arm_tiles(arm, baseline_arm(report), "anls")[3]
    assert tile.label == "ANLS change" and tile.value == fmt.pts(vs["anls_delta"])
    assert tile.delta == f"CI {fmt.ci_pts(vs['anls_delta_ci'])}"
    # a label metric keeps the label tiles
    assert verdicts.arm_tiles(arm, baseline_arm(report), "f1")[3].key == "agreement"
    points = verdicts.run_points(report, 0.5, "anls")
    row = points[points["name"] == PRUNED].iloc[0]
    assert row["change"] == pytest.approx(vs["anls_delta"])
    assert [row["change_lo"], row["change_hi"]] == pytest.approx(vs["anls_delta_ci"])
    assert row["compute_ratio"] == pytest.approx(0.4)
    # the pruned arm loses a lot of ANLS: recommended only under a budget its upper bound meets
    high = -vs["anls_delta_ci"][0]
    assert verdicts.recommended_arm(report, high + 0.01, "anls") == PRUNED
    assert row["feasible"] == (-vs["anls_delta"] <= 0.5)
    assert verdicts.recommended_arm(report, high / 2, "anls") is None
    similarity = verdicts.run_points(report, 0.5, "anls_vs_baseline")
    assert similarity[similarity["name"] == PRUNED].iloc[0]["change"] == pytest.approx(vs["anls_vs_baseline"] - 1)


def test_trials_carry_the_drop_of_each_open_ended_metric(tmp_path):
    import optuna

    url = f"sqlite:///{tmp_path / 'study.db'}"
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(study_name="tune-open", storage=url, direction="minimize")
    distributions = {"keep": optuna.distributions.FloatDistribution(0.05, 1.0)}
    for strategy, drop, ratio in [("transprune:keep=0.5", 0.02, 0.5), ("transprune:keep=0.2", 0.1, 0.2)]:
        study.add_trial(optuna.trial.create_trial(
            params={"keep": 0.5}, distributions=distributions, value=ratio,
            user_attrs={"strategy": strategy, "anls_drop": drop, "anls_vs_baseline_drop": drop / 2, "f1_drop": None,
                        "paper_tflops_ratio": ratio, "prefill_ratio": 0.9, "feasible": drop <= 0.05}))
    trials = load_trials(url, "tune-open")
    assert list(trials["anls_drop"]) == [0.02, 0.1] and trials["f1_drop"].isna().all()
    assert verdicts.trial_metrics(trials) == ["anls", "anls_vs_baseline"]
    assert verdicts.trial_metrics(trials, "token_f1") == ["anls", "token_f1", "anls_vs_baseline"]
    points = trial_points(trials, "anls", "transprune:keep=0.5", 0.05)
    tried = points[points["kind"] == "trial"]
    assert list(tried["change"]) == pytest.approx([-0.02, -0.1]) and list(tried["feasible"]) == [True, False]
    assert list(tried["recommended"]) == [True, False]
    assert list(trial_points(trials, "anls_vs_baseline")["change"])[1:] == pytest.approx([-0.01, -0.05])
    assert len(trial_points(trials, "f1")) == 1  # no macro-F1 drops: the baseline alone


# ---------------------------------------------------------------- the page


def _tab(at, label: str):
    return next(t for t in at.tabs if t.label == label)


def test_open_ended_run_offers_its_metrics_and_shows_the_worst_hit_answers(open_store, monkeypatch):
    report = open_store["report"]
    vs = pruned_arm(report)["vs_baseline"]
    at = app(monkeypatch, open_store["url"]).run()
    assert not at.exception, [e.value for e in at.exception]
    budget_on = at.selectbox(key="metric")
    assert budget_on.options == [verdicts.metric_choices(verdicts.run_metrics(report), "anls")[k]
                                 for k in [*verdicts.METRIC_CHOICES, *verdicts.run_metrics(report)]]
    # auto is ANLS here: its tile, verdict and caption
    tiles = {m.label: m for m in at.metric}
    assert tiles["ANLS change"].value == fmt.pts(vs["anls_delta"])
    page = "\n".join(str(e.value) for kind in ("markdown", "caption", "success", "warning", "error", "info")
                     for e in getattr(at, kind))
    assert verdicts.verdict(pruned_arm(report), 0.01, "anls").text in page
    assert "Open-ended answers: ANLS" in page

    tab = _tab(at, "Worst-hit answers")
    boxes = [m.value for m in tab.markdown]
    headers = [b for b in boxes if b.startswith("**s")]
    assert [h.split("**")[1] for h in headers] == WORST_FIRST[:4]  # s1 lost nothing: not listed
    assert headers[0].startswith("**s2** · text · ANLS 1.000 → 0.000 (drop 100.0 pts)")
    answers = [b for b in boxes if b.startswith("<div")]
    # per sample: the baseline's answer (removed words struck), the pruned one (added words green), the references
    base_html, pruned_html, references = answers[:3]
    assert "<del" in base_html and "station clock shows ten past nine</del>" in base_html
    assert "<ins" in pruned_html and "&lt;i&gt;sign&lt;/i&gt;" in pruned_html and "<i>" not in pruned_html
    assert references.count("the station clock shows ten past nine") == 1
    assert any("(none: compared with the baseline" in b for b in answers)  # s4 has no reference
    assert len(tab.get("image")) >= 4, "each sample shows the patches the pruned arm kept"

    # the budget on ANLS to the baseline: its tile, and the view ranks every sample by 1 - that similarity
    budget_on.set_value("anls_vs_baseline").run()
    assert not at.exception, [e.value for e in at.exception]
    tiles = {m.label: m for m in at.metric}
    assert tiles["ANLS to baseline"].value == fmt.fixed(vs["anls_vs_baseline"])
    headers = [m.value for m in _tab(at, "Worst-hit answers").markdown if m.value.startswith("**s")]
    assert headers[0].startswith("**s2** · text · ANLS to baseline")


def test_label_run_keeps_its_budget_choices_and_tabs(monkeypatch, tmp_path_factory):
    from tests.test_dashboard import build_store

    store = build_store(tmp_path_factory)
    at = app(monkeypatch, store["url"]).run()
    assert not at.exception, [e.value for e in at.exception]
    assert at.selectbox(key="metric").options == list(verdicts.METRIC_CHOICES.values())
    assert [t.label for t in at.tabs] == ["Latency", "Per-class F1", "Disagreements with baseline", "Tokens per layer"]
    assert any(m.label == "Macro-F1 change" for m in at.metric)


def test_open_ended_page_imports_no_torch(open_store):
    """The worst-hit view scores answers against the baseline's (pilot.scoring) without pulling in torch."""
    code = (
        "import sys\n"
        "from streamlit.testing.v1 import AppTest\n"
        f"at = AppTest.from_file({APP!r}, default_timeout=60).run()\n"
        "assert not at.exception, [e.value for e in at.exception]\n"
        "assert any(t.label == 'Worst-hit answers' for t in at.tabs)\n"
        "bad = [m for m in ('torch', 'transformers') if m in sys.modules]\n"
        "assert not bad, f'app imported {bad}'\n"
        "print('ok')\n"
    )
    env = {**os.environ, "PILOT_DB": open_store["url"]}
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "ok" in done.stdout, done.stderr[-3000:]


def test_study_tuned_on_anls_lands_on_its_metric(open_store, tmp_path, monkeypatch):
    """A study tuned with --metric anls: "auto" is ANLS, its trials are drawn by their anls_drop."""
    import optuna

    from pilot.store import TuningStudy
    from pilot.store import open_store as open_sessions
    from tests.test_dashboard import chart_frames, copy_db

    url = copy_db(open_store["path"], tmp_path / "pilot.db")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(study_name="tune-anls-optuna", storage=url, direction="minimize")
    distributions = {"keep": optuna.distributions.FloatDistribution(0.05, 1.0)}
    for keep, drop, ratio in [(0.5, 0.004, 0.5), (0.2, 0.08, 0.2)]:
        study.add_trial(optuna.trial.create_trial(
            params={"keep": keep}, distributions=distributions, value=ratio,
            user_attrs={"strategy": f"transprune:keep={keep}", "anls_drop": drop, "anls_vs_baseline_drop": drop,
                        "paper_tflops_ratio": ratio, "prefill_ratio": 0.9, "feasible": drop <= 0.01}))
    sessions = open_sessions(url)
    with sessions() as session:
        session.add(TuningStudy(name="tune-anls", optuna_study_name="tune-anls-optuna",
                                settings={"max_drop": 0.01, "metric": "anls"}, baseline_run_id=1,
                                verification_run_id=1, recommended_strategy=PRUNED))
        session.commit()
    sessions.kw["bind"].dispose()
    at = app(monkeypatch, url).run()
    assert not at.exception, [e.value for e in at.exception]
    at.radio(key="view").set_value("Tuning study").run()
    assert not at.exception, [e.value for e in at.exception]
    assert at.selectbox(key="metric").options[0] == "auto (ANLS)"
    assert "ANLS to baseline (no references needed)" in at.selectbox(key="metric").options
    assert any(m.label == "ANLS change" for m in at.metric)  # the verification run's arm, judged on ANLS
    frames, _ = chart_frames(at)
    points = max((f for f in frames if {"compute_ratio", "change", "trial"} <= set(f.columns)), key=len)
    trials = points[points["kind"] == "trial"].sort_values("trial")
    assert list(trials["change"]) == pytest.approx([-0.004, -0.08])
    table = at.dataframe[-1].value
    assert "anls_drop" in table.columns and "field_f1_drop" not in table.columns  # only the drops it has


def test_exports_follow_the_open_ended_budget(open_store):
    import io

    from dashboard import export

    report = open_store["report"]
    arm = pruned_arm(report)
    vs = arm["vs_baseline"]
    page = export.build_html(report, costs.CostInputs(), 0.5, "anls", render_charts=False)
    assert "max ANLS drop 50.0 pts" in page and '<th class="">ANLS change</th>' in page
    cells = f'<td class="">{fmt.pts(vs["anls_delta"])}</td><td class="">{fmt.ci_pts(vs["anls_delta_ci"])}</td>'
    assert cells in page and "absolute p50 latency and ANLS" in page
    assert verdicts.verdict(arm, 0.5, "anls").label in page
    rows = list(csv.DictReader(io.StringIO(export.build_csv(report, costs.CostInputs(), 0.5, "anls"))))
    assert rows[1]["verdict"] == verdicts.verdict(arm, 0.5, "anls").label


def test_images_embedded_in_a_parquet_dataset_reach_the_overlays(tmp_path):
    """A run on a parquet dataset: the dashboard finds each sample's embedded image by the run's options."""
    import io

    import pyarrow as pa
    import pyarrow.parquet as pq
    from PIL import Image

    from dashboard.data import dataset_options, image_paths
    from pilot.data.images import load_image

    def png(colour):
        out = io.BytesIO()
        Image.new("RGB", (32, 24), colour).save(out, format="PNG")
        return {"bytes": out.getvalue(), "path": None}

    path = tmp_path / "test.parquet"
    pq.write_table(pa.table({"id": ["a", "b"], "picture": [png("red"), png("blue")], "query": ["q", "q"],
                             "answers": [["x"], ["y"]]}), path)
    options = dataset_options({"task": "text", "image_column": "picture", "question_column": "query",
                               "answer_column": "answers", "dataset": str(path)})
    images = image_paths(str(path), options=options)
    assert sorted(images) == ["a", "b"]
    assert load_image(images["b"]).getpixel((3, 3)) == (0, 0, 255)
    assert image_paths(str(path)) == {}  # without the run's column options the dataset does not open
