"""Per-answer scores against worked examples from the benchmarks' own definitions and evaluation scripts.

Sources: VQA-v2 ``vqaEval.py`` (GT-Vision-Lab/VQA, the server's copy in Cloud-CV/VQA-Challenge, EvalAI's answer
processor); the DocVQA / InfographicVQA evaluation script's ANLS (the same in lmms-eval's ``anls``, threshold 0.5);
SQuAD's ``evaluate-v1.1.py``; ChartQA's relaxed accuracy as pix2struct's ``relaxed_correctness`` (5%). Expected
numbers are worked by hand in the comments. tests/test_scoring_official.py checks every text metric against
transcriptions of the official functions on generated pairs.
"""

import gc

import numpy as np
import pytest

from pilot.scoring import (
    TEXT_METRICS,
    anls,
    exact_match,
    json_fields,
    normalize_vqa,
    parse_json_answer,
    relaxed_accuracy,
    relaxed_accuracy_lenient,
    score_json,
    score_text,
    score_text_many,
    score_vs_baseline,
    token_f1,
)


def close(value: float) -> pytest.approx:
    """Float equality up to rounding in the last bits: a wrong formula still fails."""
    return pytest.approx(value, abs=1e-12)


# ---------------------------------------------------------------- VQA-v2 normalisation (vqaEval.py)


@pytest.mark.parametrize(
    ("answer", "normalised"),
    [
        ("Two dogs.", "2 dogs"),  # number word -> digit, period not before a digit removed, lower-cased
        ("isnt", "isn't"),  # contractions table
        ("isn't", "isn't"),  # the server's punctuation list keeps apostrophes
        ("A dog", "dog"),  # articles dropped
        ("the red car", "red car"),
        ("an apple", "apple"),
        ("ten", "10"),
        ("eleven", "eleven"),  # the map stops at ten
        ("none", "0"),  # as the official manualMap: "none" is a number word
        ("1,000", "1000"),  # a digit-comma-digit group: every mark is deleted, not spaced
        ("red,white", "red white"),  # a mark touching no space becomes a space
        ("red, white", "red white"),  # a mark touching a space is deleted
        ("(left)", "left"),
        ("hello-world", "hello world"),
        ("2.5", "2.5"),  # a period before a digit stays
        ("e.g.", "eg"),
        ("YES!", "yes"),
        ("10:30", "10:30"),  # colons are not in the server's list
        ("the\tcat\n", "cat"),  # tabs and newlines are spaces
        ("Café  Müller", "café müller"),  # non-ASCII letters are kept and lower-cased, spaces collapsed
        ("", ""),
    ],
)
def test_normalize_vqa_follows_the_vqa_eval_script(answer, normalised):
    assert normalize_vqa(answer) == normalised


def test_exact_match_compares_normalised_answers_against_any_reference():
    assert exact_match("Two dogs.", ["2 dogs"]) == 1.0
    assert exact_match("two", ["3", "2"]) == 1.0
    assert exact_match("The cat", ["cat"]) == 1.0
    assert exact_match("dog", ["cat", "a cat"]) == 0.0
    assert exact_match("2 dogs", ["two cats"]) == 0.0


def test_exact_match_of_an_empty_prediction():
    assert exact_match("", ["yes"]) == 0.0
    assert exact_match("", [""]) == 1.0
    assert exact_match("the", [""]) == 1.0  # "the" normalises to nothing


# ---------------------------------------------------------------- ANLS (DocVQA / ST-VQA)


def test_anls_gives_partial_credit_for_an_ocr_slip():
    # Biten et al.: NL = edit distance / longer length; one substitution in 10 characters -> NL 0.1 -> 0.9.
    assert anls("INV-204318", ["INV-204313"]) == close(0.9)
    # "helo" vs "hello": one deletion over 5 characters -> 0.8; the best reference counts.
    assert anls("helo", ["goodbye", "hello"]) == close(0.8)
    # two substitutions in 5 characters: NL 0.4 < 0.5 -> 0.6
    assert anls("abcde", ["abxye"]) == close(0.6)


def test_anls_keeps_a_similarity_of_exactly_the_threshold():
    # The official script zeroes a question only when 1 - NL < 0.5: NL exactly 0.5 scores 0.5.
    assert anls("abcd", ["abxy"]) == 0.5
    assert anls("ab", ["ac"]) == 0.5
    assert anls("abc", ["xyz"]) == 0.0  # NL 1.0
    assert anls("abcde", ["axyze"]) == 0.0  # NL 0.6: similarity 0.4 < 0.5
    assert anls("abcd", ["abxy"], threshold=0.6) == 0.0


