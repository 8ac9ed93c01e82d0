"""One adapter per model family; the engine asks ``for_model(model)`` and nothing else.

Adding a family is one module here (a ``Family`` subclass) plus its tests, and one line in
``FAMILIES``.
"""

from __future__ import annotations

from torch import nn

from pilot.pruning.families.base import (
    Family,
    GridSegment,
    VisualInputs,
    compact_positions,
    per_sample_visual,
    pool_visual,
)
from pilot.pruning.families.gemma3 import Gemma3
from pilot.pruning.families.internvl import InternVL
from pilot.pruning.families.llava import Llava
from pilot.pruning.families.llava_next import LlavaNext, next_image_grids
from pilot.pruning.families.llava_onevision import LlavaOnevision, onevision_image_grids
from pilot.pruning.families.mistral3 import Mistral3
from pilot.pruning.families.qwen2_5_vl import Qwen2_5_VL
from pilot.pruning.families.qwen3_vl import Qwen3VL
from pilot.pruning.families.smolvlm import Idefics3, SmolVLM

FAMILIES: tuple[Family, ...] = (
    Llava(), LlavaNext(), Qwen2_5_VL(), Qwen3VL(), Gemma3(),
    LlavaOnevision(), InternVL(), Mistral3(), SmolVLM(), Idefics3(),
)
SUPPORTED_CLASSES: tuple[str, ...] = tuple(name for family in FAMILIES for name in family.classes)


def for_model(model: nn.Module) -> Family:
    """The adapter of ``model``'s class, or ValueError naming the class and the supported ones."""
    name = type(model).__name__
    for family in FAMILIES:
        if name in family.classes:
            return family
    raise ValueError(f"{name} is not supported by the pruning engine; supported: {', '.join(SUPPORTED_CLASSES)}")


def by_name(name: str) -> Family:
    """The adapter called ``name`` (a config's ``model_type``: llava, llava_next, qwen2_5_vl, ...)."""
    for family in FAMILIES:
        if family.name == name or (name == "qwen3_vl_moe" and family.name == "qwen3_vl"):
            return family
    raise ValueError(f"model type {name!r} is not supported; supported: {', '.join(f.name for f in FAMILIES)}")


__all__ = [
    "FAMILIES", "SUPPORTED_CLASSES", "Family", "GridSegment", "VisualInputs", "by_name", "compact_positions",
    "for_model", "next_image_grids", "onevision_image_grids", "per_sample_visual", "pool_visual",
]
