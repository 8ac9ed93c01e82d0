"""Per-answer scores of open-ended answers, each equal to the official evaluation code of its benchmark.

Text metrics (``TEXT_METRICS``), each the best over the question's reference answers (docs/metrics.md gives every
definition with its source and a worked example):

- ``exact_match``: VQA-v2's answer normalisation (``normalize_vqa``, as ``vqaEval.py``) on both sides, then
  string equality.
- ``anls``: DocVQA / ST-VQA / InfographicVQA's ANLS of one question, as the official evaluation script (and
  lmms-eval's ``anls``): ``1 - min(NL)`` over the references, 0 below 0.5. NL is the edit distance of the
  stripped, lower-cased, whitespace-collapsed strings divided by the longer *raw* string's length.
- ``token_f1``: SQuAD v1.1's token-overlap F1 (``evaluate-v1.1.py``, huggingface/evaluate's ``squad``): 0 when
  no word is shared, also when both answers normalise to nothing.
- ``relaxed_accuracy``: ChartQA's relaxed correctness exactly as pix2struct's ``metrics.py`` (and lmms-eval's
  chartqa task) computes it: Python's ``float()`` after an optional trailing ``%``, 5% tolerance when the
  reference is a non-zero number, otherwise the lower-cased strings compared as they are.
- ``relaxed_accuracy_lenient``: ours, not a benchmark's: the same 5% rule, but answers are stripped and numbers
  may carry thousands separators, a leading ``$``, a final period or a space before ``%`` ("$1,234." = 1234),
  and a reference of 0 is a number too. Never below ``relaxed_accuracy`` on the same pair.

JSON answers (``score_json``): the answer is parsed as a JSON object and its leaf fields are compared with the
reference object's, path by path, giving field precision, recall and F1.

Without labels (``score_vs_baseline``): a pruned arm's answer is scored against the baseline arm's answer to the
same sample.

``score_text_many`` scores many pairs at once with the same floats as ``score_text`` (normalisation cached per
distinct string, edit distances computed in one rapidfuzz call). Everything here is plain Python, numpy and
rapidfuzz: no torch, so scoring runs where the answers are, not where the model was.
"""

from __future__ import annotations

import gc
import json
import math
import re
import string
from collections import Counter
from collections.abc import Sequence
from decimal import Decimal

import numpy as np
from rapidfuzz.distance import Levenshtein
from rapidfuzz.process import cpdist

TEXT_METRICS: tuple[str, ...] = ("exact_match", "anls", "token_f1", "relaxed_accuracy", "relaxed_accuracy_lenient")

ANLS_THRESHOLD = 0.5  # DocVQA and ST-VQA: a question scoring below this similarity scores 0
RELAXED_TOLERANCE = 0.05  # ChartQA: 5% relative error on numbers