def test_anls_divides_by_the_raw_length():
    # The distance is taken on the normalised strings, the length from the raw ones (len(text.upper())).
    # "Yes.\n" -> "yes." vs "yes": one edit; raw lengths 5 and 3 -> NL 1/5 -> 0.8 (the normalised length gives 0.75).
    assert anls("Yes.\n", ["yes"]) == close(0.8)
    # "ab  c" -> "ab c" vs "abd": two edits; raw lengths 5 and 3 -> NL 2/5 -> 0.6 (normalised: 2/4, then 0.5).
    assert anls("ab  c", ["abd"]) == close(0.6)
    # upper() lengthens "ß" to "SS": "straße" vs "strasse" is 2 edits over max(7, 7) -> 5/7.
    assert anls("straße", ["strasse"]) == close(5 / 7)
    # Only spaces: both normalise to "", distance 0 -> 1.0; against a word the raw length counts the spaces.
    assert anls("   ", [""]) == 1.0
    assert anls("  ", ["ab"]) == 0.0  # "" vs "ab": 2 edits over max(2, 2)


def test_anls_takes_the_closest_reference_then_the_threshold():
    # 1 - min(NL) over references: "helo" is 1 edit from "hello" (NL 1/5) and 4 from "goodbye".
    assert anls("helo", ["goodbye", "hello"]) == close(0.8)
    assert anls("helo", ["hello", "hola"]) == close(0.8)  # "hola": 2 edits over 4 -> 0.5 < 0.8


def test_anls_ignores_case_and_whitespace_runs():
    assert anls("  Hello   World ", ["hello world"]) == 1.0
    assert anls("MÜLLER", ["müller"]) == 1.0
    # but not accents: "müller" vs "muller" is one substitution in 6 characters
    assert anls("Müller", ["muller"]) == close(5 / 6)


def test_anls_of_empty_answers():
    assert anls("", ["abc"]) == 0.0
    assert anls("", [""]) == 1.0


# ---------------------------------------------------------------- token F1 (SQuAD evaluate-v1.1.py)


def test_token_f1_on_partial_overlap():
    # "the big red dog" -> [big, red, dog]; "a red dog barked" -> [red, dog, barked]: 2 shared, P = R = 2/3.
    assert token_f1("the big red dog", ["a red dog barked"]) == close(2 / 3)
    # [denver, broncos] vs [denver, broncos, won]: P = 1, R = 2/3, F1 = 2 * (2/3) / (5/3) = 0.8
    assert token_f1("Denver Broncos", ["Denver Broncos won"]) == close(0.8)
    # best over references
    assert token_f1("Denver Broncos", ["Carolina Panthers", "Denver Broncos won"]) == close(0.8)


def test_token_f1_counts_repeated_words_as_bags():
    # [cat, cat] vs [cat, dog]: one cat shared; P = R = 1/2
    assert token_f1("cat cat", ["cat dog"]) == close(0.5)
    # [x, x, y] vs [x, x, x, z]: min(2, 3) = 2 shared; P = 2/3, R = 2/4, F1 = 4/7
    assert token_f1("x x y", ["x x x z"]) == close(4 / 7)
    # [cat, cat, cat] (articles removed) vs [cat, cat, dog]: 2 shared; P = R = 2/3
    assert token_f1("the cat the cat cat", ["cat cat dog"]) == close(2 / 3)


def test_token_f1_removes_ascii_punctuation_and_articles_only():
    assert token_f1("Broncos!", ["the broncos"]) == 1.0
    # The official script strips string.punctuation (ASCII): a typographic apostrophe stays in the word.
    assert token_f1("don’t", ["don't"]) == 0.0
    # non-ASCII words: [café, crème] vs [café]: P = 1/2, R = 1, F1 = 2/3
    assert token_f1("Café crème", ["café"]) == close(2 / 3)


def test_token_f1_without_a_shared_word_is_zero_even_when_both_are_empty():
    # evaluate-v1.1.py: num_same == 0 -> 0, also when both sides normalise to no word (v2.0's rule would give 1).
    assert token_f1("", [""]) == 0.0
    assert token_f1("the", ["a"]) == 0.0
    assert token_f1("The", ["an"]) == 0.0
    assert token_f1("", ["Denver"]) == 0.0
    assert token_f1("Denver", ["the"]) == 0.0
    assert token_f1("", ["", "Denver"]) == 0.0


