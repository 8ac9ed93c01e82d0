"""The engine on LLaVA-OneVision, InternVL, Mistral 3 (Pixtral), SmolVLM and Idefics3, with the stock
model as the oracle.

Tiny random models built from configs (``pilot.testing.random_models``); inputs as each
family's processor lays them out: OneVision's base grid + anyres grid with newline features (one
image per sample) or base grid + one newline per image (several); InternVL's ``<img>`` + tiles x
16 tokens + ``</img>``; Pixtral's rows of ``[IMG]`` with ``[IMG_BREAK]`` between and ``[IMG_END]``
after; SmolVLM's tiles and global image, each behind ``<fake_token_around_image>`` and a
``<row_i_col_j>`` / ``<global-img>`` marker. Batches are left-padded and mix images of different
sizes (tile counts), so samples have different visual-token counts.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import pytest
import torch

from pilot.pruning import FastV, NoPrune, RandomPrune, TokenPool, TransPrune, attach, parse
from pilot.pruning.families import GridSegment, for_model, onevision_image_grids
from pilot.pruning.families.mistral3 import pixtral_images
from pilot.pruning.strategies import kept_count
from pilot.testing import random_models as rm
from tests.checks import perturb_after
from tests.models import internvl_inputs, mistral3_inputs, onevision_inputs, smolvlm_inputs

KEEP_ALL = TransPrune(prune_after=(2, 3, 4), keep=(1.0, 1.0, 1.0))
SCHEDULE = TransPrune(prune_after=(2, 3, 4), keep=(0.75, 0.5, 0.25))
IMAGE_TOKEN = 5  # every tiny family's image placeholder
EOS = 2


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """The models are tiny: one thread is fastest, and immune to other processes on the CPUs."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _take_text(inputs, row):
    keep = inputs["attention_mask"][row].bool()
    return {"input_ids": inputs["input_ids"][row : row + 1, keep],
            "attention_mask": inputs["attention_mask"][row : row + 1, keep]}


def _image_slice(samples, row, sizes=None):
    counts = [len(s) if sizes is None else sum(s) for s in samples]
    first = sum(counts[:row])
    return slice(first, first + counts[row])


def onevision_take(inputs, row, samples):
    images = _image_slice(samples, row)
    return {**_take_text(inputs, row), "pixel_values": inputs["pixel_values"][images],
            "image_sizes": inputs["image_sizes"][images], "batch_num_images": inputs["batch_num_images"][row : row + 1]}


def internvl_take(inputs, row, samples):
    return {**_take_text(inputs, row), "pixel_values": inputs["pixel_values"][_image_slice(samples, row, True)]}


def mistral3_take(inputs, row, samples):
    images = _image_slice(samples, row)
    return {**_take_text(inputs, row), "pixel_values": inputs["pixel_values"][images],
            "image_sizes": inputs["image_sizes"][images]}


def smolvlm_take(inputs, row, samples):
    return {**_take_text(inputs, row), "pixel_values": inputs["pixel_values"][row : row + 1]}


@dataclass(frozen=True)
class Case:
    build: Callable
    inputs: Callable  # (model, samples, suffixes) -> (inputs, visual-token counts)
    take: Callable  # (inputs, row, samples) -> the row alone, unpadded, with only its images
    samples: list  # two samples with different visual-token counts
    separators: tuple[int, ...]  # text tokens of the image layout, never pruned
    pooled: list[int]  # visual tokens per sample of ``samples`` after pool:factor=2 (None: refused)


