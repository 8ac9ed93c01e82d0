"""Workers sharing one run: claims with row locks and a lease, kill -9, summaries once, SQLite refused, clear errors."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time

import pytest
import torch
from sqlalchemy import create_engine, func, select
from sqlalchemy.orm import sessionmaker
from sqlalchemy.pool import NullPool

import tuner.study as study_module
from pilot import runner
from pilot.cli import main
from pilot.data import synthetic
from pilot.report import format_report
from pilot.runner import RunSettings, execute
from pilot.store import models as db
from pilot.store import normalise_url, open_store, upgrade
from pilot.summaries import build_report, write_summaries
from pilot.workers import (
    Launcher,
    RunWorker,
    detect_launcher,
    finish_run,
    plan_batches,
    resolve_device,
)
from tuner.select import Candidate

ARMS = ["baseline", "transprune:prune_after=1/2,keep=0.5/0.25"]
N_SAMPLES = 48  # 24 batches of 2: enough that one worker cannot finish before the other is caught working


@pytest.fixture(scope="module")
def work_manifest(tmp_path_factory):
    return synthetic.write_dataset(tmp_path_factory.mktemp("work"), N_SAMPLES, seed=5)


@pytest.fixture
def one_thread():
    """Work in this process on one thread, as the worker processes do (two threads on this loaded 2-core machine
    made the first run several times slower)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _command(checkpoint, manifest, url, name):
    return [sys.executable, "-m", "pilot.cli", "run", "--model", str(checkpoint), "--dataset", str(manifest),
            "--arm", ARMS[0], "--arm", ARMS[1], "--batch-size", "2", "--max-new-tokens", "2",
            "--labels", ",".join(synthetic.LABELS), "--name", name, "--db", url, "--json"]


def _start(command, **env):
    # One thread each: two workers on this 2-core machine, as a GPU each would be.
    environment = {**os.environ, "OMP_NUM_THREADS": "1", **env}
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=environment)


class Store:
    """Reads the store from the test while the workers write it."""

    def __init__(self, url):
        upgrade(url)  # the tables exist before the workers start: the test polls them at once
        self.engine = create_engine(normalise_url(url), poolclass=NullPool)
        self.sessions = sessionmaker(bind=self.engine)

    def per_worker(self) -> dict[int, int]:
        """PID -> results stored, for every worker registered so far."""
        with self.sessions() as session:
            return dict(session.execute(
                select(db.Worker.pid, func.count(db.SampleResult.id))
                .outerjoin(db.SampleResult, db.SampleResult.worker_id == db.Worker.id).group_by(db.Worker.pid)).all())

    def stored_once(self) -> dict[tuple[str, str], tuple]:
        """(arm, sample) -> (prediction, answer); fails when any (arm, sample) is stored twice."""
        with self.sessions() as session:
            rows = session.execute(select(db.Arm.name, db.SampleResult.sample_id, db.SampleResult.prediction,
                                          db.SampleResult.answer_text).join(db.Arm)).all()
        out = {(arm, sample): (prediction, answer) for arm, sample, prediction, answer in rows}
        assert len(out) == len(rows), "an (arm, sample) is stored twice"
        return out

    def run(self, name):
        with self.sessions() as session:
            return session.scalars(select(db.Run).where(db.Run.name == name)).one()

    def workers(self):
        with self.sessions() as session:
            return list(session.scalars(select(db.Worker).order_by(db.Worker.id)))


def _both_working(store: Store, processes, timeout=180):
    """Wait until every worker has stored results. A worker that has results while another has none yet is paused
    (SIGSTOP) meanwhile: on this tiny model the first to load could otherwise finish before the other starts."""
    stopped = set()
    deadline = time.time() + timeout
    try:
        while time.time() < deadline:
            for process in processes:
                assert process.poll() is None, process.communicate()[1][-3000:]
            counts = store.per_worker()
            working = {pid for pid, n in counts.items() if n > 0}
            if all(process.pid in working for process in processes):
                return
            for process in processes:
                if process.pid in working and process.pid not in stopped:
                    os.kill(process.pid, signal.SIGSTOP)
                    stopped.add(process.pid)
            time.sleep(0.05)
        raise AssertionError(f"not every worker stored results in {timeout}s: {store.per_worker()}")
    finally:
        for pid in stopped:
            os.kill(pid, signal.SIGCONT)