# ---------------------------------------------------------------- relaxed accuracy (ChartQA)


def test_relaxed_accuracy_allows_five_percent_on_numbers():
    assert relaxed_accuracy("104", ["100"]) == 1.0
    assert relaxed_accuracy("105", ["100"]) == 1.0  # exactly 5% is within
    assert relaxed_accuracy("95", ["100"]) == 1.0
    assert relaxed_accuracy("106", ["100"]) == 0.0  # 6% is not
    assert relaxed_accuracy("94", ["100"]) == 0.0
    assert relaxed_accuracy("-10", ["-10.4"]) == 1.0  # 0.4 / 10.4 = 3.8%
    assert relaxed_accuracy("106", ["100"], tolerance=0.1) == 1.0


def test_relaxed_accuracy_reads_numbers_with_pythons_float():
    assert relaxed_accuracy("45%", ["45%"]) == 1.0
    assert relaxed_accuracy("46%", ["45%"]) == 1.0  # 0.46 vs 0.45: 2.2%
    assert relaxed_accuracy("48%", ["45%"]) == 0.0  # 6.7%
    # As pix2struct's scorer: "45%" is 0.45, which matches 0.45 and not 45; a space before % is float()'s.
    assert relaxed_accuracy("45%", ["0.45"]) == 1.0
    assert relaxed_accuracy("45 %", ["0.45"]) == 1.0
    assert relaxed_accuracy("45%", ["45"]) == 0.0
    assert relaxed_accuracy("12.", ["12"]) == 1.0  # float("12.") is 12
    assert relaxed_accuracy(" 12 ", ["12.4"]) == 1.0  # float() strips: 3.2%
    assert relaxed_accuracy("1_000", ["1000"]) == 1.0  # float() reads underscores between digits
    assert relaxed_accuracy("1e3", ["1000"]) == 1.0
    # float() reads neither thousands separators nor currency: compared as text.
    assert relaxed_accuracy("1,234", ["1234"]) == 0.0
    assert relaxed_accuracy("$1,234", ["1234"]) == 0.0
    assert relaxed_accuracy("1,234", ["1,234"]) == 1.0  # equal text


def test_relaxed_accuracy_compares_a_zero_reference_as_text():
    # pix2struct tests `target_float` for truth: a reference of 0 falls through to the string comparison.
    assert relaxed_accuracy("0", ["0"]) == 1.0
    assert relaxed_accuracy("0.0", ["0"]) == 0.0
    assert relaxed_accuracy("-0", ["0"]) == 0.0
    assert relaxed_accuracy("0.01", ["0"]) == 0.0


def test_relaxed_accuracy_falls_back_to_exact_text_as_it_is():
    assert relaxed_accuracy("Yes", ["yes"]) == 1.0  # lower-cased
    assert relaxed_accuracy("yes ", ["yes"]) == 0.0  # not stripped
    assert relaxed_accuracy(" Yes ", ["yes"]) == 0.0
    assert relaxed_accuracy("Yes.", ["yes"]) == 0.0  # no other normalisation
    assert relaxed_accuracy("12 apples", ["12"]) == 0.0  # one side is not a number
    assert relaxed_accuracy("7", ["seven", "7"]) == 1.0  # best over references
    assert relaxed_accuracy("", ["0"]) == 0.0
    assert relaxed_accuracy("nan", ["nan"]) == 0.0  # float("nan") is truthy and fails the tolerance
    assert relaxed_accuracy("inf", ["inf"]) == 0.0  # inf - inf is NaN


def test_relaxed_accuracy_lenient_reads_numbers_as_people_write_them():
    assert relaxed_accuracy_lenient("$1,234", ["1234"]) == 1.0
    assert relaxed_accuracy_lenient("-$1,234.50", ["-1234.5"]) == 1.0
    assert relaxed_accuracy_lenient("1,300", ["1,234"]) == 0.0  # 5.3%
    assert relaxed_accuracy_lenient("1,2", ["12"]) == 0.0  # not a thousands group: compared as text
    assert relaxed_accuracy_lenient("12.", ["12"]) == 1.0
    assert relaxed_accuracy_lenient("45 %", ["0.45"]) == 1.0
    assert relaxed_accuracy_lenient("45%", ["45"]) == 0.0  # still 0.45, as the benchmark's rule
    assert relaxed_accuracy_lenient("104", ["100"]) == 1.0
    assert relaxed_accuracy_lenient("106", ["100"]) == 0.0


