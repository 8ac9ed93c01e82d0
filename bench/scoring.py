"""Scoring speed: every text metric on 100,000 answer pairs, and JSON field scoring on 10,000 objects, one core.

    python bench/scoring.py                       # 100,000 pairs, 10,000 JSON objects, seed 0
    python bench/scoring.py --pairs 20000 --json 2000 --seed 3 --no-loop

The pairs are synthetic but shaped like a pilot's answers, generated from a fixed seed: a third OCR-like codes
("INV-20931", one character slipped now and then), a third numbers ("1,234", "45%", "$12.50", off by a few
percent now and then), a third sentences of 5-20 words (words dropped or swapped); each with 1-3 references that
differ from each other in case, spacing, an article or number formatting, as annotators' answers do.

Rows: ``pilot.scoring.score_text_many`` with one metric at a time (each call pays the shared pass over the pairs,
so these do not add up to the next row), then with all of them (the target: under 10 s for 100,000 pairs), then the
per-pair ``score_text`` loop for comparison (its numbers are checked equal to the bulk ones). The same two rows
follow on VQA-style pairs, where answers repeat: short answers from a small vocabulary, 10 annotators' references
each; there the bulk scorer normalises each distinct string once and the loop does not.

Threads are pinned to one (BLAS/OpenMP variables set before numpy loads; rapidfuzz with workers=1). "cpu s" is
the process CPU time over the same span: a row whose cpu s is well below its wall s was slowed by other processes
on the machine, not by the scorer. Prints one table.
"""

from __future__ import annotations

import os

for _variable in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMEXPR_NUM_THREADS"):
    os.environ[_variable] = "1"

import argparse  # noqa: E402  (after the thread variables, which must be set before numpy is imported)
import json  # noqa: E402
import random  # noqa: E402
import string  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from pilot.scoring import TEXT_METRICS, score_json, score_text, score_text_many  # noqa: E402

_WORDS = [
    "the", "a", "an", "invoice", "total", "amount", "due", "date", "paid", "customer", "account", "number", "page",
    "report", "chart", "shows", "value", "percent", "increase", "decrease", "year", "quarter", "sales", "revenue",
    "red", "blue", "green", "left", "right", "top", "bottom", "sign", "store", "street", "open", "closed", "man",
    "woman", "dog", "cat", "two", "three", "four", "five", "table", "row", "column", "label", "title", "figure",
    "between", "highest", "lowest", "average", "market", "share", "country", "city", "price", "per", "unit",
    "order", "shipped", "received",
]
_VENDORS = ["Acme Corp", "Globex", "Initech GmbH", "Umbrella Ltd.", "Stark Industries", "Café Müller"]


def _slip(rng: random.Random, text: str) -> str:
    """One OCR-like character error: a substitution, a deletion or an insertion."""
    if not text:
        return text
    at = rng.randrange(len(text))
    kind = rng.random()
    alphabet = string.ascii_uppercase + string.digits
    if kind < 0.5:
        return text[:at] + rng.choice(alphabet) + text[at + 1 :]
    if kind < 0.75:
        return text[:at] + text[at + 1 :]
    return text[:at] + rng.choice(alphabet) + text[at:]


def _code_pair(rng: random.Random) -> tuple[str, list[str]]:
    prefix = "".join(rng.choices(string.ascii_uppercase, k=rng.randint(2, 4)))
    body = "".join(rng.choices(string.digits, k=rng.randint(3, 7)))
    code = f"{prefix}-{body}" if rng.random() < 0.6 else f"{prefix}{body}"
    references = [code]
    if rng.random() < 0.5:
        references.append(code.lower())
    if rng.random() < 0.3:
        references.append(code.replace("-", " "))
    roll = rng.random()
    if roll < 0.5:
        prediction = code
    elif roll < 0.8:
        prediction = _slip(rng, code)
    elif roll < 0.9:
        prediction = f"The code is {code}."
    else:
        prediction = "".join(rng.choices(string.ascii_uppercase + string.digits, k=len(code)))
    return prediction, references


