"""Paired per-seed differences, their 95 % Student-t intervals, and verdicts against a threshold.

For the per-seed differences ``d_1 .. d_n`` (row a − row b of the same seed) with mean ``m`` and
sample standard deviation ``s``, the interval is ``m ± t_{0.975, n−1} · s / sqrt(n)``
(``scipy.stats.t.interval``). A claim "``d`` lies ``side`` of ``T``" (``below``: ``d < T``,
``above``: ``d > T``, ``within``: ``|d| < T``) *holds* when the whole interval lies on that side,
*does not hold* when it lies wholly on the other side, and is *inconclusive* otherwise.

For an inconclusive one, the seeds that would settle it, were the mean and spread to stay as
observed, are the smallest ``n`` with ``t_{0.975, n−1} · s / sqrt(n) < δ``, where ``δ`` is the
distance from ``m`` to the threshold: ``|m − T|``, or ``| |m| − T |`` for ``within`` (the
nearer of ``±T``). There is none ("—") when ``δ = 0``, ``s = 0`` or ``n < 2``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import pandas as pd
from scipy import stats

from lsq.experiments import ABOVE, BELOW, WITHIN

LEVEL = 0.95
HOLDS, FAILS, INCONCLUSIVE, NOT_MEASURED = "holds", "does not hold", "inconclusive", "not measured"
DASH = "—"


@dataclass(frozen=True)
class Interval:
    """Mean, sample std and the 95 % t-interval of n values (lo = hi = NaN for n < 2)."""

    mean: float
    sd: float
    n: int
    lo: float
    hi: float

    @property
    def measured(self) -> bool:
        return self.n > 0

    @property
    def has_interval(self) -> bool:
        return self.n >= 2

    def format_mean(self, digits: int = 2) -> str:
        return signed(self.mean, digits) if self.measured else DASH

    def format_interval(self, digits: int = 2) -> str:
        if not self.measured:
            return DASH
        if not self.has_interval:
            return "none (1 seed)"
        return f"[{signed(self.lo, digits)}, {signed(self.hi, digits)}]"


NONE = Interval(math.nan, math.nan, 0, math.nan, math.nan)


def signed(value: float, digits: int = 2) -> str:
    """``+0.10``, ``-1.20``; never ``-0.00``."""
    if abs(value) < 0.5 * 10**-digits:
        value = 0.0
    return f"{value:+.{digits}f}"


def interval(values: pd.Series | list[float]) -> Interval:
    """The mean and 95 % t-interval of ``values`` (NaNs dropped)."""
    # Accuracies come with two decimals; rounding the float noise of their differences away
    # keeps identical differences identical (sd exactly 0) rather than 1e-15 apart.
    values = pd.Series(values, dtype=float).dropna().round(9)
    n = len(values)
    if n == 0:
        return NONE
    mean = float(values.mean())
    if n == 1:
        return Interval(mean, math.nan, 1, math.nan, math.nan)
    if values.nunique() == 1:
        # No spread (pandas' std says ~1e-17 here, not 0): scipy's interval of a zero scale is
        # NaN, so give the point itself.
        return Interval(mean, 0.0, n, mean, mean)
    sd = float(values.std(ddof=1))
    lo, hi = stats.t.interval(LEVEL, n - 1, loc=mean, scale=sd / math.sqrt(n))
    return Interval(mean, sd, n, float(lo), float(hi))


def paired(first: pd.Series, second: pd.Series) -> Interval:
    """``first − second`` over the seeds both have (series indexed by seed)."""
    first, second = first.dropna(), second.dropna()
    common = sorted(set(first.index) & set(second.index))
    return interval(first.loc[common] - second.loc[common]) if common else NONE


def verdict(found: Interval, threshold: float, side: str) -> str:
    """``holds`` / ``does not hold`` / ``inconclusive`` (``not measured`` with no value)."""
    if not found.measured:
        return NOT_MEASURED
    if not found.has_interval:
        return INCONCLUSIVE  # one seed: no interval to place
    lo, hi, t = found.lo, found.hi, threshold
    if side == BELOW:
        return HOLDS if hi < t else FAILS if lo > t else INCONCLUSIVE
    if side == ABOVE:
        return HOLDS if lo > t else FAILS if hi < t else INCONCLUSIVE
    if side == WITHIN:
        return HOLDS if -t < lo and hi < t else FAILS if lo > t or hi < -t else INCONCLUSIVE
    raise ValueError(f"unknown side {side!r}; choose one of {[BELOW, ABOVE, WITHIN]}")


def point_verdict(value: float, threshold: float, side: str) -> str:
    """The same rule on a single published number, which has no interval."""
    if math.isnan(value):
        return NOT_MEASURED
    inside = {BELOW: value < threshold, ABOVE: value > threshold,
              WITHIN: abs(value) < threshold}[side]
    return HOLDS if inside else FAILS


def distance(mean: float, threshold: float, side: str) -> float:
    """How far the mean is from the boundary the interval must clear."""
    if side == WITHIN:
        return abs(abs(mean) - threshold)
    return abs(mean - threshold)


def half_width(sd: float, n: int) -> float:
    """``t_{0.975, n−1} · sd / sqrt(n)``."""
    return float(stats.t.ppf(0.5 + LEVEL / 2, n - 1)) * sd / math.sqrt(n)


def seeds_to_settle(found: Interval, threshold: float, side: str) -> int | None:
    """The smallest n whose interval would exclude the threshold at the observed mean and sd;
    None when the mean sits on the threshold, sd is 0 or fewer than 2 seeds were run."""
    if found.n < 2 or not found.sd > 0:
        return None
    gap = distance(found.mean, threshold, side)
    if gap <= 0:
        return None
    # t_{0.975, n−1} > z_{0.975}, so n must exceed (z · sd / gap)²: start there, not at 2, so
    # that a tiny gap does not walk through millions of n.
    z = float(stats.norm.ppf(0.5 + LEVEL / 2))
    n = max(2, math.floor((z * found.sd / gap) ** 2))
    while half_width(found.sd, n) >= gap:
        n += 1
    return n


def format_seeds(n: int | None) -> str:
    return DASH if n is None else str(n)
