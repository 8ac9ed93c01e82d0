"""A readable console: distinct arm names in the tables, `pilot plan`, quiet Optuna, progress bars on a terminal."""

import io
import json
import logging

import optuna
import pytest

from pilot import cli
from pilot.plan import ASSUMES, samples_for_accuracy
from pilot.report import _short, arm_labels, format_report

TWINS = ["fastv:after=2,keep=0.5", "fastv:after=2,keep=0.5,positions=original"]


def _arm(name, delta=-0.01):
    vs = None if name == "baseline" else {"n_paired": 100, "f1_delta": delta, "f1_delta_ci": [delta - 0.02, 0.0],
                                          "accuracy_delta": delta, "accuracy_delta_ci": [delta - 0.02, 0.0],
                                          "discordant": {"baseline_only": 6, "pruned_only": 5}}
    return {"name": name, "strategy": name, "n": 100, "errors": 0, "invalid": 0, "accuracy": 0.9, "f1_macro": 0.9,
            "f1_per_class": {"yes": 0.9, "no": 0.9}, "vs_baseline": vs}


def test_arm_names_stay_distinguishable_in_the_tables():
    assert _short(TWINS[0]) != _short(TWINS[1])  # was "fastv:after=2,keep=~" for both
    assert all(len(_short(name)) <= 20 for name in TWINS)
    assert _short("transprune") == "transprune"
    # names that differ only in the middle are widened until they differ
    middle = ["transprune:prune_after=7/9/12,keep=0.875/0.625/0.125,positions=original",
              "transprune:prune_after=7/9/12,keep=0.875/0.5/0.125,positions=original"]
    labels = arm_labels(middle)
    assert labels[middle[0]] != labels[middle[1]]
    text = format_report({"run_id": 1, "arms": [_arm("baseline"), *(_arm(n) for n in TWINS + middle)]})
    rows = [line.split("  ")[0] for line in text.splitlines()]
    for name in TWINS + middle:
        assert arm_labels(TWINS + middle)[name] in rows
        assert name in text  # in full under "Arm names in full"
    assert "Arm names in full" in text
    assert all(len(line) <= 120 for line in text.splitlines())


def test_report_closes_with_the_samples_each_verdict_needs():
    text = format_report({"run_id": 1, "arms": [_arm("baseline"), _arm("transprune")]}, max_drop=0.03)
    section = text[text.index("Samples for a verdict"):]
    assert "macro-F1 drop at most 3.0 points with confidence" in section
    # drop 0.01, upper end 0.03 on 100 samples: met with confidence
    assert "met with confidence" in section
    text = format_report({"run_id": 1, "arms": [_arm("baseline"), _arm("transprune", -0.02)]}, max_drop=0.03)
    row = next(line for line in text[text.index("Samples for a verdict"):].splitlines()
               if line.startswith("transprune"))
    # the bootstrap alone would say 100 x ((0.04 - 0.02) / (0.03 - 0.02))^2 = 400; macro-F1's interval is at least
    # the accuracy bound's (11 of 100 pairs discordant) wide, and that needs more for the 1-point gap
    needed = samples_for_accuracy(0.01, 0.11, 0.03, target=0.01)
    assert needed > 400 and row.split()[4:6] == [str(needed), str(needed - 100)]
    assert "Samples for a verdict" not in format_report({"run_id": 1, "arms": [_arm("baseline")]}, max_drop=None)