def _format_number(rng: random.Random, value: float, style: int) -> str:
    if style == 0:
        return f"{value:,.0f}"
    if style == 1:
        return f"{value:.1f}%"
    if style == 2:
        return f"${value:,.2f}"
    return f"{value:.2f}"


def _number_pair(rng: random.Random) -> tuple[str, list[str]]:
    value = rng.choice([rng.uniform(0, 100), rng.uniform(100, 100_000), float(rng.randint(0, 30))])
    style = rng.randrange(4)
    references = [_format_number(rng, value, style)]
    if rng.random() < 0.4:
        references.append(f"{value:.2f}".rstrip("0").rstrip("."))
    roll = rng.random()
    if roll < 0.5:
        prediction = references[0]
    elif roll < 0.8:
        prediction = _format_number(rng, value * rng.uniform(0.9, 1.1), style)
    elif roll < 0.9:
        prediction = f"{_format_number(rng, value, style)}."
    else:
        prediction = f"About {_format_number(rng, value, style)}"
    return prediction, references


def _sentence_pair(rng: random.Random) -> tuple[str, list[str]]:
    words = rng.choices(_WORDS, k=rng.randint(5, 20))
    sentence = " ".join(words).capitalize() + "."
    references = [sentence]
    for _ in range(rng.randint(0, 2)):
        variant = list(words)
        variant[rng.randrange(len(variant))] = rng.choice(_WORDS)
        references.append(" ".join(variant) + rng.choice(["", ".", " ."]))
    edited = list(words)
    for _ in range(rng.randint(0, 4)):
        at = rng.randrange(len(edited))
        if rng.random() < 0.5 and len(edited) > 1:
            del edited[at]
        else:
            edited[at] = rng.choice(_WORDS)
    prediction = " ".join(edited).capitalize() + rng.choice([".", "", "!"])
    return prediction, references


def make_pairs(n: int, seed: int) -> tuple[list[str], list[list[str]]]:
    """n (prediction, references) pairs: codes, numbers and sentences in equal shares."""
    rng = random.Random(seed)
    makers = (_code_pair, _number_pair, _sentence_pair)
    predictions, references = [], []
    for index in range(n):
        prediction, refs = makers[index % 3](rng)
        predictions.append(prediction)
        references.append(refs)
    return predictions, references


def make_vqa_pairs(n: int, seed: int) -> tuple[list[str], list[list[str]]]:
    """n VQA-style pairs: one- or two-word answers from a small vocabulary, 10 references that mostly agree."""
    rng = random.Random(seed)
    answers = ["yes", "no", "2", "3", "4", "red", "blue", "white", "dog", "cat", "left", "right", "tennis", "pizza"]
    variants = {"yes": ["Yes", "yes."], "2": ["two", "Two."], "3": ["three"], "dog": ["a dog", "dogs"]}
    predictions, references = [], []
    for _ in range(n):
        truth = rng.choice(answers)
        refs = [truth if rng.random() < 0.7 else rng.choice(answers) for _ in range(10)]
        prediction = truth if rng.random() < 0.7 else rng.choice(answers)
        if prediction in variants and rng.random() < 0.3:
            prediction = rng.choice(variants[prediction])
        predictions.append(prediction)
        references.append(refs)
    return predictions, references