# ------------------------------------------------------------------------------------------ VQA normalisation
#
# The VQA-v2 evaluation (GT-Vision-Lab/VQA vqaEval.py; the evaluation server's copy in Cloud-CV/VQA-Challenge and
# EvalAI's answer processor, used by LLaVA and lmms-eval for VQA-v2 / TextVQA / VizWiz) normalises an answer in
# two steps. processPunctuation: each punctuation mark below is deleted when it touches a space somewhere in the
# answer, or when the answer has a digit-comma-digit group ("1,000"); otherwise it becomes a space ("red/white" ->
# "red white"); then every period not followed by a digit is deleted ("dogs." -> "dogs", "2.5" kept).
# processDigitArticle: lower-case, split on whitespace, number words zero..ten (and "none") -> digits, articles
# dropped, apostrophe-less contractions restored ("isnt" -> "isn't").
#
# The punctuation list is vqaEval.py's on the master branch of GT-Vision-Lab/VQA, the same as the evaluation
# server's (Cloud-CV/EvalAI) and the one LLaVA and lmms-eval use: it keeps apostrophes and colons, so "isn't" and
# "isnt" both end as "isn't" and "10:30" stays a time. (Only the repository's first release listed ' and : and
# lacked - ! { }, with typographic apostrophes in most contractions; master replaced both.)
_VQA_PUNCTUATION_MARKS = ";/[]\"{}()=+\\_-><@`,?!"
_VQA_PUNCTUATION = re.compile(f"[{re.escape(_VQA_PUNCTUATION_MARKS)}]")
_VQA_DIGIT_COMMA_DIGIT = re.compile(r"\d,\d")
# The official pattern is "(?!<=\d)(\.)(?!\d)": its first group is a (typo'd) look-ahead that never blocks, so
# in effect a period is removed unless a digit follows. (The official call also passes re.UNICODE as the
# count, capping removals at 32 per answer; answers that long never equal a short reference, so we drop all.)
_VQA_PERIOD = re.compile(r"\.(?!\d)")
_VQA_NUMBER_WORDS = {
    "none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5",
    "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10",
}
_VQA_ARTICLES = frozenset({"a", "an", "the"})
# The official table, keys as they can occur after lower-casing (its capitalised keys "Im", "Ive", "Id've" and
# "I'dve" can never match and are left out). Its one backwards entry, "somebody'd" -> "somebodyd", is kept.
_VQA_CONTRACTIONS = {
    "aint": "ain't", "arent": "aren't", "cant": "can't", "couldve": "could've", "couldnt": "couldn't",
    "couldn'tve": "couldn't've", "couldnt've": "couldn't've", "didnt": "didn't", "doesnt": "doesn't", "dont": "don't",
    "hadnt": "hadn't", "hadnt've": "hadn't've", "hadn'tve": "hadn't've", "hasnt": "hasn't", "havent": "haven't",
    "hed": "he'd", "hed've": "he'd've", "he'dve": "he'd've", "hes": "he's", "howd": "how'd", "howll": "how'll",
    "hows": "how's", "isnt": "isn't", "itd": "it'd", "itd've": "it'd've", "it'dve": "it'd've", "itll": "it'll",
    "let's": "let's", "maam": "ma'am", "mightnt": "mightn't", "mightnt've": "mightn't've",
    "mightn'tve": "mightn't've", "mightve": "might've", "mustnt": "mustn't", "mustve": "must've", "neednt": "needn't",
    "notve": "not've", "oclock": "o'clock", "oughtnt": "oughtn't", "ow's'at": "'ow's'at", "'ows'at": "'ow's'at",
    "'ow'sat": "'ow's'at", "shant": "shan't", "shed've": "she'd've", "she'dve": "she'd've", "she's": "she's",
    "shouldve": "should've", "shouldnt": "shouldn't", "shouldnt've": "shouldn't've", "shouldn'tve": "shouldn't've",
    "somebody'd": "somebodyd", "somebodyd've": "somebody'd've", "somebody'dve": "somebody'd've",
    "somebodyll": "somebody'll", "somebodys": "somebody's", "someoned": "someone'd", "someoned've": "someone'd've",
    "someone'dve": "someone'd've", "someonell": "someone'll", "someones": "someone's", "somethingd": "something'd",
    "somethingd've": "something'd've", "something'dve": "something'd've", "somethingll": "something'll",
    "thats": "that's", "thered": "there'd", "thered've": "there'd've", "there'dve": "there'd've",
    "therere": "there're", "theres": "there's", "theyd": "they'd", "theyd've": "they'd've", "they'dve": "they'd've",
    "theyll": "they'll", "theyre": "they're", "theyve": "they've", "twas": "'twas", "wasnt": "wasn't",
    "wed've": "we'd've", "we'dve": "we'd've", "weve": "we've", "werent": "weren't", "whatll": "what'll",
    "whatre": "what're", "whats": "what's", "whatve": "what've", "whens": "when's", "whered": "where'd",
    "wheres": "where's", "whereve": "where've", "whod": "who'd", "whod've": "who'd've", "who'dve": "who'd've",
    "wholl": "who'll", "whos": "who's", "whove": "who've", "whyll": "why'll", "whyre": "why're", "whys": "why's",
    "wont": "won't", "wouldve": "would've", "wouldnt": "wouldn't", "wouldnt've": "wouldn't've",
    "wouldn'tve": "wouldn't've", "yall": "y'all", "yall'll": "y'all'll", "y'allll": "y'all'll",
    "yall'd've": "y'all'd've", "y'alld've": "y'all'd've", "y'all'dve": "y'all'd've", "youd": "you'd",
    "youd've": "you'd've", "you'dve": "you'd've", "youll": "you'll", "youre": "you're", "youve": "you've",
}
_VQA_WORD_MAP = {**_VQA_NUMBER_WORDS, **_VQA_CONTRACTIONS}


