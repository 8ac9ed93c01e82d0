"""The cost model: the paper's figures, and the full figure against torch's FLOP counter."""

import json

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode
from transformers.models.llava_next.modeling_llava_next import image_size_to_num_patches

from pilot.cli import main
from pilot.pruning import FastV, TokenPool, TransPrune, attach
from pilot.pruning.flops import (
    PRESETS,
    ModelDims,
    estimate,
    full_prefill_flops,
    load_dims,
    paper_flops,
    visual_tokens_per_layer,
)
from pilot.testing.random_models import (
    QWEN_IMAGE_TOKEN,
    QWEN_VISION_END,
    QWEN_VISION_START,
    random_qwen2_5_vl,
    random_qwen3_vl,
)
from tests.models import llava_inputs, next_inputs, tiny_llava, tiny_llava_next


@pytest.mark.parametrize(
    "visual, strategy, baseline, pruned",
    [
        (576, "transprune", 3.82, 1.56),
        (2880, "transprune", 20.83, 8.33),
        (576, "fastv:after=2,keep=0.5", 3.82, 2.01),
        (576, "fastv:after=2,keep=0.25", 3.82, 1.12),
    ],
)
def test_paper_figures(visual, strategy, baseline, pruned):
    result = estimate(load_dims("llava-1.5-7b"), visual, strategy)
    assert round(result["baseline_tflops"], 2) == baseline
    assert round(result["pruned_tflops"], 2) == pruned


def test_cli_prints_json(capsys, tmp_path):
    config = tmp_path / "config.json"
    config.write_text(json.dumps(PRESETS["llava-1.5-7b"]))
    code = main(["flops", "--model-config", str(config), "--visual-tokens", "576", "--strategy",
                 "transprune:prune_after=7/9/12,keep=0.875/0.625/0.125", "--json"])
    assert code == 0
    out = json.loads(capsys.readouterr().out)
    assert round(out["baseline_tflops"], 2) == 3.82 and round(out["pruned_tflops"], 2) == 1.56
    assert out["full_pruned_tflops"] < out["full_baseline_tflops"]


def test_cli_bad_config_is_named(capsys, tmp_path):
    assert main(["flops", "--model-config", str(tmp_path / "nope.json"), "--visual-tokens", "576"]) == 2
    assert "nope.json" in capsys.readouterr().err


def _counted(model, inputs, strategy):
    with attach(model, strategy) as handle, torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(**inputs, logits_to_keep=1, use_cache=False)
    return counter.get_total_flops(), handle.last_trace


# FlopCounterMode counts eager attention's matmuls; it does not count CPU sdpa kernels.
@pytest.mark.parametrize(
    "strategy", ["baseline", TransPrune(prune_after=(2, 3, 4), keep=(0.75, 0.5, 0.25)), FastV(after=2, keep=0.5),
                 TokenPool(2)]
)
def test_full_figure_matches_flop_counter_llava(strategy):
    model = tiny_llava(kv_heads=2, attn="eager")
    inputs = llava_inputs([3], [6])
    counted, trace = _counted(model, inputs, strategy)
    text = inputs["input_ids"].shape[1] - 36
    estimated = full_prefill_flops(ModelDims.from_config(model.config), trace.visual_tokens_per_layer[0].tolist(),
                                   text, strategy, instruction_tokens=6, crops=1)
    assert abs(estimated / counted - 1) < 0.05


def test_full_figure_matches_flop_counter_llava_next():
    model = tiny_llava_next(attn="eager")
    size = (40, 24)
    inputs, counts = next_inputs(model, [size], [4])
    strategy = TransPrune(prune_after=(2, 4), keep=(0.5, 0.25))
    counted, trace = _counted(model, inputs, strategy)
    crops = image_size_to_num_patches(size, model.config.image_grid_pinpoints, 24)
    text = inputs["input_ids"].shape[1] - counts[0]
    estimated = full_prefill_flops(ModelDims.from_config(model.config), trace.visual_tokens_per_layer[0].tolist(),
                                   text, strategy, instruction_tokens=4, crops=crops)
    assert abs(estimated / counted - 1) < 0.05


