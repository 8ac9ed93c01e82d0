"""The ``pilot`` command. Each subcommand parses its flags here and calls the module that does the work."""

from __future__ import annotations

import argparse
import json
import sys


def _flops(args: argparse.Namespace) -> int:
    from pilot.pruning.flops import estimate, load_dims

    dims = load_dims(args.model_config)
    result = estimate(dims, args.visual_tokens, args.strategy, args.text_tokens, args.instruction_tokens)
    if args.json:
        print(json.dumps(result))
        return 0
    print(f"strategy              {result['strategy']}")
    print(f"visual tokens         {args.visual_tokens} (per layer: {result['visual_tokens_per_layer']})")
    print(f"paper TFLOPs          {result['baseline_tflops']:.2f} -> {result['pruned_tflops']:.2f} "
          f"({result['pruned_tflops'] / result['baseline_tflops']:.1%}; Eq. 7, visual tokens only)")
    print(f"full prefill TFLOPs   {result['full_baseline_tflops']:.2f} -> {result['full_pruned_tflops']:.2f} "
          f"({result['full_pruned_tflops'] / result['full_baseline_tflops']:.1%}; "
          f"{args.text_tokens} text tokens, vision tower, projector, LM head)")
    return 0


def _demo(args: argparse.Namespace) -> int:
    from pilot.demo import run_demo

    return run_demo()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pilot", description="Pilot TransPrune on your own LLaVA workload.")
    commands = parser.add_subparsers(dest="command", required=True)

    flops = commands.add_parser("flops", help="TFLOPs of a strategy for a model config (paper and full prefill)")
    flops.add_argument("--model-config", required=True,
                       help="config.json, a checkpoint folder, or a preset: llava-1.5-7b, llava-next-7b")
    flops.add_argument("--visual-tokens", type=int, required=True, help="visual tokens of one image (576, 2880)")
    flops.add_argument("--strategy", default="transprune", help="strategy string, e.g. fastv:after=2,keep=0.5")
    flops.add_argument("--text-tokens", type=int, default=64, help="text tokens of the prompt (full figure)")
    flops.add_argument("--instruction-tokens", type=int, default=24, help="prompt tokens after the image")
    flops.add_argument("--json", action="store_true", help="print one JSON object")
    flops.set_defaults(func=_flops)

    demo = commands.add_parser("demo", help="the whole loop on the embedded default")
    demo.set_defaults(func=_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except ValueError as error:
        print(f"pilot {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