def test_relaxed_accuracy_lenient_strips_and_reads_a_zero_reference_as_a_number():
    assert relaxed_accuracy_lenient(" Yes ", ["yes"]) == 1.0
    assert relaxed_accuracy_lenient("yes ", ["yes"]) == 1.0
    assert relaxed_accuracy_lenient("Yes.", ["yes"]) == 0.0  # a final period is dropped from numbers only
    assert relaxed_accuracy_lenient("0.0", ["0"]) == 1.0
    assert relaxed_accuracy_lenient("-0", ["0"]) == 1.0
    assert relaxed_accuracy_lenient("0.01", ["0"]) == 0.0
    assert relaxed_accuracy_lenient("inf", ["inf"]) == 1.0  # not a number here: equal text
    assert relaxed_accuracy_lenient("", ["0"]) == 0.0


# ---------------------------------------------------------------- all text metrics, one and many


def test_score_text_gives_every_metric():
    scores = score_text("Two dogs.", ["2 dogs", "two dogs"])
    assert list(scores) == list(TEXT_METRICS)
    assert scores["exact_match"] == 1.0
    assert scores["anls"] == close(8 / 9)  # "two dogs." vs "two dogs": one deletion over 9 characters
    assert scores["token_f1"] == 1.0  # [two, dogs] vs [two, dogs]
    assert scores["relaxed_accuracy"] == 0.0  # "two dogs." vs "two dogs" as text
    assert scores["relaxed_accuracy_lenient"] == 0.0


@pytest.mark.parametrize(
    "scorer", [exact_match, anls, token_f1, relaxed_accuracy, relaxed_accuracy_lenient, score_text]
)
def test_every_text_scorer_refuses_an_empty_reference_list(scorer):
    with pytest.raises(ValueError, match="references is empty"):
        scorer("yes", [])


@pytest.mark.parametrize("scorer", [exact_match, anls, token_f1, relaxed_accuracy, relaxed_accuracy_lenient])
def test_a_bare_string_is_not_taken_as_a_reference_list(scorer):
    # Iterating "yes" would score against "y", "e", "s".
    with pytest.raises(TypeError, match="not one string"):
        scorer("y", "yes")


# Edge cases on purpose: empty strings, repeated words on both sides, non-ASCII, numbers in every format,
# answers that normalise to nothing, duplicates across pairs.
_PAIRS = [
    ("Two dogs.", ["2 dogs", "two dogs"]),
    ("", ["yes"]),
    ("", [""]),
    ("the", ["an", "a"]),
    ("INV-204318", ["INV-204313", "inv 204318"]),
    ("cat cat", ["cat dog"]),
    ("x x y", ["x x x z", "x y"]),
    ("Café crème", ["café", "CAFÉ CRÈME"]),
    ("45%", ["45", "0.45"]),
    ("$1,234", ["1234"]),
    ("0.0", ["0"]),
    ("106", ["100"]),
    ("Yes.", ["yes"]),
    ("Yes.", ["yes"]),
    ("The big red dog barked at the mailman twice", ["a red dog barked twice", "the dog barked"]),
    ("東京タワー", ["東京 タワー"]),
    ("Yes.\n", ["yes"]),
    ("ab", ["ac"]),
    ("ab  c", ["abd", "zzzzz"]),
    ("straße", ["strasse"]),
    ("   ", [""]),
    ("45 %", ["0.45"]),
    ("yes ", ["yes"]),
    ("nan", ["nan", "1"]),
]


def test_score_text_many_gives_the_same_numbers_as_score_text():
    predictions = [prediction for prediction, _ in _PAIRS]
    references = [refs for _, refs in _PAIRS]
    bulk = score_text_many(predictions, references)
    assert list(bulk) == list(TEXT_METRICS)
    for metric in TEXT_METRICS:
        expected = np.array([score_text(p, r)[metric] for p, r in _PAIRS])
        assert bulk[metric].dtype == np.float64
        assert np.array_equal(bulk[metric], expected), metric


def test_score_text_many_picks_metrics_and_restores_the_garbage_collector():
    assert gc.isenabled()
    bulk = score_text_many(["104"], [["100"]], metrics=("relaxed_accuracy",))
    assert list(bulk) == ["relaxed_accuracy"]
    assert bulk["relaxed_accuracy"].tolist() == [1.0]
    assert gc.isenabled()
    with pytest.raises(ValueError, match="unknown text metrics"):
        score_text_many(["a"], [["a"]], metrics=("bleu",))


