"""Engine benchmark: prefill and generate latency per strategy against paper TFLOPs.

    python bench/engine.py                       # narrow 32-layer LLM, LLaVA-1.5 layout (576 tokens), CPU
    python bench/engine.py --dims llava-1.5-7b --hidden 0 --device cuda --dtype bfloat16   # real 7B dimensions
    python bench/engine.py --family qwen2.5-vl   # narrow 28-layer LLM, Qwen2.5-VL layout, a 896x896 image (1024 tokens)
    python bench/engine.py --family qwen2.5-vl --dims qwen2.5-vl-7b --hidden 0 --device cuda --dtype bfloat16

Prints one table. Latencies are medians over --repeats runs after warm-up, arms interleaved per
repeat so that machine drift hits all alike. "lat/flops" is the prefill latency ratio divided by
the paper TFLOPs ratio (1.0 = latency falls exactly as FLOPs do). The scoring line is the extra
prefill time of TransPrune with keep=1 at every stage (scores computed, nothing dropped) over
the same loop without scoring.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pilot.pruning import NoPrune, TransPrune, attach, parse  # noqa: E402
from pilot.pruning.flops import ModelDims, full_prefill_flops, paper_flops  # noqa: E402
from pilot.testing.random_models import (  # noqa: E402
    IMAGE_TOKEN,
    QWEN_IMAGE_TOKEN,
    QWEN_VISION_END,
    QWEN_VISION_START,
    preset_llava,
    preset_qwen,
)

STRATEGIES = ["baseline", "transprune", "fastv:after=2,keep=0.5", "fastv:after=2,keep=0.25", "random", "pool:factor=2"]
# --family: the layout preset and LLM depth it benchmarks by default.
FAMILIES = {"llava": ("llava-1.5-7b", 32), "llava-next": ("llava-next-7b", 32),
            "qwen2.5-vl": ("qwen2.5-vl-7b", 28), "qwen3-vl": ("qwen3-vl-8b", 36)}
QWEN_IMAGE_PIXELS = {"qwen2.5-vl": 896, "qwen3-vl": 1024}  # 1024 merged tokens at 28 / 32 px a token
PAPER_A100_MS = {"transprune": 111.4, "fastv:after=2,keep=0.5": 125.2}


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def make_inputs(model, device, text_before: int = 35, text_after: int = 20, image_pixels: int = 896):
    """One prompt with one image: text, the image's visual tokens, the instruction."""
    config = model.config
    if config.model_type.startswith("qwen"):
        return make_qwen_inputs(model, device, text_before, text_after, image_pixels)
    side = config.vision_config.image_size // config.vision_config.patch_size
    generator = torch.Generator().manual_seed(0)
    vocab = config.text_config.vocab_size
    before = torch.randint(6, vocab, (text_before,), generator=generator).tolist()
    after = torch.randint(6, vocab, (text_after,), generator=generator).tolist()
    ids = torch.tensor([[1] + before + [IMAGE_TOKEN] * side * side + after], device=device)
    size = config.vision_config.image_size
    pixels = torch.randn(1, 3, size, size, generator=generator).to(device, model.dtype)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "pixel_values": pixels}, side * side


def make_qwen_inputs(model, device, text_before: int, text_after: int, image_pixels: int):
    vision = model.config.vision_config
    side = image_pixels // vision.patch_size  # patches per side; 2x2 patches merge into one token
    n_visual = (side // vision.spatial_merge_size) ** 2
    generator = torch.Generator().manual_seed(0)
    vocab = model.config.text_config.vocab_size
    before = torch.randint(11, vocab, (text_before,), generator=generator).tolist()
    after = torch.randint(11, vocab, (text_after,), generator=generator).tolist()
    ids = torch.tensor([[1] + before + [QWEN_VISION_START] + [QWEN_IMAGE_TOKEN] * n_visual + [QWEN_VISION_END] + after],
                       device=device)
    patch_values = 3 * vision.temporal_patch_size * vision.patch_size**2
    pixels = torch.randn(side * side, patch_values, generator=generator).to(device, model.dtype)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "pixel_values": pixels,
            "mm_token_type_ids": (ids == QWEN_IMAGE_TOKEN).int(),
            "image_grid_thw": torch.tensor([[1, side, side]], device=device)}, n_visual


