"""The engine on Qwen2.5-VL and Qwen3-VL (dense and MoE), with the stock model as the oracle.

Tiny random models built from configs; inputs as the processors make them: vision start/end
tokens around each image's merged-patch tokens, ``mm_token_type_ids`` and ``image_grid_thw``,
several images of different sizes per prompt, left padding.
"""

import pytest
import torch

from pilot.pruning import FastV, NoPrune, RandomPrune, TokenPool, TransPrune, attach
from pilot.testing.random_models import random_qwen2_5_vl, random_qwen3_vl
from tests.checks import perturb_after, reference_ttv
from tests.models import qwen_inputs, qwen_take

KEEP_ALL = TransPrune(prune_after=(1, 3, 4), keep=(1.0, 1.0, 1.0))
SCHEDULE = TransPrune(prune_after=(1, 3, 4), keep=(0.75, 0.5, 0.25))
BUILDERS = {
    "qwen2.5-vl": random_qwen2_5_vl,
    "qwen3-vl": random_qwen3_vl,
    "qwen3-vl-moe": lambda **kw: random_qwen3_vl(moe=True, **kw),
}
IMAGES = [[(8, 12)], [(4, 4), (8, 8)]]  # sample 0: one 4x6-token image; sample 1: 2x2 and 4x4


@pytest.fixture(scope="module", params=list(BUILDERS))
def qwen(request):
    return BUILDERS[request.param]()


@torch.no_grad()
@pytest.mark.parametrize("family", list(BUILDERS))
@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_keep_everything_equals_stock(family, attn):
    model = BUILDERS[family](attn=attn)
    inputs, counts = qwen_inputs(model, IMAGES, [4, 6])
    stock = model(**inputs).logits
    with attach(model, KEEP_ALL) as handle:
        pruned = model(**inputs).logits
    assert handle.last_trace.visual_tokens_original.tolist() == counts
    valid = inputs["attention_mask"].bool()
    assert (stock - pruned)[valid].abs().max() <= 1e-5


@torch.no_grad()
def test_tokens_really_removed_per_sample(qwen):
    inputs, counts = qwen_inputs(qwen, IMAGES, [4, 6])
    with attach(qwen, SCHEDULE) as handle:
        out = qwen(**inputs, use_cache=True)
    trace = handle.last_trace
    assert trace.visual_tokens_per_layer.tolist() == [
        [24, 18, 18, 12, 6, 6], [20, 15, 15, 10, 5, 5],
    ]
    for stage in trace.kept:
        for row in range(2):
            kept = stage[row][stage[row] >= 0].tolist()
            assert kept == sorted(kept) and max(kept) < counts[row]
    text = inputs["input_ids"].shape[1] - 20  # the longer row sets the padded width
    assert out.cache.layers[-1].keys.shape[2] < text + 20

@torch.no_grad()
def test_dropped_token_cannot_influence_later_layers(qwen):
    inputs, _ = qwen_inputs(qwen, [[(8, 12)]], [5])
    first_visual = 3  # bos, 9, vision start
    with attach(qwen, TransPrune(prune_after=(2,), keep=(0.5,))) as handle:
        reference = qwen(**inputs).logits
        kept = handle.last_trace.kept[0][0].tolist()
        handle.replay_kept = handle.last_trace.kept
        dropped = next(i for i in range(24) if i not in kept)
        hook = perturb_after(qwen, 1, first_visual + dropped)  # the 2nd layer's output
        try:
            perturbed = qwen(**inputs).logits
        finally:
            hook.remove()
        assert torch.equal(reference, perturbed)
        hook = perturb_after(qwen, 1, first_visual + kept[0])
        try:
            changed = qwen(**inputs).logits
        finally:
            hook.remove()
    assert (changed - reference).abs().max() > 1e-3


@torch.no_grad()
def test_deepstack_features_of_dropped_tokens_go_too():
    """A stage inside the DeepStack layers: after layer 1 (DeepStack adds after layers 1 and 2)."""
    model = random_qwen3_vl(deepstack_layers=(0, 1))
    inputs, _ = qwen_inputs(model, [[(8, 12)]], [5])
    mergers = model.model.visual.deepstack_merger_list

    def perturb(merger, token):
        def hook(module, args, output):
            output = output.clone()
            output[token] += 100.0
            return output

        return merger.register_forward_hook(hook)

    with attach(model, TransPrune(prune_after=(1,), keep=(0.5,))) as handle:
        reference = model(**inputs).logits
        kept = handle.last_trace.kept[0][0].tolist()
        handle.replay_kept = handle.last_trace.kept
        dropped = next(i for i in range(24) if i not in kept)
        for merger in mergers:  # the features added after layer 1 (before the drop) and after layer 2
            hook = perturb(merger, dropped)
            try:
                assert torch.equal(model(**inputs).logits, reference)
            finally:
                hook.remove()
        hook = perturb(mergers[1], kept[0])  # a kept token's DeepStack features still count
        try:
            assert (model(**inputs).logits - reference).abs().max() > 1e-3
        finally:
            hook.remove()