CASES = {
    # sample 0: one 24x40 image (base 6x6 + 6x10 anyres grid with newlines); sample 1: two images,
    # each base grid + newline.
    "llava-onevision": Case(rm.random_llava_onevision, onevision_inputs, onevision_take,
                            [[(24, 40)], [(24, 24), (40, 24)]], (), [9 + 3 * 6, 2 * (9 + 1)]),
    # tiles of 4x4 tokens: sample 0 one image of 2 tiles; sample 1 two images of 1 and 3 tiles
    "internvl": Case(rm.random_internvl, internvl_inputs, internvl_take, [[2], [1, 3]],
                     (rm.INTERNVL_IMG_START, rm.INTERNVL_IMG_END), [2 * 4, 4 * 4]),
    # 4x6 tokens; 2x2 and 3x4 tokens
    "mistral3": Case(rm.random_mistral3, mistral3_inputs, mistral3_take, [[(32, 48)], [(16, 16), (24, 32)]],
                     (rm.PIXTRAL_IMG_BREAK, rm.PIXTRAL_IMG_END), [2 * 3, 1 + 2 * 2]),
    # 1x2 tiles + global; the global image alone, then 2x1 tiles + global (4x4 tokens each)
    "smolvlm": Case(rm.random_smolvlm, smolvlm_inputs, smolvlm_take, [[(1, 2)], [(0, 0), (2, 1)]],
                    (rm.SMOLVLM_FAKE_TOKEN, rm.SMOLVLM_GLOBAL_IMG, rm.SMOLVLM_FIRST_ROW_COL), [3 * 4, 4 * 4]),
    "idefics3": Case(lambda **kw: rm.random_smolvlm(idefics3=True, **kw), smolvlm_inputs, smolvlm_take,
                     [[(1, 2)], [(0, 0), (2, 1)]],
                     (rm.SMOLVLM_FAKE_TOKEN, rm.SMOLVLM_GLOBAL_IMG, rm.SMOLVLM_FIRST_ROW_COL), [3 * 4, 4 * 4]),
}


@pytest.fixture(scope="module")
def models():
    return {name: case.build() for name, case in CASES.items()}


@pytest.fixture(params=list(CASES))
def family(request, models):
    return request.param, CASES[request.param], models[request.param]


def _visual_kwargs(inputs):
    return {k: v for k, v in inputs.items() if k not in ("input_ids", "attention_mask")}


def _language_model(model):
    return for_model(model).language_model(model)


# -- tests ---------------------------------------------------------------------------------------
@torch.no_grad()
@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_keep_everything_equals_stock(family, attn):
    name, case, model = family
    if attn == "eager":
        model = case.build(attn="eager")
    inputs, counts = case.inputs(model, case.samples, [4, 6])
    assert counts[0] != counts[1]
    stock = model(**inputs).logits
    with attach(model, KEEP_ALL) as handle:
        pruned = model(**inputs).logits
    assert handle.last_trace.visual_tokens_original.tolist() == counts
    valid = inputs["attention_mask"].bool()
    assert (stock - pruned)[valid].abs().max() <= 1e-5


@torch.no_grad()
def test_baseline_goes_through_the_loop_unchanged(family):
    name, case, model = family
    inputs, counts = case.inputs(model, case.samples, [3, 2])
    stock = model(**inputs).logits
    with attach(model, NoPrune()) as handle:
        assert (model(**inputs).logits - stock)[inputs["attention_mask"].bool()].abs().max() <= 1e-5
    assert handle.last_trace.visual_tokens_per_layer[:, -1].tolist() == counts

@torch.no_grad()
def test_dropped_token_cannot_influence_later_layers(family):
    name, case, model = family
    inputs, counts = case.inputs(model, case.samples[:1], [5])
    visual = torch.nonzero(inputs["input_ids"][0] == IMAGE_TOKEN).flatten().tolist()
    with attach(model, TransPrune(prune_after=(2,), keep=(0.5,))) as handle:
        reference = model(**inputs).logits
        kept = handle.last_trace.kept[0][0].tolist()
        handle.replay_kept = handle.last_trace.kept
        dropped = next(i for i in range(counts[0]) if i not in kept)
        hook = perturb_after(model, 1, visual[dropped])  # the 2nd layer's output, before the drop
        try:
            assert torch.equal(model(**inputs).logits, reference)
        finally:
            hook.remove()
        hook = perturb_after(model, 1, visual[kept[0]])  # control: a kept token does count
        try:
            changed = model(**inputs).logits
        finally:
            hook.remove()
    assert (changed - reference).abs().max() > 1e-3


STRATEGIES = [
    SCHEDULE, TransPrune(prune_after=(2, 3, 4), keep=(0.75, 0.5, 0.25), positions="original"),
    FastV(after=2, keep=0.5), FastV(after=2, keep=0.5, positions="original"),
    RandomPrune(prune_after=(2, 4), keep=(0.5, 0.2)), RandomPrune(prune_after=(2, 4), keep=(0.5, 0.2),
                                                                  positions="original"),
    TokenPool(2), parse("pdrop:prune_after=2/3/4,ratio=0.5"), parse("divprune:keep=0.25"),
]


