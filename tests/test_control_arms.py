"""Control arms as their authors run them: FastV (layer K's own attention, original positions),
PDrop (next layer's last-token attention, a share of the tokens present, compact positions) and
DivPrune (greedy max-min cosine diversity before the LM), checked against direct computations."""

import itertools

import pytest
import torch

from pilot.pruning import DivPrune, FastV, PDrop, attach, parse
from pilot.pruning.engine import max_min_diverse
from pilot.pruning.flops import load_dims, visual_tokens_per_layer
from tests.models import llava_inputs, qwen_inputs, take, tiny_llava


@pytest.fixture(scope="module")
def llava_eager():
    return tiny_llava(attn="eager", layers=6)


@torch.no_grad()
def test_fastv_equals_a_plain_reference_with_layer_ks_own_attention_and_original_positions(llava_eager):
    model = llava_eager
    inputs = llava_inputs([2], [5])
    inputs.pop("attention_mask")
    before, n_visual, after = 3, 36, 2
    stock = model(**inputs, output_attentions=True, output_hidden_states=True)
    # Layer K's own attention map (K = 2: index 1), last token's row, heads averaged, visual columns.
    attention = stock.attentions[after - 1][0].mean(dim=0)[-1, before : before + n_visual]
    kept = torch.topk(attention, 18).indices.sort().values
    # The reference: stock layers after K on the kept tokens, at their original positions.
    lm = model.model.language_model
    keep_rows = torch.cat([torch.arange(before), before + kept, torch.arange(before + n_visual, stock.logits.shape[1])])
    hidden = stock.hidden_states[after][:, keep_rows]
    positions = keep_rows[None]
    rotary = lm.rotary_emb(hidden, position_ids=positions)
    n = len(keep_rows)
    mask = torch.full((n, n), torch.finfo(hidden.dtype).min).triu(1)[None, None]
    for layer in lm.layers[after:]:
        hidden = layer(hidden, attention_mask=mask, position_embeddings=rotary, position_ids=positions)
    reference = model.lm_head(lm.norm(hidden))[:, -1]

    with attach(model, FastV(after=2, keep=0.5)) as handle:
        ours = model(**inputs).logits[:, -1]
    assert handle.position_mode == "original"
    assert handle.last_trace.kept[0][0].tolist() == kept.tolist()
    assert (ours - reference).abs().max() <= 1e-5
    with attach(model, "fastv:after=2,keep=0.5,score=next,positions=compact") as handle:  # the earlier scoring
        model(**inputs)
    next_layer = stock.attentions[after][0].mean(dim=0)[-1, before : before + n_visual]
    assert handle.last_trace.kept[0][0].tolist() == torch.topk(next_layer, 18).indices.sort().values.tolist()


@torch.no_grad()
def test_pdrop_keeps_a_share_of_the_tokens_present_by_the_next_layers_last_token_attention(llava_eager):
    model = llava_eager
    inputs = llava_inputs([2], [5])
    inputs.pop("attention_mask")
    before, n_visual = 3, 36
    stock = model(**inputs, output_attentions=True)
    strategy = PDrop(prune_after=(2, 4), ratio=0.5)
    with attach(model, strategy) as handle:
        model(**inputs)
    trace = handle.last_trace
    assert handle.position_mode == "compact"
    assert trace.visual_tokens_per_layer[0].tolist() == [36, 36, 18, 18, 9, 9]  # 50% of 36, then 50% of 18
    score = stock.attentions[2][0].mean(dim=0)[-1, before : before + n_visual]  # layer 3 sees all 36 tokens
    assert trace.kept[0][0].tolist() == torch.topk(score, 18).indices.sort().values.tolist()
    assert torch.allclose(trace.stages[0].score[0], score / score.sum(), atol=1e-6)
    assert visual_tokens_per_layer(strategy, 36, load_dims(model.config.to_dict())) == [36, 36, 18, 18, 9, 9]
    assert str(parse("pdrop")) == "pdrop" and parse("pdrop").resolve(32) == PDrop()
    assert parse("pdrop").resolve(6).prune_after == (2, 3, 5)


def _greedy_by_loops(vectors, count):
    """DivPrune's rule written plainly, one distance at a time."""
    def distance(i, j):
        return 1.0 - torch.nn.functional.cosine_similarity(vectors[i], vectors[j], dim=0).item()

    n = len(vectors)
    first = max(range(n), key=lambda i: min(distance(i, j) for j in range(n) if j != i))
    picked = [first]
    while len(picked) < count:
        rest = [i for i in range(n) if i not in picked]
        picked.append(max(rest, key=lambda i: min(distance(i, j) for j in picked)))
    return sorted(picked)