def test_two_workers_share_a_run_and_match_one_process(checkpoint, work_manifest, postgres_url, tmp_path,
                                                       one_thread):
    url = postgres_url()
    store = Store(url)
    workers = [_start(_command(checkpoint, work_manifest, url, "shared")) for _ in range(2)]
    _both_working(store, workers)
    outputs = [worker.communicate(timeout=300) for worker in workers]
    for worker, (_, err) in zip(workers, outputs, strict=True):
        assert worker.returncode == 0, err[-3000:]
    # Summaries written once: by the worker that found no batch left.
    assert sum("wrote its summaries" in err for _, err in outputs) == 1
    report = json.loads(outputs[0][0])
    assert report["status"] == "completed" and json.loads(outputs[1][0])["run_id"] == report["run_id"]
    assert {w["worker"].rsplit("/", 1)[1] for w in report["workers"]} == {str(w.pid) for w in workers}
    assert all(w["results"] > 0 and w["host"] and w["device"] == "cpu" for w in report["workers"])
    assert sum(w["results"] for w in report["workers"]) == len(ARMS) * N_SAMPLES
    assert "latency_note" not in report  # one kind of device
    stored = store.stored_once()
    assert len(stored) == len(ARMS) * N_SAMPLES

    # The same run in one process: same samples, same answers, same F1 and accuracy.
    single = execute(RunSettings(model=str(checkpoint), dataset=str(work_manifest), arms=list(ARMS), batch_size=2,
                                 max_new_tokens=2, labels=list(synthetic.LABELS)),
                     db_url=f"sqlite:///{tmp_path / 'one.db'}", name="shared", progress=False, log=lambda m: None)
    assert Store(f"sqlite:///{tmp_path / 'one.db'}").stored_once() == stored
    for shared, alone in zip(report["arms"], single["arms"], strict=True):
        assert (shared["f1_macro"], shared["accuracy"], shared["n"]) == (alone["f1_macro"], alone["accuracy"],
                                                                         alone["n"])
    store.engine.dispose()


def test_a_killed_worker_leaves_its_batches_to_the_other(checkpoint, work_manifest, postgres_url):
    url = postgres_url()
    store = Store(url)
    victim, survivor = (_start(_command(checkpoint, work_manifest, url, "kill"), PILOT_LEASE_S="2")
                        for _ in range(2))
    _both_working(store, [victim, survivor])
    os.kill(victim.pid, signal.SIGKILL)
    victim.wait()
    assert store.run("kill").status != "completed"  # killed mid-run
    out, err = survivor.communicate(timeout=300)
    assert survivor.returncode == 0, err[-3000:]
    assert json.loads(out)["status"] == "completed"
    assert len(store.stored_once()) == len(ARMS) * N_SAMPLES
    outcome = {w.pid: w.outcome for w in store.workers()}
    assert outcome == {victim.pid: "dead", survivor.pid: "done"}
    store.engine.dispose()