# --- Qwen2.5-VL / Qwen3-VL ------------------------------------------------------------------

def _qwen_inputs(model, grids: list[list[int]]) -> dict:
    """One sample: text, one vision-start / image tokens / vision-end run per image, an instruction."""
    vision = model.config.vision_config
    merge = vision.spatial_merge_size**2
    ids = [1, 9]
    for t, h, w in grids:
        ids += [QWEN_VISION_START] + [QWEN_IMAGE_TOKEN] * (t * h * w // merge) + [QWEN_VISION_END]
    ids += [10, 11, 12]
    input_ids = torch.tensor([ids])
    grid = torch.tensor(grids)
    patches = int(grid.prod(dim=1).sum())
    generator = torch.Generator().manual_seed(0)
    pixel_values = torch.randn(patches, 3 * vision.temporal_patch_size * vision.patch_size**2, generator=generator)
    return {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids),
            "mm_token_type_ids": (input_ids == QWEN_IMAGE_TOKEN).long(), "pixel_values": pixel_values,
            "image_grid_thw": grid}


def _qwen_counted(model, inputs) -> int:
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(**inputs, logits_to_keep=1, use_cache=False)
    return counter.get_total_flops()


@pytest.fixture(scope="module")
def qwen_models():
    # The towers' many tiny ops gain nothing from intra-op threads and, on a busy machine, lose
    # seconds to them spinning; one thread while these tests run, restored after.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    moe = random_qwen3_vl(moe=True, attn="eager")
    # FlopCounterMode does not count grouped_mm; the per-expert loop runs the same multiply-adds as F.linear.
    moe.set_experts_implementation("eager")
    yield {"qwen2_5_vl": random_qwen2_5_vl(attn="eager"), "qwen3_vl": random_qwen3_vl(attn="eager"),
           "qwen3_vl_moe": moe}
    torch.set_num_threads(threads)


# Two images, one with a 5-token side: partial attention windows and partial pooling windows,
# which the image grids size exactly.
QWEN_STRATEGIES = ["baseline", TransPrune(prune_after=(2, 3, 4), keep=(0.75, 0.5, 0.25)), FastV(after=2, keep=0.5),
                   TokenPool(2)]


# The MoE LM differs from the dense one only in its MLP: two strategies are enough there.
@pytest.mark.parametrize(
    "family, strategy",
    [(family, strategy) for family in ("qwen2_5_vl", "qwen3_vl") for strategy in QWEN_STRATEGIES]
    + [("qwen3_vl_moe", strategy) for strategy in QWEN_STRATEGIES[:2]],
)
def test_full_figure_matches_flop_counter_qwen(qwen_models, family, strategy):
    model = qwen_models[family]
    grids = [[1, 10, 12], [1, 8, 4]]
    inputs = _qwen_inputs(model, grids)
    counted, trace = _counted(model, inputs, strategy)
    dims = ModelDims.from_config(model.config)
    assert dims.family == family
    ids = inputs["input_ids"][0]
    image_positions = torch.nonzero(ids == QWEN_IMAGE_TOKEN).flatten()
    text = len(ids) - len(image_positions)
    instruction = len(ids) - 1 - int(image_positions.max())  # as the runner counts it
    estimated = full_prefill_flops(dims, trace.visual_tokens_per_layer[0].tolist(), text, strategy, instruction,
                                   image_grids=grids)
    assert abs(estimated / counted - 1) < 0.05


# The runner's path, the count alone: exact for one 8x12-patch image (4x6 merged tokens, whole
# 2x2-token attention windows).
@pytest.mark.parametrize("family", ["qwen2_5_vl", "qwen3_vl", "qwen3_vl_moe"])
def test_full_figure_from_the_count_matches_flop_counter_qwen(qwen_models, family):
    model = qwen_models[family]
    inputs = _qwen_inputs(model, [[1, 8, 12]])
    counted = _qwen_counted(model, inputs)
    dims = ModelDims.from_config(model.config)
    text = inputs["input_ids"].shape[1] - 24
    estimated = full_prefill_flops(dims, [24] * dims.layers, text, visual_tokens_original=24)
    assert abs(estimated / counted - 1) < 0.05


