"""Blind review (pilot.review): tasks from a run, personal tokens, judgements, imports, the report's review key.

The store is built with the ORM: a completed open-ended run, a baseline and one pruned arm over CHANGED samples
whose answers differ and EQUAL samples whose answers are the same, with a manifest of small PNG images.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from PIL import Image
from sqlalchemy import func, select

from pilot.cli import main
from pilot.review import review_summary
from pilot.review.exchange import LABEL_STUDIO_CONFIG
from pilot.review.stats import sample_size
from pilot.review.tasks import ReviewError, create_tasks, invite, record, reviewer_for_token, revoke, task_view
from pilot.store import Arm, Dataset, ModelRecord, Run, SampleResult, open_store
from pilot.store import models as db

PRUNED = "transprune:positions=original"
CHANGED = 12
EQUAL = 8


def build_review_store(folder: Path, url: str | None = None, changed: int = CHANGED, equal: int = EQUAL) -> dict:
    """A completed run (baseline and PRUNED) over ``changed + equal`` text samples; returns url and ids."""
    url = url or f"sqlite:///{folder / 'pilot.db'}"
    manifest = folder / "data" / "manifest.csv"
    manifest.parent.mkdir(parents=True, exist_ok=True)
    ids = [f"q{i:02d}" for i in range(changed + equal)]
    with manifest.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id", "image", "task", "question", "answer"])
        for i, sample_id in enumerate(ids):
            Image.new("RGB", (48, 48), (20 * i % 255, 90, 160)).save(manifest.parent / f"{sample_id}.png")
            writer.writerow([sample_id, f"{sample_id}.png", "text", f"What is written on part {i}?", f"part {i}"])
    sessions = open_store(url)
    with sessions() as session:
        dataset = Dataset(name="review", manifest_path=str(manifest), manifest_sha256="0" * 64, size=len(ids),
                          labels=[])
        model = ModelRecord(name="demo", path="/nowhere", config_sha256="0" * 64, model_class="Llava")
        run = Run(name=f"review-run-{folder.name}", dataset=dataset, model=model, status="completed",
                  settings={"batch_size": 1, "arms": ["baseline", PRUNED], "dataset": str(manifest)},
                  settings_sha256="1" * 64, machine={"cpu": "test"})
        session.add(run)
        session.flush()
        arms = [Arm(run_id=run.id, name=name, strategy=name, position=i) for i, name in enumerate(["baseline", PRUNED])]
        session.add_all(arms)
        session.flush()
        for arm in arms:
            for i, sample_id in enumerate(ids):
                answer = f"part {i}"
                if arm.strategy != "baseline" and i < changed:
                    answer = f"Part number {i + 100}"
                session.add(SampleResult(arm_id=arm.id, sample_id=sample_id, label="", prediction=answer,
                                         answer_text=answer, task="text", references=[f"part {i}"], batch_size=1))
        session.commit()
        run_id, arm_ids = run.id, [a.id for a in arms]
    sessions.kw["bind"].dispose()
    return {"url": url, "run_id": run_id, "baseline_id": arm_ids[0], "pruned_id": arm_ids[1], "manifest": manifest}


@pytest.fixture
def store(tmp_path) -> dict:
    return build_review_store(tmp_path)


def _session(url: str):
    return open_store(url)()


def test_tasks_cover_changed_pairs_blind_with_checks(store):
    with _session(store["url"]) as session:
        run = session.get(Run, store["run_id"])
        created = create_tasks(session, run, overlap=3, checks=0.25, seed=1)
        session.commit()
        tasks = session.scalars(select(db.ReviewTask)).all()
        again = create_tasks(session, run, overlap=3, checks=0.25, seed=1)
        views = [task_view(session, t) for t in tasks]
    assert created[PRUNED] == {"pairs": 20, "changed": CHANGED, "strata": 1, "tasks": CHANGED, "checks": 3}
    assert again[PRUNED]["tasks"] == 0 and again[PRUNED]["checks"] == 0  # a second call adds only what is missing
    changed = [t for t in tasks if t.kind == "changed"]
    assert sorted(int(t.sample_id[1:]) for t in changed) == list(range(CHANGED))
    assert all(int(t.sample_id[1:]) >= CHANGED for t in tasks if t.kind == "check")
    assert {t.pruned_side for t in tasks} == {"A", "B"} and all(t.overlap == 3 for t in tasks)
    assert [t.kind for t in sorted(tasks, key=lambda t: t.id)] != sorted(t.kind for t in tasks)  # ids shuffled
    for task, view in zip(tasks, views, strict=True):
        pruned, base = (view["answer_a"], view["answer_b"]) if task.pruned_side == "A" else \
            (view["answer_b"], view["answer_a"])
        i = int(task.sample_id[1:])
        assert base == f"part {i}" and pruned == (f"Part number {i + 100}" if task.kind == "changed" else base)
        assert view["question"] == f"What is written on part {i}?" and view["references"] == [f"part {i}"]
        assert not any(word in json.dumps(view) for word in ("baseline", "transprune", "tflops", "kept"))


def test_precision_sample_size_and_stratified_weights(tmp_path):
    assert sample_size(0.05, 10**9) == 385  # 1.96^2 / (4 * 0.05^2)
    assert sample_size(0.05, 100) == 80  # finite population: 384.1 / (1 + 383.1 / 100)
    assert sample_size(0.1, 30) == 24 and sample_size(0.05, 0) == 0
    with pytest.raises(ValueError, match="precision"):
        sample_size(0.7, 10)
    store = build_review_store(tmp_path, changed=40, equal=2)
    with _session(store["url"]) as session:
        for result in session.scalars(select(SampleResult)):  # two slices: 30 text rows, 12 json rows
            result.task = "json" if int(result.sample_id[1:]) % 4 == 0 else "text"
        session.commit()
        run = session.get(Run, store["run_id"])
        created = create_tasks(session, run, precision=0.2, checks=0)
        tasks = session.scalars(select(db.ReviewTask)).all()
    assert created[PRUNED]["strata"] == 2 and created[PRUNED]["tasks"] == sample_size(0.2, 40) == 16 == len(tasks)
    by_stratum = {name: [t for t in tasks if t.stratum == name] for name in ("text", "json")}
    assert [len(by_stratum["text"]), len(by_stratum["json"])] == [12, 4]  # 16 in proportion to 30 and 10
    for name, size in (("text", 30), ("json", 10)):  # each weighted back to its slice's size
        assert sum(t.weight for t in by_stratum[name]) == pytest.approx(size)


def test_tokens_are_hashed_revocable_and_replaced_by_a_new_invitation(store):
    with _session(store["url"]) as session:
        token = invite(session, "ana")
        session.commit()
        stored = session.scalar(select(db.Reviewer).where(db.Reviewer.name == "ana"))
        assert token not in json.dumps([stored.token_sha256, stored.name]) and len(stored.token_sha256) == 64
        assert reviewer_for_token(session, token).name == "ana"
        with pytest.raises(ReviewError, match="not valid"):
            reviewer_for_token(session, token + "x")
        with pytest.raises(ReviewError, match="needs a personal review link"):
            reviewer_for_token(session, None)
        revoke(session, "ana")
        session.commit()
        with pytest.raises(ReviewError, match="revoked"):
            reviewer_for_token(session, token)
        newer = invite(session, "ana")
        assert reviewer_for_token(session, newer).name == "ana"
        with pytest.raises(ReviewError, match="not valid"):
            reviewer_for_token(session, token)
        with pytest.raises(ReviewError, match="no reviewer 'bo'"):
            revoke(session, "bo")


def test_judging_twice_keeps_both_and_the_later_stands(store):
    with _session(store["url"]) as session:
        run = session.get(Run, store["run_id"])
        create_tasks(session, run, checks=0)
        reviewer = reviewer_for_token(session, invite(session, "ana"))
        task = session.scalars(select(db.ReviewTask).order_by(db.ReviewTask.id)).first()
        base_side = "B" if task.pruned_side == "A" else "A"
        assert record(session, task.id, reviewer, task.pruned_side) == "added"
        assert record(session, task.id, reviewer, base_side, comment=" worse after all ") == "replaced"
        with pytest.raises(ReviewError, match="'C' is not one of A, B, tie, both_wrong"):
            record(session, task.id, reviewer, "C")
        with pytest.raises(ReviewError, match="no review task 9999"):
            record(session, 9999, reviewer, "A")
        session.commit()
        summary = review_summary(session, run)
        comments = session.scalars(select(db.ReviewJudgement.comment)).all()
    arm = summary["arms"][0]
    assert summary["judgements"] == 1 and summary["judgements_in_history"] == 2
    assert comments == [None, "worse after all"]
    assert arm["pruned_worse"] == 1.0 and arm["pruned_better"] == 0.0 and arm["n_judgements"] == 1


def _jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _choices(session, run_id: int) -> list[dict]:
    """Two simulated reviewers: ana prefers the baseline's answer, bo calls every pair equal but one."""
    rows = []
    tasks = session.scalars(select(db.ReviewTask).where(db.ReviewTask.run_id == run_id).order_by(db.ReviewTask.id))
    for i, task in enumerate(tasks):
        base_side = "B" if task.pruned_side == "A" else "A"
        rows.append({"task": task.id, "reviewer": "ana", "choice": "tie" if task.kind == "check" else base_side})
        rows.append({"task": task.id, "reviewer": "bo", "choice": "both_wrong" if i == 0 else "tie"})
    return rows


