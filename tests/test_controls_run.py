"""`pilot run --controls matched`: a TransPrune arm and its matched controls in one run, grouped in the report."""

from __future__ import annotations

import contextlib
import io
import json

from pilot.cli import main
from pilot.controls import TOLERANCE
from pilot.pruning import parse
from tests.qwen_folder import save_tiny_qwen2_5_vl


def _run(args: list[str]) -> dict:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["run", *args, "--json"]) == 0
    return json.loads(out.getvalue())


def _check(report: dict, leader: str) -> None:
    arms = {arm["name"]: arm for arm in report["arms"]}
    matched_to = report["matched_to"]
    assert [parse(name).kind for name in matched_to] == ["fastv", "pdrop", "divprune", "random", "pool"]
    assert all(entry["arm"] == leader for entry in matched_to.values())
    leader_ratio = arms[leader]["vs_baseline"]["paper_tflops_ratio"]
    for name, entry in matched_to.items():
        assert arms[name]["errors"] == 0 and arms[name]["n"] == 4
        ratio = arms[name]["vs_baseline"]["paper_tflops_ratio"]
        if entry["matched"]:  # the measured compute, per sample, lands where the solver put it
            assert abs(ratio / leader_ratio - 1) <= TOLERANCE + 1e-9, name
        else:
            assert parse(name).kind == "pool"


def test_matched_controls_run_on_the_demo_layout(checkpoint, manifest, tmp_path):
    report = _run(["--model", str(checkpoint), "--dataset", str(manifest), "--limit", "4", "--batch-size", "2",
                   "--arm", "baseline", "--arm", "transprune", "--controls", "matched",
                   "--db", f"sqlite:///{tmp_path / 'pilot.db'}"])
    _check(report, "transprune")
    from pilot.report import format_report

    text = format_report(report)
    assert "Matched compute" in text and "not matched" in text


def test_matched_controls_run_on_a_tiny_qwen(manifest, tmp_path):
    folder = save_tiny_qwen2_5_vl(tmp_path / "qwen", layers=4)
    report = _run(["--model", str(folder), "--dataset", str(manifest), "--limit", "4", "--batch-size", "2",
                   "--arm", "baseline", "--arm", "transprune:prune_after=1/2,keep=0.5/0.25", "--controls", "matched",
                   "--db", f"sqlite:///{tmp_path / 'pilot.db'}"])
    arms = [arm["name"] for arm in report["arms"]]
    assert len(arms) == 7
    assert all(arm["errors"] == 0 for arm in report["arms"])
