"""The engine on Gemma 3, with the stock model as the oracle: bidirectional attention inside each
image, sliding-window layers (window 12, shorter than the prompts, so windows bind and the
sliding caches are cut while decoding), separate rotary bases for local and global layers."""

import pytest
import torch

from pilot.pruning import FastV, NoPrune, RandomPrune, TokenPool, TransPrune, attach
from pilot.testing.random_models import GEMMA_IMAGE_TOKEN, random_gemma3
from tests.checks import perturb_after, reference_ttv
from tests.models import gemma_inputs, gemma_take

KEEP_ALL = TransPrune(prune_after=(1, 3, 4), keep=(1.0, 1.0, 1.0))
SCHEDULE = TransPrune(prune_after=(1, 3, 4), keep=(0.75, 0.5, 0.25))
IMAGES = [1, 2]  # images per sample: 16 and 32 visual tokens
SPECIAL = [3, 4, GEMMA_IMAGE_TOKEN]


@pytest.fixture(scope="module")
def gemma():
    return random_gemma3()


@torch.no_grad()
@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_keep_everything_equals_stock(attn):
    model = random_gemma3(attn=attn)
    inputs = gemma_inputs(model, IMAGES, [4, 6])
    stock = model(**inputs).logits
    with attach(model, KEEP_ALL) as handle:
        pruned = model(**inputs).logits
    assert handle.last_trace.visual_tokens_original.tolist() == [16, 32]
    valid = inputs["attention_mask"].bool()
    assert (stock - pruned)[valid].abs().max() <= 1e-5


@torch.no_grad()
def test_keep_everything_decodes_as_stock_through_the_sliding_caches(gemma):
    inputs = gemma_inputs(gemma, IMAGES, [4, 6])
    assert inputs["input_ids"].shape[1] > 3 * gemma.config.text_config.sliding_window
    stock = gemma.generate(**inputs, max_new_tokens=6, do_sample=False, min_new_tokens=6,
                           output_scores=True, return_dict_in_generate=True)
    with attach(gemma, KEEP_ALL):
        ours = gemma.generate(**inputs, max_new_tokens=6, do_sample=False, min_new_tokens=6,
                              output_scores=True, return_dict_in_generate=True)
    assert torch.equal(stock.sequences, ours.sequences)
    for a, b in zip(stock.scores, ours.scores, strict=True):
        finite = a.isfinite()
        assert (a - b)[finite].abs().max() <= 1e-4


@torch.no_grad()
def test_image_tokens_see_each_other_both_ways(gemma):
    """Control: without token_type_ids the stock model runs plain causal, and the first image
    token's output changes; with them the engine agrees with it. The engine refuses the causal
    call (issue 19): an image prompt without its token types is an input built by hand."""
    inputs = gemma_inputs(gemma, [1], [4])
    causal = {k: v for k, v in inputs.items() if k != "token_type_ids"}
    first_image = 3
    stock_bidirectional = gemma(**inputs, output_hidden_states=True).hidden_states[2][0, first_image]
    stock_causal = gemma(**causal, output_hidden_states=True).hidden_states[2][0, first_image]
    assert (stock_bidirectional - stock_causal).abs().max() > 1e-3
    stock = gemma(**inputs).logits
    with attach(gemma, KEEP_ALL):
        ours = gemma(**inputs).logits
        with pytest.raises(ValueError, match="no token_type_ids"):
            gemma(**causal)
    assert (ours - stock).abs().max() <= 1e-5

@torch.no_grad()
def test_dropped_token_cannot_influence_later_layers(gemma):
    inputs = gemma_inputs(gemma, [1], [5])
    first_image = 3  # bos, 9, begin of image
    with attach(gemma, TransPrune(prune_after=(2,), keep=(0.5,))) as handle:
        reference = gemma(**inputs).logits
        kept = handle.last_trace.kept[0][0].tolist()
        handle.replay_kept = handle.last_trace.kept
        dropped = next(i for i in range(16) if i not in kept)
        hook = perturb_after(gemma, 1, first_image + dropped)
        try:
            assert torch.equal(gemma(**inputs).logits, reference)
        finally:
            hook.remove()
        hook = perturb_after(gemma, 1, first_image + kept[0])
        try:
            assert (gemma(**inputs).logits - reference).abs().max() > 1e-3
        finally:
            hook.remove()


