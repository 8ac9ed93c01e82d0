"""The runner: A/B replay into the store, bad data, kill -9 and resume, JSON output, both databases."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
import sqlalchemy.exc
from sqlalchemy import create_engine, func, select

from pilot import runner
from pilot.cli import main
from pilot.data import synthetic
from pilot.report import format_report
from pilot.runner import RunError, RunSettings, execute
from pilot.store import models as db
from pilot.store import normalise_url, open_store

ARMS = ["baseline", "transprune:prune_after=1/2,keep=0.5/0.25", "fastv:after=1,keep=0.5"]


def settings(checkpoint, manifest, **kw):
    return RunSettings(model=str(checkpoint), dataset=str(manifest), arms=list(ARMS), batch_size=3,
                       labels=list(synthetic.LABELS), max_new_tokens=2, **kw)


def result_counts(url):
    engine = create_engine(normalise_url(url))
    with engine.connect() as connection:
        rows = connection.execute(select(db.SampleResult.arm_id, db.SampleResult.sample_id, func.count())
                                  .group_by(db.SampleResult.arm_id, db.SampleResult.sample_id)).all()
    engine.dispose()
    return rows


def test_run_stores_every_arm_and_sample_once(checkpoint, manifest, tmp_path):
    url = f"sqlite:///{tmp_path / 'p.db'}"
    report = execute(settings(checkpoint, manifest), db_url=url, progress=False)
    assert report["status"] == "completed"
    assert [arm["name"] for arm in report["arms"]] == ARMS
    for arm in report["arms"]:
        assert arm["n"] == 8 and arm["errors"] == 0
    pruned = report["arms"][1]
    assert pruned["visual_tokens_kept"] == 49  # 196 x 0.25
    assert pruned["vs_baseline"]["paper_tflops_ratio"] < 0.5
    assert len(pruned["vs_baseline"]["f1_delta_ci"]) == 2
    rows = result_counts(url)
    assert len(rows) == 3 * 8 and all(count == 1 for *_, count in rows)
    sessions = open_store(url)
    with sessions() as session:
        result = session.scalars(select(db.SampleResult).where(db.SampleResult.arm_id == 2)).first()
        assert len(result.kept_indices) == 2 and len(result.kept_indices[1]) == 49
        assert result.tokens_per_layer == [196, 98, 49, 49]
        assert result.prefill_ms > 0 and result.total_ms >= result.prefill_ms


def test_bad_images_are_recorded_and_the_run_goes_on(checkpoint, manifest, tmp_path):
    folder = manifest.parent
    bad = tmp_path / "bad"
    bad.mkdir()
    shutil.copytree(folder / "images", bad / "images")  # a link out of the folder would be refused
    (bad / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    png = (folder / "images").glob("*.png").__next__().read_bytes()
    (bad / "truncated.png").write_bytes(png[: len(png) // 2])
    lines = manifest.read_text().splitlines()
    lines += ["x1,missing.png,hole,What defect is in the top-left quarter?",
              "x2,corrupt.jpg,hole,What defect is in the top-left quarter?",
              "x3,truncated.png,no,Is there a hole in the top-left quarter?"]
    (bad / "manifest.csv").write_text("\n".join(lines) + "\n")
    url = f"sqlite:///{tmp_path / 'p.db'}"
    run_settings = settings(checkpoint, bad / "manifest.csv")
    run_settings.max_error_rate = 0.5
    report = execute(run_settings, db_url=url, progress=False)
    for arm in report["arms"]:
        assert arm["n"] == 8 and arm["errors"] == 3
    sessions = open_store(url)
    with sessions() as session:
        errors = {r.sample_id: r.error for r in session.scalars(
            select(db.SampleResult).where(db.SampleResult.error.is_not(None), db.SampleResult.arm_id == 1))}
    assert set(errors) == {"x1", "x2", "x3"}
    assert "missing.png" in errors["x1"] and "corrupt.jpg" in errors["x2"] and "truncated.png" in errors["x3"]
    # The messages themselves reach the report (it said only "errors 3"), by message with their counts and arms.
    assert report["n_errors"] == 9 and len(report["errors"]) == 3
    missing = next(entry for entry in report["errors"] if "missing.png" in entry["message"])
    assert missing["count"] == 3 and missing["arms"] == ARMS and missing["sample_ids"] == ["x1"]
    text = format_report(report)
    assert "Errors: 9 failed results" in text and errors["x2"] in text


def test_too_many_errors_stop_the_run_and_keep_results(checkpoint, manifest, tmp_path):
    folder = tmp_path / "broken"
    folder.mkdir()
    rows = ["id,image,label,question"] + [f"b{i},nope{i}.png,hole,Count the holes." for i in range(30)]
    (folder / "manifest.csv").write_text("\n".join(rows) + "\n")
    url = f"sqlite:///{tmp_path / 'p.db'}"
    with pytest.raises(RunError, match="failed"):
        execute(settings(checkpoint, folder / "manifest.csv"), db_url=url, progress=False)
    sessions = open_store(url)
    with sessions() as session:
        run = session.scalars(select(db.Run)).one()
        assert run.status == "failed" and "failed" in run.error
        assert session.scalar(select(func.count()).select_from(db.SampleResult)) > 0


def test_database_hiccup_is_retried(checkpoint, manifest, tmp_path, monkeypatch):
    calls = {"n": 0}
    original = runner._commit_rows

    def flaky(sessions, arm_id, rows):
        calls["n"] += 1
        if calls["n"] == 2:
            raise sqlalchemy.exc.OperationalError("INSERT", {}, Exception("server closed the connection"))
        return original(sessions, arm_id, rows)

    monkeypatch.setattr(runner, "_commit_rows", flaky)
    url = f"sqlite:///{tmp_path / 'p.db'}"
    report = execute(settings(checkpoint, manifest, limit=3), db_url=url, progress=False)
    assert all(arm["n"] == 3 for arm in report["arms"])
    assert all(count == 1 for *_, count in result_counts(url))


def _cli(checkpoint, manifest, url, *extra):
    return [sys.executable, "-m", "pilot.cli", "run", "--model", str(checkpoint), "--dataset", str(manifest),
            "--arm", ARMS[0], "--arm", ARMS[1], "--batch-size", "1", "--labels", ",".join(synthetic.LABELS),
            "--db", url, *extra]


def _wait_for_results(url, at_least, process, timeout=120):
    deadline = time.time() + timeout
    while time.time() < deadline:
        assert process.poll() is None, process.communicate()[1][-2000:]
        try:
            if len(result_counts(url)) >= at_least:
                return
        except sqlalchemy.exc.OperationalError:
            pass
        time.sleep(0.2)
    raise AssertionError("no results appeared")


# Samples in the interrupted runs: the run must still be going when the test stops it (with 8
# samples it sometimes finished first, and the tests failed about one time in three).
LONG_RUN = 96


@pytest.fixture(scope="module")
def long_manifest(tmp_path_factory):
    return synthetic.write_dataset(tmp_path_factory.mktemp("long"), LONG_RUN, seed=5)


def test_kill_9_then_rerun_finishes_with_exactly_one_result_each(checkpoint, long_manifest, tmp_path):
    url = f"sqlite:///{tmp_path / 'p.db'}"
    process = subprocess.Popen(_cli(checkpoint, long_manifest, url), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True)
    _wait_for_results(url, 3, process)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    partial = len(result_counts(url))
    assert 3 <= partial < 2 * LONG_RUN
    rerun = subprocess.run(_cli(checkpoint, long_manifest, url, "--json"), capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    report = json.loads(rerun.stdout)
    assert report["status"] == "completed" and report["run_id"] == 1  # the same run, resumed
    rows = result_counts(url)
    assert len(rows) == 2 * LONG_RUN and all(count == 1 for *_, count in rows)


def test_ctrl_c_marks_the_run_interrupted_and_resume_finishes(checkpoint, long_manifest, tmp_path):
    url = f"sqlite:///{tmp_path / 'p.db'}"
    process = subprocess.Popen(_cli(checkpoint, long_manifest, url, "--name", "pilot-a"), stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    _wait_for_results(url, 2, process)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 130, stderr[-2000:]
    assert "pilot run --resume 1" in stderr
    sessions = open_store(url)
    with sessions() as session:
        assert session.get(db.Run, 1).status == "interrupted"
    assert main(["run", "--resume", "pilot-a", "--db", url, "--json"]) == 0
    with sessions() as session:
        assert session.get(db.Run, 1).status == "completed"
    assert len(result_counts(url)) == 2 * LONG_RUN


def test_sigterm_marks_the_run_interrupted_like_ctrl_c(checkpoint, long_manifest, tmp_path):
    """What kill, Slurm and Kubernetes send: the run was left "running"; now it is interrupted and resumable."""
    url = f"sqlite:///{tmp_path / 'p.db'}"
    process = subprocess.Popen(_cli(checkpoint, long_manifest, url, "--name", "pilot-t"), stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    _wait_for_results(url, 2, process)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 128 + signal.SIGTERM, stderr[-2000:]
    assert "pilot run --resume 1" in stderr
    sessions = open_store(url)
    with sessions() as session:
        run = session.get(db.Run, 1)
        assert (run.status, run.error) == ("interrupted", "stopped by SIGTERM")
        assert {w.outcome for w in session.scalars(select(db.Worker))} == {"interrupted"}


def test_sigterm_stops_pilot_tune_as_ctrl_c_does(checkpoint, long_manifest, tmp_path):
    url = f"sqlite:///{tmp_path / 't.db'}"
    process = subprocess.Popen([sys.executable, "-m", "pilot.cli", "tune", "--model", str(checkpoint), "--dataset",
                                str(long_manifest), "--labels", ",".join(synthetic.LABELS), "--batch-size", "1",
                                "--trials", "50", "--db", url], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True)
    _wait_for_results(url, 2, process)  # the tuning split's baseline run is under way
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 128 + signal.SIGTERM, stderr[-2000:]
    assert "rerun the same command to resume the study" in stderr
    with open_store(url)() as session:
        assert session.scalars(select(db.Run)).one().status == "interrupted"


def _dataset_copy(manifest, folder):
    shutil.copytree(manifest.parent, folder)
    return folder / manifest.name


def test_changed_data_is_a_new_run_and_a_named_run_on_it_is_refused(checkpoint, manifest, tmp_path):
    """Fix the data and rerun: the rerun resumed the old run and kept its errors, mixing two versions of the data."""
    copy = _dataset_copy(manifest, tmp_path / "data")
    images = sorted((tmp_path / "data" / "images").glob("*.png"))
    good = [image.read_bytes() for image in images[:4]]
    for image in images[:4]:
        image.write_bytes(b"not an image")
    url = f"sqlite:///{tmp_path / 'p.db'}"
    run_settings = settings(checkpoint, copy)
    run_settings.max_error_rate = 0.1
    with pytest.raises(RunError, match="failed"):  # 12 of 24 results failed
        execute(run_settings, db_url=url, progress=False)
    for image, data in zip(images, good, strict=False):
        image.write_bytes(data)
    report = execute(settings(checkpoint, copy, max_error_rate=0.1), db_url=url, progress=False)
    assert report["run_id"] == 2 and report["status"] == "completed"  # a new run on the new data
    assert all(arm["n"] == 8 and arm["errors"] == 0 for arm in report["arms"]) and report["n_errors"] == 0
    with pytest.raises(RunError, match="read other data"):
        execute(settings(checkpoint, copy, max_error_rate=0.1), db_url=url, progress=False, resume="1")
    images[5].write_bytes(images[5].read_bytes() + b"\0")  # one more byte: another version again
    with pytest.raises(RunError, match="read other data"):
        execute(settings(checkpoint, copy, max_error_rate=0.1), db_url=url, progress=False, name=report["name"])


def test_rerunning_retries_the_samples_that_failed(checkpoint, manifest, tmp_path, fresh_db_url):
    """The same data again (a passing fault: here a file unreadable for a while, its size and time restored)."""
    copy = _dataset_copy(manifest, tmp_path / "data")
    image = sorted((tmp_path / "data" / "images").glob("*.png"))[2]
    data, stat = image.read_bytes(), image.stat()
    image.write_bytes(b"\0" * len(data))
    os.utime(image, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    url = fresh_db_url
    first = execute(settings(checkpoint, copy, max_error_rate=0.5), db_url=url, progress=False, name="pilot-r")
    assert first["n_errors"] == 3 and all(arm["n"] == 7 for arm in first["arms"])
    image.write_bytes(data)
    os.utime(image, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    again = execute(settings(checkpoint, copy, max_error_rate=0.5), db_url=url, progress=False, name="pilot-r")
    assert again["run_id"] == first["run_id"] and again["status"] == "completed"
    assert again["n_errors"] == 0 and all(arm["n"] == 8 and arm["errors"] == 0 for arm in again["arms"])
    rows = result_counts(url)
    assert len(rows) == 3 * 8 and all(count == 1 for *_, count in rows)  # replaced under (arm, sample), none lost


def test_json_outputs_and_study_file(checkpoint, manifest, tmp_path, capsys):
    url = f"sqlite:///{tmp_path / 'p.db'}"
    study = tmp_path / "study.yaml"
    study.write_text(f"model: {checkpoint}\ndataset: {manifest}\narms: [baseline, 'pool:factor=2']\n"
                     f"batch_size: 4\nlimit: 8\nlabels: {list(synthetic.LABELS)}\nname: from-yaml\n")
    assert main(["run", str(study), "--limit", "4", "--db", url, "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["name"] == "from-yaml" and {"run_id", "status", "arms"} <= set(report)
    keys = {"name", "strategy", "n", "errors", "invalid", "accuracy", "f1_macro", "prefill_ms_p50", "total_ms_p50",
            "paper_tflops", "full_tflops", "visual_tokens_kept", "vs_baseline"}
    for arm in report["arms"]:
        assert keys <= set(arm) and arm["n"] == 4  # the flag overrode the file's limit
    assert {"f1_delta", "f1_delta_ci", "accuracy_delta", "mcnemar_p", "agreement", "paper_tflops_ratio",
            "prefill_ratio"} <= set(report["arms"][1]["vs_baseline"])
    assert report["arms"][1]["visual_tokens_kept"] == 49  # 14x14 pooled to 7x7
    assert main(["runs", "--db", url, "--json"]) == 0
    runs = json.loads(capsys.readouterr().out)
    assert [{k: r[k] for k in ("run_id", "name", "status")} for r in runs] == [
        {"run_id": 1, "name": "from-yaml", "status": "completed"}]
    assert "created_at" in runs[0]
    assert main(["report", "from-yaml", "--db", url]) == 0
    assert "pool:factor=2" in capsys.readouterr().out


def test_bad_settings_are_refused_before_any_work(checkpoint, manifest, tmp_path, capsys):
    url = f"sqlite:///{tmp_path / 'p.db'}"
    assert main(["run", "--model", str(checkpoint), "--dataset", str(manifest), "--arm", "fastv:after=9,keep=0.5",
                 "--db", url]) == 2
    assert "beyond a 4-layer model" in capsys.readouterr().err
    assert main(["run", "--arm", "sparsevlm", "--db", url]) == 2
    assert "unknown strategy" in capsys.readouterr().err
    assert main(["report", "99", "--db", url]) == 2
    assert "no run '99'" in capsys.readouterr().err


def test_sqlite_and_postgresql_give_the_same_summaries(checkpoint, manifest, tmp_path, postgres_url):
    reports = []
    for url in (f"sqlite:///{tmp_path / 'p.db'}", postgres_url()):
        reports.append(execute(settings(checkpoint, manifest, limit=6), db_url=url, progress=False))
    timing = ("prefill", "total", "latency", "ratio", "ttft", "tpot")  # measured times differ run to run
    def strip(arm):
        kept = {k: v for k, v in arm.items() if not any(t in k for t in timing) and k != "vs_baseline"}
        if arm["vs_baseline"]:
            kept["vs"] = {k: v for k, v in arm["vs_baseline"].items() if not any(t in k for t in timing)}
        return kept
    assert [strip(a) for a in reports[0]["arms"]] == [strip(a) for a in reports[1]["arms"]]