def test_a_second_worker_on_sqlite_is_told_to_use_postgresql(checkpoint, work_manifest, tmp_path, capsys,
                                                              monkeypatch, one_thread):
    url = f"sqlite:///{tmp_path / 'pilot.db'}"
    store = Store(url)
    # The first worker runs in a thread of this process, held after its first batch until the second is refused.
    gate, calls, real = threading.Event(), [], runner.run_arm_batch

    def held(*args, **kwargs):
        if len(calls) == len(ARMS) * 2:  # warm-up and the first batch done: stored, and the worker still live
            gate.wait(timeout=300)
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(runner, "run_arm_batch", held)
    reports: list[dict] = []
    settings = RunSettings(model=str(checkpoint), dataset=str(work_manifest), arms=list(ARMS), batch_size=2,
                           max_new_tokens=2, labels=list(synthetic.LABELS))
    first = threading.Thread(target=lambda: reports.append(
        execute(settings, db_url=url, name="solo", progress=False, log=lambda message: None)))
    first.start()
    try:
        deadline = time.time() + 120
        while not any(store.per_worker().values()):
            assert first.is_alive() and time.time() < deadline
            time.sleep(0.05)
        assert main(_command(checkpoint, work_manifest, url, "solo")[3:]) == 2
    finally:
        gate.set()
        first.join(timeout=300)
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("pilot run: error: run 1 (solo) is being computed by worker")
    assert "SQLite store has one writer" in err and "--db postgresql://" in err
    assert reports[0]["status"] == "completed"
    assert len(store.stored_once()) == len(ARMS) * N_SAMPLES  # nothing lost, nothing twice
    assert [w.outcome for w in store.workers()] == ["done"]  # the refused worker left no trace

    # Under a launcher the workers are refused before anything is loaded; without --name too.
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    assert main(["run", "--name", "x", "--db", url]) == 2
    assert "the workers torchrun starts cannot share a run on it" in capsys.readouterr().err
    assert main(["run", "--db", "postgresql://postgres@127.0.0.1:1/pilot"]) == 2
    assert "the same --name NAME in each" in capsys.readouterr().err
    store.engine.dispose()


# ---------------------------------------------------------------- claims, without a model


def _run_with_arms(sessions) -> tuple[int, list[int]]:
    with sessions() as session:
        dataset = db.Dataset(name="d", manifest_path="/d/m.csv", manifest_sha256="a" * 64, size=5, labels=["ok"])
        model = db.ModelRecord(name="m", path="m", config_sha256="a" * 64, model_class="Llava")
        run = db.Run(name="r", dataset=dataset, model=model, settings={}, settings_sha256="a" * 64, machine={})
        run.arms = [db.Arm(name=name, strategy=name, position=i) for i, name in enumerate(["baseline", "pruned"])]
        session.add(run)
        session.commit()
        return run.id, [arm.id for arm in run.arms]


def test_claims_skip_locked_batches_and_come_back_after_the_lease(postgres_url):
    url = postgres_url()
    sessions = open_store(url)
    run_id, arm_ids = _run_with_arms(sessions)
    assert plan_batches(sessions, run_id, [["a", "b"], ["c", "d"], ["e"]], arm_ids) == 3
    assert plan_batches(sessions, run_id, [["a", "b"], ["c", "d"], ["e"]], arm_ids) == 3  # planned once
    with pytest.raises(RuntimeError, match="planned with other samples"):
        plan_batches(sessions, run_id, [["a", "b", "c"], ["d", "e"]], arm_ids)

    lease = 0.8
    gone = RunWorker(sessions, run_id, "cuda:0", "cuda: test", lease_s=lease)
    gone.local_key = "another machine"  # its PID cannot be checked from here: only its lease tells
    gone.__enter__()
    assert next(gone.claims()).position == 0
    survivor = RunWorker(sessions, run_id, "cpu", "cpu: test", lease_s=lease)
    with survivor:
        with sessions() as other:  # a worker in the middle of claiming batch 1 holds its row lock
            other.scalars(select(db.RunBatch).where(db.RunBatch.position == 1).with_for_update()).one()
            claims = survivor.claims()
            claim = next(claims)
            assert claim.position == 2  # skipped, not waited for
            survivor.done(claim)
        claim = next(claims)
        assert claim.position == 1
        survivor.done(claim)
        gone._stop.set()  # its heartbeat stops: it died
        started = time.monotonic()
        claim = next(claims)  # waits for the lease on batch 0 to run out
        assert claim.position == 0 and claim.attempts == 2 and time.monotonic() - started > lease / 2
        survivor.done(claim)
        assert next(claims, None) is None

    def write(session, run):
        write_summaries(session, run, ["ok"])

    assert finish_run(sessions, run_id, write, lease) is True
    assert finish_run(sessions, run_id, write, lease) is False  # once
    with sessions() as session:
        run = session.get(db.Run, run_id)
        assert run.status == "completed" and len(session.scalars(select(db.ArmSummary)).all()) == 2
        outcomes = dict(session.execute(select(db.Worker.id, db.Worker.outcome)).all())
    assert outcomes == {gone.id: "dead", survivor.id: "done"}  # silent for a lease: marked dead at the end


