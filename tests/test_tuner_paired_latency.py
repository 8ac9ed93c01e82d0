"""Latency that survives a busy machine: a trial's prefill ratio is timed paired with the baseline (no model)."""

from types import SimpleNamespace

import pytest
import torch

from pilot.generation import PreparedBatch
from tuner.study import TrialEvaluator, paired_ratio

COST = {"baseline": 1.0, "fast": 0.6, "faster": 0.4}  # seconds of prefill per sample on an idle machine


class SlowingClock:
    """A ``time.perf_counter``-like clock. Work advances it; once ``slow_from`` seconds have passed, another
    process takes the machine and every unit of work takes ``factor`` times longer."""

    def __init__(self, slow_from: float, factor: float = 3.0):
        self.now, self.slow_from, self.factor = 0.0, slow_from, factor

    def __call__(self) -> float:
        return self.now

    def work(self, seconds: float) -> None:
        self.now += seconds * (1.0 if self.now < self.slow_from else self.factor)


def timed_batches(clock: SlowingClock):
    """A stand-in for ``run_arm_batch`` that reads ``clock`` around the prefill and the decode, as the runner does."""

    def run_batch(loaded, strategy, prepared, labels, max_new_tokens, device):
        n = len(prepared.items)
        start = clock()
        clock.work(COST[strategy] * n)
        first_token = clock()
        clock.work(0.1 * n)
        end = clock()
        return [{"sample_id": item.id, "label": item.label, "prediction": item.label,
                 "prefill_ms": (first_token - start) * 1000 / n, "total_ms": (end - start) * 1000 / n}
                for item in prepared.items]

    return run_batch


def _batches(count=8, size=4):
    return [PreparedBatch([SimpleNamespace(id=f"s{b}-{i}", label="a") for i in range(size)], {}, {})
            for b in range(count)]


@pytest.mark.parametrize("every", [1, 8])  # every batch timed (latency objective), one per chunk (tflops)
def test_prefill_ratios_are_unmoved_when_the_machine_slows_down_halfway(every):
    batches = _batches()
    # six trials; the other process arrives during the third (paired work per trial: (1 + 0.6 or 0.4) x 32 s)
    clock = SlowingClock(slow_from=2.5 * 32 * 1.5)
    evaluator = TrialEvaluator(None, batches, ["a"], 2, torch.device("cpu"), cache_features=False,
                               run_batch=timed_batches(clock))
    baseline_once = evaluator.run("baseline", batches)  # the old way: the baseline timed once, at the start
    baseline_ms = sorted(r["prefill_ms"] for r in baseline_once)[len(baseline_once) // 2]
    clock.slow_from += clock.now
    paired, unpaired = [], []
    for strategy in ["fast", "faster"] * 3:
        rows, pairs = evaluator.run_paired(strategy, batches, every=every)
        assert [r["sample_id"] for r in rows] == [item.id for b in batches for item in b.items]
        assert len(pairs) == len(batches) // every
        paired.append(paired_ratio(pairs) / COST[strategy])
        unpaired.append(sorted(r["prefill_ms"] for r in rows)[len(rows) // 2] / baseline_ms / COST[strategy])
    assert clock.now > clock.slow_from  # the slow-down did happen, mid-study
    assert paired == pytest.approx([1.0] * 6)  # every trial's ratio is its true one, before and after
    assert max(unpaired) == pytest.approx(3.0)  # timed against a baseline from before, trials looked 3x slower


def test_paired_ratio_is_the_median_of_per_batch_ratios():
    pairs = [{"prefill_ms": (6.0, 10.0)}, {"prefill_ms": (18.0, 30.0)}, {"prefill_ms": (30.0, 30.0)}]
    assert paired_ratio(pairs) == pytest.approx(0.6)  # one batch straddling the change does not move it
    assert paired_ratio(pairs[:2]) == pytest.approx(0.6)
    assert paired_ratio([]) is None and paired_ratio([{"prefill_ms": (None, 3.0)}]) is None
