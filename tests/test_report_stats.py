"""lsq.report.stats: paired 95 % t-intervals, verdicts against a threshold, seeds to settle."""

from __future__ import annotations

import math

import pandas as pd
import pytest
from scipy import stats as scipy_stats

from lsq.experiments import ABOVE, BELOW, WITHIN
from lsq.report import stats
from lsq.report.stats import FAILS, HOLDS, INCONCLUSIVE, NOT_MEASURED

DROPS = [0.1, 0.3, -0.1]  # mean 0.1, sd 0.2, n 3


def by_hand_seeds(mean: float, sd: float, target: float) -> int:
    """The smallest n with t_{0.975, n-1} * sd / sqrt(n) < |mean - target|, walked from n = 2."""
    n = 2
    while scipy_stats.t.ppf(0.975, n - 1) * sd / math.sqrt(n) >= abs(mean - target):
        n += 1
    return n


def test_interval_is_the_student_t_interval():
    found = stats.interval(DROPS)
    assert (found.mean, found.sd, found.n) == (pytest.approx(0.1), pytest.approx(0.2), 3)
    # ttest_1samp is another route to the same interval.
    expected = scipy_stats.ttest_1samp(DROPS, 0.0).confidence_interval(0.95)
    assert (found.lo, found.hi) == (pytest.approx(expected.low), pytest.approx(expected.high))
    half = 4.302652729911275 * 0.2 / math.sqrt(3)  # t_{0.975, 2} from a table
    assert found.hi - found.mean == pytest.approx(half)
    assert found.format_interval() == "[-0.40, +0.60]"


def test_holds_when_the_whole_interval_is_on_the_claims_side():
    found = stats.interval(DROPS)  # [-0.40, +0.60]
    assert stats.verdict(found, 1.0, BELOW) == HOLDS
    assert stats.verdict(found, -1.0, ABOVE) == HOLDS
    assert stats.verdict(found, 1.0, WITHIN) == HOLDS
    assert stats.seeds_to_settle(found, 1.0, BELOW) is not None  # defined, but not asked for


def test_does_not_hold_when_the_whole_interval_is_on_the_other_side():
    found = stats.interval(DROPS)
    assert stats.verdict(found, 2.0, ABOVE) == FAILS
    assert stats.verdict(found, -0.5, BELOW) == FAILS
    assert stats.verdict(found, 0.3, WITHIN) == INCONCLUSIVE  # reaches past +0.3
    far = stats.interval([3.0, 3.2, 2.8])
    assert stats.verdict(far, 1.0, WITHIN) == FAILS
    assert stats.verdict(stats.interval([-3.0, -3.2, -2.8]), 1.0, WITHIN) == FAILS


def test_inconclusive_gives_the_seeds_that_would_settle_it():
    found = stats.interval(DROPS)
    assert stats.verdict(found, 0.0, BELOW) == INCONCLUSIVE
    needed = stats.seeds_to_settle(found, 0.0, BELOW)
    assert needed == by_hand_seeds(0.1, 0.2, 0.0) == 18
    # At that n the interval would clear 0; one seed fewer it would not.
    assert stats.half_width(0.2, 18) < 0.1 <= stats.half_width(0.2, 17)
    # "within ±1": the distance is to the nearer boundary, +1 for a mean of 0.9.
    near = stats.interval([1.0, 0.8])
    assert stats.verdict(near, 1.0, WITHIN) == INCONCLUSIVE
    assert stats.seeds_to_settle(near, 1.0, WITHIN) == by_hand_seeds(0.9, near.sd, 1.0) == 11


def test_seeds_to_settle_for_a_small_gap_matches_the_walk_from_two():
    found = stats.Interval(0.05, 1.0, 5, math.nan, math.nan)
    assert stats.seeds_to_settle(found, 0.0, ABOVE) == by_hand_seeds(0.05, 1.0, 0.0)


def test_one_seed_has_no_interval_and_no_verdict():
    found = stats.interval([0.7])
    assert found.n == 1 and math.isnan(found.lo) and math.isnan(found.hi)
    assert found.format_interval() == "none (1 seed)"
    assert stats.verdict(found, 1.0, BELOW) == INCONCLUSIVE
    assert stats.seeds_to_settle(found, 1.0, BELOW) is None
    assert stats.format_seeds(None) == "—"


def test_identical_values_have_sd_zero_and_a_point_interval():
    # Differences of two-decimal accuracies: equal on paper, 1e-14 apart in floats.
    found = stats.interval([92.0 - 91.9, 92.4 - 92.3, 92.3 - 92.2])
    assert found.sd == 0.0 and found.lo == found.hi == pytest.approx(0.1)
    assert stats.verdict(found, 1.0, BELOW) == HOLDS
    assert stats.verdict(found, 0.0, BELOW) == FAILS
    on_threshold = stats.interval([0.5, 0.5])
    assert stats.verdict(on_threshold, 0.5, ABOVE) == INCONCLUSIVE
    assert stats.seeds_to_settle(on_threshold, 0.5, ABOVE) is None  # sd 0 and on the threshold
    spread_on_threshold = stats.interval([0.4, 0.6])
    assert stats.seeds_to_settle(spread_on_threshold, 0.5, ABOVE) is None  # mean on it


def test_paired_uses_the_seeds_both_have():
    first = pd.Series({0: 90.0, 1: 91.0, 2: 92.0})
    second = pd.Series({1: 90.0, 2: 90.5, 3: 80.0})
    found = stats.paired(first, second)
    assert found.n == 2 and found.mean == pytest.approx(1.25)
    assert stats.paired(pd.Series({0: 1.0}), pd.Series({1: 1.0})) == stats.NONE
    assert stats.verdict(stats.NONE, 1.0, BELOW) == NOT_MEASURED


def test_point_verdict_on_published_numbers():
    assert stats.point_verdict(0.26, 1.0, BELOW) == HOLDS
    assert stats.point_verdict(2.32, 2.0, ABOVE) == HOLDS
    assert stats.point_verdict(-1.5, 1.0, WITHIN) == FAILS
    assert stats.point_verdict(math.nan, 1.0, WITHIN) == NOT_MEASURED


def test_unknown_side_is_an_error():
    with pytest.raises(ValueError, match="unknown side 'beside'"):
        stats.verdict(stats.interval(DROPS), 1.0, "beside")
