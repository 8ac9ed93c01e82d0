"""The shadow A/B of `pilot serve`: live requests answered by the served arm, each sampled one also run through the
baseline while the server is idle, both answers stored as a pilot run (SQLite and PostgreSQL) that `pilot report`
and `pilot plan` read; shadow work yields to live requests; `--from-study` serves a study's verified arm."""

from __future__ import annotations

import base64
import json
import threading
import time
from dataclasses import replace
from pathlib import Path

import openai
import pytest
import torch
from sqlalchemy import select

from pilot.cli import main
from pilot.data.manifest import load_manifest
from pilot.data.synthetic import CAPTION_QUESTION
from pilot.generation import generate_batch, prepare_batch, run_arm_batch
from pilot.serve.batcher import Preempted, preemptible
from pilot.serve.runtime import Runtime
from pilot.serve.server import resolve_arm, running, serve
from pilot.serve.settings import ServeSettings
from pilot.serve.shadow import LIVE_MANIFEST
from pilot.store import models as db
from pilot.store import open_store

RECOMMENDED = "transprune:prune_after=4/6/9,keep=0.7756/0.7723/0.7572,accumulate_from=2,alpha=0.945,positions=original"
KEY = "shadow-test-key"
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def items(manifest):
    return list(load_manifest(manifest).items)


def messages(item, question: str | None = None) -> list[dict]:
    url = "data:image/png;base64," + base64.b64encode(item.image.read_bytes()).decode()
    return [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}},
                                         {"type": "text", "text": question or item.question}]}]


def settled(rt: Runtime, timeout_s: float = 60.0) -> int:
    deadline = time.monotonic() + timeout_s
    shadow = rt.shadow
    while time.monotonic() < deadline and not (
            rt.batcher.idle and shadow.pending == 0 and shadow.computed == shadow.sampled == shadow.writer.stored):
        time.sleep(0.05)
    return shadow.writer.stored


