"""Datasets: manifests, Hugging Face datasets as teams keep them (:func:`open_dataset`), the procedural demo set."""

from __future__ import annotations

from typing import Any

__all__ = ["open_dataset"]


def __getattr__(name: str) -> Any:
    # Lazy: importing pilot.data.<module> runs this package first, and most callers need neither pyarrow nor Pillow.
    if name == "open_dataset":
        from pilot.data.hf import open_dataset

        return open_dataset
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