@torch.no_grad()
@pytest.mark.parametrize("strategy", STRATEGIES, ids=str)
def test_cached_generate_equals_uncached_recompute(family, strategy):
    name, case, model = family
    inputs, _ = case.inputs(model, case.samples, [5, 2])
    new_tokens = 5
    with attach(model, strategy) as handle:
        # An image token generated would be a placeholder without features in the recompute.
        generated = model.generate(**inputs, max_new_tokens=new_tokens, do_sample=False, min_new_tokens=new_tokens,
                                   suppress_tokens=[IMAGE_TOKEN])
        handle.replay_kept = handle.last_trace.kept if handle.last_trace.stages else None
        prompt = inputs["input_ids"].shape[1]
        for step in range(new_tokens):
            ids = generated[:, : prompt + step]
            mask = torch.cat([inputs["attention_mask"], torch.ones(2, step, dtype=torch.long)], dim=1)
            logits = model(input_ids=ids, attention_mask=mask, **_visual_kwargs(inputs), use_cache=False,
                           logits_to_keep=1).logits[:, -1]
            logits[:, [EOS, IMAGE_TOKEN]] = float("-inf")  # as min_new_tokens and suppress_tokens do in generate
            assert logits.argmax(-1).tolist() == generated[:, prompt + step].tolist()


@torch.no_grad()
@pytest.mark.parametrize("strategy", [SCHEDULE, FastV(after=2, keep=0.4), TokenPool(2)], ids=str)
def test_left_padded_batch_equals_singles(family, strategy):
    name, case, model = family
    inputs, counts = case.inputs(model, case.samples, [3, 6])
    with attach(model, strategy) as handle:
        batch_out = model.generate(**inputs, max_new_tokens=4, do_sample=False, min_new_tokens=4)
        batch_trace = handle.last_trace
        assert batch_trace.visual_tokens_original.tolist() == counts
        for row in range(2):
            single = case.take(inputs, row, case.samples)
            single_out = model.generate(**single, max_new_tokens=4, do_sample=False, min_new_tokens=4)
            assert single_out[0, -4:].tolist() == batch_out[row, -4:].tolist()
            assert handle.last_trace.visual_tokens_per_layer[0].tolist() == \
                batch_trace.visual_tokens_per_layer[row].tolist()
            for stage, kept in enumerate(handle.last_trace.kept):
                row_kept = batch_trace.kept[stage][row]
                assert kept[0].tolist() == row_kept[row_kept >= 0].tolist()


@torch.no_grad()
def test_pooling_uses_each_images_grid(family):
    name, case, model = family
    inputs, _ = case.inputs(model, case.samples, [3, 2])
    if case.pooled is None:
        return
    with attach(model, TokenPool(2)) as handle:
        model(**inputs)
    assert handle.last_trace.visual_tokens_per_layer[:, 0].tolist() == case.pooled


@torch.no_grad()
def test_separators_are_never_pruned(family):
    """The visual tokens are exactly the image placeholders; every text token, separators included,
    reaches the last layer's cache."""
    name, case, model = family
    inputs, counts = case.inputs(model, case.samples[:1], [4])
    ids = inputs["input_ids"][0]
    mask = for_model(model).visual_inputs(model, dict(inputs)).mask[0]
    assert torch.equal(mask, ids == IMAGE_TOKEN)
    assert all(bool((ids == token).any()) for token in case.separators)
    with attach(model, SCHEDULE) as handle:
        out = model(**inputs, use_cache=True)
    kept = int((handle.last_trace.kept[-1][0] >= 0).sum())
    assert kept == kept_count(counts[0], 0.25)
    text = int((ids != IMAGE_TOKEN).sum())
    assert out.cache.layers[-1].keys.shape[2] == text + kept