def _store_with_a_run(url, n=200, lost=12, gained=4):
    """A completed run (baseline + one pruned arm) written straight to the store: no model."""
    from pilot.store import Arm, Dataset, ModelRecord, Run, SampleResult, open_store

    sessions = open_store(url)
    with sessions() as session:
        dataset = Dataset(name="parts", manifest_path="/nowhere/manifest.csv", manifest_sha256="0" * 64, size=n,
                          labels=["yes", "no"])
        model = ModelRecord(name="demo", path="/nowhere", config_sha256="0" * 64, model_class="Llava")
        run = Run(name="pilot-a", dataset=dataset, model=model, settings={"batch_size": 2},
                  settings_sha256="1" * 64, machine={}, status="completed")
        session.add(run)
        session.flush()
        arms = [Arm(run_id=run.id, name=a, strategy=a, position=i) for i, a in enumerate(["baseline", TWINS[1]])]
        session.add_all(arms)
        session.flush()
        for i in range(n):
            label = ["yes", "no"][i % 2]
            wrong = "no" if label == "yes" else "yes"
            base_ok = not (lost <= i < lost + gained)  # the pruned arm is right where the baseline is not
            prun_ok = i >= lost  # the first `lost` samples: only the baseline is right
            for arm, ok in zip(arms, (base_ok, prun_ok), strict=True):
                session.add(SampleResult(arm_id=arm.id, sample_id=f"s{i:03d}", label=label,
                                         prediction=label if ok else wrong, correct=ok, batch_size=2))
        session.commit()
    sessions.kw["bind"].dispose()


def test_pilot_plan_prints_each_arms_samples_needed(tmp_path, capsys):
    url = f"sqlite:///{tmp_path / 'plan.db'}"
    _store_with_a_run(url)
    assert cli.main(["plan", "1", "--max-drop", "0.07", "--metric", "accuracy", "--db", url, "--json"]) == 0
    (row,) = json.loads(capsys.readouterr().out)
    assert row["strategy"] == TWINS[1] and row["n"] == 200
    assert row["drop"] == pytest.approx(8 / 200)  # 12 lost, 4 gained
    assert row["discordance"] == pytest.approx(16 / 200)
    assert row["drop_ci_high"] > 0.07  # not met with confidence on 200 samples
    # the normal approximation said (1.96 * sqrt(0.08 - 0.04^2) / (0.07 - 0.04))^2 = 335; the betting bound more
    needed = samples_for_accuracy(0.04, 0.08, 0.07)
    assert row["samples_needed"] == needed and 335 < needed < 700
    assert row["reason"] == ASSUMES
    assert cli.main(["plan", "1", "--max-drop", "0.07", "--metric", "accuracy", "--db", url]) == 0
    out = capsys.readouterr().out
    assert f"needs {needed - 200:,} more paired samples ({needed:,} in all)" in out
    assert f"label about {needed - 200:,} more images" in out
    assert cli.main(["plan", "pilot-a", "--max-drop", "0.03", "--db", url]) == 0
    out = capsys.readouterr().out
    assert "more samples will not help" in out and _short(TWINS[1]) in out
    assert cli.main(["plan", "1", "--max-drop", "0.2", "--metric", "accuracy", "--db", url]) == 0
    assert "met with confidence" in capsys.readouterr().out


def test_progress_shows_on_a_terminal_and_in_logs_and_no_download_bars(tmp_path, monkeypatch):
    import pilot.runner

    seen = {}

    def fake_execute(settings, **kwargs):
        seen["progress"] = kwargs["progress"]
        seen["batch_size"] = settings.batch_size
        raise KeyboardInterrupt  # stop before any work: `pilot run` returns 130

    monkeypatch.setattr(pilot.runner, "execute", fake_execute)
    monkeypatch.delenv("HF_HUB_DISABLE_PROGRESS_BARS", raising=False)
    for tty in (False, True):  # under nohup too (it was silent for 8 minutes): pilot.progress picks bar or lines
        stream = io.StringIO()
        stream.isatty = lambda tty=tty: tty
        monkeypatch.setattr("sys.stderr", stream)
        assert cli.main(["run", "--db", f"sqlite:///{tmp_path / 'x.db'}"]) == 130
        assert seen["progress"] is True
    import os

    assert os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] == "1"
    # run and tune batch alike, and say so
    from pilot.runner import DEFAULT_BATCH_SIZE, RunSettings
    from tuner.study import TuneSettings

    assert seen["batch_size"] == DEFAULT_BATCH_SIZE == RunSettings().batch_size == TuneSettings().batch_size
    assert cli.DEFAULT_BATCH_SIZE == DEFAULT_BATCH_SIZE
    parser = cli.build_parser()
    for command in ("run", "tune"):
        sub = parser._subparsers._group_actions[0].choices[command]
        assert f"samples per batch (default {DEFAULT_BATCH_SIZE}, in run and tune alike)" in " ".join(
            sub.format_help().split())


