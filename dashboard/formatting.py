"""Numbers as the dashboard's tiles, tables and exported report show them ("+1.2 pts", "12.5 ms", "$1,234").

The terminal report (``pilot.report``) formats for aligned plain-text columns; both read numbers through its
``finite_number`` (None, NaN and text show as missing).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pilot.report import finite_number

MISSING = "–"


num = finite_number  # the dashboard's short name for it


def pct(value: Any, digits: int = 1) -> str:
    v = num(value)
    return MISSING if v is None else f"{v * 100:.{digits}f}%"


def signed_pct(value: Any, digits: int = 1) -> str:
    v = num(value)
    if v is None:
        return MISSING
    v = 0.0 if round(v * 100, digits) == 0 else v
    return f"{v * 100:+.{digits}f}%"


def pts(value: Any, digits: int = 1, signed: bool = True) -> str:
    """A macro-F1 (or accuracy) difference in points: 0.012 -> "+1.2 pts"."""
    v = num(value)
    if v is None:
        return MISSING
    v = 0.0 if round(v * 100, digits) == 0 else v
    return f"{v * 100:+.{digits}f} pts" if signed else f"{v * 100:.{digits}f} pts"


def ci_pts(ci: Any, digits: int = 1) -> str:
    if not isinstance(ci, list | tuple) or len(ci) != 2 or num(ci[0]) is None or num(ci[1]) is None:
        return MISSING
    lo, hi = (0.0 if round(num(v) * 100, digits) == 0 else num(v) for v in ci)
    return f"[{lo * 100:+.{digits}f}, {hi * 100:+.{digits}f}] pts"


def ms(value: Any) -> str:
    v = num(value)
    return MISSING if v is None else f"{v:,.1f} ms"


def short_ms(value: Any) -> str:
    """A latency for a tile: "209 ms", "12.5 ms"."""
    v = num(value)
    if v is None:
        return MISSING
    return f"{v:,.0f} ms" if abs(v) >= 100 else f"{v:.1f} ms"


def fixed(value: Any, digits: int = 3) -> str:
    v = num(value)
    return MISSING if v is None else f"{v:.{digits}f}"


def money(value: Any, currency: str = "$") -> str:
    v = num(value)
    if v is None:
        return MISSING
    sign = "-" if v < 0 else ""
    return f"{sign}{currency}{abs(v):,.0f}"


def hours(value: Any) -> str:
    v = num(value)
    return MISSING if v is None else f"{v:,.1f} h"


def machine_text(machine: Mapping[str, Any] | None) -> str:
    """One line naming the machine the latencies were measured on."""
    if not machine:
        return "unknown machine"
    device = machine.get("gpu") or machine.get("cpu") or machine.get("device") or "unknown device"
    parts = [str(device)]
    if not machine.get("gpu") and machine.get("threads"):
        parts.append(f"{machine['threads']} threads")
    if machine.get("torch"):
        parts.append(f"torch {machine['torch']}")
    return ", ".join(parts)