@torch.no_grad()
def test_bf16_runs_and_keep_all_is_close(family):
    name, case, model = family
    model = case.build(dtype=torch.bfloat16)
    inputs, _ = case.inputs(model, case.samples, [2, 4])
    inputs["pixel_values"] = inputs["pixel_values"].bfloat16()
    stock = model(**inputs).logits.float()
    with attach(model, KEEP_ALL):
        same = model(**inputs).logits.float()
    with attach(model, SCHEDULE) as handle:
        out = model.generate(**inputs, max_new_tokens=3, do_sample=False)
    valid = inputs["attention_mask"].bool()
    assert (stock - same)[valid].abs().max() < 0.05
    assert out.shape[1] == inputs["input_ids"].shape[1] + 3
    assert handle.last_trace.visual_tokens_per_layer[:, -1].tolist() == [
        kept_count(n, 0.25) for n in handle.last_trace.visual_tokens_original.tolist()
    ]
    if case.pooled is not None:
        with attach(model, TokenPool(2)) as handle:
            model(**inputs)
        assert handle.last_trace.visual_tokens_per_layer[:, 0].tolist() == case.pooled


def test_position_modes_default_to_compact(family):
    name, case, model = family
    with attach(model, "transprune") as handle:
        assert handle.position_mode == "compact"
    with attach(model, "fastv:after=2,keep=0.5,positions=original") as handle:
        assert handle.position_mode == "original"


# -- family specifics ------------------------------------------------------------------------------
@torch.no_grad()
def test_onevision_pooling_keeps_one_newline_per_pooled_row(models):
    model = models["llava-onevision"]
    inputs, _ = onevision_inputs(model, CASES["llava-onevision"].samples, [3, 2])
    with attach(model, TokenPool(2)) as handle:
        model(**inputs)
    origins = handle.last_trace.pooled_origin
    # sample 0: base 6x6 -> 3x3 windows; anyres 6x10 (+ newline) from token 36: rows 0, 2, 4
    base = [r * 12 + c * 2 for r in range(3) for c in range(3)]
    anyres = [36 + r * 22 + c for r in range(3) for c in (0, 2, 4, 6, 8, 10)]
    assert origins[0].tolist() == base + anyres
    # sample 1: two images, each 3x3 windows of its base grid and its newline passed through
    assert origins[1, :20].tolist() == base + [36] + [37 + o for o in base] + [73]
    # the newline features are candidates for pruning, as in LLaVA-NeXT
    with attach(model, SCHEDULE) as handle:
        model(**inputs)
    stage = handle.last_trace.stages[0]
    assert 36 + 10 in stage.candidates[0].tolist()


@torch.no_grad()
def test_onevision_anyres_max_shrinks_the_grid():
    """anyres_max_1: a grid larger than one crop is interpolated down (12x12 to 6x6) before the newlines."""
    model = rm.random_llava_onevision(vision_aspect_ratio="anyres_max_1", layers=3)
    grids = onevision_image_grids(model.config, (48, 48))
    assert (grids[1].rows, grids[1].cols) == (6, 6)
    inputs, counts = onevision_inputs(model, [[(48, 48)], [(24, 40)]], [3, 2])
    stock = model(**inputs).logits
    keep_all = TransPrune(prune_after=(1,), keep=(1.0,))
    with attach(model, keep_all):
        assert (model(**inputs).logits - stock)[inputs["attention_mask"].bool()].abs().max() <= 1e-5
    with attach(model, TokenPool(2)) as handle:
        model(**inputs)
    # 24x40: the unpadded 6x10 grid is 1.29 times the one-crop budget, shrunk to 4x7
    assert counts == [36 + 6 * 7, 36 + 4 * 8]
    assert handle.last_trace.visual_tokens_per_layer[:, 0].tolist() == [9 + 3 * 4, 9 + 2 * 5]


@torch.no_grad()
def test_pixtral_rows_group_into_images(models):
    model = models["mistral3"]
    inputs, _ = mistral3_inputs(model, [[(16, 16), (24, 32)], [(32, 48)]], [3, 2])
    ids = inputs["input_ids"][0]
    keep = inputs["attention_mask"][0].bool()
    ids = ids[keep]
    visual = ids == IMAGE_TOKEN
    positions = torch.nonzero(visual)
    edges = torch.diff(torch.nn.functional.pad(visual.long(), (1, 1)))
    runs = (torch.nonzero(edges < 0).flatten() - torch.nonzero(edges > 0).flatten()).tolist()
    assert runs == [2, 2, 4, 4, 4]
    assert pixtral_images(runs, positions) == [(0, 2, 2), (4, 3, 4)]
    # two images of one width, back to back, read as one (positions cannot tell [IMG_END] from [IMG_BREAK])
    inputs, _ = mistral3_inputs(model, [[(16, 16), (16, 16)]], [3])
    visual = inputs["input_ids"][0] == IMAGE_TOKEN
    assert pixtral_images([2, 2, 2, 2], torch.nonzero(visual)) == [(0, 4, 2)]