def normalize_vqa(text: str) -> str:
    """An answer as the VQA-v2 evaluation compares it: ``"Two dogs."`` -> ``"2 dogs"``, ``"isnt"`` -> ``"isn't"``.

    Newlines and tabs become spaces and the ends are stripped, then processPunctuation and processDigitArticle
    of the official ``vqaEval.py`` (see the comment above ``_VQA_PUNCTUATION``).
    """
    text = text.replace("\n", " ").replace("\t", " ").strip()
    if _VQA_PUNCTUATION.search(text) is not None:
        # The official loop decides each mark on the original text, so the marks are independent of each other and
        # one translate() gives the same result as its one replace() per mark.
        strip_all = _VQA_DIGIT_COMMA_DIGIT.search(text) is not None
        table = {}
        for mark in set(_VQA_PUNCTUATION.findall(text)):
            touches_space = f"{mark} " in text or f" {mark}" in text
            table[ord(mark)] = "" if (touches_space or strip_all) else " "
        text = text.translate(table)
    if "." in text:
        text = _VQA_PERIOD.sub("", text)
    # Number words, then articles, then contractions, as processDigitArticle; one lookup does both maps because no
    # number word is an article or a contraction and no digit is either.
    return " ".join([_VQA_WORD_MAP.get(word, word) for word in text.lower().split() if word not in _VQA_ARTICLES])


# ------------------------------------------------------------------------------------------ other normalisations


def _anls_normalize(text: str) -> str:
    # The DocVQA / InfographicVQA evaluation script: strip, lower-case, collapse runs of whitespace to one space.
    return " ".join(text.strip().lower().split())


def _anls_length(text: str) -> int:
    # The script divides by the longer *raw* answer's length as len(answer.upper()): not the normalised length
    # (spaces and line breaks it collapsed still count), and upper() can lengthen a string ("ß" -> "SS").
    return len(text.upper())


# SQuAD's normalize_answer: lower-case, delete ASCII punctuation (string.punctuation), articles a/an/the -> space,
# collapse whitespace. Its tokens are the whitespace-separated words of the result.
_SQUAD_PUNCTUATION = str.maketrans("", "", string.punctuation)
_SQUAD_ARTICLES = re.compile(r"\b(a|an|the)\b")


def _squad_tokens(text: str) -> list[str]:
    text = text.lower().translate(_SQUAD_PUNCTUATION)
    return _SQUAD_ARTICLES.sub(" ", text).split()


# A bag of words as the F1 core takes it: (word count, distinct words, per-word counts or None when no word
# repeats). Most answers repeat no word, and then the set alone gives the overlap.
_Bag = tuple[int, set[str], Counter[str] | None]


def _squad_bag(text: str) -> _Bag:
    tokens = _squad_tokens(text)
    distinct = set(tokens)
    return len(tokens), distinct, (Counter(tokens) if len(distinct) < len(tokens) else None)


def _chartqa_float(text: str) -> float | None:
    """pix2struct's ``_to_float``: Python's ``float()`` of the answer as it is, after removing trailing ``%``
    signs (then divided by 100). ``float()`` itself accepts surrounding whitespace, a sign, exponents,
    underscores between digits, non-ASCII digits, "inf" and "nan"; it refuses "1,234" and "$12"."""
    try:
        if text.endswith("%"):
            return float(text.rstrip("%")) / 100.0
        return float(text)
    except ValueError:
        return None


