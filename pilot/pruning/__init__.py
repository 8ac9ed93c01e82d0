"""The pruning engine: strategies, scores, cost model, and ``attach`` for stock vision-language models.

The names below are loaded on first use (PEP 562): ``from pilot.pruning import parse`` reads only the
strategies (plain Python), so the dashboard and the store can parse a strategy without importing torch;
``from pilot.pruning import attach`` loads the engine, and torch with it.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # for type checkers and editors; at run time __getattr__ loads them
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

# Exported name -> the submodule that defines it.
_EXPORTS = {
    **dict.fromkeys(("PruneTrace", "PruningHandle", "StageTrace", "attach"), "pilot.pruning.engine"),
    **dict.fromkeys(("DivPrune", "FastV", "NoPrune", "PDrop", "RandomPrune", "Strategy", "TokenPool", "TransPrune",
                     "kept_count", "parse"), "pilot.pruning.strategies"),
}

__all__ = [
    "DivPrune", "FastV", "NoPrune", "PDrop", "PruneTrace", "PruningHandle", "RandomPrune", "StageTrace", "Strategy",
    "TokenPool", "TransPrune", "attach", "kept_count", "parse",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # once loaded, a plain attribute: later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})
