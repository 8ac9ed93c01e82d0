"""A model wrapped by ``attach`` and called without an input its family needs gets one message
naming that input and saying that the processor returns it (issue 19: transformers 5.25's Qwen
forward started refusing ``image_grid_thw`` without ``mm_token_type_ids``; Qwen2.5-VL's numbered
the image tokens as text instead, silently)."""

import pytest
import torch

from pilot.pruning import TransPrune, attach
from pilot.testing.random_models import random_gemma3, random_qwen2_5_vl, random_qwen3_vl
from tests.models import gemma_inputs, next_inputs, qwen_inputs, tiny_llava_next

SCHEDULE = TransPrune(prune_after=(1, 2), keep=(0.5, 0.5))


def _qwen25():
    model = random_qwen2_5_vl()
    return model, qwen_inputs(model, [[(8, 8)]], [4])[0]


def _qwen3():
    model = random_qwen3_vl()
    return model, qwen_inputs(model, [[(8, 8)]], [4])[0]


def _gemma3():
    model = random_gemma3()
    return model, gemma_inputs(model, [1], [4])


def _llava_next():
    model = tiny_llava_next()
    return model, next_inputs(model, [(48, 72)], [4])[0]


CASES = [
    (_qwen25, "mm_token_type_ids"), (_qwen25, "image_grid_thw"),
    (_qwen3, "mm_token_type_ids"), (_qwen3, "image_grid_thw"),
    (_gemma3, "token_type_ids"), (_llava_next, "image_sizes"),
]


@torch.no_grad()
@pytest.mark.parametrize(("build", "missing"), CASES,
                         ids=[f"{build.__name__.strip('_')}-{missing}" for build, missing in CASES])
def test_missing_family_input_is_named_with_the_processor_as_its_source(build, missing):
    model, inputs = build()
    model(**inputs)  # complete inputs: the stock model runs
    partial = {key: value for key, value in inputs.items() if key != missing}
    with attach(model, SCHEDULE), pytest.raises(ValueError) as caught:
        model(**partial)
    message = str(caught.value)
    assert f"no {missing}" in message and f"processor returns {missing}" in message
    assert type(model).__name__ in message
    with attach(model, SCHEDULE):  # the complete inputs still run pruned
        assert model(**inputs).logits.isfinite().all()
