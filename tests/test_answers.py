"""Generated text maps to a label by the documented rules, or to INVALID."""

import pytest

from pilot.data.answers import INVALID, normalise, parse_answer

YES_NO = ["yes", "no"]
DEFECTS = ["scratch", "hole", "no defect"]
DIGITS = ["0", "1", "2", "3", "10"]
WORDS = ["zero", "one", "two", "three"]

CASES = [
    # (1) whole text, case- and punctuation-insensitive
    ("yes", YES_NO, "yes"),
    ("  NO!  ", YES_NO, "no"),
    ("No-Defect.", DEFECTS, "no defect"),
    ("no_defect", DEFECTS, "no defect"),
    ("Yes", ["Yes", "No"], "Yes"),  # returned exactly as given
    ("yes", ["YES", "NO"], "YES"),
    # (2) starts with a label
    ("Yes.", YES_NO, "yes"),
    ("yes, there is", YES_NO, "yes"),
    ("No, there isn't", YES_NO, "no"),
    ("Scratch on the left", DEFECTS, "scratch"),
    ("No defect, but a hole-like shadow", DEFECTS, "no defect"),  # longest match before its sub-word
    # (3) a label anywhere, the first one wins
    ("I think it is a hole", DEFECTS, "hole"),
    ("the answer is 2", DIGITS, "2"),
    ("There is no defect here", DEFECTS + ["no"], "no defect"),
    ("a scratch, not a hole", DEFECTS, "scratch"),
    ("a hole and a scratch", DEFECTS, "hole"),
    ("count: 10", DIGITS, "10"),
    # (4) number words <-> digits, only when nothing matched literally
    ("two", DIGITS, "2"),
    ("There are Three scratches.", DIGITS, "3"),
    ("ten", DIGITS, "10"),
    ("2", WORDS, "two"),
    ("I count 3", WORDS, "three"),
    ("two or 3", DIGITS, "3"),  # a literal label beats a number word
    # whole words only, and INVALID
    ("yesterday", YES_NO, INVALID),
    ("nothing", YES_NO, INVALID),
    ("12", DIGITS, INVALID),
    ("eleven", DIGITS, INVALID),
    ("", YES_NO, INVALID),
    ("?!", YES_NO, INVALID),
    ("yes", [], INVALID),
    ("maybe", YES_NO, INVALID),
]


@pytest.mark.parametrize(("text", "labels", "expected"), CASES)
def test_parse_answer(text, labels, expected):
    assert parse_answer(text, labels) == expected


def test_normalise():
    assert normalise("  Hello,   WORLD!!\n") == "hello world"
    assert normalise("isn't") == "isn t"
    assert normalise("Ｙｅｓ") == "yes"


def test_labels_must_not_be_a_string():
    with pytest.raises(TypeError):
        parse_answer("yes", "yes")