# The lenient number reading: a leading currency sign (after an optional sign) and thousands separators.
_CURRENCY_PREFIX = re.compile(r"^([+-]?)\$")
_THOUSANDS = re.compile(r"[+-]?\d{1,3}(?:,\d{3})+(?:\.\d*)?(?:e[+-]?\d+)?")


def _lenient_float(text: str) -> float | None:
    """A number as people write one in an answer: "$1,234.", " 45 %" (0.45), "1e3"; None when it is not one.

    Stripped and lower-cased, one final period dropped (a sentence's full stop), trailing ``%`` signs with
    the spaces before them (then divided by 100), a leading ``$``, and thousands separators in groups of three
    ("1,2" is not a number); then Python's ``float()``. Every string ``_chartqa_float`` reads gives the same
    number here; infinities and NaN are not numbers here (they compare as text).
    """
    text = text.strip().lower()
    if text.endswith("."):
        text = text[:-1]
    percent = text.endswith("%")
    if percent:
        text = text.rstrip("%").rstrip()
    text = _CURRENCY_PREFIX.sub(r"\1", text, count=1)
    if "," in text and _THOUSANDS.fullmatch(text):
        text = text.replace(",", "")
    try:
        value = float(text)
    except ValueError:
        return None
    if percent:
        value /= 100.0
    return value if math.isfinite(value) else None


def _check_references(references: Sequence[str]) -> None:
    # A bare string is a Sequence[str] too: scoring against its characters would silently give nonsense.
    if isinstance(references, str):
        raise TypeError(f"references must be a sequence of answer strings, not one string: {references!r}")
    if len(references) == 0:
        raise ValueError("references is empty: a score needs at least one reference answer")


# ------------------------------------------------------------------------------------------ per-pair cores
#
# score_text and score_text_many share these (ANLS's bulk path writes the same arithmetic in numpy float64, which
# rounds as Python's float does), so the bulk path gives the same floats as the per-pair one.


def _anls_nl(pred_normalized: str, pred_length: int, ref_normalized: str, ref_length: int) -> float:
    # The script's NL of one reference: 0.0 when both raw answers are empty.
    length = max(ref_length, pred_length)
    return 0.0 if length == 0 else Levenshtein.distance(ref_normalized, pred_normalized) / length


def _anls_from_nl(smallest_nl: float, threshold: float) -> float:
    # The script: question_result = 1 - min(values); 0 if question_result < threshold (so 1 - NL = 0.5 is kept).
    similarity = 1.0 - smallest_nl
    return 0.0 if similarity < threshold else similarity


def _f1_from_bags(pred: _Bag, ref: _Bag) -> float:
    pred_len, pred_words, pred_counts = pred
    ref_len, ref_words, ref_counts = ref
    common = pred_words & ref_words
    if not common:
        # SQuAD v1.1: num_same == 0 -> 0, including when both answers normalise to no word at all.
        return 0.0
    # SQuAD's sum(Counter(pred) & Counter(ref)): each shared word counts as often as the side with fewer of it has
    # it, which is once whenever one side has no repeated word.
    if pred_counts is None or ref_counts is None:
        same = len(common)
    else:
        same = sum(min(pred_counts[word], ref_counts[word]) for word in common)
    precision = same / pred_len
    recall = same / ref_len
    return (2 * precision * recall) / (precision + recall)


def _f1_squad2(pred: _Bag, ref: _Bag) -> float:
    # SQuAD 2.0's compute_f1: when either side has no word, 1 if both have none, else 0. Used against the baseline,
    # where two empty answers are the same answer.
    if pred[0] == 0 or ref[0] == 0:
        return 1.0 if pred[0] == ref[0] else 0.0
    return _f1_from_bags(pred, ref)


def _relaxed_chartqa(
    pred_number: float | None, pred_lower: str, ref_number: float | None, ref_lower: str, tolerance: float
) -> float:
    # pix2struct: `if prediction_float is not None and target_float:` -- a target of 0 (or -0) is falsy and falls
    # through to the string comparison; NaN is truthy and then fails the tolerance, as there.
    if pred_number is not None and ref_number is not None and ref_number != 0.0:
        return 1.0 if abs(pred_number - ref_number) / abs(ref_number) <= tolerance else 0.0
    return 1.0 if pred_lower == ref_lower else 0.0