@torch.no_grad()
def test_pixtral_images_are_told_apart_by_their_token_ids(models):
    """Two same-width images back to back read as one 4x2 image from positions alone; the prompt's
    [IMG_END] separates them, so pooling by 3 gives one token per 2x2 image (origins 0 and 4), not
    two for a 4x2 grid (origins 0 and 6)."""
    model = models["mistral3"]
    inputs, _ = mistral3_inputs(model, [[(16, 16), (16, 16)]], [3])
    with attach(model, TokenPool(3)) as handle:
        model(**inputs)
    assert handle.last_trace.pooled_origin[0].tolist() == [0, 4]
    with attach(model, "divprune:keep=0.5") as handle:  # per image: 2 of each image's 4 tokens
        model(**inputs)
    kept = handle.last_trace.kept[0][0].tolist()
    assert sum(k < 4 for k in kept) == 2 and sum(k >= 4 for k in kept) == 2


@torch.no_grad()
def test_mistral_sliding_window_is_reproduced_where_it_binds():
    """A window of 8 (every layer, as Mistral configs without layer_types): prompts of 13 and 66
    tokens; keep-all equals the stock model in prefill and through the sliding caches in decoding."""
    model = rm.random_mistral3(sliding_window=8, layers=3)
    for samples, suffix in (([[(16, 16)]], [3]), ([[(48, 48)]], [20])):
        inputs, _ = mistral3_inputs(model, samples, suffix)
        stock_logits = model(**inputs).logits
        stock = model.generate(**inputs, max_new_tokens=4, do_sample=False, min_new_tokens=4,
                               output_scores=True, return_dict_in_generate=True)
        with attach(model, TransPrune(prune_after=(1,), keep=(1.0,))):
            assert (model(**inputs).logits - stock_logits).abs().max() <= 1e-5
            ours = model.generate(**inputs, max_new_tokens=4, do_sample=False, min_new_tokens=4,
                                  output_scores=True, return_dict_in_generate=True)
        assert torch.equal(stock.sequences, ours.sequences)
        for a, b in zip(stock.scores, ours.scores, strict=True):
            finite = a.isfinite()
            assert (a - b)[finite].abs().max() <= 1e-4


def test_smolvlm_language_model_is_the_text_model(models):
    for name in ("smolvlm", "idefics3"):
        model = models[name]
        assert _language_model(model) is model.model.text_model
        assert for_model(model).name == name


@torch.no_grad()
def test_internvl_with_a_qwen3_language_model():
    """InternVL3.5 pairs the tower with a Qwen3 LM (per-head q/k norms): keep-all is the stock model,
    the scores run through its norms."""
    model = rm.random_internvl(lm="qwen3")
    assert type(_language_model(model)).__name__ == "Qwen3Model"
    inputs, counts = internvl_inputs(model, CASES["internvl"].samples, [4, 2])
    stock = model(**inputs).logits
    with attach(model, KEEP_ALL):
        assert (model(**inputs).logits - stock)[inputs["attention_mask"].bool()].abs().max() <= 1e-5
    with attach(model, SCHEDULE) as handle:
        model.generate(**inputs, max_new_tokens=2, do_sample=False)
    assert handle.last_trace.visual_tokens_per_layer[:, -1].tolist() == [kept_count(n, 0.25) for n in counts]


# -- the cost model ----------------------------------------------------------------------------------
FLOP_CASES = {  # one sample each, and what sizes its vision tower
    "llava-onevision": ([[(24, 40)]], {"crops": 3}),  # the base crop and 1x2 anyres crops
    "internvl": ([[1, 2]], {"crops": 3}),
    "mistral3": ([[(32, 48)]], {"image_grids": [[1, 8, 12]]}),  # (1, rows, cols) in 4-px patches
    "smolvlm": ([[(1, 2), (0, 0)]], {"crops": 4}),  # two tiles and two global images
    "idefics3": ([[(2, 1)]], {"crops": 3}),
}