@torch.no_grad()
@pytest.mark.parametrize("positions", ["compact", "original"])
@pytest.mark.parametrize(
    "strategy", [SCHEDULE, FastV(after=2, keep=0.5), RandomPrune(prune_after=(2, 4), keep=(0.5, 0.2)), TokenPool(2),
                 NoPrune()], ids=str)
def test_cached_generate_equals_uncached_recompute(gemma, strategy, positions):
    if isinstance(strategy, TransPrune | FastV | RandomPrune):
        strategy = type(strategy)(**{**strategy.__dict__, "positions": positions})
    inputs = gemma_inputs(gemma, IMAGES, [5, 2])
    new_tokens = 5
    with attach(gemma, strategy) as handle:
        generated = gemma.generate(**inputs, max_new_tokens=new_tokens, do_sample=False, min_new_tokens=new_tokens,
                                   suppress_tokens=SPECIAL)  # a generated image token would start an image
        handle.replay_kept = handle.last_trace.kept if handle.last_trace.stages else None
        prompt = inputs["input_ids"].shape[1]
        for step in range(new_tokens):
            ids = generated[:, : prompt + step]
            mask = torch.cat([inputs["attention_mask"], torch.ones(2, step, dtype=torch.long)], dim=1)
            logits = gemma(input_ids=ids, attention_mask=mask, token_type_ids=(ids == GEMMA_IMAGE_TOKEN).long(),
                           pixel_values=inputs["pixel_values"], use_cache=False, logits_to_keep=1).logits[:, -1]
            logits[:, [2, *SPECIAL]] = float("-inf")  # as min_new_tokens and suppress_tokens do in generate
            assert logits.argmax(-1).tolist() == generated[:, prompt + step].tolist()


@torch.no_grad()
@pytest.mark.parametrize("strategy", [SCHEDULE, FastV(after=2, keep=0.4), TokenPool(2)], ids=str)
def test_left_padded_batch_equals_singles(gemma, strategy):
    inputs = gemma_inputs(gemma, IMAGES, [3, 6])
    with attach(gemma, strategy) as handle:
        batch_out = gemma.generate(**inputs, max_new_tokens=4, do_sample=False, min_new_tokens=4)
        batch_trace = handle.last_trace
        for row in range(2):
            single = gemma_take(inputs, IMAGES, row)
            single_out = gemma.generate(**single, max_new_tokens=4, do_sample=False, min_new_tokens=4)
            assert single_out[0, -4:].tolist() == batch_out[row, -4:].tolist()
            for stage, kept in enumerate(handle.last_trace.kept):
                row_kept = batch_trace.kept[stage][row]
                assert kept[0].tolist() == row_kept[row_kept >= 0].tolist()


@torch.no_grad()
def test_pooling_uses_each_images_square_grid(gemma):
    inputs = gemma_inputs(gemma, [2], [3])
    with attach(gemma, TokenPool(2)) as handle:
        gemma(**inputs)
    assert handle.last_trace.visual_tokens_per_layer[0, 0] == 2 * 4
    assert handle.last_trace.pooled_origin[0].tolist() == [0, 2, 8, 10, 16, 18, 24, 26]


@torch.no_grad()
def test_detach_restores_and_bf16_runs(gemma):
    inputs = gemma_inputs(gemma, IMAGES, [2, 3])
    stock = gemma(**inputs).logits
    with attach(gemma, SCHEDULE):
        assert gemma(**inputs).logits.shape != stock.shape
    assert torch.equal(gemma(**inputs).logits, stock)
    model = random_gemma3(dtype=torch.bfloat16)
    inputs["pixel_values"] = inputs["pixel_values"].bfloat16()
    # A plain forward numbers a left-padded row from its padding on (generate does not); in bf16 the
    # rotary angles then round differently, so give the stock model the padding-aware positions.
    positions = (inputs["attention_mask"].cumsum(dim=1) - 1).clamp_min(0)
    stock = model(**inputs, position_ids=positions).logits.float()
    with attach(model, KEEP_ALL):
        same = model(**inputs).logits.float()
    with attach(model, SCHEDULE):
        out = model.generate(**inputs, max_new_tokens=3, do_sample=False)
    assert (stock - same)[inputs["attention_mask"].bool()].abs().max() < 0.05
    assert out.shape[1] == inputs["input_ids"].shape[1] + 3