@torch.no_grad()
@pytest.mark.parametrize(
    "strategy",
    [SCHEDULE, FastV(after=2, keep=0.5), RandomPrune(prune_after=(2, 4), keep=(0.5, 0.2)), TokenPool(2),
     NoPrune()],
    ids=str,
)
def test_cached_generate_equals_uncached_recompute(qwen, strategy):
    inputs, _ = qwen_inputs(qwen, IMAGES, [5, 2])
    new_tokens = 5
    with attach(qwen, strategy) as handle:
        generated = qwen.generate(**inputs, max_new_tokens=new_tokens, do_sample=False, min_new_tokens=new_tokens)
        handle.replay_kept = handle.last_trace.kept if handle.last_trace.stages else None
        prompt = inputs["input_ids"].shape[1]
        for step in range(new_tokens):
            ids = generated[:, : prompt + step]
            mask = torch.cat([inputs["attention_mask"], torch.ones(2, step, dtype=torch.long)], dim=1)
            types = torch.cat([inputs["mm_token_type_ids"], torch.zeros(2, step, dtype=torch.int)], dim=1)
            logits = qwen(input_ids=ids, attention_mask=mask, mm_token_type_ids=types,
                          pixel_values=inputs["pixel_values"], image_grid_thw=inputs["image_grid_thw"],
                          use_cache=False, logits_to_keep=1).logits[:, -1]
            logits[:, 2] = float("-inf")  # end of text, as min_new_tokens masks it in generate
            assert logits.argmax(-1).tolist() == generated[:, prompt + step].tolist()


@torch.no_grad()
def test_decoding_continues_the_stock_numbering(qwen):
    """Keep-everything through generate gives the stock model's tokens (M-RoPE and rope_deltas)."""
    inputs, _ = qwen_inputs(qwen, IMAGES, [5, 2])
    stock = qwen.generate(**inputs, max_new_tokens=6, do_sample=False, min_new_tokens=6, output_scores=True,
                          return_dict_in_generate=True)
    with attach(qwen, KEEP_ALL):
        ours = qwen.generate(**inputs, max_new_tokens=6, do_sample=False, min_new_tokens=6, output_scores=True,
                             return_dict_in_generate=True)
    assert torch.equal(stock.sequences, ours.sequences)
    for a, b in zip(stock.scores, ours.scores, strict=True):
        finite = a.isfinite()  # min_new_tokens masks the end-of-text token with -inf
        assert torch.equal(finite, b.isfinite()) and (a - b)[finite].abs().max() <= 1e-4


@torch.no_grad()
@pytest.mark.parametrize("strategy", [SCHEDULE, FastV(after=2, keep=0.4), TokenPool(2)], ids=str)
def test_left_padded_batch_equals_singles(qwen, strategy):
    inputs, counts = qwen_inputs(qwen, IMAGES, [3, 6])
    assert counts[0] != counts[1]
    with attach(qwen, strategy) as handle:
        batch_out = qwen.generate(**inputs, max_new_tokens=4, do_sample=False, min_new_tokens=4)
        batch_trace = handle.last_trace
        for row in range(2):
            single_out = qwen.generate(**qwen_take(inputs, row), max_new_tokens=4, do_sample=False, min_new_tokens=4)
            assert single_out[0, -4:].tolist() == batch_out[row, -4:].tolist()
            assert handle.last_trace.visual_tokens_per_layer[0].tolist() == \
                batch_trace.visual_tokens_per_layer[row].tolist()
            for stage, kept in enumerate(handle.last_trace.kept):
                row_kept = batch_trace.kept[stage][row]
                assert kept[0].tolist() == row_kept[row_kept >= 0].tolist()


@torch.no_grad()
def test_pooling_uses_each_images_merged_grid(qwen):
    inputs, _ = qwen_inputs(qwen, [[(8, 12), (6, 10)]], [3])  # 4x6 and 3x5 merged tokens
    with attach(qwen, TokenPool(2)) as handle:
        qwen(**inputs)
    trace = handle.last_trace
    assert trace.visual_tokens_per_layer[0, 0] == 2 * 3 + 2 * 3
    origins = trace.pooled_origin[0].tolist()
    assert origins == [0, 2, 4, 12, 14, 16] + [24 + o for o in (0, 2, 4, 10, 12, 14)]


