"""The paired interval of a few differences holds the true mean difference about as often as it
says: Student's t below 30 differences (a percentile bootstrap of two values is their range, which
holds the mean about half the time), the percentile bootstrap from 30 on."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from restorekit.harness.paired import (CI_LEVEL, T_INTERVAL_BELOW, bootstrap_ci, mean_ci, paired_stat,
                                       t_interval)
from restorekit.harness.student_t import incomplete_beta, t_cdf, t_quantile


@pytest.mark.parametrize("df", [*range(1, 41), 100, 419, 10_000])
def test_t_quantile_and_cdf_match_scipy(df: int) -> None:
    for p in (0.5, 0.6, 0.9, 0.975, 0.995, 0.999999, 0.025):
        assert t_quantile(p, df) == pytest.approx(stats.t.ppf(p, df), rel=1e-9, abs=1e-12)
    for t in (-30.0, -2.5, -0.1, 0.0, 0.7, 3.0, 50.0):
        assert t_cdf(t, df) == pytest.approx(stats.t.cdf(t, df), rel=1e-10, abs=1e-14)


def test_incomplete_beta_matches_scipy_and_refuses_bad_arguments() -> None:
    from scipy.special import betainc

    for a, b, x in [(0.5, 0.5, 0.3), (2.0, 0.5, 0.99), (200.0, 0.5, 0.999), (1.5, 3.0, 0.01), (10.0, 10.0, 0.5)]:
        assert incomplete_beta(a, b, x) == pytest.approx(betainc(a, b, x), rel=1e-11)
    assert incomplete_beta(2.0, 3.0, 0.0) == 0.0 and incomplete_beta(2.0, 3.0, 1.0) == 1.0
    with pytest.raises(ValueError):
        incomplete_beta(0.0, 1.0, 0.5)
    with pytest.raises(ValueError):
        t_quantile(1.0, 3)


def test_two_differences_get_the_t_interval_not_their_range() -> None:
    diffs = [-5.8546, -0.4220]
    s = paired_stat({"a": 20.0 + diffs[0], "b": 30.0 + diffs[1]}, {"a": 20.0, "b": 30.0}, higher_is_better=True)
    mean, sd = float(np.mean(diffs)), float(np.std(diffs, ddof=1))
    half = 12.706204736174707 * sd / math.sqrt(2)  # t(0.975, 1 df)
    assert s.diff == pytest.approx(mean) and (s.ci_low, s.ci_high) == pytest.approx((mean - half, mean + half))
    assert s.ci_low < min(diffs) and s.ci_high > max(diffs)  # the old interval was exactly [min, max]
    ref = stats.t.interval(CI_LEVEL, 1, loc=mean, scale=stats.sem(diffs))
    assert t_interval(diffs) == pytest.approx(ref, rel=1e-9)


def test_the_interval_switches_to_the_bootstrap_at_30_differences() -> None:
    rng = np.random.default_rng(3)
    few, many = rng.normal(size=T_INTERVAL_BELOW - 1), rng.normal(size=T_INTERVAL_BELOW)
    assert mean_ci(few) == t_interval(few) and mean_ci(many) == bootstrap_ci(many)
    assert all(math.isnan(v) for v in mean_ci([1.0])) and all(math.isnan(v) for v in mean_ci([]))


@pytest.mark.parametrize("n", [2, 3, 5, 10, 40])
def test_coverage_is_near_the_level_at_every_size(n: int) -> None:
    rng = np.random.default_rng(100 + n)
    trials, held = 1500 if n < T_INTERVAL_BELOW else 300, 0
    for _ in range(trials):
        d = rng.normal(0.5, 2.0, size=n)
        s = paired_stat({str(i): float(v) for i, v in enumerate(d)}, {str(i): 0.0 for i in range(n)}, True)
        held += s.ci_low <= 0.5 <= s.ci_high
    # 1,500 trials: the share's standard error is 0.0056; the bootstrap of 2 held 0.51, of 5 0.85.
    low = 0.93 if n < T_INTERVAL_BELOW else 0.89  # (300 trials of the bootstrap at 40: se 0.013, ~0.94)
    assert low <= held / trials <= 0.975, held / trials
