"""The tuner's search: warm-started with the paper's shape, a space that moves along the compute axis, the
family's position modes, and the demo's closing summary."""

import optuna
import pytest

from pilot.data import synthetic
from pilot.models import DEMO_CHECKPOINT
from pilot.pruning.flops import estimate, load_dims
from tuner.space import WARM_START_KEEP, paper_shaped, suggest, warm_start_points


def test_warm_start_points_are_the_paper_shape():
    strategy = paper_shaped(32, 0.125, "original")  # the paper's own schedule on a 32-layer model
    assert strategy.prune_after == (7, 9, 12) and strategy.keep == (0.875, 0.625, 0.125)
    assert strategy.alpha == 0.5 and strategy.accumulate_from == 7 and strategy.positions == "original"
    points = warm_start_points(12)
    assert len(points) == 2 * len(WARM_START_KEEP)
    drawn = [str(suggest(optuna.trial.FixedTrial(p), 12)) for p in points]
    assert drawn == [str(paper_shaped(12, r, mode)) for r in WARM_START_KEEP for mode in ("compact", "original")]
    assert drawn[0] == "transprune:prune_after=3/4/5,keep=0.9286/0.7857/0.5,positions=compact"
    assert {p["positions"] for p in warm_start_points(12, ("original",))} == {"original"}  # M-RoPE families
    # a shallow model still gets valid points
    assert all(suggest(optuna.trial.FixedTrial(p), 4).prune_after == (1, 2, 3) for p in warm_start_points(4))


def test_one_parameter_moves_a_schedule_along_the_compute_axis():
    """Every other parameter fixed, paper TFLOPs fall with keep_final alone (the demo model's dimensions)."""
    dims = load_dims(DEMO_CHECKPOINT)
    base = warm_start_points(12, ("original",), (0.5,))[0]
    costs = []
    for keep in (0.9, 0.5, 0.25, 0.1, 0.03):
        strategy = suggest(optuna.trial.FixedTrial({**base, "keep_final": keep}), 12)
        assert list(strategy.keep) == sorted(strategy.keep, reverse=True) and strategy.keep[-1] == keep
        costs.append(estimate(dims, 196, strategy)["pruned_tflops"])
    assert costs == sorted(costs, reverse=True) and costs[-1] < 0.5 * costs[0]


def test_tune_starts_with_the_warm_start_points(checkpoint, tmp_path):
    from tuner.study import TuneSettings, tune

    manifest = synthetic.write_dataset(tmp_path / "data", 12, seed=11)
    url = f"sqlite:///{tmp_path / 't.db'}"
    settings = TuneSettings(model=str(checkpoint), dataset=str(manifest), labels=list(synthetic.LABELS), trials=7,
                            batch_size=4, max_new_tokens=2, chunks=2, max_drop=0.5, seed=3)
    result = tune(settings, db_url=url, progress=False, log=lambda m: None)
    trials = optuna.load_study(study_name=result["study"], storage=url).get_trials(deepcopy=False)
    expected = [str(paper_shaped(4, r, mode)) for r in WARM_START_KEEP for mode in ("compact", "original")]
    assert [t.user_attrs["strategy"] for t in trials[:6]] == expected
    assert all(t.state.is_finished() for t in trials) and len(trials) == 7  # then TPE's own draw
    assert {"search_s", "setup_s"} <= set(result)
    # a rerun of the study enqueues nothing twice
    tune(settings, db_url=url, progress=False, log=lambda m: None)
    again = optuna.load_study(study_name=result["study"], storage=url).get_trials(deepcopy=False)
    assert len(again) == 7
    assert TuneSettings(warm_start=True).study_name() == TuneSettings().study_name()
    assert TuneSettings(warm_start=False).study_name() != TuneSettings().study_name()


