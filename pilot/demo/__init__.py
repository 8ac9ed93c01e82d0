"""``make demo`` / ``pilot demo``: the engine end to end on a small built-in model, offline."""

from __future__ import annotations

import time

import torch

from pilot.pruning import attach, parse
from pilot.pruning.flops import ModelDims, paper_flops
from pilot.pruning.random_models import IMAGE_TOKEN, random_llava

DEMO_ARMS = ["baseline", "transprune", "fastv:after=2,keep=0.5", "random", "pool:factor=2"]


def run_demo(arms: list[str] | None = None, samples: int = 4) -> int:
    """Run every arm on the same prompts with a small random-weight LLaVA-1.5-layout model.

    Shows what each arm keeps per layer, its paper TFLOPs, its prefill time and whether its
    greedy answers agree with the baseline's (random weights: agreement is the only quality
    signal here).
    """
    model = random_llava(layers=12, hidden=128, heads=4, kv_heads=2, vocab=256, image_size=96, patch=8)
    dims = ModelDims.from_config(model.config)
    generator = torch.Generator().manual_seed(0)
    n_visual = (96 // 8) ** 2
    prompts = []
    for _ in range(samples):
        text = torch.randint(6, 256, (12,), generator=generator).tolist()
        ids = torch.tensor([[1, 7, 8] + [IMAGE_TOKEN] * n_visual + text])
        prompts.append({"input_ids": ids, "pixel_values": torch.randn(1, 3, 96, 96, generator=generator)})
    print(f"demo: random LLaVA-1.5-layout model, LLM {dims.layers} layers, {n_visual} visual tokens, {samples} prompts")
    print(f"{'arm':<58} {'visual tokens per layer':<40} {'paper GFLOPs':>12} {'prefill ms':>10} {'agree':>6}")
    answers: dict[str, list] = {}
    for arm in arms or DEMO_ARMS:
        strategy = parse(arm)
        with torch.inference_mode(), attach(model, strategy) as handle:
            model.generate(**prompts[0], max_new_tokens=2, do_sample=False)  # warm-up
            times, outputs = [], []
            for prompt in prompts:
                start = time.perf_counter()
                model(**prompt, logits_to_keep=1)
                times.append((time.perf_counter() - start) * 1000)
                out = model.generate(**prompt, max_new_tokens=4, do_sample=False, min_new_tokens=4)
                outputs.append(out[0, -4:].tolist())
            counts = handle.last_trace.visual_tokens_per_layer[0].tolist()
        answers[arm] = outputs
        agree = sum(a == b for a, b in zip(outputs, answers.get("baseline", outputs),
                                           strict=True)) / len(outputs)
        compact = ",".join(str(c) for c in counts)
        print(f"{str(handle.strategy):<58} {compact:<40} {paper_flops(dims, counts) / 1e9:>12.3f} "
              f"{sorted(times)[len(times) // 2]:>10.1f} {agree:>6.0%}")
    return 0
