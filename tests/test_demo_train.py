"""The demo training script's packed questions: each answer is predicted as in a one-question forward."""

import numpy as np
import torch

from pilot.data import synthetic
from pilot.demo.train import (
    build_model,
    build_processor,
    build_tokenizer,
    pack_questions,
    packed_logits,
    question_segment,
    split_prompt,
)
from pilot.models import DEFAULT_PROMPT


@torch.no_grad()
def test_packed_questions_match_the_stock_model_question_by_question():
    torch.manual_seed(0)
    tokenizer = build_tokenizer()
    processor = build_processor(tokenizer)
    model = build_model(tokenizer, layers=3, hidden=64).eval()
    image_token = model.config.image_token_id
    samples = [synthetic.make_sample(5, i) for i in range(2)]
    rng = np.random.default_rng(0)
    asked = [[(s.question, s.label)] + [synthetic.ask(s.defects, rng)[:2] for _ in range(2)] for s in samples]
    asked[1] = asked[1][:2]  # rows of different lengths: the shorter one is padded
    asked[0].append((synthetic.CAPTION_QUESTION, synthetic.caption(samples[0].defects, rng)))  # a many-word answer
    cache: dict = {}
    segments = [[question_segment(tokenizer, image_token, cache, q, a) for q, a in row] for row in asked]
    prefix = split_prompt(tokenizer, image_token, samples[0].question)[0]
    packed = pack_questions(prefix, segments, tokenizer.pad_token_id, tokenizer.eos_token_id)
    images = processor(images=[s.image for s in samples], text=["<image>"] * 2, return_tensors="pt")
    features = model.model.vision_tower(pixel_values=images["pixel_values"]).last_hidden_state[:, 1:]
    logits = packed_logits(model, packed, features)

    expected_logits, expected_ids = [], []
    for b, row in enumerate(asked):
        for question, answer in row:
            text = DEFAULT_PROMPT.format(question=question) + " " + answer
            inputs = processor(images=[samples[b].image], text=[text], return_tensors="pt")
            answer_length = len(answer.split())
            stock = model(**inputs).logits[0]
            # Position i predicts token i + 1: the prompt's last token predicts the first answer word,
            # the last answer word predicts </s>.
            expected_logits.append(stock[-answer_length - 1 :])
            expected_ids += inputs["input_ids"][0, -answer_length:].tolist() + [tokenizer.eos_token_id]
    assert packed.target_ids.tolist() == expected_ids
    assert len(synthetic.caption(samples[0].defects, rng).split()) == 8 and len(expected_ids) == 5 * 2 + 9
    torch.testing.assert_close(logits, torch.cat(expected_logits), atol=1e-4, rtol=1e-4)
