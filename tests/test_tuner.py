"""The budget tuner: constraint, impossible budget, determinism, held-out verification, two workers."""

import json
import subprocess
import sys

import optuna
import pytest
from sqlalchemy import func, select

import tuner.study as study_module
from pilot.data import synthetic
from pilot.data.manifest import load_manifest
from pilot.data.split import stratified_split
from pilot.store import models as db
from pilot.store import open_store
from tuner.pruner import BudgetPruner
from tuner.space import suggest
from tuner.study import TuneSettings, tune


@pytest.fixture(scope="module")
def tune_manifest(tmp_path_factory):
    return synthetic.write_dataset(tmp_path_factory.mktemp("tune-data"), 16, seed=11)


def settings(checkpoint, manifest, **kw):
    base = dict(model=str(checkpoint), dataset=str(manifest), labels=list(synthetic.LABELS), trials=4,
                batch_size=4, max_new_tokens=2, chunks=2, max_drop=0.5, seed=3)
    return TuneSettings(**{**base, **kw})


def trials_of(url, name):
    return optuna.load_study(study_name=name, storage=url).get_trials(deepcopy=False)


def test_tune_recommends_a_feasible_schedule_verified_on_heldout(checkpoint, tune_manifest, tmp_path):
    # The shipped demo model: the small random one scores 0 (the floor: no verdict, issue 24; before, its
    # "recommendation" rested on a macro-F1 of 0 in both arms). 8 held-out pairs: a valid 97.5% bound is over
    # 46 points even when all are equal, over 50 with one changed answer, so the budget is 80 points.
    url = f"sqlite:///{tmp_path / 't.db'}"
    result = tune(settings(checkpoint, tune_manifest, model="demo", max_drop=0.8), db_url=url, progress=False)
    assert result["trials"] == 4
    assert result["recommended"] is not None, result["verified"]
    trials = trials_of(url, result["study"])
    chosen = next(t for t in trials if t.user_attrs.get("strategy") == result["recommended"])
    assert all(v <= 0 for v in chosen.constraints.values()) and chosen.user_attrs["feasible"]
    for trial in trials:  # the constraint is what set_constraint stored: drop - budget
        if trial.state == optuna.trial.TrialState.COMPLETE:
            drop = trial.user_attrs["f1_drop"]
            assert trial.constraints["drop_over_budget"] == pytest.approx(drop - 0.8)
    held = result["heldout"]
    assert held["f1_drop_ci_high"] <= 0.8 and held["verdict"]["met_with_confidence"]
    sessions = open_store(url)
    with sessions() as session:
        run = session.get(db.Run, held["run_id"])
        assert run.settings["split"] == "heldout" and run.status == "completed"
        assert [a.strategy for a in run.arms] == ["baseline", result["recommended"]]
        heldout_results = session.scalar(select(func.count()).select_from(db.SampleResult)
                                         .where(db.SampleResult.arm_id == run.arms[1].id))
        expected = list(stratified_split(load_manifest(tune_manifest).items, 0.5, 0).values()).count("heldout")
        assert heldout_results == expected and 6 <= expected <= 10  # about half of 16, per label
        study = session.scalar(select(db.TuningStudy).where(db.TuningStudy.name == result["study"]))
        assert study.verification_run_id == held["run_id"] and study.recommended_strategy == result["recommended"]
        baseline_runs = session.scalar(select(func.count()).select_from(db.Run).where(
            db.Run.name == f"{result['study']}-tune-baseline"))
        assert baseline_runs == 1


