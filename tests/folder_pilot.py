"""Running the pilot on a tiny model saved as a user's checkpoint folder, and reading back what it stored.

Shared by ``tests/test_qwen_pilot.py`` and ``tests/test_family_pilot.py``: the same CLI run (four
samples, two per left-padded batch, every arm given) and the same one-by-one comparison.
"""

from __future__ import annotations

import contextlib
import io
import json
from collections.abc import Sequence
from pathlib import Path

from sqlalchemy import select

from pilot.cli import main
from pilot.data import synthetic
from pilot.store import models as db
from pilot.store import open_store


def run_pilot_cli(folder: Path, manifest: Path, url: str, arms: Sequence[str]) -> dict:
    """`pilot run --model FOLDER` on the first four samples, two per batch: the `--json` report."""
    argv = ["run", "--model", str(folder), "--dataset", str(manifest), "--limit", "4", "--batch-size", "2",
            "--labels", ",".join(synthetic.LABELS), "--max-new-tokens", "3", "--db", url, "--json"]
    for arm in arms:
        argv += ["--arm", arm]
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(argv) == 0
    return json.loads(out.getvalue())


def stored(url: str) -> dict[str, dict[str, db.SampleResult]]:
    """arm name -> sample id -> its stored result."""
    out: dict[str, dict[str, db.SampleResult]] = {}
    with open_store(url)() as session:
        for arm, result in session.execute(select(db.Arm.name, db.SampleResult).join(db.Arm)).all():
            out.setdefault(arm, {})[result.sample_id] = result
    return out


def assert_batched_equals_one_by_one(folder: Path, manifest: Path, ids: Sequence[str], batched_url: str,
                                     url: str) -> None:
    """Baseline and TransPrune one sample per batch give the batched run's answers and kept tokens."""
    from pilot.runner import RunSettings, execute

    execute(RunSettings(model=str(folder), dataset=str(manifest), arms=["baseline", "transprune"], limit=4,
                        batch_size=1, labels=list(synthetic.LABELS), max_new_tokens=3, warmup_batches=0),
            db_url=url, progress=False)
    alone, batched = stored(url), stored(batched_url)
    for arm in ("baseline", "transprune"):
        for sample in ids:
            a, b = alone[arm][sample], batched[arm][sample]
            assert (a.answer_text, a.kept_indices, a.visual_tokens) == (b.answer_text, b.kept_indices, b.visual_tokens)
