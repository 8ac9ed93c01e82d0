"""Confidence bounds valid at every sample size: a mean of bounded values (betting), a share (Clopper-Pearson).

No torch here (the dashboard and the tuner import it through pilot.metrics).

**Betting bound on a bounded mean.** Waudby-Smith, I. and Ramdas, A. (2024), "Estimating means of bounded random
variables by betting", Journal of the Royal Statistical Society Series B 86(1), 1-27 (arXiv:2010.09686). Values
``x_i`` in ``[low, high]`` are rescaled to ``[0, 1]``. For a candidate mean ``m``, a gambler who bets against
``E x >= m`` holds the wealth ``K_t(m) = prod_{i<=t} (1 + lambda_i * (m - x_i))`` with bets ``lambda_i`` fixed
before ``x_i`` is seen (they use only ``x_1 .. x_{i-1}``) and kept in ``[0, 1/(1 - m))`` so that no factor is
negative. When the true mean is at least ``m``, each factor has expectation at most 1, so ``K_t(m)`` is a
non-negative supermartingale starting at 1 and, by Ville's inequality, reaches ``1/alpha`` at *any* time with
probability at most ``alpha``. The upper bound is the largest ``m`` whose wealth never reached ``1/alpha``: it holds
with probability at least ``1 - alpha`` at every ``n`` (no normal approximation, no minimum sample size), and
even when every value is the same. Watching it grow sample by sample and stopping whenever one likes keeps that
guarantee (a confidence sequence: what live guardrails need).

The bets are the paper's "predictable plug-in" (its eq. 26 with the fixed-n tuning of its section 5 when a
``horizon`` is given, eq. 27's ``t log t`` tuning otherwise): ``lambda_t = sqrt(2 log(1/alpha) / (horizon *
sigma2_{t-1}))`` from a running variance ``sigma2`` that starts at 1/4, cut at ``C_TRUNCATE / (1 - m)``. The
tuning only affects the width, never the validity.

The bound depends on the order of the values (the bets are sequential); any order fixed without looking at the
values is valid, and callers pass the samples in the order they were stored.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from scipy import stats

ALPHA = 0.025  # one side of a two-sided 95% interval
C_TRUNCATE = 0.75  # largest bet as a share of the most that keeps the wealth positive (the paper's c, 1/2 to 3/4)
GRID = 128  # candidate means per refinement pass (three passes: the bound to 1e-6 of the range)


def _predictable_bets(x: np.ndarray, alpha: float, horizon: int | None) -> np.ndarray:
    """lambda_t for t = 1..n before truncation, from x_1 .. x_{t-1} only."""
    n = len(x)
    t = np.arange(1, n + 1, dtype=np.float64)
    mu_hat = (0.5 + np.cumsum(x)) / (t + 1)  # mu_hat_t after x_t
    mu_prev = np.concatenate(([0.5], mu_hat[:-1]))  # mu_hat_{t-1}, the prediction of x_t
    sigma2 = (0.25 + np.cumsum((x - mu_prev) ** 2)) / (t + 1)  # sigma2_t after x_t
    sigma2_prev = np.concatenate(([0.25], sigma2[:-1]))
    log_inv = math.log(1.0 / alpha)
    if horizon is not None:
        return np.sqrt(2.0 * log_inv / (max(int(horizon), 1) * sigma2_prev))
    return np.sqrt(2.0 * log_inv / (sigma2_prev * t * np.log1p(t)))


def _rejected(x: np.ndarray, bets: np.ndarray, m: np.ndarray, alpha: float) -> np.ndarray:
    """For each candidate mean m (in [0, 1)): whether the wealth against ``E x >= m`` ever reached 1/alpha."""
    lam = np.minimum(bets[None, :], C_TRUNCATE / (1.0 - m[:, None]))  # (G, n)
    log_wealth = np.cumsum(np.log1p(lam * (m[:, None] - x[None, :])), axis=1)
    return log_wealth.max(axis=1) >= math.log(1.0 / alpha)


def betting_upper(values: Sequence[float] | np.ndarray, low: float, high: float, alpha: float = ALPHA,
                  horizon: int | None = None) -> float | None:
    """An upper confidence bound (level ``1 - alpha``) on the mean of ``values``, each in ``[low, high]``, valid at
    every n (and anytime). ``horizon``: the sample size to tune the bets for (the fixed-n interval; default
    ``len(values)``); pass 0 for the anytime tuning of a confidence sequence. None without values."""
    x = np.asarray(values, dtype=np.float64)
    if not len(x):
        return None
    if not high > low:
        raise ValueError(f"need low < high, not [{low}, {high}]")
    span = high - low
    x = (x - low) / span
    if x.min() < -1e-12 or x.max() > 1 + 1e-12:
        raise ValueError(f"values must lie in [{low}, {high}]")
    x = np.clip(x, 0.0, 1.0)
    bets = _predictable_bets(x, alpha, len(x) if horizon is None else (horizon or None))
    # Search [mean, 1) on a grid, then twice more between the last candidate kept and the next (rejected) one.
    # The bound is that first rejected candidate: conservative by at most the last step (1e-6 of the range).
    left, right = float(x.mean()), 1.0
    if left >= 1.0:  # every value at the top of the range
        return float(high)
    for _ in range(3):
        m = np.linspace(left, right, GRID + 1)
        rejected = _rejected(x, bets, m[:-1], alpha)
        kept = np.flatnonzero(~rejected)
        last = int(kept[-1]) if len(kept) else 0
        left, right = float(m[last]), float(m[last + 1])
        if last == GRID - 1 and right == 1.0 and not rejected[-1]:
            break  # nothing below 1 rejected: the bound is the range's end
    return low + span * right + 0.0


def betting_interval(values: Sequence[float] | np.ndarray, low: float, high: float, alpha: float = ALPHA,
                     horizon: int | None = None) -> list[float] | None:
    """[lower, upper] bounds on the mean, each at level ``1 - alpha`` (two-sided ``1 - 2 alpha``)."""
    x = np.asarray(values, dtype=np.float64)
    upper = betting_upper(x, low, high, alpha, horizon)
    if upper is None:
        return None
    lower = -betting_upper(-x, -high, -low, alpha, horizon)
    mean = float(x.mean())
    return [min(lower, mean) + 0.0, max(upper, mean) + 0.0]


def clopper_pearson(successes: int | np.ndarray, n: int | np.ndarray, alpha: float = ALPHA
                    ) -> tuple[np.ndarray | float, np.ndarray | float]:
    """Clopper-Pearson (exact binomial) bounds on a share, each side at level ``1 - alpha``: with ``successes``
    out of ``n``, ``[beta(alpha; k, n - k + 1), beta(1 - alpha; k + 1, n - k)]`` (0 and 1 at the ends).
    Vectorised over arrays of counts."""
    k = np.asarray(successes, dtype=np.float64)
    size = np.asarray(n, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        low = np.where(k > 0, stats.beta.ppf(alpha, k, size - k + 1), 0.0)
        high = np.where(k < size, stats.beta.ppf(1 - alpha, k + 1, size - k), 1.0)
    if np.ndim(low) == 0:
        return float(low), float(high)
    return low, high


def betting_upper_path(values: Sequence[float] | np.ndarray, low: float, high: float, alpha: float = ALPHA,
                       grid: int = 1024, chunk: int = 4096) -> np.ndarray:
    """The upper bound after each value, ``out[t]`` on ``values[:t + 1]``: a confidence sequence (the bets tuned
    for any time, the paper's eq. 27), so with probability at least ``1 - alpha`` the mean is under ``out[t]`` at
    every t at once: a live guardrail may check it after each sample and stop at the first alarm. On a grid of
    ``grid`` candidate means (the bound is rounded up to the next grid point: at most ``(high - low) / grid``
    wider than ``betting_upper``); memory O(grid * chunk), time O(grid * n)."""
    x = np.asarray(values, dtype=np.float64)
    if not high > low:
        raise ValueError(f"need low < high, not [{low}, {high}]")
    span = high - low
    x = (x - low) / span
    if len(x) and (x.min() < -1e-12 or x.max() > 1 + 1e-12):
        raise ValueError(f"values must lie in [{low}, {high}]")
    x = np.clip(x, 0.0, 1.0)
    bets = _predictable_bets(x, alpha, None)
    m = np.linspace(0.0, 1.0, grid + 1)  # m[grid] = 1 is never rejected (no bet can win against it)
    cap = C_TRUNCATE / (1.0 - m[:-1])
    log_wealth = np.zeros(grid)
    ever = np.zeros(grid, dtype=bool)  # rejected at some time so far: stays rejected (the running intersection)
    out = np.empty(len(x))
    threshold = math.log(1.0 / alpha)
    for start in range(0, len(x), chunk):
        xs, lam = x[start:start + chunk], np.minimum(bets[start:start + chunk][None, :], cap[:, None])
        path = log_wealth[:, None] + np.cumsum(np.log1p(lam * (m[:-1, None] - xs[None, :])), axis=1)
        rejected = ever[:, None] | (np.maximum.accumulate(path, axis=1) >= threshold)
        kept = ~rejected
        # the largest kept grid index at each time (-1 when none is kept), and the bound just above it
        last = np.where(kept.any(axis=0), grid - 1 - np.argmax(kept[::-1], axis=0), -1)
        out[start:start + len(xs)] = low + span * m[last + 1]
        log_wealth, ever = path[:, -1], rejected[:, -1]
    return out