@torch.no_grad()
@pytest.mark.parametrize("name", list(FLOP_CASES))
def test_full_figure_matches_flop_counter(name):
    """FlopCounterMode counts eager attention's matmuls (not CPU sdpa kernels): eager models."""
    from torch.utils.flop_counter import FlopCounterMode

    from pilot.pruning.flops import ModelDims, full_prefill_flops

    case = CASES[name]
    samples, tower = FLOP_CASES[name]
    model = case.build(attn="eager", layers=5)
    inputs, counts = case.inputs(model, samples, [5])
    ids = inputs["input_ids"][0]
    visual = torch.nonzero(ids == IMAGE_TOKEN).flatten()
    text, instruction = len(ids) - len(visual), len(ids) - 1 - int(visual.max())
    dims = ModelDims.from_config(model.config)
    assert dims.family == model.config.model_type
    strategies = ["baseline", "transprune:prune_after=2/3/4,keep=0.75/0.5/0.25", "fastv:after=2,keep=0.5"]
    strategies += ["pool:factor=2"] if case.pooled is not None else []
    for strategy in strategies:
        with attach(model, strategy) as handle, FlopCounterMode(display=False) as counter:
            model(**inputs, logits_to_keep=1, use_cache=False)
        estimated = full_prefill_flops(dims, handle.last_trace.visual_tokens_per_layer[0].tolist(), text, strategy,
                                       instruction, **tower)
        assert abs(estimated / counter.get_total_flops() - 1) < 1e-3, strategy
    # the runner's path, the count alone: crops from the tokens (OneVision: 102 tokens ~ 3 crops of 36)
    with FlopCounterMode(display=False) as counter:
        model(**inputs, logits_to_keep=1, use_cache=False)
    estimated = full_prefill_flops(dims, [counts[0]] * dims.layers, text, visual_tokens_original=counts[0])
    assert abs(estimated / counter.get_total_flops() - 1) < 1e-3


@pytest.mark.parametrize("preset, tokens, per_crop", [
    ("internvl3-8b", 7 * 256, 256), ("llava-onevision-7b", 729 + 81 * 82, 729),
    ("mistral-small-3.1-24b", 1024, None), ("smolvlm2-2.2b", 17 * 81, 81),
])
def test_flops_presets_print(capsys, preset, tokens, per_crop):
    import json

    from pilot.cli import main
    from pilot.pruning.flops import default_visual_tokens, load_dims

    dims = load_dims(preset)
    assert default_visual_tokens(dims) == tokens
    assert (None if dims.dynamic_resolution else dims.tokens_per_crop) == per_crop
    assert main(["flops", "--model-config", preset, "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["visual_tokens"] == tokens
    assert 0 < out["pruned_tflops"] < out["baseline_tflops"] < out["full_baseline_tflops"]
    assert 0 < out["full_pruned_tflops"] < out["full_baseline_tflops"]


# -- grids read off the processor's inputs (for pictures) ----------------------------------------------
@torch.no_grad()
def test_prompt_grids_agree_with_the_engines_reading(family):
    """``prompt_grids`` (from ids, sizes) gives per sample what ``image_grids`` reads off the LM's
    input embeddings (Mistral 3: exactly, where positions alone cannot tell adjacent images)."""
    from pilot.pruning.engine import _run_lengths

    name, case, model = family
    adapter = for_model(model)
    inputs, counts = case.inputs(model, case.samples, [3, 2])
    grids = adapter.prompt_grids(model, inputs)
    assert [sum(g.length for image in sample for g in image) for sample in grids] == counts
    if case.pooled is None:  # Pixtral: one grid per image, rows x cols
        assert grids == [[[GridSegment(0, 4, 6)]], [[GridSegment(0, 2, 2)], [GridSegment(0, 3, 4)]]]
        adjacent, _ = mistral3_inputs(model, [[(16, 16), (16, 16)]], [3])
        assert adapter.prompt_grids(model, adjacent) == [[[GridSegment(0, 2, 2)]] * 2]
        return
    captured = {}
    hook = _language_model(model).register_forward_pre_hook(
        lambda module, args, kwargs: captured.update(kwargs), with_kwargs=True)
    try:
        model(**inputs)
    finally:
        hook.remove()
    for row, sample in enumerate(grids):
        visual = torch.nonzero(inputs["input_ids"][row] == IMAGE_TOKEN).flatten()
        tokens = captured["inputs_embeds"][row, visual]
        assert adapter.image_grids(model, tokens, visual[:, None], _run_lengths(visual)) == sample