def test_latencies_compare_like_with_like_across_kinds_of_device(tmp_path):
    sessions = open_store(f"sqlite:///{tmp_path / 'p.db'}")
    run_id, (baseline, pruned) = _run_with_arms(sessions)
    with sessions() as session:
        gpu = db.Worker(run_id=run_id, name="gpu-node/rank0/7", host="gpu-node", pid=7, local_key="k", rank=0,
                        device="cuda:0", device_kind="cuda: NVIDIA H200")
        cpu = db.Worker(run_id=run_id, name="laptop/8", host="laptop", pid=8, local_key="l", device="cpu",
                        device_kind="cpu: some CPU, 8 threads")
        session.add_all([gpu, cpu])
        session.flush()
        for sample in ("s0", "s1", "s2", "s3"):
            worker, base_ms, pruned_ms = (cpu, 1000.0, 900.0) if sample == "s3" else (gpu, 10.0, 5.0)
            for arm_id, ms in ((baseline, base_ms), (pruned, pruned_ms)):
                session.add(db.SampleResult(arm_id=arm_id, sample_id=sample, label="ok", prediction="ok",
                                            correct=True, prefill_ms=ms, total_ms=ms, batch_size=1,
                                            worker_id=worker.id))
        session.commit()
        report = build_report(session, run_id)
    assert [(w["worker"], w["device"], w["results"]) for w in report["workers"]] == [
        ("gpu-node/rank0/7", "cuda:0", 6), ("laptop/8", "cpu", 2)]
    assert report["latency_device"] == "cuda: NVIDIA H200"
    assert "2 kinds of device" in report["latency_note"] and "cuda: NVIDIA H200 results only" in report["latency_note"]
    base, arm = report["arms"]
    assert base["prefill_ms_p50"] == 10.0 and arm["prefill_ms_p50"] == 5.0  # the CPU's seconds left out
    assert arm["vs_baseline"]["prefill_ratio"] == pytest.approx(0.5)
    assert arm["n"] == 4 and arm["latency_device"] == "cuda: NVIDIA H200"  # answers from every device count
    text = " ".join(format_report(report).split())
    assert "workers: 2 (gpu-node/rank0/7 on cuda:0: 6 results" in text and "note: results came from 2 kinds" in text


# ---------------------------------------------------------------- launchers, devices and clear errors


def test_launchers_are_recognised():
    assert detect_launcher({}) == Launcher()
    torchrun = detect_launcher({"RANK": "3", "LOCAL_RANK": "1", "WORLD_SIZE": "4"})
    assert torchrun == Launcher("torchrun", 3, 1, 4) and torchrun.several
    assert detect_launcher({"SLURM_ARRAY_TASK_ID": "5", "SLURM_ARRAY_TASK_COUNT": "8"}).rank == 5
    job = detect_launcher({"JOB_COMPLETION_INDEX": "2"})
    assert job.rank == 2 and job.world_size is None and job.several
    assert not detect_launcher({"RANK": "0", "WORLD_SIZE": "1"}).several