def test_jsonl_import_is_idempotent_and_reports_bad_lines(store, tmp_path, capsys):
    url = store["url"]
    assert main(["review", "create", str(store["run_id"]), "--db", url]) == 0
    with _session(url) as session:
        rows = _choices(session, store["run_id"])
    bad = [{"task": 9999, "reviewer": "ana", "choice": "A"}, {"task": rows[0]["task"], "reviewer": "ana",
                                                                "choice": "maybe"}]
    path = tmp_path / "judgements.jsonl"
    _jsonl(path, rows + bad)
    path.write_text(path.read_text() + "not json\n")
    assert main(["review", "import", str(store["run_id"]), str(path), "--db", url]) == 2
    err = capsys.readouterr()
    assert f"{path}:{len(rows) + 1}: no review task 9999 of run {store['run_id']}" in err.err
    assert f"{path}:{len(rows) + 2}: choice 'maybe' is not one of A, B, tie, both_wrong" in err.err
    assert f"{path}:{len(rows) + 3}: not valid JSON" in err.err
    assert f"{len(rows)} judgements added" in err.out
    assert main(["review", "import", str(store["run_id"]), str(path), "--db", url]) == 2
    assert f"0 judgements added (0 replace an earlier one of the same reviewer), {len(rows)} already stored" in \
        capsys.readouterr().out
    with _session(url) as session:
        assert session.scalar(select(func.count()).select_from(db.ReviewJudgement)) == len(rows)
        revoke(session, "bo")
        session.commit()
    _jsonl(path, [{"task": rows[0]["task"], "reviewer": "bo", "choice": "A", "comment": "late"}])
    assert main(["review", "import", str(store["run_id"]), str(path), "--db", url]) == 2
    assert "reviewer 'bo' was revoked; their judgements are not taken" in capsys.readouterr().err


