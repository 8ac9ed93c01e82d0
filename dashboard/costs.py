"""What the arms cost a month at a given volume and GPU price (docs/kpis.md), and what pruning saves."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from dashboard.formatting import num
from dashboard.verdicts import baseline_arm

MS_PER_HOUR = 3_600_000.0


@dataclass(frozen=True)
class CostInputs:
    images_per_month: float = 1_000_000
    price_per_gpu_hour: float = 2.50
    utilisation: float = 0.6
    currency: str = "$"

    def describe(self) -> str:
        return (f"{self.images_per_month:,.0f} images per month · {self.currency}{self.price_per_gpu_hour:,.2f} "
                f"per GPU-hour · {self.utilisation:.0%} utilisation")


def gpu_hours_per_month(total_ms: float | None, inputs: CostInputs) -> float | None:
    """images per month × total_ms / 3,600,000 / utilisation (docs/kpis.md)."""
    t = num(total_ms)
    if t is None or inputs.utilisation <= 0:
        return None
    return inputs.images_per_month * t / MS_PER_HOUR / inputs.utilisation


def cost_rows(report: Mapping[str, Any], inputs: CostInputs) -> list[dict]:
    """Per arm: p50 total latency, GPU-hours and money per month, and savings against the baseline."""
    base = baseline_arm(report)
    base_hours = gpu_hours_per_month(base.get("total_ms_p50"), inputs) if base else None
    rows = []
    for arm in report.get("arms") or []:
        h = gpu_hours_per_month(arm.get("total_ms_p50"), inputs)
        cost = None if h is None else h * inputs.price_per_gpu_hour
        saved_h = None if h is None or base_hours is None else base_hours - h
        rows.append({
            "arm": arm["name"], "strategy": arm["strategy"], "total_ms_p50": num(arm.get("total_ms_p50")),
            "gpu_hours": h, "cost": cost, "gpu_hours_saved": saved_h,
            "money_saved": None if saved_h is None else saved_h * inputs.price_per_gpu_hour,
            "saved_share": None if saved_h is None or not base_hours else saved_h / base_hours,
        })
    return rows
