"""Accuracy against kept-token budget on the demo model: TransPrune, FastV, random, pooling.

    python bench/tradeoff.py [--model demo] [--n 300] [--seed 7] [--batch-size 16] [--positions original]
    python bench/tradeoff.py --controls matched     # TransPrune at three budgets, each with its
                                                    # FastV, PDrop, DivPrune, random and pooling arms
                                                    # at the same paper TFLOPs (pilot.controls)

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

from pilot.controls import matched_controls  # noqa: E402
from pilot.data import synthetic  # noqa: E402
from pilot.data.manifest import load_manifest  # noqa: E402
from pilot.generation import outcomes_from_rows, prepare_batch, run_arm_batch  # noqa: E402
from pilot.metrics import arm_kpis, compare  # noqa: E402
from pilot.models import load  # noqa: E402
from pilot.pruning import families  # noqa: E402
from pilot.pruning.flops import ModelDims  # noqa: E402
from pilot.pruning.strategies import POSITION_MODES, map_layers_to_depth  # noqa: E402

FINAL_KEEP = (0.5, 0.25, 0.125, 0.0625)
MATCHED_FINAL_KEEP = (0.5, 0.25, 0.125)


def transprune_arm(depth: int, final_keep: float, suffix: str = "") -> str:
    """The paper's 3-stage shape mapped to ``depth``, its final keep ratio set to ``final_keep``."""
    layers = "/".join(str(x) for x in map_layers_to_depth((7, 9, 12), depth))
    r = final_keep
    keep = "/".join(f"{v:.10g}" for v in (1 - (1 - r) / 7, 1 - 3 * (1 - r) / 7, r))
    return f"transprune:prune_after={layers},keep={keep}{suffix}"


def arms_for(depth: int, positions: str | None = None) -> list[str]:
    """Budgets per method. TransPrune/random: the paper's 3-stage shape mapped to this depth, its
    final keep ratio r varied (r = 0.125 is the paper's 0.875/0.625/0.125); FastV after layer 2
    keeping r; pooling by factors 2, 3, 4, 7 (14x14 -> 7x7, 5x5, 4x4, 2x2). ``positions`` is how
    the in-LM arms number positions after a drop (None: each method's default; pooling happens
    before the LM)."""
    suffix = "" if positions is None else f",positions={positions}"
    arms = ["baseline"]
    for r in FINAL_KEEP:
        transprune = transprune_arm(depth, r, suffix)
        arms += [transprune, "random:" + transprune.split(":", 1)[1]]
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
    parser.add_argument("--positions", choices=POSITION_MODES, default=None,
                        help="position numbering of the default in-LM arms after a drop (default: each method's)")
    parser.add_argument("--controls", choices=["matched"], help="TransPrune at three budgets with matched controls")
    args = parser.parse_args(argv)
    loaded = load(args.model)
    with tempfile.TemporaryDirectory() as folder:
        manifest = synthetic.write_dataset(folder, args.n, args.seed)
        dataset = load_manifest(manifest, labels=synthetic.LABELS)
        items = list(dataset.items)
        batches = [items[i : i + args.batch_size] for i in range(0, len(items), args.batch_size)]
        device = torch.device("cpu")
        prepared = [prepare_batch(loaded, batch, device, torch.float32) for batch in batches]
        groups = None
        if args.controls:
            groups = matched_groups(loaded, prepared[0], args.positions)
            # A pooling factor may be the nearest for several budgets: run each arm once.
            arms = ["baseline"] + list(dict.fromkeys(arm for group in groups for arm, _ in group))
        else:
            arms = args.arms or arms_for(loaded.depth, args.positions)
        results: dict[str, list[dict]] = {arm: [] for arm in arms}
        for arm in arms:  # warm-up
            run_arm_batch(loaded, arm, prepared[0], dataset.labels, 2, device)
        for index, batch in enumerate(prepared):
            for arm in arms[index % len(arms):] + arms[: index % len(arms)]:
                results[arm] += run_arm_batch(loaded, arm, batch, dataset.labels, 2, device)
            print(f"  batch {index + 1}/{len(prepared)}", file=sys.stderr)

    base = outcomes_from_rows(results["baseline"])
    print(f"# {args.model}: {loaded.depth}-layer LLM, {args.n} samples of seed {args.seed}, batch {args.batch_size}")
    if groups is not None:
        print_matched(groups, results, base, dataset.labels)
        return 0
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


def matched_groups(loaded, batch, positions: str | None) -> list[list[tuple[str, bool]]]:
    """Per budget: the TransPrune arm and its controls at matched paper TFLOPs, (arm, matched)."""
    dims = ModelDims.from_config(loaded.model.config)
    ids = families.for_model(loaded.model).visual_token_ids(loaded.model.config)
    n_visual = int(torch.isin(batch.inputs["input_ids"][0], torch.tensor(ids)).sum())
    suffix = "" if positions is None else f",positions={positions}"
    groups = []
    for final_keep in MATCHED_FINAL_KEEP:
        arm = transprune_arm(loaded.depth, final_keep, suffix)
        groups.append([(arm, True)] + [(c.strategy, c.matched) for c in matched_controls(arm, dims, n_visual)])
    return groups


def print_matched(groups, results, base, labels) -> None:
    """One row per budget, one column per method: ΔF1 [95% CI] and the paper TFLOPs ratio."""
    print("| budget (TransPrune) | TransPrune | FastV | PDrop | DivPrune | random | pooling (nearest) |")
    print("|---|---|---|---|---|---|---|")
    for group in groups:
        cells = []
        for arm, matched in group:
            cmp = compare(base, outcomes_from_rows(results[arm]), labels)
            lo, hi = cmp["f1_delta_ci"]
            mark = "" if matched else " (not matched)"
            cells.append(f"{cmp['f1_delta']:+.3f} [{lo:+.3f}, {hi:+.3f}] x{cmp['paper_tflops_ratio']:.3f}{mark}")
        print(f"| {group[0][0]} | " + " | ".join(cells) + " |")
    print("\nEach cell: ΔF1 vs baseline [95% CI], paper TFLOPs ratio. Arms in order:")
    for group in groups:
        print("  " + "; ".join(arm for arm, _ in group))


if __name__ == "__main__":
    sys.exit(main())