def make_json(n: int, seed: int) -> tuple[list[str], list[dict]]:
    """n (answer text, reference object) pairs: invoices, the answers fenced, in prose, perturbed or broken."""
    rng = random.Random(seed)
    texts, references = [], []
    for _ in range(n):
        items = [
            {"name": rng.choice(_WORDS), "qty": rng.randint(1, 9), "price": round(rng.uniform(1, 500), 2)}
            for _ in range(rng.randint(1, 4))
        ]
        reference = {
            "vendor": rng.choice(_VENDORS),
            "date": f"2024-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}",
            "total": round(sum(item["qty"] * item["price"] for item in items), 2),
            "paid": rng.random() < 0.5,
            "items": items,
        }
        predicted = json.loads(json.dumps(reference))
        if rng.random() < 0.3:
            predicted["total"] = f"{predicted['total']:.2f}"
        if rng.random() < 0.3:
            predicted["items"][0]["price"] = round(predicted["items"][0]["price"] * 1.1, 2)
        if rng.random() < 0.2:
            del predicted["date"]
        if rng.random() < 0.2:
            predicted["currency"] = "EUR"
        text = json.dumps(predicted, indent=rng.choice([None, 2]))
        roll = rng.random()
        if roll < 0.3:
            text = f"```json\n{text}\n```"
        elif roll < 0.5:
            text = f"Here is the extracted invoice: {text} Let me know if you need more."
        elif roll < 0.55:
            text = text[: len(text) // 2]  # cut off mid-object: no JSON object parses
        texts.append(text)
        references.append(reference)
    return texts, references


def _timed(function, *args, **kwargs):
    wall, cpu = time.perf_counter(), time.process_time()
    result = function(*args, **kwargs)
    return result, time.perf_counter() - wall, time.process_time() - cpu


def _loop_row(
    name: str, predictions: list[str], references: list[list[str]], bulk: dict[str, np.ndarray]
) -> tuple[str, int, float, float]:
    """The per-pair loop's timing row, after checking its numbers equal the bulk scorer's."""
    loop, wall, cpu = _timed(lambda: [score_text(p, r) for p, r in zip(predictions, references, strict=True)])
    for metric in TEXT_METRICS:
        expected = np.array([scores[metric] for scores in loop])
        if not np.array_equal(expected, bulk[metric]):
            raise SystemExit(f"bulk and per-pair {metric} differ: the benchmark's numbers are not trustworthy")
    return name, len(predictions), wall, cpu


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", type=int, default=100_000, help="answer pairs to score (default 100,000)")
    parser.add_argument("--json", type=int, default=10_000, help="JSON answers to score (default 10,000)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-loop", action="store_true", help="skip the per-pair score_text loop")
    args = parser.parse_args(argv)

    predictions, references = make_pairs(args.pairs, args.seed)
    n_refs = sum(len(refs) for refs in references)
    rows: list[tuple[str, int, float, float]] = []
    for metric in TEXT_METRICS:
        _, wall, cpu = _timed(score_text_many, predictions, references, metrics=(metric,))
        rows.append((f"score_text_many: {metric}", args.pairs, wall, cpu))
    bulk, wall, cpu = _timed(score_text_many, predictions, references)
    rows.append((f"score_text_many: all {len(TEXT_METRICS)} metrics", args.pairs, wall, cpu))
    all_wall = wall
    if not args.no_loop:
        rows.append(_loop_row(f"score_text loop: all {len(TEXT_METRICS)} (per pair)", predictions, references, bulk))
    vqa_predictions, vqa_references = make_vqa_pairs(args.pairs, args.seed)
    vqa_bulk, wall, cpu = _timed(score_text_many, vqa_predictions, vqa_references)
    rows.append(("VQA-style, 10 refs: score_text_many", args.pairs, wall, cpu))
    if not args.no_loop:
        rows.append(_loop_row("VQA-style, 10 refs: score_text loop", vqa_predictions, vqa_references, vqa_bulk))
    texts, json_refs = make_json(args.json, args.seed)
    json_scores, wall, cpu = _timed(lambda: [score_json(t, r) for t, r in zip(texts, json_refs, strict=True)])
    rows.append(("score_json (per object)", args.json, wall, cpu))

    print(f"{args.pairs:,} answer pairs ({n_refs:,} references, seed {args.seed}), one thread")
    print(f"{'scorer':<44} {'items':>8} {'wall s':>8} {'cpu s':>8} {'items/s':>10}")
    for name, items, wall, cpu in rows:
        print(f"{name:<44} {items:>8,} {wall:>8.2f} {cpu:>8.2f} {items / wall:>10,.0f}")
    means = ", ".join(f"{metric} {bulk[metric].mean():.3f}" for metric in TEXT_METRICS)
    valid = sum(scores["json_valid"] for scores in json_scores) / len(json_scores)
    field_f1 = sum(scores["field_f1"] for scores in json_scores) / len(json_scores)
    print(f"means: {means}; JSON valid {valid:.3f}, field F1 {field_f1:.3f}")
    target = 10.0 * args.pairs / 100_000
    print(f"target: all text metrics under {target:.1f} s -> {'met' if all_wall < target else 'MISSED'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