def timed(fn, device) -> float:
    synchronize(device)
    start = time.perf_counter()
    fn()
    synchronize(device)
    return (time.perf_counter() - start) * 1000


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--family", default="llava", choices=list(FAMILIES), help="model family to benchmark")
    parser.add_argument("--dims", default=None,
                        help="layout preset (llava-1.5-7b, llava-next-7b, qwen2.5-vl-7b, qwen3-vl-8b); "
                             "default: the family's")
    parser.add_argument("--hidden", type=int, default=256, help="LLM width; 0 = the preset's real width")
    parser.add_argument("--layers", type=int, default=None, help="LLM depth; default: the preset's")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--strategies", nargs="*", default=STRATEGIES)
    args = parser.parse_args(argv)

    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype)
    preset, depth = FAMILIES[args.family]
    args.dims = args.dims or preset
    build = preset_qwen if args.family.startswith("qwen") else preset_llava
    model = build(args.dims, layers=args.layers or depth, hidden=args.hidden or None, dtype=dtype, device=device)
    inputs, n_visual = make_inputs(model, device, image_pixels=QWEN_IMAGE_PIXELS.get(args.family, 0))
    dims = ModelDims.from_config(model.config)
    print(f"# {args.dims} layout, LLM {dims.layers} layers x {dims.hidden} wide, {n_visual} visual tokens, "
          f"{inputs['input_ids'].shape[1]} prompt tokens, {args.dtype} on {device} "
          f"({torch.cuda.get_device_name() if device.type == 'cuda' else f'{torch.get_num_threads()} threads'})")

    arms = {name: parse(name) for name in args.strategies}
    arms["transprune keep=1 (scoring only)"] = TransPrune.for_depth(dims.layers).__class__(
        prune_after=TransPrune.for_depth(dims.layers).prune_after, keep=(1.0, 1.0, 1.0))
    arms["engine loop, no scoring"] = NoPrune()
    prefill = {name: [] for name in arms}
    generate = {name: [] for name in arms}
    tokens = {}

    def run(name, strategy, record):
        with torch.inference_mode():
            if name == "baseline":  # the stock model: nothing attached
                p = timed(lambda: model(**inputs, logits_to_keep=1), device)
                g = timed(lambda: model.generate(**inputs, max_new_tokens=args.new_tokens,
                                                 min_new_tokens=args.new_tokens, do_sample=False), device)
                tokens[name] = [n_visual] * dims.layers
            else:
                with attach(model, strategy) as handle:
                    p = timed(lambda: model(**inputs, logits_to_keep=1), device)
                    tokens[name] = handle.last_trace.visual_tokens_per_layer[0].tolist()
                    g = timed(lambda: model.generate(**inputs, max_new_tokens=args.new_tokens,
                                                     min_new_tokens=args.new_tokens, do_sample=False), device)
        if record:
            prefill[name].append(p)
            generate[name].append(g)

    for name, strategy in arms.items():  # warm-up
        run(name, strategy, record=False)
    for repeat in range(args.repeats):
        for name, strategy in arms.items():
            run(name, strategy, record=True)
        print(f"  repeat {repeat + 1}/{args.repeats}", file=sys.stderr)

    base_prefill = statistics.median(prefill["baseline"])
    base_generate = statistics.median(generate["baseline"])
    base_flops = paper_flops(dims, tokens["baseline"])
    text_tokens = inputs["input_ids"].shape[1] - n_visual
    tower = {"crops": 1, "visual_tokens_original": n_visual}  # one image
    base_full = full_prefill_flops(dims, tokens["baseline"], text_tokens, "baseline", **tower)
    print(f"| strategy | prefill ms | x baseline | generate {args.new_tokens} ms | x baseline | "
          f"paper TFLOPs | x baseline | full prefill x baseline | lat/flops |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name in arms:
        p, g = statistics.median(prefill[name]), statistics.median(generate[name])
        flops = paper_flops(dims, tokens[name])
        flops_ratio = flops / base_flops
        strategy = arms[name] if name != "baseline" else "baseline"
        full = full_prefill_flops(dims, tokens[name], text_tokens, strategy, instruction_tokens=20, **tower)
        print(f"| {name} | {p:.1f} | {p / base_prefill:.3f} | {g:.1f} | {g / base_generate:.3f} | "
              f"{flops / 1e12:.4f} | {flops_ratio:.3f} | {full / base_full:.3f} | "
              f"{(p / base_prefill) / flops_ratio:.2f} |")
    scoring = statistics.median(prefill["transprune keep=1 (scoring only)"]) - statistics.median(
        prefill["engine loop, no scoring"])
    print(f"\nscoring (TTV + IGA) overhead: {scoring:.1f} ms = {scoring / base_prefill:.1%} of baseline prefill")
    loop = statistics.median(prefill["engine loop, no scoring"]) - base_prefill
    print(f"engine loop overhead (no pruning, no scoring) vs stock: {loop:.1f} ms = {loop / base_prefill:.1%}")
    if device.type == "cuda" and args.hidden == 0:
        for name, ms in PAPER_A100_MS.items():
            if name in prefill:
                print(f"paper (A100, MME) {name}: {ms} ms; here: {statistics.median(prefill[name]):.1f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