def test_label_studio_round_trip_gives_the_same_numbers_as_jsonl(tmp_path, capsys):
    stores = [build_review_store(tmp_path / name) for name in ("ls", "jsonl")]
    for store in stores:
        assert main(["review", "create", str(store["run_id"]), "--db", store["url"], "--seed", "3"]) == 0
    exported = tmp_path / "ls" / "tasks.json"
    assert main(["review", "export", str(stores[0]["run_id"]), "--format", "label-studio", "-o", str(exported),
                 "--db", stores[0]["url"]]) == 0
    tasks = json.loads(exported.read_text())
    assert exported.with_suffix(".xml").read_text() == LABEL_STUDIO_CONFIG
    with _session(stores[0]["url"]) as session:
        rows = _choices(session, stores[0]["run_id"])
        sides = {t.id: t.pruned_side for t in session.scalars(select(db.ReviewTask))}
    by_task = {task["data"]["task"]: task for task in tasks}
    assert len(tasks) == len(sides) and set(by_task) == set(sides)
    for task_id, task in by_task.items():  # the sides are shuffled in the export as in the store
        pruned = task["data"]["answer_a" if sides[task_id] == "A" else "answer_b"]
        assert task["data"]["question"].startswith("What is written") and task["data"]["image"].endswith(".png")
        assert pruned.startswith("Part number") or task["data"]["answer_a"] == task["data"]["answer_b"]
    # Filled in as Label Studio's JSON export holds it: the task with its annotations, choices by their alias.
    users = {"ana": {"id": 1, "email": "ana@example.com"}, "bo": 2}
    shown = {"A": "A", "B": "B is better", "tie": "tie", "both_wrong": "both_wrong"}
    for number, row in enumerate(rows):
        task = by_task[row["task"]]
        task.setdefault("id", 1000 + row["task"])
        task.setdefault("annotations", []).append({
            "id": 5000 + number, "completed_by": users[row["reviewer"]], "was_cancelled": False,
            "result": [{"from_name": "choice", "to_name": "answer_a", "type": "choices",
                        "value": {"choices": [shown[row["choice"]]]}}],
            "created_at": "2026-12-04T10:00:00Z", "updated_at": "2026-12-04T10:00:00Z"})
    filled = tmp_path / "ls-export.json"
    filled.write_text(json.dumps(tasks))
    assert main(["review", "import", str(stores[0]["run_id"]), str(filled), "--db", stores[0]["url"]]) == 0
    assert main(["review", "import", str(stores[0]["run_id"]), str(filled), "--db", stores[0]["url"]]) == 0
    assert f"0 judgements added (0 replace an earlier one of the same reviewer), {len(rows)} already stored" in \
        capsys.readouterr().out
    # the same judgements through JSON Lines into the twin store (same seed: the same tasks and sides)
    _jsonl(tmp_path / "same.jsonl", rows)
    assert main(["review", "import", str(stores[1]["run_id"]), str(tmp_path / "same.jsonl"),
                 "--db", stores[1]["url"]]) == 0
    capsys.readouterr()
    reports = []
    for store in stores:
        assert main(["report", str(store["run_id"]), "--db", store["url"], "--json"]) == 0
        reports.append(json.loads(capsys.readouterr().out)["review"])
    assert reports[0]["arms"] == reports[1]["arms"]
    arm = reports[0]["arms"][0]
    assert arm["pruned_worse"] == pytest.approx(0.5) and arm["equal"] == pytest.approx(11 / 24)
    assert arm["both_wrong"] == pytest.approx(1 / 24) and arm["pruned_better"] == 0.0
    for key in ("pruned_worse", "equal", "pruned_better", "both_wrong", "position_bias"):
        low, high = arm[f"{key}_ci"]
        assert low <= arm[key] <= high
    assert arm["n_judgements"] == 2 * CHANGED and arm["alpha"] is not None and arm["alpha"] < 0.2
    assert arm["worse_of_all"] == pytest.approx(CHANGED / (CHANGED + EQUAL) * 0.5)
    assert {r["reviewer"] for r in reports[0]["reviewers"]} == {"label-studio:ana@example.com", "label-studio:2"}