def test_each_worker_takes_its_own_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    assert resolve_device("cuda", Launcher("torchrun", 6, 2, 8)) == torch.device("cuda", 2)
    assert resolve_device("cuda", Launcher("torchrun", 5, 5, 8)) == torch.device("cuda", 1)  # 2 per GPU
    assert resolve_device("cuda", Launcher()) == torch.device("cuda", 0)
    assert resolve_device("cuda:3", Launcher("torchrun", 0, 0, 2)) == torch.device("cuda", 3)  # given: kept
    with pytest.raises(ValueError, match=r"--device cuda:4: this machine shows 4 CUDA device\(s\)"):
        resolve_device("cuda:4")
    assert resolve_device("cpu", Launcher("torchrun", 1, 1, 2)) == torch.device("cpu")


def _one_line_error(capsys, argv, *expected):
    assert main(argv) == 2
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert "\n" not in err and "Traceback" not in err, err
    for text in expected:
        assert text in err, err
    return err


def test_device_cuda_without_cuda_names_the_flag(capsys, monkeypatch, tmp_path):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    url = f"sqlite:///{tmp_path / 'p.db'}"
    _one_line_error(capsys, ["run", "--device", "cuda", "--db", url], "pilot run: error: --device cuda:",
                    "--device cpu")
    _one_line_error(capsys, ["run", "--device", "gpu", "--db", url], "--device gpu: not a device")
    _one_line_error(capsys, ["tune", "--device", "cuda", "--db", url], "--device cuda:", "--device cpu")


def test_unreachable_database_names_the_flag(capsys):
    _one_line_error(capsys, ["run", "--db", "postgresql://postgres:secret@127.0.0.1:1/pilot"],
                    "pilot run: error: --db postgresql", "cannot connect", "start the server")
    err = _one_line_error(capsys, ["runs", "--db", "postgresql://postgres:secret@127.0.0.1:1/pilot"], "--db")
    assert "secret" not in err


def test_limit_below_one_is_refused(capsys, tmp_path):
    url = f"sqlite:///{tmp_path / 'p.db'}"
    _one_line_error(capsys, ["run", "--limit", "-1", "--db", url], "--limit -1: give a number of samples >= 1")
    _one_line_error(capsys, ["run", "--limit", "0", "--db", url], "--limit 0")
    _one_line_error(capsys, ["tune", "--limit", "-1", "--db", url], "--limit -1")
    assert not (tmp_path / "p.db").exists()  # refused before the store is opened


# ---------------------------------------------------------------- the tuner


def test_the_verification_order_is_fixed_once_per_study(tmp_path, monkeypatch):
    """Workers that finish their trials at different moments verify one sequence: the first one's."""
    sessions = open_store(f"sqlite:///{tmp_path / 't.db'}")
    with sessions() as session:
        session.add(db.TuningStudy(name="s", optuna_study_name="s", settings={}))
        session.commit()
    settings = study_module.TuneSettings(trials=6, max_drop=0.05, max_verifications=3)
    early = [Candidate(1, "transprune:a", 0.5, 0.0, 0.02), Candidate(2, "transprune:b", 0.4, 0.01, 0.04)]
    later = [*early, Candidate(7, "transprune:c", 0.3, 0.0, 0.01)]  # a trial another worker finished after
    first = study_module._fixed_order(None, settings, sessions, "s", early, finished=6)
    monkeypatch.setattr(study_module, "_candidates", lambda study, settings: later)
    second = study_module._fixed_order(None, settings, sessions, "s", later, finished=7)
    assert [c.number for c in second] == [c.number for c in first] and first
    rerun = study_module._fixed_order(None, study_module.TuneSettings(trials=9, max_drop=0.05), sessions, "s", later,
                                      finished=9)  # `pilot tune --trials 9` resumes the study: a new order
    assert 7 in [c.number for c in rerun]
    with sessions() as session:
        assert session.scalars(select(db.TuningStudy)).one().verification_order["trials"] == 9
