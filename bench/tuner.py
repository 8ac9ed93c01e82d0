"""Tuner speed: time per trial with the tuner's reuse against a naive full replay; and the tuner against a grid.

    python bench/tuner.py [--model demo] [--n 96] [--trials 5] [--batch-size 8]
    python bench/tuner.py --versus-grid [--max-drop 0.03] [--db-dir DIR] [--cold]

``--versus-grid`` (the demo model on the demo dataset, the demo's budget): a plain grid, the paper's schedule
shape (``tuner.space.paper_shaped``) at final keep ratios GRID_KEEP in both position modes, every point replayed
on the whole tuning split, then verified on the held-out split by the tuner's own rule (``tuner.select``: fixed
sequence, at most 3); against it the tuner (warm-started with the paper shape at 0.5 / 0.25 / 0.125, then TPE)
and, with ``--cold``, the tuner without its warm start, each given the grid's search time. Printed: per row the
search seconds, trials, the verified recommendation, its held-out drop and upper end, and its paper TFLOPs ratio;
the tuner must be at least as cheap as the grid at the same budget.

Naive: every trial replays the tuning split from pixels (vision tower and projector included)
for the baseline and for the trial's schedule. Tuner: the baseline answers are computed once and
the vision tower + projector outputs are cached per batch, so a trial replays only the language
model for its own schedule. Both run the same schedules on the same samples; the table gives
the median seconds per trial and the ratio.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import optuna
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pilot.data import synthetic  # noqa: E402
from pilot.data.manifest import load_manifest  # noqa: E402
from pilot.generation import prepare_batch  # noqa: E402
from pilot.models import load  # noqa: E402
from tuner.space import suggest  # noqa: E402
from tuner.study import TrialEvaluator  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="demo")
    parser.add_argument("--n", type=int, default=96)
    parser.add_argument("--trials", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--versus-grid", action="store_true", help="the tuner against a grid at equal search time")
    parser.add_argument("--max-drop", type=float, help="budget for --versus-grid (default: the demo's)")
    parser.add_argument("--db-dir", help="keep the --versus-grid stores here (default: a temporary folder)")
    parser.add_argument("--cold", action="store_true", help="--versus-grid: also the tuner without its warm start")
    args = parser.parse_args(argv)
    if args.versus_grid:
        return versus_grid(args)
    loaded = load(args.model)
    device = torch.device("cpu")
    sampler = optuna.samplers.RandomSampler(seed=0)
    study = optuna.create_study(sampler=sampler)
    strategies = [str(suggest(study.ask(), loaded.depth)) for _ in range(args.trials)]
    with tempfile.TemporaryDirectory() as folder:
        dataset = load_manifest(synthetic.write_dataset(folder, args.n, seed=9), labels=synthetic.LABELS)
        items = list(dataset.items)
        start = time.perf_counter()
        batches = [prepare_batch(loaded, items[i : i + args.batch_size], device, torch.float32)
                   for i in range(0, len(items), args.batch_size)]
        prepare_s = time.perf_counter() - start
        naive = TrialEvaluator(loaded, batches, dataset.labels, 2, device, cache_features=False)
        start = time.perf_counter()
        cached = TrialEvaluator(loaded, batches, dataset.labels, 2, device, cache_features=True)
        cache_s = time.perf_counter() - start
        naive.run("baseline", naive.batches)  # warm-up
        naive_s, cached_s = [], []
        for strategy in strategies:  # interleaved, so drift hits both alike
            start = time.perf_counter()
            naive.run("baseline", naive.batches)
            naive.run(strategy, naive.batches)
            naive_s.append(time.perf_counter() - start)
            start = time.perf_counter()
            cached.run(strategy, cached.batches)
            cached_s.append(time.perf_counter() - start)
    print(f"# {args.model}, {args.n} tuning samples, batch {args.batch_size}, {args.trials} random schedules, "
          f"{torch.get_num_threads()} threads")
    print("| | seconds per trial (median) | x naive |")
    print("|---|---|---|")
    n, c = statistics.median(naive_s), statistics.median(cached_s)
    print(f"| naive full replay (baseline + trial, from pixels) | {n:.2f} | 1.000 |")
    print(f"| tuner (baseline once, vision features cached) | {c:.2f} | {c / n:.3f} |")
    print(f"\none-off costs: image loading + processor {prepare_s:.2f} s, vision feature cache {cache_s:.2f} s")
    return 0


GRID_KEEP = (0.5, 0.35, 0.25, 0.18, 0.125, 0.09, 0.0625)


class _NeverPrune(optuna.pruners.BasePruner):
    def prune(self, study, trial) -> bool:
        return False


def _grid_settings(budget: float, **kw):
    from tuner.study import TuneSettings

    return TuneSettings(max_drop=budget, batch_size=8, **kw)


def _check(verified: dict) -> str:
    verdict = verified["verdict"]
    held = "holds" if verdict["met_with_confidence"] else "fails"
    return (f"`{verified['strategy']}` {verdict['drop'] * 100:+.1f} [{verdict['drop_ci_high'] * 100:+.1f}] "
            f"x{verified['paper_tflops_ratio']:.3f} {held}")


def versus_grid(args) -> int:
    """The tuner's verified recommendation against a plain grid's, at equal search time (see the module doc)."""
    from unittest import mock

    import tuner.study as study_module
    from pilot.demo import DEMO_BUDGET
    from tuner.space import warm_start_points

    budget = args.max_drop if args.max_drop is not None else DEMO_BUDGET
    quiet = lambda message: None  # noqa: E731
    loaded = load(args.model)
    modes = loaded.adapter.position_modes
    grid = warm_start_points(loaded.depth, modes, GRID_KEEP)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(args.db_dir or tmp)
        folder.mkdir(parents=True, exist_ok=True)

        def url(name: str) -> str:
            path = folder / f"{name}.db"
            path.unlink(missing_ok=True)
            return f"sqlite:///{path}"

        # The grid: its points are the study's only trials (enqueued), none stopped early: a plain grid.
        with mock.patch.object(study_module, "warm_start_points", lambda depth, modes: grid), \
                mock.patch.object(study_module, "BudgetPruner", lambda max_drop: _NeverPrune()):
            result = study_module.tune(_grid_settings(budget, trials=len(grid)), db_url=url("grid"), log=quiet,
                                       progress=False)
        rows.append((f"grid: paper shape x {len(GRID_KEEP)} final keep ratios x {len(modes)} position modes", result))
        search_s = result["search_s"]
        for label, warm in (("tuner (warm start: paper shape at 0.5/0.25/0.125, then TPE)", True),
                            ("tuner without the warm start (TPE only)", False))[: 2 if args.cold else 1]:
            result = study_module.tune(_grid_settings(budget, trials=1000, timeout_s=search_s, warm_start=warm),
                                       db_url=url("tuner" if warm else "cold"), log=quiet, progress=False)
            rows.append((label, result))
    print(f"# {args.model}: demo dataset, budget {budget * 100:.1f} points of macro-F1 (95% upper end on held-out "
          f"data), {torch.get_num_threads()} threads; every row gets the grid's search time ({search_s:.0f} s)")
    print("| search | search s | trials (stopped early) | verified recommendation | held-out drop [95% upper] | "
          "paper TFLOPs ratio | wall s |")
    print("|---|---|---|---|---|---|---|")
    for label, result in rows:
        held = result["heldout"] if result["recommended"] else None
        verdict = (held or {}).get("verdict") or {}
        drop = "-" if not held else f"{verdict['drop'] * 100:+.1f} [{verdict['drop_ci_high'] * 100:+.1f}] pts"
        ratio = "-" if not held else f"{held['paper_tflops_ratio']:.3f}"
        print(f"| {label} | {result['search_s']:.0f} | {result['trials']} ({result['pruned']}) | "
              f"{result['recommended'] or 'none verified'} | {drop} | {ratio} | {result['wall_s']:.0f} |")
    print("\nHeld-out checks, in the fixed order (each: drop [95% upper], paper TFLOPs ratio):")
    for label, result in rows:
        checks = "; ".join(_check(v) for v in result["verified"]) or "none (no candidate)"
        print(f"- {label.split(':')[0].split(' (')[0]}: {checks}")
    grid_ratio = rows[0][1]["heldout"]["paper_tflops_ratio"] if rows[0][1]["recommended"] else None
    tuned_ratio = rows[1][1]["heldout"]["paper_tflops_ratio"] if rows[1][1]["recommended"] else None
    ok = grid_ratio is None or (tuned_ratio is not None and tuned_ratio <= grid_ratio + 1e-9)
    print(f"\ntuner at least as cheap as the grid at the same budget: {'yes' if ok else 'NO'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