def test_progress_is_a_log_line_every_30_s_when_stderr_is_not_a_terminal():
    from pilot.progress import Progress

    now = [0.0]
    lines = []
    pipe = io.StringIO()  # not a terminal
    progress = Progress(400, label="run 3", log=lines.append, stream=pipe, clock=lambda: now[0])
    for _ in range(4):
        now[0] += 10
        progress.update(20)
    assert lines == ["run 3: 60/400 results (15%), 2.00 results/s, ETA 2 min 50 s"]  # at 30 s, not at 10 or 20
    now[0] += 160
    progress.update(320)
    progress.close()
    assert lines[-1] == "run 3: 400/400 results (100%), 2.00 results/s, took 3 min 20 s"
    assert pipe.getvalue() == ""  # no bar drawn into a log file

    terminal = io.StringIO()
    terminal.isatty = lambda: True
    lines.clear()
    with Progress(10, label="run 3", log=lines.append, stream=terminal) as bar:
        bar.update(10)
    assert lines == [] and "10/10" in terminal.getvalue()  # the tqdm bar
    quiet = Progress(10, label="run 3", log=lines.append, stream=pipe, enabled=False)
    quiet.update(10)
    quiet.close()
    assert lines == []


def test_help_describes_every_family():
    text = cli.build_parser().format_help()
    assert "LLaVA workload" not in text
    for family in ("LLaVA-1.5", "LLaVA-NeXT", "LLaVA-OneVision", "Qwen2.5-VL", "Qwen3-VL", "Gemma 3", "InternVL",
                   "Mistral 3", "SmolVLM", "Idefics3"):
        assert family in " ".join(text.split()), family


def test_commands_without_a_model_do_not_import_torch(tmp_path):
    """`pilot report/plan/runs/db`, --help and a typo answer without importing torch (6 s of a typo's 6 s)."""
    import subprocess
    import sys

    url = f"sqlite:///{tmp_path / 'light.db'}"
    _store_with_a_run(url)
    heavy = ("torch", "transformers", "datasets", "PIL")
    for args in (["report", "1", "--db", url], ["report", "1", "--db", url, "--json"],
                 ["plan", "1", "--max-drop", "0.05", "--db", url], ["runs", "--db", url],
                 ["db", "upgrade", "--db", url],
                 ["--help"], ["repor", "1"], ["run", "--help"], ["tune", "--help"]):
        code = (f"import sys\nfrom pilot.cli import main\ntry:\n    main({args!r})\nexcept SystemExit:\n    pass\n"
                f"print([m for m in {heavy!r} if m in sys.modules], file=sys.stderr)")
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
        assert done.stderr.strip().splitlines()[-1] == "[]", (args, done.stderr[-2000:])


def test_optuna_info_lines_are_off_unless_verbose(monkeypatch):
    import tuner.study as study_module

    levels = []
    monkeypatch.setattr(study_module, "_tune", lambda *args: levels.append(optuna.logging.get_verbosity()) or {})
    optuna.logging.set_verbosity(optuna.logging.INFO)
    settings = study_module.TuneSettings()
    study_module.tune(settings)
    study_module.tune(settings, verbose=True)
    assert levels == [logging.WARNING, logging.INFO]
    assert optuna.logging.get_verbosity() == logging.INFO  # restored afterwards
    assert cli.build_parser().parse_args(["tune", "--verbose"]).verbose
