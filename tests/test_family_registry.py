"""Every registered family is whole: its cost, a preset, a builder and an overlay (docs/families.md).

One test per family in ``pilot.pruning.families.FAMILIES``: a family added without one of them
fails here, naming what is missing.
"""

from __future__ import annotations

import importlib
import json
import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from dashboard.charts import token_grids
from pilot.generation import sample_grids
from pilot.models import LoadedModel
from pilot.pruning import families
from pilot.pruning.families import FAMILIES, MODEL_TYPES, Family, by_name, for_model
from pilot.pruning.flops import ModelDims, default_visual_tokens, estimate, full_prefill_flops, load_dims
from pilot.testing import BUILDERS
from tests.models import (
    gemma_inputs,
    internvl_inputs,
    llava_inputs,
    mistral3_inputs,
    next_inputs,
    onevision_inputs,
    qwen_inputs,
    smolvlm_inputs,
)

# Per family: one prompt with one image, as its processor lays it out -> (inputs, visual tokens).
ONE_IMAGE = {
    "llava": lambda model: (llava_inputs([2], [3]), 36),
    "llava_next": lambda model: _first(next_inputs(model, [(24, 40)], [3])),
    "qwen2_5_vl": lambda model: _first(qwen_inputs(model, [[(4, 6)]], [3])),
    "qwen3_vl": lambda model: _first(qwen_inputs(model, [[(4, 6)]], [3])),
    "gemma3": lambda model: (gemma_inputs(model, [1], [3]), model.config.mm_tokens_per_image),
    "llava_onevision": lambda model: _first(onevision_inputs(model, [[(24, 40)]], [3])),
    "internvl": lambda model: _first(internvl_inputs(model, [[2]], [3])),
    "mistral3": lambda model: _first(mistral3_inputs(model, [[(32, 48)]], [3])),
    "smolvlm": lambda model: _first(smolvlm_inputs(model, [[(1, 2)]], [3])),
    "idefics3": lambda model: _first(smolvlm_inputs(model, [[(1, 2)]], [3])),
}


def _first(made):
    inputs, counts = made
    return inputs, counts[0]


def test_every_family_module_is_registered():
    """Each ``Family`` subclass defined in a module of the package has its adapter in ``FAMILIES``
    (the one line a new family adds outside its module), once, with its own name."""
    defined = set()
    for module_info in pkgutil.iter_modules(families.__path__):
        module = importlib.import_module(f"{families.__name__}.{module_info.name}")
        defined |= {value for value in vars(module).values()
                    if isinstance(value, type) and issubclass(value, Family) and value is not Family
                    and value.__module__ == module.__name__}
    assert {type(family) for family in FAMILIES} == defined
    names = [family.name for family in FAMILIES]
    assert len(set(names)) == len(names) and all(names)
    classes = [name for family in FAMILIES for name in family.classes]
    assert len(set(classes)) == len(classes)


@pytest.mark.parametrize("family", FAMILIES, ids=lambda family: family.name)
def test_family_has_cost_preset_builder_and_overlay(family):
    # A preset of a released model, read by this family's adapter and priced.
    assert family.presets, f"{family.name}: no preset (public config.json dimensions) in its module"
    for name, config in family.presets.items():
        assert by_name(config["model_type"]) is family, name
        dims = load_dims(name)
        tokens = default_visual_tokens(dims)
        assert tokens > 0
        result = estimate(dims, tokens, "transprune")
        assert 0 < result["pruned_tflops"] < result["baseline_tflops"] < result["full_baseline_tflops"], name
    assert family.max_images >= 1

    # A builder of a tiny random model that the engine recognises as this family.
    assert family.name in BUILDERS, f"{family.name}: no tiny model builder in pilot.testing.BUILDERS"
    assert family.name in ONE_IMAGE, f"{family.name}: no one-image inputs in {__name__}.ONE_IMAGE"
    torch.manual_seed(0)
    model = BUILDERS[family.name](layers=2, attn="eager")
    assert for_model(model) is family
    inputs, n_visual = ONE_IMAGE[family.name](model)

    # The overlay: the grids the runner stores for the sample, which the dashboard draws.
    loaded = LoadedModel(model=model, processor=None, name="tiny", path=Path("."), family=family.name,
                         config_hash="", depth=2)
    grids, grid_thw = sample_grids(loaded, inputs)
    assert grids[0] is not None, f"{family.name}: the prompt's image grids cannot be read (prompt_grids)"
    drawn, note = token_grids(n_visual, grids[0])
    assert note is None and drawn, note

    # Its cost: the adapter's dimensions of the tiny model, and the tower sized as a run sizes it,
    # match what FlopCounterMode counts in the stock forward.
    dims = ModelDims.from_config(model.config)
    assert dims.family in MODEL_TYPES and by_name(dims.family) is family
    tower = family.tower_size(dims, model, inputs, 0, n_visual, grid_thw[0])
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(**inputs, logits_to_keep=1, use_cache=False)
    text_tokens = int(inputs["attention_mask"][0].sum()) - n_visual
    estimated = full_prefill_flops(dims, [n_visual] * dims.layers, text_tokens, **tower)
    assert estimated == pytest.approx(counter.get_total_flops(), rel=1e-3), tower


def test_cost_side_imports_without_torch():
    """``pilot flops`` and the dashboard read every family's cost without torch: the cost model,
    the adapters' dimensions, presets, typical tokens and tower FLOPs. (``pilot.pruning``'s own
    ``__init__`` exports the engine, so the package is stood in for by its bare path here.)"""
    root = Path(__file__).resolve().parents[1]
    script = f"""
import json, sys, types
package = types.ModuleType("pilot.pruning")
package.__path__ = [{str(root / "pilot" / "pruning")!r}]
sys.modules["pilot.pruning"] = package
from pilot.pruning import flops
from pilot.pruning.families import FAMILIES
out = {{}}
for name in flops.PRESETS:
    dims = flops.load_dims(name)
    out[name] = flops.estimate(dims, flops.default_visual_tokens(dims), "transprune")["full_baseline_tflops"]
print(json.dumps({{"torch": "torch" in sys.modules, "families": len(FAMILIES), "presets": out}}))
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=root, check=True)
    report = json.loads(result.stdout)
    assert report["torch"] is False
    assert report["families"] == len(FAMILIES)
    assert set(report["presets"]) == {name for family in FAMILIES for name in family.presets}
    assert all(value > 0 for value in report["presets"].values())