def test_trial_latency_is_compared_with_a_baseline_timed_on_the_same_inputs(checkpoint, tune_manifest, tmp_path,
                                                                            monkeypatch):
    """Trials replay cached vision features; the stored baseline ran the vision tower. A clock that
    tells the two input paths apart (10 ms cached, 30 ms with the tower) must give every trial a
    prefill ratio of exactly 1: before the baseline was timed again, it got 10 ms over the stored,
    real baseline's milliseconds."""
    real = study_module.run_arm_batch

    def path_clock(loaded, strategy, prepared, *args, **kwargs):
        rows = real(loaded, strategy, prepared, *args, **kwargs)
        ms = 10.0 if "mm_encoder_outputs" in prepared.inputs else 30.0
        return [{**row, "prefill_ms": ms, "total_ms": ms} for row in rows]

    monkeypatch.setattr(study_module, "run_arm_batch", path_clock)
    url = f"sqlite:///{tmp_path / 't.db'}"
    result = tune(settings(checkpoint, tune_manifest, trials=2, max_drop=0.9), db_url=url, progress=False)
    measured = [t for t in trials_of(url, result["study"]) if "prefill_ratio" in t.user_attrs]
    assert measured and all(t.user_attrs["prefill_ratio"] == pytest.approx(1.0) for t in measured)


def test_impossible_budget_says_so_and_shows_the_best_found(checkpoint, tune_manifest, tmp_path):
    url = f"sqlite:///{tmp_path / 't.db'}"
    result = tune(settings(checkpoint, tune_manifest, max_drop=-0.9, trials=3), db_url=url, progress=False)
    assert result["recommended"] is None
    assert "no schedule meets the budget" in result["message"]
    assert result["best_found"]["strategy"].startswith("transprune:")


def test_same_seed_same_trials(checkpoint, tune_manifest, tmp_path):
    runs = []
    for name in ("a", "b"):
        url = f"sqlite:///{tmp_path / (name + '.db')}"
        result = tune(settings(checkpoint, tune_manifest, trials=3, study="same"), db_url=url, progress=False)
        runs.append([t.user_attrs.get("strategy") for t in trials_of(url, result["study"])])
    assert runs[0] == runs[1]


def test_search_space_draws_valid_non_increasing_schedules():
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    seen_positions = set()
    for mode in ("ratio", "mass"):
        for _ in range(50):
            trial = study.ask()
            strategy = suggest(trial, depth=12, mode=mode)
            assert all(1 <= layer <= 11 for layer in strategy.prune_after)
            if mode == "ratio":
                assert list(strategy.keep) == sorted(strategy.keep, reverse=True)
            assert strategy.accumulate_from <= strategy.prune_after[0]
            seen_positions.add(strategy.positions)
            study.tell(trial, 0.0)
    assert seen_positions == {"compact", "original"}  # both numberings are searched


def test_budget_pruner_uses_the_lower_bound():
    pruner = BudgetPruner(max_drop=0.05)
    study = optuna.create_study(pruner=pruner)
    trial = study.ask()
    trial.report(0.02, 0)  # lower end of the drop's interval within budget: keep going
    assert not trial.should_prune()
    trial.report(0.08, 1)  # even the optimistic end breaks the budget: stop
    assert trial.should_prune()


def test_two_workers_share_one_study_on_postgresql(checkpoint, tune_manifest, postgres_url, tmp_path):
    url = postgres_url()
    command = [sys.executable, "-m", "pilot.cli", "tune", "--model", str(checkpoint), "--dataset", str(tune_manifest),
               "--labels", ",".join(synthetic.LABELS), "--study", "shared", "--trials", "6", "--batch-size", "4",
               "--max-new-tokens", "2", "--max-drop", "0.5", "--db", url, "--json"]
    workers = [subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outputs = [w.communicate(timeout=600) for w in workers]
    for worker, (out, err) in zip(workers, outputs, strict=True):
        assert worker.returncode == 0, err[-3000:]
        assert json.loads(out)["study"] == "shared"
    trials = trials_of(url, "shared")
    finished = [t for t in trials if t.state.is_finished()]
    assert 6 <= len(finished) <= 7  # each worker stops once the study holds 6 finished trials
    assert len({t.number for t in trials}) == len(trials)
    sessions = open_store(url)
    with sessions() as session:
        baseline = session.scalar(select(db.Run).where(db.Run.name == "shared-tune-baseline"))
        counts = session.execute(select(db.SampleResult.sample_id, func.count()).where(
            db.SampleResult.arm_id == baseline.arms[0].id).group_by(db.SampleResult.sample_id)).all()
    tuning = list(stratified_split(load_manifest(tune_manifest).items, 0.5, 0).values()).count("tune")
    assert len(counts) == tuning and all(n == 1 for _, n in counts)
