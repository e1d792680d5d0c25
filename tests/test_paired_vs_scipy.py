"""The paired confidence interval is exactly the documented percentile bootstrap (scipy's)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import bootstrap

from restorekit.harness.paired import BOOTSTRAP_RESAMPLES, BOOTSTRAP_SEED, CI_LEVEL, bootstrap_ci


def _scipy_ci(x: np.ndarray) -> tuple[float, float]:
    """95% percentile bootstrap of the mean: 2,000 resamples from numpy's generator seeded with 0."""
    res = bootstrap((x,), np.mean, n_resamples=2000, method="percentile", confidence_level=0.95,
                    rng=np.random.default_rng(0), vectorized=True)
    return float(res.confidence_interval.low), float(res.confidence_interval.high)


@pytest.mark.parametrize("n", [23, 3001])  # 3001: more values than one chunk of resamples holds
def test_bootstrap_interval_is_scipys_percentile_bootstrap(n):
    x = np.random.default_rng(5).normal(0.3, 1.0, n)
    lo, hi = bootstrap_ci(x)
    want_lo, want_hi = _scipy_ci(x)
    assert lo == pytest.approx(want_lo, rel=1e-12, abs=1e-15)
    assert hi == pytest.approx(want_hi, rel=1e-12, abs=1e-15)
    assert (BOOTSTRAP_RESAMPLES, BOOTSTRAP_SEED, CI_LEVEL) == (2000, 0, 0.95)  # what the reports state