def test_shadow_pairs_are_stored_as_a_pilot_run(demo, items, fresh_db_url, capsys):
    settings = ServeSettings(arm=RECOMMENDED, shadow="baseline", shadow_rate=1.0, db=fresh_db_url, port=0,
                             max_wait_ms=5.0, shadow_flush_s=0.1, shadow_summary_every=3, run_name="live-test")
    settings.validate()
    rt = Runtime(settings, demo, RECOMMENDED)
    asked = [(item, question) for item in items[:3] for question in (None, CAPTION_QUESTION)]
    replies = {}
    with running(rt, KEY) as base_url:
        api = openai.OpenAI(api_key=KEY, base_url=base_url, max_retries=0, timeout=60)
        for item, question in asked:
            reply = api.chat.completions.create(model="demo", messages=messages(item, question))
            replies[reply.id] = (item, question, reply.choices[0].message.content)
        assert settled(rt) == len(asked)
    # Leaving the block stopped the server: the run is completed with its summaries.
    sessions = open_store(fresh_db_url)
    with sessions() as session:
        run = session.scalar(select(db.Run).where(db.Run.name == "live-test"))
        assert run.status == "completed" and run.finished_at is not None
        assert run.dataset.name == f"live:demo:{RECOMMENDED}" and run.dataset.manifest_path == LIVE_MANIFEST
        assert run.dataset.size == len(asked) and run.dataset.labels == []
        assert [arm.strategy for arm in run.arms] == ["baseline", RECOMMENDED]
        assert run.settings["serve"]["shadow_rate"] == 1.0 and run.settings["task"] == "text"
        rows = {arm.strategy: {r.sample_id: r for r in arm.results} for arm in run.arms}
        assert set(rows["baseline"]) == set(rows[RECOMMENDED]) == set(replies)  # paired by request id
        assert all(arm.summary is not None for arm in run.arms)
        for request_id, (item, question, text) in replies.items():
            served, shadow = rows[RECOMMENDED][request_id], rows["baseline"][request_id]
            assert served.answer_text == text  # what the client got
            # The shadow's answer is the baseline's answer to the same request, as a pilot run gives it.
            asked_item = item if question is None else replace(item, question=question)
            prepared = prepare_batch(demo, [asked_item], CPU, torch.float32)
            assert shadow.answer_text == run_arm_batch(demo, "baseline", prepared, [], 256, CPU)[0]["answer_text"]
            for row in (served, shadow):  # every field `pilot run` stores
                assert row.task == "text" and row.references is None and row.error is None
                assert row.ttft_ms > 0 and row.total_ms > 0 and row.output_tokens >= 2
                assert row.paper_tflops > 0 and row.full_tflops > row.paper_tflops and row.kv_cache_bytes > 0
                assert row.finish_reason == "stop" and row.utf8_valid and row.worker_id is not None
            assert shadow.visual_tokens_kept == 196 and served.visual_tokens_kept == 148
            assert served.paper_tflops < shadow.paper_tflops and served.kv_cache_bytes < shadow.kv_cache_bytes
        worker = session.get(db.Worker, served.worker_id)
        assert worker.outcome == "done" and worker.run_id == run.id
        run_id = run.id
    # `pilot report` and `pilot plan` read it as any label-free pilot.
    capsys.readouterr()
    assert main(["report", str(run_id), "--db", fresh_db_url, "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    vs = report["arms"][1]["vs_baseline"]
    assert vs["n_paired"] == len(asked) and 0 <= vs["agreement"] <= 1
    assert 0 <= vs["anls_vs_baseline"] <= 1 and vs["vs_baseline_n"] == len(asked)
    assert vs["paper_tflops_ratio"] == pytest.approx(0.82, abs=0.01)  # the README's x0.82 for this schedule
    assert main(["plan", "live-test", "--db", fresh_db_url, "--metric", "anls_vs_baseline", "--max-drop", "0.05",
                 "--json"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert [p["strategy"] for p in plan] == [RECOMMENDED] and plan[0]["n"] == len(asked)
    # A restart with the same --run-name continues the run.
    rt2 = Runtime(settings, demo, RECOMMENDED)
    with running(rt2, KEY) as base_url:
        assert rt2.live_run.run_id == run_id
        api = openai.OpenAI(api_key=KEY, base_url=base_url, max_retries=0, timeout=60)
        api.chat.completions.create(model="demo", messages=messages(items[4]))
        assert settled(rt2) == 1
    with sessions() as session:
        run = session.get(db.Run, run_id)
        assert run.status == "completed" and run.dataset.size == len(asked) + 1
        assert len(session.scalars(select(db.Worker).where(db.Worker.run_id == run_id)).all()) == 2
    # The same name for other arms: refused before serving.
    other = ServeSettings(arm="transprune", shadow="baseline", db=fresh_db_url, run_name="live-test", port=0)
    other.validate()
    with pytest.raises(ValueError, match="pick another name"):
        Runtime(other, demo, "transprune")


def test_the_dashboard_shows_live_traffic_like_any_pilot(demo, items, tmp_path, monkeypatch):
    """The dashboard lands on the live run and shows the pruned arm against the baseline, label-free."""
    from streamlit.testing.v1 import AppTest

    from dashboard import data

    url = f"sqlite:///{tmp_path / 'live.db'}"
    settings = ServeSettings(arm=RECOMMENDED, shadow="baseline", shadow_rate=1.0, db=url, port=0,
                             shadow_flush_s=0.1)
    settings.validate()
    rt = Runtime(settings, demo, RECOMMENDED)
    with running(rt, KEY) as base_url:
        api = openai.OpenAI(api_key=KEY, base_url=base_url, max_retries=0, timeout=60)
        for item in items[:4]:
            api.chat.completions.create(model="demo", messages=messages(item, CAPTION_QUESTION))
        assert settled(rt) == 4
    monkeypatch.setenv("PILOT_DB", url)
    at = AppTest.from_file(str(Path(data.__file__).parent / "app.py"), default_timeout=60).run()
    assert not at.exception, [e.value for e in at.exception]
    page = "\n".join(str(e.value) for kind in ("markdown", "caption", "success", "warning", "error", "info", "title",
                                               "header", "subheader") for e in getattr(at, kind))
    assert rt.live_run.name in page or f"live:demo:{RECOMMENDED}" in page
    assert "Worst-hit answers" in [t.label for t in at.tabs]


def test_a_shadow_batch_yields_to_a_live_request(demo, items):
    """A shadow batch stops at the first layer it enters once a live request waits, and the model is left as it was:
    the next generation answers exactly as before."""
    prepared = prepare_batch(demo, items[:2], CPU, torch.float32)
    before = generate_batch(demo, "baseline", prepared.inputs, [8, 8], CPU).texts
    calls = []

    def live_request_after_10_layers() -> bool:
        calls.append(1)
        return len(calls) > 10  # inside the prefill: the vision tower's 4 layers, then 6 of the LM's 12

    with pytest.raises(Preempted), preemptible(demo.model, live_request_after_10_layers):
        generate_batch(demo, RECOMMENDED, prepared.inputs, [8, 8], CPU)
    assert len(calls) == 11
    assert generate_batch(demo, "baseline", prepared.inputs, [8, 8], CPU).texts == before
    assert generate_batch(demo, RECOMMENDED, prepared.inputs, [8, 8], CPU).texts == \
        [r["answer_text"] for r in run_arm_batch(demo, RECOMMENDED, prepared, [], 8, CPU)]


def test_shadow_work_waits_while_live_requests_come(demo, items, tmp_path):
    """Live requests back to back keep the shadow arm off the model (it runs in the gaps, stopped when a request
    arrives); each sampled request still gets its shadow answer once traffic pauses."""
    settings = ServeSettings(arm=RECOMMENDED, shadow="baseline", shadow_rate=1.0, db=str(tmp_path / "s.db"), port=0,
                             max_wait_ms=0.0, shadow_flush_s=0.1)
    settings.validate()
    rt = Runtime(settings, demo, RECOMMENDED)
    with running(rt, KEY) as base_url:
        stop = threading.Event()
        answered = []

        def client():
            api = openai.OpenAI(api_key=KEY, base_url=base_url, max_retries=0, timeout=60)
            for _ in range(15):
                if stop.is_set():
                    break
                api.chat.completions.create(model="demo", messages=messages(items[0]))
                answered.append(1)

        threads = [threading.Thread(target=client) for _ in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(120)
        # With two clients there is always a request waiting: shadow batches that started in a gap were stopped.
        computed_under_load = rt.shadow.computed
        assert computed_under_load < len(answered)
        assert settled(rt) == len(answered) == 30
    # Each stop is measured from the live request's arrival: a layer's time, not a shadow batch's.
    value = rt.metrics.registry.get_sample_value
    stopped = value("pilot_serve_shadow_preempted_total")
    assert value("pilot_serve_shadow_yield_seconds_count") == stopped
    assert value("pilot_serve_shadow_yield_seconds_bucket", {"le": "0.1"}) == stopped


def test_from_study_serves_the_verified_recommendation(demo, tmp_path, capsys, monkeypatch):
    url = f"sqlite:///{tmp_path / 'study.db'}"
    sessions = open_store(url)
    with sessions() as session:
        model = db.ModelRecord(name="demo", path=str(demo.path), config_sha256=demo.config_hash,
                               model_class=demo.model_class)
        other = db.ModelRecord(name="/models/other", path="/models/other", config_sha256="0" * 64,
                               model_class=demo.model_class)
        dataset = db.Dataset(name="demo", manifest_path="m.csv", manifest_sha256="1" * 64, size=10, labels=["yes"])
        runs = [db.Run(name=f"verify-{i}", dataset=dataset, model=m, settings={}, settings_sha256="2" * 64,
                       machine={}, status="completed") for i, m in enumerate((model, other))]
        session.add_all(runs)
        session.flush()
        session.add_all([
            db.TuningStudy(name="june", optuna_study_name="june", settings={"model": "demo"},
                           verification_run_id=runs[0].id, recommended_strategy=RECOMMENDED),
            db.TuningStudy(name="unverified", optuna_study_name="unverified", settings={"model": "demo"}),
            db.TuningStudy(name="elsewhere", optuna_study_name="elsewhere", settings={"model": "demo"},
                           verification_run_id=runs[1].id, recommended_strategy=RECOMMENDED)])
        session.commit()
    settings = ServeSettings(from_study="june", db=url, port=0)
    settings.validate()
    assert resolve_arm(settings) == (RECOMMENDED, "demo", demo.config_hash)
    rt = Runtime(settings, demo, RECOMMENDED, source="study june")
    with running(rt, KEY) as base_url:
        api = openai.OpenAI(api_key=KEY, base_url=base_url, max_retries=0, timeout=60)
        assert api.models.retrieve("demo").arm == RECOMMENDED
    # A study without a verified recommendation, an unknown study, a study verified on another model: clear errors.
    monkeypatch.setenv("PILOT_API_KEY", KEY)
    for study, words in [("unverified", "no verified recommendation"), ("nope", "no such study"),
                         ("elsewhere", "verified on another model")]:
        assert main(["serve", "--from-study", study, "--db", url, "--port", "0"]) == 2
        assert words in capsys.readouterr().err, study
    with pytest.raises(ValueError, match="verified on another model"):
        serve(ServeSettings(from_study="elsewhere", db=url, port=0))


@pytest.mark.parametrize("args, words", [
    (["--arm", "baseline"], "--api-key"),
    (["--arm", "baseline", "--from-study", "x", "--api-key", "k"], "--arm SPEC"),
    (["--api-key", "k"], "--arm SPEC"),
    (["--arm", "nonsense:x=1", "--api-key", "k"], "nonsense"),
    (["--arm", "baseline", "--shadow", "baseline", "--api-key", "k"], "the same as the served arm"),
    (["--arm", "fastv:after=2,keep=0.5", "--shadow", "transprune", "--api-key", "k"], "must be baseline"),
    (["--arm", "transprune", "--shadow", "baseline", "--shadow-rate", "0", "--api-key", "k"], "--shadow-rate"),
    (["--arm", "transprune:prune_after=20/30/40,keep=0.5/0.4/0.3", "--api-key", "k"], "40"),
])
def test_serve_refuses_bad_settings_before_listening(args, words, capsys, monkeypatch, tmp_path):
    monkeypatch.delenv("PILOT_API_KEY", raising=False)
    assert main(["serve", "--port", "0", "--db", str(tmp_path / "x.db"), *args]) == 2
    assert words in capsys.readouterr().err