def test_demo_prints_the_tuner_summary_and_no_bars_off_a_terminal(monkeypatch, capsys):
    """`pilot demo` ends with the tuner's closing block (format_summary) and, off a terminal, asks for no progress
    bars; the runner and the tuner are stand-ins here (the real demo takes minutes: see the README)."""
    import pilot.demo as demo
    import pilot.runner as runner
    import tuner.study as study_module

    calls = {}

    def fake_execute(settings, **kw):
        calls["run"] = kw["progress"]
        return {"run_id": 1, "name": "demo", "arms": []}

    def fake_tune(settings, **kw):
        calls["tune"] = (kw["progress"], settings.max_drop, settings.trials)
        held = {"run_id": 3, "verdict": {"drop": 0.004, "drop_ci_high": 0.021, "met_with_confidence": True},
                "paper_tflops_ratio": 0.65, "prefill_ratio": 0.7, "strategy": "transprune:x"}
        return {"study": "tune-x", "trials": 16, "pruned": 3, "feasible": 8, "metric": "f1_macro",
                "max_drop": settings.max_drop, "verified": [held], "recommended": "transprune:x", "heldout": held,
                "wall_s": 1.0}

    monkeypatch.setattr(runner, "execute", fake_execute)
    monkeypatch.setattr(study_module, "tune", fake_tune)
    monkeypatch.setattr("sys.stderr.isatty", lambda: False, raising=False)
    assert demo.run_demo("sqlite:///x.db") == 0
    out = capsys.readouterr()
    assert calls == {"run": False, "tune": (False, demo.DEMO_BUDGET, demo.DEMO_TRIALS)}
    assert "== pilot tune: study tune-x ==" in out.out and "recommended   transprune:x" in out.out
    assert "opens on the recommendation" in out.err


@pytest.mark.parametrize("depth", [12, 32])
def test_paper_shaped_matches_bench_tradeoff(depth):
    """bench/tradeoff.py's TransPrune arms are the same schedules (to its 10 digits)."""
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location("tradeoff", Path(__file__).resolve().parents[1] / "bench" /
                                                  "tradeoff.py")
    tradeoff = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tradeoff)
    for keep in WARM_START_KEEP:
        ours = paper_shaped(depth, keep)
        theirs = tradeoff.transprune_arm(depth, keep)
        assert ours.prune_after == tuple(int(x) for x in theirs.split("prune_after=")[1].split(",")[0].split("/"))
        ratios = [float(x) for x in theirs.split("keep=")[1].split(",")[0].split("/")]
        assert ours.keep == pytest.approx(ratios, abs=1e-4)


def test_demo_dataset_paths_agree():
    """The dashboard finds the demo's images where the runner writes them (without importing the runner)."""
    from dashboard.data import DEMO_MANIFEST
    from pilot import runner

    assert DEMO_MANIFEST.parent.name == f"demo-data-seed{runner.DEMO_DATASET_SEED}-n{runner.DEMO_DATASET_SIZE}"


def test_dashboard_opens_on_a_verified_recommendation(checkpoint, manifest, tmp_path, monkeypatch):
    """After `make demo` (a pilot run, then the tuner's held-out verification), the page lands on the study and its
    verified recommendation, with the headline a manager reads first."""
    from streamlit.testing.v1 import AppTest

    from dashboard.data import Path as _Path
    from pilot.runner import RunSettings, execute
    from pilot.store import TuningStudy, open_store

    url = f"sqlite:///{tmp_path / 'p.db'}"
    common = dict(model=str(checkpoint), dataset=str(manifest), batch_size=4, labels=list(synthetic.LABELS),
                  max_new_tokens=2)
    execute(RunSettings(arms=["baseline", "pool:factor=2"], **common), db_url=url, progress=False)
    chosen = "transprune:prune_after=1/2,keep=0.5/0.25"
    verification = execute(RunSettings(arms=["baseline", chosen], split="heldout", **common), db_url=url,
                           name="tune-demo-verify-1", progress=False)
    study = optuna.create_study(study_name="tune-demo", storage=url)
    study.add_trial(optuna.trial.create_trial(params={}, distributions={}, value=0.5,
                                              user_attrs={"strategy": chosen, "f1_drop": 0.0,
                                                          "paper_tflops_ratio": 0.5, "feasible": True}))
    sessions = open_store(url)
    with sessions() as session:
        session.add(TuningStudy(name="tune-demo", optuna_study_name="tune-demo", settings={"max_drop": 0.9},
                                verification_run_id=verification["run_id"], recommended_strategy=chosen))
        session.commit()
    sessions.kw["bind"].dispose()
    monkeypatch.setenv("PILOT_DB", url)
    at = AppTest.from_file(str(_Path(__file__).resolve().parents[1] / "dashboard" / "app.py"),
                           default_timeout=60).run()
    assert not at.exception, [e.value for e in at.exception]
    assert any("Tuning study: tune-demo" in s.value for s in at.subheader)
    assert any(chosen in s.value for s in at.success)
    assert any(m.value.startswith(f"**Recommendation: `{chosen}`**") for m in at.markdown)
    assert at.number_input(key="max_drop").value == 0.9  # the study's own budget: the verdict it was verified at