def _relaxed_lenient(
    pred_number: float | None, pred_text: str, ref_number: float | None, ref_text: str, tolerance: float
) -> float:
    if pred_number is not None and ref_number is not None:
        if ref_number == 0.0:
            return 1.0 if pred_number == 0.0 else 0.0
        return 1.0 if abs(pred_number - ref_number) / abs(ref_number) <= tolerance else 0.0
    return 1.0 if pred_text == ref_text else 0.0


# ------------------------------------------------------------------------------------------ text metrics


def exact_match(prediction: str, references: Sequence[str]) -> float:
    """1.0 when the prediction equals any reference after VQA-v2 normalisation (``normalize_vqa``), else 0.0.

    Unlike the VQA-v2 accuracy (min(#humans agreeing / 3, 1) over 10 annotators) this is a plain match against
    each reference; give the 10 VQA answers as references to get "any annotator said it".
    """
    _check_references(references)
    pred = normalize_vqa(prediction)
    return 1.0 if any(pred == normalize_vqa(ref) for ref in references) else 0.0


def anls(prediction: str, references: Sequence[str], threshold: float = ANLS_THRESHOLD) -> float:
    """DocVQA / ST-VQA ANLS of one question, as the official evaluation script: ``1 - min(NL)`` over the
    references, 0 when that is below ``threshold``.

    ``NL`` is the Levenshtein distance between the stripped, lower-cased, whitespace-collapsed answers divided by
    ``max(len(reference.upper()), len(prediction.upper()))`` of the raw answers (0 when both are empty). So
    ``"Yes.\\n"`` against ``["yes"]`` is 1 - 1/5 = 0.8, and ``"ab"`` against ``["ac"]`` is exactly 0.5 (kept).
    """
    _check_references(references)
    pred, pred_length = _anls_normalize(prediction), _anls_length(prediction)
    smallest = min(_anls_nl(pred, pred_length, _anls_normalize(ref), _anls_length(ref)) for ref in references)
    return _anls_from_nl(smallest, threshold)


def token_f1(prediction: str, references: Sequence[str]) -> float:
    """SQuAD v1.1's token F1, best over references: harmonic mean of token precision and recall on the bags of
    normalised words (lower-cased, ASCII punctuation and a/an/the removed).

    With no word in common the score is 0, also when both answers normalise to nothing (``"the"`` against
    ``["a"]``), as ``evaluate-v1.1.py``.
    """
    _check_references(references)
    pred = _squad_bag(prediction)
    return max(_f1_from_bags(pred, _squad_bag(ref)) for ref in references)


def relaxed_accuracy(prediction: str, references: Sequence[str], tolerance: float = RELAXED_TOLERANCE) -> float:
    """ChartQA's relaxed accuracy as pix2struct's ``relaxed_correctness``, best over references: 1.0 or 0.0.

    Each side is read with Python's ``float()`` (a trailing ``%`` divides by 100: "45%" and "45 %" are 0.45).
    When the prediction reads and the reference reads as a non-zero number, right means
    ``|pred - ref| / |ref| <= tolerance``; otherwise the lower-cased strings must be equal as they are, spaces
    included (``"yes "`` is not ``"yes"``; ``"0.0"`` is not ``"0"``; ``"1,234"`` is not a number).
    """
    _check_references(references)
    pred_number, pred_lower = _chartqa_float(prediction), prediction.lower()
    return max(
        _relaxed_chartqa(pred_number, pred_lower, _chartqa_float(ref), ref.lower(), tolerance) for ref in references
    )