def test_report_shows_the_review_table(store, tmp_path, capsys):
    url = store["url"]
    assert main(["review", "create", str(store["run_id"]), "--db", url, "--checks", "0"]) == 0
    with _session(url) as session:
        rows = _choices(session, store["run_id"])
    _jsonl(tmp_path / "j.jsonl", rows)
    assert main(["review", "import", str(store["run_id"]), str(tmp_path / "j.jsonl"), "--db", url]) == 0
    capsys.readouterr()
    assert main(["report", str(store["run_id"]), "--db", url]) == 0
    text = capsys.readouterr().out
    assert "Blind review of changed answers" in text and "pruned worse" in text and "0.500 [" in text
    assert "at most 1.0% of answers worse: not met with confidence" in text
    section = text[text.index("Blind review"):].split("\n\n")
    assert max(len(line) for part in section[:2] for line in part.splitlines()) <= 120  # the report's width
    assert main(["review", "results", str(store["run_id"]), "--db", url, "--max-worse", "0.9"]) == 0
    assert "at most 90.0% of answers worse: met with confidence" in capsys.readouterr().out


def test_runs_without_review_have_a_null_review_key(store, capsys):
    assert main(["report", str(store["run_id"]), "--db", store["url"], "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["review"] is None


def test_review_on_postgresql(fresh_db_url, tmp_path, capsys):
    store = build_review_store(tmp_path, url=fresh_db_url)
    assert main(["review", "create", str(store["run_id"]), "--db", fresh_db_url]) == 0
    with _session(fresh_db_url) as session:
        rows = _choices(session, store["run_id"])
    _jsonl(tmp_path / "j.jsonl", rows)
    for _ in range(2):
        assert main(["review", "import", str(store["run_id"]), str(tmp_path / "j.jsonl"), "--db", fresh_db_url]) == 0
    capsys.readouterr()
    assert main(["review", "results", str(store["run_id"]), "--db", fresh_db_url, "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["judgements"] == len(rows) == summary["judgements_in_history"]
    assert summary["arms"][0]["pruned_worse"] == pytest.approx(0.5)


def _app(monkeypatch, url: str):
    from streamlit.testing.v1 import AppTest

    monkeypatch.setenv("PILOT_DB", url)
    return AppTest.from_file(str(Path(__file__).resolve().parents[1] / "dashboard" / "app.py"), default_timeout=60)


def test_dashboard_review_page_writes_only_with_a_valid_token(store, tmp_path, monkeypatch):
    url = store["url"]
    with _session(url) as session:
        create_tasks(session, session.get(Run, store["run_id"]), overlap=1, checks=0)
        token = invite(session, "ana")
        session.commit()

    def judgements() -> int:
        with _session(url) as session:
            return session.scalar(select(func.count()).select_from(db.ReviewJudgement))

    at = _app(monkeypatch, url)
    at.query_params["review"] = "forged"
    at.run()
    assert not at.exception and "this review link is not valid" in at.error[0].value and not at.button
    at = _app(monkeypatch, url)
    at.query_params["review"] = token
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    labels = [b.label for b in at.button]
    assert labels == ["A is better [1]", "B is better [2]", "Equally good [3]", "Both wrong [4]"]
    page = " ".join(str(m.value) for m in at.markdown)
    assert "Answer A" in page and "Answer B" in page and "baseline" not in page.lower()
    at.text_input[0].input("clearer").run()
    at.button[1].click().run()
    assert not at.exception and judgements() == 1
    assert "you judged 1; 11 open to you" in " ".join(str(c.value) for c in at.caption)
    with _session(url) as session:
        judgement = session.scalars(select(db.ReviewJudgement)).one()
        assert judgement.choice == "B" and judgement.comment == "clearer" and judgement.source == "dashboard"
    # the run view (no link) reads only and shows the results
    at = _app(monkeypatch, url)
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    assert any("Blind human review" in str(m.value) for m in at.markdown) and judgements() == 1