def _spread(vectors, picked):
    unit = torch.nn.functional.normalize(vectors, dim=-1)
    distance = 1.0 - unit @ unit.T
    return min(distance[i, j].item() for i, j in itertools.combinations(picked, 2))


def test_divprune_greedy_equals_the_rule_and_is_within_half_of_the_best_subset():
    generator = torch.Generator().manual_seed(0)
    for trial in range(20):
        vectors = torch.randn(9, 6, generator=generator)
        for count in (2, 3, 4):
            picked, _ = max_min_diverse(vectors, count)
            assert picked.tolist() == _greedy_by_loops(vectors, count), (trial, count)
            best = max(_spread(vectors, subset) for subset in itertools.combinations(range(9), count))
            # Greedy max-min dispersion is a 2-approximation of the best subset's spread.
            assert _spread(vectors, picked.tolist()) >= best / 2 - 1e-6


@torch.no_grad()
def test_divprune_selects_per_image_before_the_lm(llava_eager):
    model = llava_eager
    inputs = llava_inputs([2, 0], [5, 3])
    with attach(model, DivPrune(keep=0.25)) as handle:
        model(**inputs)
        embeds = model.model.get_image_features(pixel_values=inputs["pixel_values"], vision_feature_layer=-2,
                                                vision_feature_select_strategy="default").pooler_output
    trace = handle.last_trace
    assert trace.visual_tokens_per_layer[:, 0].tolist() == [9, 9]
    assert trace.stages[0].after_layer == 0
    for row in range(2):
        features = embeds[row] if isinstance(embeds, tuple | list) else embeds[row]
        expected, _ = max_min_diverse(features.reshape(36, -1), 9)
        assert trace.kept[0][row].tolist() == expected.tolist()


@torch.no_grad()
@pytest.mark.parametrize("strategy", [PDrop(prune_after=(2, 4), ratio=0.5), DivPrune(keep=0.3),
                                      FastV(after=2, keep=0.4)],
                         ids=str)
def test_controls_batch_equals_singles_and_cache_equals_recompute(llava_eager, strategy):
    inputs = llava_inputs([4, 0, 2], [2, 6, 3])
    with attach(llava_eager, strategy) as handle:
        batch_out = llava_eager.generate(**inputs, max_new_tokens=4, do_sample=False, min_new_tokens=4)
        batch_kept = handle.last_trace.kept
        for row in range(3):
            single_out = llava_eager.generate(**take(inputs, row), max_new_tokens=4, do_sample=False, min_new_tokens=4)
            assert single_out[0, -4:].tolist() == batch_out[row, -4:].tolist()
            for stage, kept in enumerate(handle.last_trace.kept):
                assert kept[0].tolist() == batch_kept[stage][row].tolist()
        handle.replay_kept = batch_kept
        prompt = inputs["input_ids"].shape[1]
        for step in range(4):
            ids = batch_out[:, : prompt + step]
            mask = torch.cat([inputs["attention_mask"], torch.ones(3, step, dtype=torch.long)], dim=1)
            logits = llava_eager(input_ids=ids, attention_mask=mask, pixel_values=inputs["pixel_values"],
                                 use_cache=False, logits_to_keep=1).logits[:, -1]
            logits[:, 2] = float("-inf")
            assert logits.argmax(-1).tolist() == batch_out[:, prompt + step].tolist()


@torch.no_grad()
@pytest.mark.parametrize("strategy", ["pdrop:prune_after=2/4,ratio=0.5", "divprune:keep=0.3", "fastv:after=2,keep=0.4"])
def test_controls_run_on_qwen_with_original_positions(strategy):
    from pilot.testing.random_models import random_qwen3_vl

    model = random_qwen3_vl()
    inputs, counts = qwen_inputs(model, [[(8, 12)], [(4, 4), (8, 8)]], [4, 6])
    with attach(model, strategy) as handle:
        model.generate(**inputs, max_new_tokens=3, do_sample=False)
    assert handle.position_mode == "original"  # PDrop and DivPrune's compact is not defined for M-RoPE
    assert all(kept < count for kept, count in zip(handle.last_trace.visual_tokens_per_layer[:, -1].tolist(), counts,
                                                    strict=True))