@torch.no_grad()
def test_ttv_and_iga_equal_a_direct_computation():
    """TTV reads each sub-module's output after Gemma's output norm; IGA is the stock attention
    map of the (sliding-window) layer after the stage, rows = the text after the last image."""
    model = random_gemma3(attn="eager", layers=5, sliding_window=64)
    inputs = gemma_inputs(model, [2], [6])
    inputs.pop("attention_mask")
    ids = inputs["input_ids"][0].tolist()
    visual = [i for i, t in enumerate(ids) if t == GEMMA_IMAGE_TOKEN]
    after_last = list(range(visual[-1] + 1, len(ids)))
    layers = model.model.language_model.layers
    assert model.config.text_config.layer_types[3] == "sliding_attention"
    captured = {}
    hooks = []
    for i in (1, 2):
        hooks.append(layers[i].input_layernorm.register_forward_hook(
            lambda m, a, o, i=i: captured.__setitem__(("attn_in", i), o)))
        hooks.append(layers[i].post_attention_layernorm.register_forward_hook(
            lambda m, a, o, i=i: captured.__setitem__(("attn_out", i), o)))
        hooks.append(layers[i].pre_feedforward_layernorm.register_forward_hook(
            lambda m, a, o, i=i: captured.__setitem__(("mlp_in", i), o)))
        hooks.append(layers[i].post_feedforward_layernorm.register_forward_hook(
            lambda m, a, o, i=i: captured.__setitem__(("mlp_out", i), o)))
    stock = model(**inputs, output_attentions=True)
    for hook in hooks:
        hook.remove()
    ttv = sum(reference_ttv(captured[(f"{kind}_in", i)], captured[(f"{kind}_out", i)])[0]
              for kind in ("attn", "mlp") for i in (1, 2))
    ttv_visual = ttv[visual] / ttv[visual].sum()
    attention = stock.attentions[3][0].double()
    iga = attention[:, after_last][:, :, visual].mean(dim=(0, 1))
    iga = iga / iga.sum()

    strategy = TransPrune(prune_after=(3,), keep=(0.5,), accumulate_from=2, alpha=0.3)
    with attach(model, strategy) as handle:
        model(**inputs)
    stage = handle.last_trace.stages[0]
    assert torch.allclose(stage.ttv[0].double(), ttv_visual, atol=1e-6)
    assert torch.allclose(stage.iga[0].double(), iga, atol=1e-6)


def test_refused_configurations_say_why():
    model = random_gemma3()
    model.model.language_model.config.attn_logit_softcapping = 50.0
    with pytest.raises(ValueError, match="soft-capping"):
        attach(model, "transprune")


@torch.no_grad()
def test_full_prefill_figure_matches_flop_counter():
    """FlopCounterMode counts eager attention's matmuls (not CPU sdpa kernels): an eager model."""
    from torch.utils.flop_counter import FlopCounterMode

    from pilot.pruning.flops import ModelDims, full_prefill_flops, load_dims

    model = random_gemma3(attn="eager", layers=5)
    inputs = gemma_inputs(model, [1], [5])
    inputs.pop("attention_mask")
    ids = inputs["input_ids"][0]
    visual = torch.nonzero(ids == GEMMA_IMAGE_TOKEN).flatten()
    text, instruction = len(ids) - len(visual), len(ids) - 1 - int(visual.max())
    dims = ModelDims.from_config(model.config)
    assert (dims.family, dims.tokens_per_crop) == ("gemma3", 16)
    for strategy in ["baseline", "transprune:prune_after=2/3/4,keep=0.75/0.5/0.25", "fastv:after=2,keep=0.5",
                     "pool:factor=2"]:
        with attach(model, strategy) as handle, FlopCounterMode(display=False) as counter:
            model(**inputs, logits_to_keep=1, use_cache=False)
        estimated = full_prefill_flops(dims, handle.last_trace.visual_tokens_per_layer[0].tolist(), text, strategy,
                                       instruction, visual_tokens_original=16)
        assert abs(estimated / counter.get_total_flops() - 1) < 1e-3, strategy
    preset = load_dims("gemma-3-12b")
    assert (preset.tokens_per_crop, preset.layers, preset.q_width) == (256, 48, 16 * 256)