def test_score_text_many_checks_its_inputs():
    assert all(values.shape == (0,) for values in score_text_many([], []).values())
    with pytest.raises(ValueError, match="2 predictions but 1 reference lists"):
        score_text_many(["a", "b"], [["a"]])
    with pytest.raises(ValueError, match=r"references\[1\]: references is empty"):
        score_text_many(["a", "b"], [["a"], []])
    with pytest.raises(TypeError, match=r"references\[0\]"):
        score_text_many(["a"], ["a"])


# ---------------------------------------------------------------- JSON answers


def test_parse_json_answer_finds_the_object():
    assert parse_json_answer('{"total": 12}') == {"total": 12}
    assert parse_json_answer('Here it is:\n```json\n{"total": 12}\n```\nDone.') == {"total": 12}
    assert parse_json_answer('```\n{"total": 12}\n```') == {"total": 12}
    assert parse_json_answer('The invoice is {"a": {"b": [1, 2]}}, I think.') == {"a": {"b": [1, 2]}}
    # a brace that opens no object is skipped for the next one
    assert parse_json_answer('Format {like this}: {"total": 12}') == {"total": 12}


@pytest.mark.parametrize(
    "text",
    ["[1, 2]", "12", '"total"', "Sorry, I cannot read the document.", '{"total": 12', "```json\n[1]\n```", ""],
)
def test_parse_json_answer_returns_none_without_an_object(text):
    assert parse_json_answer(text) is None


def test_json_fields_flattens_nested_objects_and_lists():
    obj = {"vendor": "  ACME\n Corp ", "items": [{"name": "Bolt", "price": 3}, {"name": "Nut"}], "meta": {"pages": 2}}
    assert json_fields(obj) == {
        "vendor": "acme corp",
        "items.0.name": "bolt",
        "items.0.price": "3",
        "items.1.name": "nut",
        "meta.pages": "2",
    }


def test_json_fields_writes_numbers_and_literals_canonically():
    fields = json_fields(
        {
            "a": 12,
            "b": 12.0,
            "c": "12.00",
            "d": "1,200.50",
            "e": 1e3,
            "f": ".5",
            "g": -0.0,
            "h": "02139",  # a leading zero marks a code: kept as text
            "i": True,
            "j": None,
            "k": [],
            "l": {},
        }
    )
    assert fields == {
        "a": "12",
        "b": "12",
        "c": "12",
        "d": "1200.5",
        "e": "1000",
        "f": "0.5",
        "g": "0",
        "h": "02139",
        "i": "true",
        "j": "null",
        "k": "[]",
        "l": "{}",
    }


def test_score_json_counts_right_missing_and_extra_fields():
    reference = {"total": 12, "date": "2024-01-05", "vendor": "Acme"}
    # total right (12 == "12.00"), vendor right (case), tax extra, date missing: 2 of 3 predicted, 2 of 3 found.
    scores = score_json('```json\n{"total": "12.00", "vendor": "ACME", "tax": 1}\n```', reference)
    assert scores == {
        "json_valid": True,
        "field_precision": close(2 / 3),
        "field_recall": close(2 / 3),
        "field_f1": close(2 / 3),
        "fields_matched": 2,
        "fields_predicted": 3,
        "fields_reference": 3,
    }
    # one field, right: P = 1, R = 1/3, F1 = 2 * (1/3) / (4/3) = 0.5
    missing = score_json('The total is {"total": 12}.', reference)
    assert (missing["field_precision"], missing["field_recall"], missing["field_f1"]) == (1.0, close(1 / 3), 0.5)
    # a wrong value is a wrong field
    wrong = score_json('{"total": 13, "date": "2024-01-05", "vendor": "Acme"}', reference)
    assert (wrong["fields_matched"], wrong["field_f1"]) == (2, close(2 / 3))


def test_score_json_compares_list_items_by_position():
    reference = {"items": [{"price": 3}, {"price": 4}]}
    # one of two items: P = 1, R = 1/2, F1 = 2/3
    one = score_json('{"items": [{"price": 3.0}]}', reference)
    assert (one["fields_matched"], one["field_precision"], one["field_recall"]) == (1, 1.0, 0.5)
    assert one["field_f1"] == close(2 / 3)
    swapped = score_json('{"items": [{"price": 4}, {"price": 3}]}', reference)
    assert swapped["fields_matched"] == 0


