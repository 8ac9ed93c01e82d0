"""One adapter per model family; the engine asks ``for_model(model)``, the cost model ``by_name(model_type)``.

A family is one module here: a ``Family`` subclass answering the engine's questions and,
torch-free, the cost model's (dimensions, tower FLOPs, typical tokens, presets, images per
prompt), registered by one line in ``FAMILIES``; plus its tests (the checklist:
docs/families.md; ``tests/test_family_registry.py`` fails for a family module left out of
``FAMILIES`` and for a family missing its cost, preset, builder or overlay).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pilot.pruning.families.base import (
    Family,
    GridSegment,
    VisualInputs,
    compact_positions,
    per_sample_visual,
    pool_visual,
)
from pilot.pruning.families.dims import ModelDims
from pilot.pruning.families.gemma3 import Gemma3
from pilot.pruning.families.internvl import InternVL
from pilot.pruning.families.llava import Llava
from pilot.pruning.families.llava_next import LlavaNext, next_image_grids
from pilot.pruning.families.llava_onevision import LlavaOnevision, onevision_image_grids
from pilot.pruning.families.mistral3 import Mistral3
from pilot.pruning.families.qwen2_5_vl import Qwen2_5_VL
from pilot.pruning.families.qwen3_vl import Qwen3VL
from pilot.pruning.families.smolvlm import Idefics3, SmolVLM

if TYPE_CHECKING:
    from torch import nn

# The registry, in the order error messages and ``pilot flops``' presets list the families.
FAMILIES: tuple[Family, ...] = (
    Llava(), LlavaNext(), Qwen2_5_VL(), Qwen3VL(), Gemma3(),
    LlavaOnevision(), InternVL(), Mistral3(), SmolVLM(), Idefics3(),
)
SUPPORTED_CLASSES: tuple[str, ...] = tuple(name for family in FAMILIES for name in family.classes)
# Config model_types the cost model reads (``ModelDims.from_config``).
MODEL_TYPES: tuple[str, ...] = tuple(t for family in FAMILIES for t in (family.name, *family.model_types))


def for_model(model: nn.Module) -> Family:
    """The adapter of ``model``'s class, or ValueError naming the class and the supported ones."""
    name = type(model).__name__
    for family in FAMILIES:
        if name in family.classes:
            return family
    raise ValueError(f"{name} is not supported by the pruning engine; supported: {', '.join(SUPPORTED_CLASSES)}")


def by_name(name: str) -> Family:
    """The adapter of a config's ``model_type`` (its ``name`` or one of its ``model_types``)."""
    for family in FAMILIES:
        if name == family.name or name in family.model_types:
            return family
    raise ValueError(f"model type {name!r} is not supported; supported: {', '.join(MODEL_TYPES)}")


def presets() -> dict[str, dict]:
    """Every family's presets (public config.json dimensions), by preset name."""
    return {name: config for family in FAMILIES for name, config in family.presets.items()}


__all__ = [
    "FAMILIES", "MODEL_TYPES", "SUPPORTED_CLASSES", "Family", "GridSegment", "ModelDims", "VisualInputs", "by_name",
    "compact_positions", "for_model", "next_image_grids", "onevision_image_grids", "per_sample_visual", "pool_visual",
    "presets",
]