def relaxed_accuracy_lenient(
    prediction: str, references: Sequence[str], tolerance: float = RELAXED_TOLERANCE
) -> float:
    """Relaxed accuracy with numbers read as people write them, best over references: 1.0 or 0.0 (ours).

    Numbers as ``_lenient_float`` reads them ("$1,234", "12.", "45 %" = 0.45): right within ``tolerance``
    relative error, against a reference of 0 only a 0; otherwise the stripped, lower-cased strings must be
    equal. Never below ``relaxed_accuracy`` on the same answer.
    """
    _check_references(references)
    pred_number, pred_text = _lenient_float(prediction), prediction.strip().lower()
    return max(
        _relaxed_lenient(pred_number, pred_text, _lenient_float(ref), ref.strip().lower(), tolerance)
        for ref in references
    )


def score_text(prediction: str, references: Sequence[str]) -> dict[str, float]:
    """Every metric of ``TEXT_METRICS`` for one answer, at the benchmarks' default thresholds."""
    return {
        "exact_match": exact_match(prediction, references),
        "anls": anls(prediction, references),
        "token_f1": token_f1(prediction, references),
        "relaxed_accuracy": relaxed_accuracy(prediction, references),
        "relaxed_accuracy_lenient": relaxed_accuracy_lenient(prediction, references),
    }


def score_text_many(
    predictions: Sequence[str], references: Sequence[Sequence[str]], *, metrics: Sequence[str] = TEXT_METRICS
) -> dict[str, np.ndarray]:
    """``score_text`` for many answers at once: one float64 array per metric, the same numbers, faster.

    ``references[i]`` are the reference answers of ``predictions[i]``; ``metrics`` picks a subset of
    ``TEXT_METRICS`` (all by default). Each distinct string is normalised once for all metrics (answers and
    references repeat a lot across arms and annotators), and every edit distance is computed in one rapidfuzz
    ``cpdist`` call on one thread.
    """
    unknown = [metric for metric in metrics if metric not in TEXT_METRICS]
    if unknown:
        raise ValueError(f"unknown text metrics {unknown}; choose from {list(TEXT_METRICS)}")
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions but {len(references)} reference lists")
    for index, refs in enumerate(references):
        try:
            _check_references(refs)
        except (TypeError, ValueError) as error:
            raise type(error)(f"references[{index}]: {error}") from None
    want_exact = "exact_match" in metrics
    want_anls = "anls" in metrics
    want_f1 = "token_f1" in metrics
    want_relaxed = "relaxed_accuracy" in metrics
    want_lenient = "relaxed_accuracy_lenient" in metrics

    # One entry per distinct string: its normalised forms for the metrics asked for, in TEXT_METRICS order.
    cache: dict[str, tuple] = {}

    def forms(text: str) -> tuple:
        found = cache.get(text)
        if found is None:
            found = cache[text] = (
                normalize_vqa(text) if want_exact else None,
                (_anls_normalize(text), _anls_length(text)) if want_anls else None,
                _squad_bag(text) if want_f1 else None,
                (_chartqa_float(text), text.lower()) if want_relaxed else None,
                (_lenient_float(text), text.strip().lower()) if want_lenient else None,
            )
        return found

    exact: list[bool] = []
    anls_preds: list[str] = []
    anls_refs: list[str] = []
    anls_lengths: list[int] = []
    f1: list[float] = []
    relaxed: list[float] = []
    lenient: list[float] = []
    # The cache holds a few container objects per distinct string (hundreds of thousands on a large run), and the
    # cyclic garbage collector would rescan them all every few thousand allocations: on 100,000 pairs that costs
    # as much as the scoring. Nothing here creates reference cycles, so collection is paused meanwhile.
    collecting = gc.isenabled()
    gc.disable()
    try:
        for prediction, refs in zip(predictions, references, strict=True):
            pred = forms(prediction)
            for ref_text in refs:
                ref = forms(ref_text)
                if want_exact:
                    exact.append(pred[0] == ref[0])
                if want_anls:
                    anls_preds.append(pred[1][0])
                    anls_refs.append(ref[1][0])
                    anls_lengths.append(max(pred[1][1], ref[1][1]))
                if want_f1:
                    f1.append(_f1_from_bags(pred[2], ref[2]))
                if want_relaxed:
                    relaxed.append(_relaxed_chartqa(*pred[3], *ref[3], RELAXED_TOLERANCE))
                if want_lenient:
                    lenient.append(_relaxed_lenient(*pred[4], *ref[4], RELAXED_TOLERANCE))
    finally:
        if collecting:
            gc.enable()
    cache.clear()  # the pair lists hold what is still needed

    if not predictions:
        return {metric: np.zeros(0, dtype=np.float64) for metric in TEXT_METRICS if metric in metrics}
    # A prediction's references are contiguous in the pair lists: its best is a reduceat from its first one.
    counts = np.fromiter((len(refs) for refs in references), dtype=np.int64, count=len(references))
    starts = np.concatenate(([0], np.cumsum(counts)[:-1]))
    out: dict[str, np.ndarray] = {}
    if want_exact:
        out["exact_match"] = np.maximum.reduceat(np.array(exact, dtype=np.float64), starts)
    if want_anls:
        distances = cpdist(anls_refs, anls_preds, scorer=Levenshtein.distance, dtype=np.int64, workers=1)
        lengths = np.array(anls_lengths, dtype=np.int64)
        # int64 / int64 in numpy divides as float64, rounding as Python's int / int does for these sizes.
        nl = np.divide(distances, lengths, out=np.zeros(len(lengths), dtype=np.float64), where=lengths > 0)
        similarity = 1.0 - np.minimum.reduceat(nl, starts)
        out["anls"] = np.where(similarity < ANLS_THRESHOLD, 0.0, similarity)
    if want_f1:
        out["token_f1"] = np.maximum.reduceat(np.array(f1, dtype=np.float64), starts)
    if want_relaxed:
        out["relaxed_accuracy"] = np.maximum.reduceat(np.array(relaxed, dtype=np.float64), starts)
    if want_lenient:
        out["relaxed_accuracy_lenient"] = np.maximum.reduceat(np.array(lenient, dtype=np.float64), starts)
    return out


