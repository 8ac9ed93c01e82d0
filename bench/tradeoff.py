"""Accuracy against kept-token budget on the demo model: TransPrune, FastV, random, pooling.

    python bench/tradeoff.py [--model demo] [--n 300] [--seed 7] [--batch-size 16] [--positions original]

Generates a fresh synthetic dataset (a seed never used in training), runs every arm through the
same runner code as `pilot run` (no store), and prints macro-F1, accuracy, the mean visual tokens
per LLM layer, the paper TFLOPs ratio and the prefill ratio against the baseline.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pilot.data import synthetic  # noqa: E402
from pilot.data.manifest import load_manifest  # noqa: E402
from pilot.metrics import arm_kpis, compare  # noqa: E402
from pilot.models import load  # noqa: E402
from pilot.pruning.strategies import POSITION_MODES, map_layers_to_depth  # noqa: E402
from pilot.runner import outcomes_from_rows, prepare_batch, run_arm_batch  # noqa: E402

FINAL_KEEP = (0.5, 0.25, 0.125, 0.0625)


def arms_for(depth: int, positions: str = "compact") -> list[str]:
    """Budgets per method. TransPrune/random: the paper's 3-stage shape mapped to this depth, its
    final keep ratio r varied (r = 0.125 is the paper's 0.875/0.625/0.125); FastV after layer 2
    keeping r; pooling by factors 2, 3, 4, 7 (14x14 -> 7x7, 5x5, 4x4, 2x2). ``positions`` is how
    the in-LM arms number positions after a drop (pooling happens before the LM)."""
    layers = "/".join(str(x) for x in map_layers_to_depth((7, 9, 12), depth))
    suffix = "" if positions == "compact" else f",positions={positions}"
    arms = ["baseline"]
    for r in FINAL_KEEP:
        keep = "/".join(f"{v:.10g}" for v in (1 - (1 - r) / 7, 1 - 3 * (1 - r) / 7, r))
        arms += [f"transprune:prune_after={layers},keep={keep}{suffix}",
                 f"random:prune_after={layers},keep={keep}{suffix}"]
    arms += [f"fastv:after=2,keep={r:g}{suffix}" for r in FINAL_KEEP]
    arms += [f"pool:factor={f}" for f in (2, 3, 4, 7)]
    return arms


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="demo")
    parser.add_argument("--n", type=int, default=300)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--arms", nargs="*")
    parser.add_argument("--positions", choices=POSITION_MODES, default="compact",
                        help="position numbering of the default in-LM arms after a drop")
    args = parser.parse_args(argv)
    loaded = load(args.model)
    arms = args.arms or arms_for(loaded.depth, args.positions)
    with tempfile.TemporaryDirectory() as folder:
        manifest = synthetic.write_dataset(folder, args.n, args.seed)
        dataset = load_manifest(manifest, labels=synthetic.LABELS)
        items = list(dataset.items)
        batches = [items[i : i + args.batch_size] for i in range(0, len(items), args.batch_size)]
        device = torch.device("cpu")
        prepared = [prepare_batch(loaded, batch, device, torch.float32) for batch in batches]
        results: dict[str, list[dict]] = {arm: [] for arm in arms}
        for arm in arms:  # warm-up
            run_arm_batch(loaded, arm, prepared[0], dataset.labels, 2, device)
        for index, batch in enumerate(prepared):
            for arm in arms[index % len(arms):] + arms[: index % len(arms)]:
                results[arm] += run_arm_batch(loaded, arm, batch, dataset.labels, 2, device)
            print(f"  batch {index + 1}/{len(prepared)}", file=sys.stderr)

    base = outcomes_from_rows(results["baseline"])
    print(f"# {args.model}: {loaded.depth}-layer LLM, {args.n} samples of seed {args.seed}, batch {args.batch_size}")
    print("| arm | macro-F1 | ΔF1 [95% CI] | accuracy | mean visual tokens / layer | paper TFLOPs ratio | "
          "prefill ratio |")
    print("|---|---|---|---|---|---|---|")
    for arm in arms:
        rows = results[arm]
        kpis = arm_kpis(outcomes_from_rows(rows), dataset.labels)
        mean_tokens = statistics.mean(statistics.mean(r["tokens_per_layer"]) for r in rows)
        if arm == "baseline":
            delta, ratio, prefill = "", 1.0, 1.0
        else:
            cmp = compare(base, outcomes_from_rows(rows), dataset.labels)
            lo, hi = cmp["f1_delta_ci"]
            delta = f"{cmp['f1_delta']:+.3f} [{lo:+.3f}, {hi:+.3f}]"
            ratio, prefill = cmp["paper_tflops_ratio"], cmp["prefill_ratio"]
        print(f"| {arm} | {kpis['f1_macro']:.3f} | {delta} | {kpis['accuracy']:.3f} | {mean_tokens:.1f} | "
              f"{ratio:.3f} | {prefill:.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
