"""The cost model: the paper's figures, and the full figure against torch's FLOP counter."""

import json

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode
from transformers.models.llava_next.modeling_llava_next import image_size_to_num_patches

from pilot.cli import main
from pilot.pruning import FastV, TokenPool, TransPrune, attach
from pilot.pruning.flops import ModelDims, estimate, full_prefill_flops, load_dims
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
    from pilot.pruning.flops import PRESETS

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