def test_qwen_pooling_keeps_the_tower_at_the_original_tokens(qwen_models):
    dims = ModelDims.from_config(qwen_models["qwen2_5_vl"].config)
    grids = [[1, 10, 12]]  # 5x6 merged tokens -> 3x3 after 2x2 pooling (partial windows at the edges)
    pooled = visual_tokens_per_layer("pool:factor=2", 30, dims, grids)
    assert pooled == [9] * dims.layers
    assert visual_tokens_per_layer("pool:factor=2", 30, dims) == [8] * dims.layers  # ceil(30 / 4) without grids
    with pytest.raises(ValueError, match="visual_tokens_original"):
        full_prefill_flops(dims, pooled, 8, "pool:factor=2")
    baseline = full_prefill_flops(dims, [30] * dims.layers, 8, image_grids=grids)
    pooled_full = full_prefill_flops(dims, pooled, 8, "pool:factor=2", image_grids=grids)
    llm_saving = sum(_llm_layer(dims, 8 + 30) - _llm_layer(dims, 8 + 9) for _ in range(dims.layers))
    assert baseline - pooled_full == pytest.approx(llm_saving)
    with pytest.raises(ValueError, match="disagrees"):
        full_prefill_flops(dims, pooled, 8, "pool:factor=2", visual_tokens_original=36, image_grids=grids)


def _llm_layer(dims, tokens):
    from pilot.pruning.flops import _llm_layer_flops

    return _llm_layer_flops(dims, tokens)


def test_qwen_configs_are_read(qwen_models):
    preset = PRESETS["qwen2.5-vl-7b"]
    # Qwen2.5-VL checkpoints keep the LM fields at the top level of config.json.
    flat = {"model_type": "qwen2_5_vl", **preset["text_config"], "vision_config": preset["vision_config"]}
    assert ModelDims.from_config(flat) == load_dims("qwen2.5-vl-7b")
    qwen25 = load_dims("qwen2.5-vl-7b")
    assert (qwen25.head_dim, qwen25.kv_width, qwen25.vision_window_size) == (128, 512, 112)
    qwen3 = load_dims("qwen3-vl-8b")
    assert (qwen3.head_dim, qwen3.q_width, qwen3.kv_width, qwen3.deepstack_mergers) == (128, 4096, 1024, 3)
    moe = ModelDims.from_config(qwen_models["qwen3_vl_moe"].config)
    assert (moe.experts, moe.experts_per_token, moe.moe_intermediate) == (4, 2, 64)
    mixed = qwen_models["qwen3_vl_moe"].config.to_dict()
    mixed["text_config"]["mlp_only_layers"] = [0]
    with pytest.raises(ValueError, match="mlp_only_layers"):
        ModelDims.from_config(mixed)
    with pytest.raises(ValueError, match="'fuyu'.*llava, llava_next, qwen2_5_vl, qwen3_vl"):
        ModelDims.from_config({**preset, "model_type": "fuyu"})


def test_eq7_counts_grouped_kv_as_it_is():
    dims = load_dims("qwen2.5-vl-7b")
    d, m, n = 3584, 18944, 1024
    # Q and O 3584 wide, K and V 4 heads x 128 = 512 wide: below the paper's 4 n d^2.
    expected = n * d * (2 * d + 2 * 512) + 2 * n * n * d + 3 * n * d * m
    assert paper_flops(dims, [n]) == expected
    assert expected < 4 * n * d * d + 2 * n * n * d + 3 * n * d * m


@pytest.mark.parametrize("preset, visual", [("qwen2.5-vl-7b", 1024), ("qwen3-vl-8b", None), ("llava-1.5-7b", None)])
def test_cli_prints_qwen_presets(capsys, preset, visual):
    argv = ["flops", "--model-config", preset] + (["--visual-tokens", str(visual)] if visual else [])
    assert main(argv + ["--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["visual_tokens"] == (576 if preset.startswith("llava") else 1024)
    assert 0 < out["pruned_tflops"] < out["baseline_tflops"] < out["full_baseline_tflops"]
    assert main(argv) == 0
    assert "full prefill TFLOPs" in capsys.readouterr().out
