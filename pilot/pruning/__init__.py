"""The pruning engine: strategies, scores, cost model, and ``attach`` for stock LLaVA models."""

from pilot.pruning.engine import PruneTrace, PruningHandle, StageTrace, attach
from pilot.pruning.strategies import (
    FastV,
    NoPrune,
    RandomPrune,
    Strategy,
    TokenPool,
    TransPrune,
    kept_count,
    parse,
)

__all__ = [
    "FastV", "NoPrune", "PruneTrace", "PruningHandle", "RandomPrune", "StageTrace", "Strategy",
    "TokenPool", "TransPrune", "attach", "kept_count", "parse",
]