def test_score_json_counts_an_answer_without_an_object_as_wrong():
    reference = {"total": 12, "vendor": "Acme"}
    for text in ["I could not find the total.", '{"total": 12, "vendor": ', "[12]"]:
        assert score_json(text, reference) == {
            "json_valid": False,
            "field_precision": 0.0,
            "field_recall": 0.0,
            "field_f1": 0.0,
            "fields_matched": 0,
            "fields_predicted": 0,
            "fields_reference": 2,
        }


def test_score_json_with_empty_objects():
    empty = score_json("{}", {"total": 12})
    assert empty["json_valid"] is True
    assert (empty["field_precision"], empty["field_recall"], empty["field_f1"]) == (0.0, 0.0, 0.0)
    both = score_json("{}", {})
    assert (both["field_precision"], both["field_recall"], both["field_f1"]) == (1.0, 1.0, 1.0)
    with pytest.raises(TypeError, match="JSON object"):
        score_json("{}", [1])


# ---------------------------------------------------------------- against the baseline's answer


def test_score_vs_baseline_counts_two_answers_without_words_as_the_same():
    # Against the baseline two empty answers are the same answer (SQuAD 2.0's rule), unlike token_f1 (v1.1).
    assert score_vs_baseline("The.", "the")["token_f1_vs_baseline"] == 1.0
    assert score_vs_baseline("", "Denver")["token_f1_vs_baseline"] == 0.0
    assert score_vs_baseline("Denver Broncos", "Denver Broncos won")["token_f1_vs_baseline"] == close(0.8)


def test_score_vs_baseline_of_an_unchanged_answer():
    assert score_vs_baseline("Two dogs.", "Two dogs.") == {
        "anls_vs_baseline": 1.0,
        "token_f1_vs_baseline": 1.0,
        "changed": False,
        "length_change_chars": 0,
    }


def test_score_vs_baseline_of_changed_answers():
    # Only the final period differs: unchanged for VQA; ANLS "yes." vs "yes" = 1 - 1/4; one character longer.
    assert score_vs_baseline("Yes.", "yes") == {
        "anls_vs_baseline": 0.75,
        "token_f1_vs_baseline": 1.0,
        "changed": False,
        "length_change_chars": 1,
    }
    # Shorter: [red, car] vs [red, car, parked] -> P = 1, R = 2/3, F1 = 0.8; ANLS 0 (NL 9/16 >= 0.5).
    shorter = score_vs_baseline("red car", "a red car parked")
    assert shorter == {
        "anls_vs_baseline": 0.0,
        "token_f1_vs_baseline": close(0.8),
        "changed": True,
        "length_change_chars": -9,
    }
    assert score_vs_baseline("cat", "dog")["changed"] is True


# ---------------------------------------------------------------- runs stored before relaxed_accuracy_lenient


def test_runs_stored_before_the_lenient_metric_still_report():
    # Scores stored by earlier versions have no relaxed_accuracy_lenient key: the arm's mean and the paired change
    # are None (n 0), a budget on it has no verdict and a plan no sample size, and nothing raises.
    from pilot.metrics import Outcome, arm_kpis, budget_verdict, compare
    from pilot.plan import plan_comparison

    old_keys = ("exact_match", "anls", "token_f1", "relaxed_accuracy")

    def outcomes(arm_answers):
        return [Outcome(sample_id=str(i), label="", prediction=answer, task="text", answer_text=answer,
                        scores={k: v for k, v in score_text(answer, [ref]).items() if k in old_keys})
                for i, (answer, ref) in enumerate(arm_answers)]

    baseline = outcomes([("104", "100"), ("yes", "yes"), ("$1,234", "1234")])
    pruned = outcomes([("110", "100"), ("yes", "yes"), ("1234", "1234")])
    kpis = arm_kpis(pruned, [])
    assert kpis["relaxed_accuracy"] == close(2 / 3) and kpis["relaxed_accuracy_lenient"] is None
    comparison = compare(baseline, pruned, [], resamples=50)
    assert comparison["relaxed_accuracy_lenient_delta"] is None and comparison["relaxed_accuracy_lenient_n"] == 0
    assert comparison["relaxed_accuracy_delta"] == close(0.0)  # 104 right -> 110 wrong, $1,234 wrong -> 1234 right
    verdict = budget_verdict(comparison, "relaxed_accuracy_lenient", 0.02)
    assert verdict["drop"] is None and verdict["met"] is None
    plan = plan_comparison(comparison, 0.02, "relaxed_accuracy_lenient")
    assert plan["samples_needed"] is None and plan["reason"]
