"""The pruning engine: strategies, scores, cost model, and ``attach`` for stock vision-language models."""

from pilot.pruning.engine import PruneTrace, PruningHandle, StageTrace, attach
from pilot.pruning.strategies import (
    DivPrune,
    FastV,
    NoPrune,
    PDrop,
    RandomPrune,
    Strategy,
    TokenPool,
    TransPrune,
    kept_count,
    parse,
)

__all__ = [
    "DivPrune", "FastV", "NoPrune", "PDrop", "PruneTrace", "PruningHandle", "RandomPrune", "StageTrace", "Strategy",
    "TokenPool", "TransPrune", "attach", "kept_count", "parse",
]
