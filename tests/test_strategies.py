import pytest

from pilot.pruning import FastV, NoPrune, RandomPrune, TokenPool, TransPrune, kept_count, parse
from pilot.pruning.strategies import map_layers_to_depth

CANONICAL = [
    "baseline",
    "transprune",
    "transprune:prune_after=7/9/12,keep=0.875/0.625/0.125",
    "transprune:prune_after=3/5,keep=0.5/0.25,accumulate_from=2,alpha=0.3,positions=original",
    "transprune:prune_after=2,keep=0.5,direction=absolute",
    "fastv:after=2,keep=0.5",
    "fastv:after=3,keep=0.25,positions=original",
    "random",
    "random:prune_after=7/9/12,keep=0.875/0.625/0.125,seed=3",
    "pool:factor=2",
]


@pytest.mark.parametrize("text", CANONICAL)
def test_canonical_strings_round_trip(text):
    assert str(parse(text)) == text
    assert parse(str(parse(text))) == parse(text)


def test_defaults_match_the_paper_and_issue():
    strategy = TransPrune()
    assert strategy.prune_after == (7, 9, 12) and strategy.keep == (0.875, 0.625, 0.125)
    assert strategy.accumulate_from == 7 and strategy.alpha == 0.5
    assert strategy.direction == "signed"
    # No position mode given: the model family's default (compact for LLaVA, original for M-RoPE).
    assert strategy.positions is None and strategy.position_mode is None
    assert str(parse("transprune:positions=compact")) == "transprune:positions=compact"
    assert parse("fastv:after=2,keep=0.5") == FastV(after=2, keep=0.5)
    assert parse("baseline") == NoPrune() and parse("pool:factor=3") == TokenPool(3)
    assert parse("random:prune_after=2,keep=0.5,seed=4") == RandomPrune(prune_after=(2,), keep=(0.5,), seed=4)


def test_paper_counts_for_llava_1_5():
    assert [kept_count(576, k) for k in (0.875, 0.625, 0.125)] == [504, 360, 72]
    assert kept_count(10, 0.01) == 1 and kept_count(0, 0.5) == 0


def test_bare_transprune_maps_to_depth():
    assert parse("transprune").resolve(32) == TransPrune()
    assert TransPrune.for_depth(32) == TransPrune()
    assert TransPrune.for_depth(12).prune_after == (3, 4, 5)
    assert TransPrune.for_depth(16).prune_after == (4, 5, 6)
    assert parse("transprune").resolve(12) == TransPrune.for_depth(12)
    assert parse("random").resolve(12).prune_after == (3, 4, 5)
    with pytest.raises(ValueError, match="too shallow"):
        map_layers_to_depth((7, 9, 12), 3)


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: TransPrune(prune_after=(2, 4), keep=(0.5, 0.75)), "grow"),
        (lambda: TransPrune(prune_after=(2,), keep=(0.0,)), r"must be in \(0, 1\]"),
        (lambda: TransPrune(prune_after=(2,), keep=(1.5,)), r"must be in \(0, 1\]"),
        (lambda: FastV(after=2, keep=-0.1), r"must be in \(0, 1\]"),
        (lambda: TransPrune(prune_after=(4, 6), keep=(0.5, 0.2), accumulate_from=5), "accumulate_from=5"),
        (lambda: TransPrune(prune_after=(4, 3), keep=(0.5, 0.2)), "strictly increasing"),
        (lambda: TransPrune(prune_after=(4,), keep=(0.5, 0.2)), "one keep ratio per pruning layer"),
        (lambda: TransPrune(prune_after=(2,), keep=(0.5,), alpha=2.0), "alpha"),
        (lambda: TransPrune(prune_after=(2,), keep=(0.5,), positions="weird"), "positions"),
        (lambda: TokenPool(1), "factor"),
        (lambda: parse("sparsevlm:keep=0.5"), "unknown strategy"),
        (lambda: parse("fastv:after=2,ratio=0.5"), "unknown setting 'ratio=0.5'"),
        (lambda: parse("fastv:after=two"), "cannot read after='two'"),
        (lambda: parse("transprune:keep=0.5"), "give both prune_after and keep"),
        (lambda: TransPrune().resolve(12), "beyond a 12-layer model"),
    ],
)
def test_bad_strategies_say_what_to_change(make, message):
    with pytest.raises(ValueError, match=message):
        make()
