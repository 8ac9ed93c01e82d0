"""Tuner speed: time per trial with the tuner's reuse against a naive full replay.

    python bench/tuner.py [--model demo] [--n 96] [--trials 5] [--batch-size 8]

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
from pilot.models import load  # noqa: E402
from pilot.runner import prepare_batch  # noqa: E402
from tuner.space import suggest  # noqa: E402
from tuner.study import TrialEvaluator  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="demo")
    parser.add_argument("--n", type=int, default=96)
    parser.add_argument("--trials", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=8)
    args = parser.parse_args(argv)
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


if __name__ == "__main__":
    sys.exit(main())
