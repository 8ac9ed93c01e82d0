"""Map a model's generated text to one of the dataset's labels, or :data:`INVALID`.

Text and labels are compared after normalisation: Unicode NFKC, case-folded, every character that is not a
letter or digit (punctuation, underscores, symbols) turned into a space, whitespace collapsed. So ``"No-defect"``,
``"no_defect"`` and ``"NO DEFECT!"`` all match the label ``"no defect"``. Matches are on whole words or
phrases (``"yes"`` does not match ``"yesterday"``). The rules, first one that matches wins:

1. the whole text equals a label;
2. the text starts with a label (``"Yes, there is"`` -> ``yes``);
3. a label occurs anywhere; if several do, the one that occurs first wins (``"I think it is a hole"``
   -> ``hole``);
4. only if 1-3 found nothing: number words ``zero``..``ten`` stand for the digit labels ``0``..``10`` and the
   digits for number-word labels (``"two"`` -> ``2``), tried by rules 1-3 again.

At any position the longest label wins, so ``"no defect"`` is matched before ``"no"``. Labels are returned
exactly as given. Labels that normalise to nothing (e.g. ``"?"``) can never match; if two labels normalise
to the same words, the first one listed wins. Empty text or no match gives :data:`INVALID` -- note that a
label spelled ``"invalid"`` would be indistinguishable from it.

Without a label set (a pilot without labels and without declared answers) :func:`free_answer` keeps the
normalised text itself as the answer, so two arms agree when their texts normalise alike.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence

__all__ = ["INVALID", "NUMBER_WORDS", "free_answer", "normalise", "parse_answer"]

INVALID = "invalid"

NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten")

_NON_WORD = re.compile(r"[\W_]+")


def normalise(text: str) -> str:
    """Case-fold, replace everything but letters and digits by spaces, collapse whitespace."""
    return " ".join(_NON_WORD.sub(" ", unicodedata.normalize("NFKC", text).casefold()).split())


def _number_alias(norm_label: str) -> str | None:
    if norm_label in NUMBER_WORDS:
        return str(NUMBER_WORDS.index(norm_label))
    if norm_label.isascii() and norm_label.isdigit() and str(int(norm_label)) == norm_label:
        value = int(norm_label)
        if value < len(NUMBER_WORDS):
            return NUMBER_WORDS[value]
    return None


def _match(words: tuple[str, ...], phrases: dict[tuple[str, ...], str]) -> str | None:
    if not words or not phrases:
        return None
    # (1) the whole text is a label
    if words in phrases:
        return phrases[words]
    by_length = sorted(phrases, key=len, reverse=True)
    # (2) the text starts with a label, (3) otherwise the first label anywhere; longest label at a position
    for start in range(len(words)):
        for phrase in by_length:
            if words[start : start + len(phrase)] == phrase:
                return phrases[phrase]
    return None


def parse_answer(text: str, labels: Sequence[str]) -> str:
    """Return the label in ``labels`` that ``text`` answers (see the module docstring), or :data:`INVALID`."""
    if isinstance(labels, str):
        raise TypeError(f"labels must be a sequence of strings, not the string {labels!r}")
    words = tuple(normalise(text or "").split())
    if not words:
        return INVALID

    literal: dict[tuple[str, ...], str] = {}
    for label in labels:
        key = tuple(normalise(label).split())
        if key:
            literal.setdefault(key, label)
    found = _match(words, literal)
    if found is not None:
        return found

    aliases: dict[tuple[str, ...], str] = {}
    for key, label in literal.items():
        alias = _number_alias(" ".join(key))
        if alias is not None and (alias,) not in literal:
            aliases.setdefault((alias,), label)
    found = _match(words, aliases)
    return INVALID if found is None else found


FREE_ANSWER_MAX = 255  # the store's prediction column


def free_answer(text: str) -> str:
    """The answer of a pilot without a label set: the normalised text (at most 255 characters), or
    :data:`INVALID` when nothing is left."""
    words = normalise(text or "")
    return words[:FREE_ANSWER_MAX].rstrip() if words else INVALID
