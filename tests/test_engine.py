"""The engine computes what it claims, on small random LLaVA / LLaVA-NeXT models."""

import pytest
import torch
from transformers import LlamaForCausalLM

from pilot.pruning import FastV, NoPrune, RandomPrune, TokenPool, TransPrune, attach
from tests.checks import perturb_after
from tests.models import llava_inputs, next_inputs, take, text_config, tiny_llava, tiny_llava_next

KEEP_ALL = TransPrune(prune_after=(2, 3, 4), keep=(1.0, 1.0, 1.0))
SCHEDULE = TransPrune(prune_after=(2, 3, 4), keep=(0.75, 0.5, 0.25))


@pytest.fixture(scope="module")
def llava():
    return tiny_llava()


@torch.no_grad()
@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("kv_heads", [4, 2])
def test_keep_everything_equals_stock_llava(attn, kv_heads):
    model = tiny_llava(kv_heads=kv_heads, attn=attn)
    inputs = llava_inputs([3, 1], [4, 7])
    stock = model(**inputs).logits
    with attach(model, KEEP_ALL) as handle:
        pruned = model(**inputs).logits
    assert handle.last_trace.visual_tokens_per_layer.eq(36).all()
    valid = inputs["attention_mask"].bool()
    assert (stock - pruned)[valid].abs().max() <= 1e-5


@torch.no_grad()
def test_keep_everything_equals_stock_llava_next():
    model = tiny_llava_next()
    inputs, _ = next_inputs(model, [(24, 40), (40, 24)], [3, 6])
    stock = model(**inputs).logits
    with attach(model, KEEP_ALL):
        pruned = model(**inputs).logits
    valid = inputs["attention_mask"].bool()
    assert (stock - pruned)[valid].abs().max() <= 1e-5


@torch.no_grad()
def test_tokens_really_removed_and_trace_shapes(llava):
    inputs = llava_inputs([2], [5])
    with attach(llava, SCHEDULE) as handle:
        out = llava(**inputs, use_cache=True)
    trace = handle.last_trace
    assert trace.visual_tokens_per_layer[0].tolist() == [36, 36, 27, 18, 9, 9]
    assert [k.shape[1] for k in trace.kept] == [27, 18, 9]
    for earlier, later in zip(trace.kept, trace.kept[1:], strict=False):
        assert set(later[0].tolist()) <= set(earlier[0].tolist())
        assert later[0].tolist() == sorted(later[0].tolist())
    text = inputs["input_ids"].shape[1] - 36
    cache_lengths = [layer.keys.shape[2] for layer in out.cache.layers]
    assert cache_lengths == [text + n for n in [36, 36, 27, 18, 9, 9]]
    assert out.logits.shape[1] == text + 9

@torch.no_grad()
def test_dropped_token_cannot_influence_later_layers(llava):
    inputs = llava_inputs([2], [5])
    text_before = 3  # bos + 2 text tokens
    strategy = TransPrune(prune_after=(2,), keep=(0.5,))
    with attach(llava, strategy) as handle:
        reference = llava(**inputs).logits
        kept = handle.last_trace.kept[0][0].tolist()
        handle.replay_kept = handle.last_trace.kept
        dropped = next(i for i in range(36) if i not in kept)
        hook = perturb_after(llava, 1, text_before + dropped)  # output of the 2nd layer
        try:
            perturbed = llava(**inputs).logits
        finally:
            hook.remove()
        assert torch.equal(reference, perturbed)
        # Control: the same perturbation of a kept token does change the result.
        hook = perturb_after(llava, 1, text_before + kept[0])
        try:
            changed = llava(**inputs).logits
        finally:
            hook.remove()
    assert (changed - reference).abs().max() > 1e-3


@torch.no_grad()
@pytest.mark.parametrize("positions", ["compact", "original"])
@pytest.mark.parametrize(
    "strategy", [SCHEDULE, FastV(after=2, keep=0.5), RandomPrune(prune_after=(2, 4), keep=(0.5, 0.2)), TokenPool(2)]
)
def test_cached_generate_equals_uncached_recompute(llava, strategy, positions):
    if not isinstance(strategy, TokenPool):
        strategy = type(strategy)(**{**strategy.__dict__, "positions": positions})
    inputs = llava_inputs([2, 0], [5, 2])
    new_tokens = 6
    with attach(llava, strategy) as handle:
        generated = llava.generate(**inputs, max_new_tokens=new_tokens, do_sample=False, min_new_tokens=new_tokens)
        handle.replay_kept = handle.last_trace.kept if handle.last_trace.stages else None
        prompt = inputs["input_ids"].shape[1]
        for step in range(new_tokens):
            ids = generated[:, : prompt + step]
            mask = torch.cat([inputs["attention_mask"], torch.ones(2, step, dtype=torch.long)], dim=1)
            logits = llava(input_ids=ids, attention_mask=mask, pixel_values=inputs["pixel_values"],
                           use_cache=False, logits_to_keep=1).logits
            assert logits[:, -1].argmax(-1).tolist() == generated[:, prompt + step].tolist()


