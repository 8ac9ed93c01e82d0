"""Test and benchmark helpers, kept out of the engine (as ``optuna.testing``): tiny random-weight
models of every supported family (``random_models``), built from configs, no downloads.

``BUILDERS`` maps each family's adapter name (``pilot.pruning.families.FAMILIES``) to a function
building a tiny random model of that family; keyword arguments (``layers``, ``attn``, ``seed``,
``dtype``, ...) go to the builder. ``tests/test_family_registry.py`` checks that every registered
family has one.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

from pilot.testing.random_models import (
    random_gemma3,
    random_internvl,
    random_llava,
    random_llava_onevision,
    random_mistral3,
    random_qwen2_5_vl,
    random_qwen3_vl,
    random_smolvlm,
)

BUILDERS: dict[str, Callable] = {
    "llava": random_llava,
    "llava_next": partial(random_llava, next=True),
    "qwen2_5_vl": random_qwen2_5_vl,
    "qwen3_vl": random_qwen3_vl,
    "gemma3": random_gemma3,
    "llava_onevision": random_llava_onevision,
    "internvl": random_internvl,
    "mistral3": random_mistral3,
    "smolvlm": random_smolvlm,
    "idefics3": partial(random_smolvlm, idefics3=True),
}

__all__ = ["BUILDERS"]