# ------------------------------------------------------------------------------------------ JSON answers

_JSON_FENCE = re.compile(r"```[A-Za-z0-9_-]*[ \t]*\n?(.*?)```", re.DOTALL)
_DECODER = json.JSONDecoder()


def parse_json_answer(text: str) -> dict | None:
    """The answer's JSON object, or None when no object parses.

    Tried in order: the whole answer; each fenced block (```json ... ``` or plain ```); the first ``{`` from which
    a complete object decodes, so prose around the object is ignored. Arrays, numbers and strings are not
    objects: an answer that is only ``[1, 2]`` gives None.
    """
    stripped = text.strip()
    try:
        whole = json.loads(stripped)
    except ValueError:
        pass
    else:
        if isinstance(whole, dict):
            return whole
    for block in _JSON_FENCE.findall(text):
        try:
            fenced = json.loads(block.strip())
        except ValueError:
            continue
        if isinstance(fenced, dict):
            return fenced
    start = text.find("{")
    while start != -1:
        try:
            found, _ = _DECODER.raw_decode(text, start)
        except ValueError:
            pass
        else:
            if isinstance(found, dict):
                return found
        start = text.find("{", start + 1)
    return None


# A string is read as a number when it is one in plain decimal notation. A leading zero before another digit
# ("02139", "007") marks a code, which stays a string.
_PLAIN_NUMBER = re.compile(r"[+-]?(?:(?:0|[1-9]\d{0,2}(?:,\d{3})+|[1-9]\d*)(?:\.\d*)?|\.\d+)(?:e[+-]?\d+)?")


def _canonical_number(value: Decimal) -> str:
    if value == 0:
        return "0"  # also -0 and 0.00
    return format(value.normalize(), "f")


def _canonical_value(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):  # before int: bool is an int subclass
        return "true" if value else "false"
    if isinstance(value, int):
        return _canonical_number(Decimal(value))
    if isinstance(value, float):
        if not math.isfinite(value):
            return repr(value)
        return _canonical_number(Decimal(repr(value)))  # repr: the shortest digits, 0.1 -> "0.1"
    text = " ".join(str(value).split()).lower()
    if _PLAIN_NUMBER.fullmatch(text):
        return _canonical_number(Decimal(text.replace(",", "")))
    return text