@torch.no_grad()
@pytest.mark.parametrize("strategy", [SCHEDULE, FastV(after=2, keep=0.4), RandomPrune(prune_after=(3,), keep=(0.3,))])
def test_batch_equals_singles_llava(llava, strategy):
    inputs = llava_inputs([4, 0, 2], [2, 6, 3])
    with attach(llava, strategy) as handle:
        batch_out = llava.generate(**inputs, max_new_tokens=5, do_sample=False, min_new_tokens=5)
        batch_kept = handle.last_trace.kept
        for row in range(3):
            single = take(inputs, row)
            single_out = llava.generate(**single, max_new_tokens=5, do_sample=False, min_new_tokens=5)
            assert single_out[0, -5:].tolist() == batch_out[row, -5:].tolist()
            for stage, kept in enumerate(handle.last_trace.kept):
                assert kept[0].tolist() == batch_kept[stage][row].tolist()


@torch.no_grad()
@pytest.mark.parametrize("strategy", [SCHEDULE, TokenPool(2)])
def test_batch_equals_singles_llava_next_varying_visual_tokens(strategy):
    model = tiny_llava_next(kv_heads=2)
    inputs, counts = next_inputs(model, [(24, 40), (40, 24), (48, 48)], [3, 5, 2])
    assert len(set(counts)) > 1, "the test needs different visual-token counts per sample"
    with attach(model, strategy) as handle:
        batch_out = model.generate(**inputs, max_new_tokens=4, do_sample=False, min_new_tokens=4)
        batch_trace = handle.last_trace
        assert batch_trace.visual_tokens_original.tolist() == counts
        for row in range(3):
            single_out = model.generate(**take(inputs, row), max_new_tokens=4, do_sample=False, min_new_tokens=4)
            assert single_out[0, -4:].tolist() == batch_out[row, -4:].tolist()
            assert handle.last_trace.visual_tokens_per_layer[0].tolist() == \
                batch_trace.visual_tokens_per_layer[row].tolist()
            for stage, kept in enumerate(handle.last_trace.kept):
                row_kept = batch_trace.kept[stage][row]
                assert kept[0].tolist() == row_kept[row_kept >= 0].tolist()


@torch.no_grad()
def test_detach_restores_exactly(llava):
    inputs = llava_inputs([1], [3])
    stock = llava(**inputs).logits
    handle = attach(llava, SCHEDULE)
    with pytest.raises(RuntimeError, match="already has a pruning handle"):
        attach(llava, SCHEDULE)
    assert llava(**inputs).logits.shape != stock.shape
    handle.detach()
    assert "forward" not in vars(llava.model) and "forward" not in vars(llava.model.language_model)
    assert torch.equal(llava(**inputs).logits, stock)


@torch.no_grad()
def test_prompt_without_image_runs_unpruned(llava):
    ids = torch.tensor([[1, 9, 10, 11, 12]])
    stock = llava(input_ids=ids).logits
    with attach(llava, SCHEDULE) as handle:
        assert torch.equal(llava(input_ids=ids).logits, stock)
        assert handle.last_trace is None


def test_unsupported_model_is_named():
    model = LlamaForCausalLM(text_config(2))
    with pytest.raises(ValueError, match="LlamaForCausalLM is not supported"):
        attach(model, SCHEDULE)


def test_strategy_deeper_than_model_is_refused(llava):
    with pytest.raises(ValueError, match="beyond a 6-layer model"):
        attach(llava, TransPrune())
    handle = attach(llava, "transprune")  # the paper schedule, mapped onto 6 layers
    assert handle.strategy == TransPrune.for_depth(6)
    handle.detach()


@torch.no_grad()
def test_bf16_runs_and_keep_all_is_close():
    model = tiny_llava(dtype=torch.bfloat16)
    inputs = llava_inputs([2], [4])
    inputs["pixel_values"] = inputs["pixel_values"].bfloat16()
    stock = model(**inputs).logits.float()
    with attach(model, KEEP_ALL):
        same = model(**inputs).logits.float()
    with attach(model, SCHEDULE):
        out = model.generate(**inputs, max_new_tokens=3, do_sample=False)
    assert (stock - same).abs().max() < 0.05
    assert out.shape[1] == inputs["input_ids"].shape[1] + 3


@torch.no_grad()
def test_baseline_strategy_goes_through_the_loop_unchanged(llava):
    inputs = llava_inputs([2], [4])
    stock = llava(**inputs).logits
    with attach(llava, NoPrune()) as handle:
        assert (llava(**inputs).logits - stock).abs().max() <= 1e-5
        assert handle.last_trace.visual_tokens_per_layer.eq(36).all()


@torch.no_grad()
def test_score_mass_mode_keeps_fewest_tokens_reaching_the_threshold(llava):
    inputs = llava_inputs([2, 1], [5, 3])
    strategy = TransPrune(prune_after=(2, 4), mass=(0.6, 0.5))
    with attach(llava, strategy) as handle:
        llava.generate(**inputs, max_new_tokens=2, do_sample=False)
    trace = handle.last_trace
    for stage, mass in zip(trace.stages, strategy.mass, strict=True):
        for row in range(2):
            score = stage.score[row][~stage.score[row].isnan()]
            kept = int((stage.kept[row] >= 0).sum())
            top = score.sort(descending=True).values.cumsum(0)
            assert top[kept - 1] >= mass - 1e-6 and (kept == 1 or top[kept - 2] < mass)
    assert str(strategy) == "transprune:prune_after=2/4,mass=0.6/0.5"
    with pytest.raises(ValueError, match="not both"):
        TransPrune(prune_after=(2,), keep=(0.5,), mass=(0.5,))