@torch.no_grad()
def test_video_tokens_are_pruned_like_image_tokens():
    for model in (random_qwen2_5_vl(), random_qwen3_vl()):
        inputs, counts = qwen_inputs(model, [[(4, 4)]], [4], video=(4, 4, 4))  # 2 temporal x 2x2 tokens
        assert counts == [4 + 8]
        stock = model(**inputs).logits
        with attach(model, KEEP_ALL) as handle:
            same = model(**inputs).logits
        assert (stock - same).abs().max() <= 1e-5
        assert handle.last_trace.visual_tokens_original.tolist() == counts
        with attach(model, TokenPool(2)) as handle:
            model(**inputs)
        assert handle.last_trace.visual_tokens_per_layer[0, 0] == 1 + 2  # the image, then one per frame
        with attach(model, SCHEDULE) as handle:
            model.generate(**inputs, max_new_tokens=2, do_sample=False)
        assert handle.last_trace.visual_tokens_per_layer[0, -1] == 3


def test_compact_positions_are_refused_with_the_reason(qwen):
    with pytest.raises(ValueError, match="positions=compact is not defined.*M-RoPE"):
        attach(qwen, "transprune:positions=compact")
    handle = attach(qwen, "transprune:positions=original")
    assert handle.position_mode == "original"
    handle.detach()
    with attach(qwen, "transprune") as handle:  # the family's default
        assert handle.position_mode == "original"


@torch.no_grad()
def test_detach_restores_exactly(qwen):
    inputs, _ = qwen_inputs(qwen, IMAGES, [2, 3])
    stock = qwen(**inputs).logits
    handle = attach(qwen, SCHEDULE)
    assert qwen(**inputs).logits.shape != stock.shape
    handle.detach()
    assert "forward" not in vars(qwen.model) and "forward" not in vars(qwen.model.language_model)
    assert torch.equal(qwen(**inputs).logits, stock)


@torch.no_grad()
@pytest.mark.parametrize("family", ["qwen2.5-vl", "qwen3-vl"])
def test_bf16_runs_and_keep_all_is_close(family):
    model = BUILDERS[family](dtype=torch.bfloat16)
    inputs, _ = qwen_inputs(model, IMAGES, [2, 4])
    inputs["pixel_values"] = inputs["pixel_values"].bfloat16()
    stock = model(**inputs).logits.float()
    with attach(model, KEEP_ALL):
        same = model(**inputs).logits.float()
    with attach(model, SCHEDULE):
        out = model.generate(**inputs, max_new_tokens=3, do_sample=False)
    valid = inputs["attention_mask"].bool()
    assert (stock - same)[valid].abs().max() < 0.05
    assert out.shape[1] == inputs["input_ids"].shape[1] + 3

@torch.no_grad()
@pytest.mark.parametrize("family", ["qwen2.5-vl", "qwen3-vl"])
def test_ttv_and_iga_equal_a_direct_computation(family):
    """TTV from the stock layers' sub-module inputs and outputs; IGA from the stock attention map
    of the layer after the stage, rows = the text after the last image."""
    model = BUILDERS[family](attn="eager", layers=5)
    inputs, _ = qwen_inputs(model, [[(4, 4), (8, 8)]], [6])
    ids = inputs["input_ids"][0].tolist()
    visual = [i for i, t in enumerate(ids) if t == 5]
    after_last = list(range(visual[-1] + 1, len(ids)))
    layers = model.model.language_model.layers
    captured = {}
    hooks = []
    for i in (1, 2):
        hooks.append(layers[i].self_attn.register_forward_hook(
            lambda m, a, kw, o, i=i: captured.__setitem__(("attn", i), (kw["hidden_states"], o[0])),
            with_kwargs=True))
        hooks.append(layers[i].mlp.register_forward_hook(
            lambda m, a, o, i=i: captured.__setitem__(("mlp", i), (a[0], o))))
    stock = model(**inputs, output_attentions=True)
    for hook in hooks:
        hook.remove()
    ttv = sum(reference_ttv(*captured[(kind, i)])[0] for kind in ("attn", "mlp") for i in (1, 2))
    ttv_visual = ttv[visual] / ttv[visual].sum()
    attention = stock.attentions[3][0].double()
    iga = attention[:, after_last][:, :, visual].mean(dim=(0, 1))
    iga = iga / iga.sum()

    strategy = TransPrune(prune_after=(3,), keep=(0.5,), accumulate_from=2, alpha=0.3)
    with attach(model, strategy) as handle:
        model(**inputs)
    stage = handle.last_trace.stages[0]
    assert stage.candidates[0].tolist() == list(range(len(visual)))
    assert torch.allclose(stage.ttv[0].double(), ttv_visual, atol=1e-6)
    assert torch.allclose(stage.iga[0].double(), iga, atol=1e-6)
    score = 0.3 * ttv_visual + 0.7 * iga
    top = torch.argsort(score, descending=True)[: len(visual) // 2].sort().values
    assert stage.kept[0].tolist() == top.tolist()