def _add_fields(fields: dict[str, str], path: str, value: object) -> None:
    if isinstance(value, dict) and value:
        for key, child in value.items():
            _add_fields(fields, f"{path}.{key}", child)
    elif isinstance(value, list | tuple) and value:
        for index, child in enumerate(value):
            _add_fields(fields, f"{path}.{index}", child)
    elif isinstance(value, dict):
        fields[path] = "{}"
    elif isinstance(value, list | tuple):
        fields[path] = "[]"
    else:
        fields[path] = _canonical_value(value)


def json_fields(obj: dict) -> dict[str, str]:
    """The object's leaves by dotted path, values normalised for comparison.

    ``{"total": "12.00", "items": [{"price": 3}]}`` -> ``{"total": "12", "items.0.price": "3"}``. Strings are
    lower-cased and whitespace-collapsed; numbers (and strings that are plain numbers, "1,200.50" included) are
    written canonically, so 12, 12.0 and "12.00" are equal; true, false and null as in JSON. An empty nested
    object or list is a leaf, "{}" or "[]", so predicting one where the reference has one counts.
    """
    if not isinstance(obj, dict):
        raise TypeError(f"json_fields takes a JSON object (dict), not {type(obj).__name__}")
    fields: dict[str, str] = {}
    for key, value in obj.items():
        _add_fields(fields, str(key), value)
    return fields


def score_json(prediction_text: str, reference: dict) -> dict[str, float | int | bool]:
    """Field-level precision, recall and F1 of a JSON answer against the reference object.

    A field is right when its dotted path is in both and the normalised values (``json_fields``) are equal.
    An answer with no parsable object counts as wrong: ``json_valid`` False, precision, recall and F1 0.
    An empty prediction against an empty reference scores 1.
    """
    reference_fields = json_fields(reference)
    parsed = parse_json_answer(prediction_text)
    if parsed is None:
        return {
            "json_valid": False,
            "field_precision": 0.0,
            "field_recall": 0.0,
            "field_f1": 0.0,
            "fields_matched": 0,
            "fields_predicted": 0,
            "fields_reference": len(reference_fields),
        }
    predicted_fields = json_fields(parsed)
    matched = sum(1 for path, value in predicted_fields.items() if reference_fields.get(path) == value)
    n_pred, n_ref = len(predicted_fields), len(reference_fields)
    both_empty = n_pred == 0 and n_ref == 0
    precision = matched / n_pred if n_pred else (1.0 if both_empty else 0.0)
    recall = matched / n_ref if n_ref else (1.0 if both_empty else 0.0)
    f1 = 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0
    return {
        "json_valid": True,
        "field_precision": precision,
        "field_recall": recall,
        "field_f1": f1,
        "fields_matched": matched,
        "fields_predicted": n_pred,
        "fields_reference": n_ref,
    }


# ------------------------------------------------------------------------------------------ without labels


def score_vs_baseline(answer: str, baseline_answer: str) -> dict[str, float | bool | int]:
    """A pruned arm's answer scored against the baseline arm's answer to the same sample (no labels needed).

    ``anls_vs_baseline`` is ``anls`` with the baseline answer as the one reference. ``token_f1_vs_baseline`` is
    token F1 with SQuAD 2.0's rule for answers without words: two such answers are the same answer (1.0), one
    of them against a worded answer scores 0.0 (``token_f1`` scores both 0.0, as SQuAD v1.1). ``changed`` is
    whether the two differ after VQA normalisation; ``length_change_chars`` is the pruned answer's length minus
    the baseline's (negative: shorter).
    """
    return {
        "anls_vs_baseline": anls(answer, [baseline_answer]),
        "token_f1_vs_baseline": _f1_squad2(_squad_bag(answer), _squad_bag(baseline_answer)),
        "changed": normalize_vqa(answer) != normalize_vqa(baseline_answer),
        "length_change_chars": len(answer) - len(baseline_answer),
    }
