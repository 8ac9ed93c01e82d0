"""Stratified, seeded split of a dataset into a tuning part and a held-out part."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable

import numpy as np

from pilot.data.manifest import Item

PARTS = ("tune", "heldout")


def stratified_split(items: Iterable[Item], heldout_fraction: float = 0.5, seed: int = 0) -> dict[str, str]:
    """``sample id -> "tune" | "heldout"``: per label, a seeded shuffle, the first share held out.

    Depends only on the ids, labels and seed, so every worker and every rerun agrees.
    """
    if not 0.0 < heldout_fraction < 1.0:
        raise ValueError(f"heldout_fraction={heldout_fraction} must be between 0 and 1")
    by_label: dict[str, list[str]] = defaultdict(list)
    for item in items:
        by_label[item.label].append(item.id)
    part: dict[str, str] = {}
    for label in sorted(by_label):
        ids = sorted(by_label[label])
        order = np.random.default_rng([seed, len(ids)]).permutation(len(ids))
        held = round(len(ids) * heldout_fraction)
        for rank, index in enumerate(order):
            part[ids[index]] = "heldout" if rank < held else "tune"
    return part
