"""Paired, head-to-head statistics of ``compare --baseline``: each method against one baseline.

Why: the table's means say which method is better on average; researchers comparing methods on
the same images also want to know how often it is better, by how much, and whether that could be
chance. Pairing image by image removes the spread between images (an easy face is easy for every
method), so much smaller differences are resolved than by comparing two means.

Rules (per method and metric; every metric has a direction, ``higher_is_better``):
- A method's value on an image is its value there, or for a stochastic method the mean over its
  seeds of the values it has (NaN — e.g. no face found —, metric errors and failed runs left out).
  An image is paired when both the method and the baseline have a value on it (not NaN); the
  others are counted (``left_out``), never silently dropped. ``±inf`` (PSNR of a perfect output)
  is a value: it is better or worse than a finite one (and ties with itself), so it counts in
  ``win`` and ``p``; it cannot be differenced, so ``diff`` and its interval leave it out
  (``n_diff`` images).
- ``n``: the images paired. ``win``: the share of them where the method is better than the
  baseline in the metric's direction, ties counting half (0.5 = no better, no worse).
- ``diff``: the mean paired difference ``method − baseline`` over the ``n_diff`` pairs of finite
  values (in the metric's units and sign: a positive PSNR difference and a negative LPIPS
  difference both favour the method), with a 95% confidence interval ``[ci_low, ci_high]``
  (:func:`mean_ci`): from 30 differences (:data:`T_INTERVAL_BELOW`) on, the percentile bootstrap —
  2,000 resamples (:data:`BOOTSTRAP_RESAMPLES`) of the differences, with replacement, from numpy's
  generator seeded with 0 (:data:`BOOTSTRAP_SEED`), so the same results give the same interval —;
  below 30, Student's t on their mean (``mean ± t·s/√n``): a bootstrap of a few values is too
  narrow (of two it is their range, which holds the mean about half the time; about 85% at five).
  One difference has no interval (NaN): a resample of one value is that value, which would read as
  certainty.
- ``p``: the two-sided exact sign test of "better and worse are equally likely", ties dropped:
  ``min(1, 2·P[X ≤ min(better, worse)])`` with ``X ~ Binomial(better + worse, ½)``. Exact in
  integers up to 20,000 untied images (:data:`EXACT_SIGN_TEST_MAX_N`), in log space above. It tests
  the direction only (not the size of the difference) and assumes nothing about the distribution.
  ``p = 1`` when every pair ties; every statistic is NaN when nothing is paired. A p-value below
  the smallest positive normal float (:data:`P_FLOOR`, about 2.2e-308: e.g. 3,000 images, all
  better) is reported as that float, an upper bound: never 0, which would claim certainty.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from .store import Record
from .student_t import t_quantile

BOOTSTRAP_RESAMPLES = 2000
BOOTSTRAP_SEED = 0
CI_LEVEL = 0.95
EXACT_SIGN_TEST_MAX_N = 20_000
#: The smallest p-value reported (the smallest positive normal float): a smaller one is this.
P_FLOOR = sys.float_info.min
#: Below this many differences the interval is Student's t's, from it on the percentile bootstrap's.
T_INTERVAL_BELOW = 30
_BOOTSTRAP_CHUNK = 1 << 22  # resampled values drawn at a time (memory bound for large n)


@dataclass(frozen=True)
class PairedStat:
    """One method against the baseline on one metric, over the ``n`` images both have a value on."""

    n: int
    left_out: int
    better: int
    ties: int
    worse: int
    win: float
    diff: float
    ci_low: float
    ci_high: float
    p: float
    n_diff: int = -1  # pairs of finite values behind diff and its interval (-1: all n)

    def __post_init__(self) -> None:
        if self.n_diff < 0:
            object.__setattr__(self, "n_diff", self.n)

    def as_dict(self) -> dict[str, float | int]:
        return {"n": self.n, "left_out": self.left_out, "better": self.better, "ties": self.ties,
                "worse": self.worse, "win": self.win, "diff": self.diff, "ci_low": self.ci_low,
                "ci_high": self.ci_high, "p": self.p, "n_diff": self.n_diff}


@dataclass(frozen=True)
class BaselineComparison:
    """Every other method against ``baseline``: ``stats[method][metric]``."""

    baseline: str
    directions: dict[str, bool]  # metric → higher is better
    stats: dict[str, dict[str, PairedStat]] = field(default_factory=dict)

    def as_dict(self) -> dict[str, object]:
        return {"baseline": self.baseline,
                "bootstrap": {"resamples": BOOTSTRAP_RESAMPLES, "seed": BOOTSTRAP_SEED, "level": CI_LEVEL},
                "t_interval_below": T_INTERVAL_BELOW,
                "higher_is_better": dict(self.directions),
                "methods": {m: {k: s.as_dict() for k, s in per.items()} for m, per in self.stats.items()}}


def image_values(records: Iterable[Record], metric: str) -> dict[str, float]:
    """Per image, one method's value of ``metric``: the mean over its seeds of the values it has.

    Every image with a record is a key; one without a usable value maps to NaN. An infinite value
    makes the mean infinite (both signs: NaN).
    """
    values: dict[str, list[float]] = {}
    for r in records:
        vals = values.setdefault(r.image, [])
        if r.status != "ok" or not r.metrics or metric not in r.metrics:
            continue
        if r.metric_errors and metric in r.metric_errors:
            continue
        v = r.metrics[metric]
        if not math.isnan(v):
            vals.append(v)
    return {img: (math.fsum(v) if all(math.isfinite(x) for x in v) else sum(v)) / len(v) if v else math.nan
            for img, v in values.items()}


def sign_test_p(better: int, worse: int) -> float:
    """Two-sided exact sign test p-value for ``better`` vs ``worse`` (ties already dropped); at
    least :data:`P_FLOOR` (a float holds no smaller, and 0 would read as certainty)."""
    if better < 0 or worse < 0:
        raise ValueError(f"counts must be non-negative, got {better} and {worse}")
    n, k = better + worse, min(better, worse)
    if 2 * k >= n:  # includes n == 0: no evidence either way
        return 1.0
    if n <= EXACT_SIGN_TEST_MAX_N:
        tail, c = 0, 1
        for i in range(k + 1):  # Σ_{i ≤ k} C(n, i), C(n, i+1) = C(n, i)·(n−i)/(i+1)
            tail += c
            c = c * (n - i) // (i + 1)
        p = 2 * tail / 2**n  # int / int: correctly rounded (0.0 once below every float)
    else:
        p = math.exp(math.log(2.0) + _log_binomial_tail(n, k))  # 0.0 below e**-745
    return min(1.0, max(p, P_FLOOR))


def _log_binomial_tail(n: int, k: int) -> float:
    """``log P[X ≤ k]`` for ``X ~ Binomial(n, ½)`` and ``k < n/2``, summed in log space."""
    i = np.arange(1, k + 1, dtype=np.float64)
    log_terms = np.concatenate([[0.0], np.cumsum(np.log((n - i + 1) / i))]) - n * math.log(2.0)
    top = float(log_terms[-1])  # the terms grow with i below n/2
    return top + math.log(float(np.exp(log_terms - top).sum()))


def bootstrap_ci(diffs: Sequence[float] | np.ndarray, *, resamples: int = BOOTSTRAP_RESAMPLES,
                 seed: int = BOOTSTRAP_SEED, level: float = CI_LEVEL) -> tuple[float, float]:
    """Percentile-bootstrap confidence interval of the mean of ``diffs`` (reproducible: fixed seed)."""
    x = np.asarray(diffs, dtype=np.float64)
    n = x.size
    if n == 0:
        return math.nan, math.nan
    rng = np.random.default_rng(seed)
    means = np.empty(resamples, dtype=np.float64)
    rows = max(1, min(resamples, _BOOTSTRAP_CHUNK // n))
    for start in range(0, resamples, rows):
        stop = min(resamples, start + rows)
        means[start:stop] = x[rng.integers(0, n, size=(stop - start, n))].mean(axis=1)
    alpha = (1.0 - level) / 2.0
    low, high = np.quantile(means, [alpha, 1.0 - alpha])
    return float(low), float(high)


def t_interval(diffs: Sequence[float] | np.ndarray, *, level: float = CI_LEVEL) -> tuple[float, float]:
    """Student's t confidence interval of the mean of ``diffs``: ``mean ± t·s/√n`` (``s`` with
    ``n − 1``); NaN for fewer than two values."""
    x = np.asarray(diffs, dtype=np.float64)
    n = x.size
    if n < 2:
        return math.nan, math.nan
    mean = math.fsum(x.tolist()) / n
    half = t_quantile(0.5 + level / 2.0, n - 1) * float(np.std(x, ddof=1)) / math.sqrt(n)
    return mean - half, mean + half


def mean_ci(diffs: Sequence[float] | np.ndarray, *, level: float = CI_LEVEL) -> tuple[float, float]:
    """The interval of the mean paired difference: :func:`t_interval` below
    :data:`T_INTERVAL_BELOW` values, :func:`bootstrap_ci` from there; NaN for fewer than two."""
    n = len(diffs)
    if n < 2:
        return math.nan, math.nan
    return t_interval(diffs, level=level) if n < T_INTERVAL_BELOW else bootstrap_ci(diffs, level=level)


def paired_stat(values: Mapping[str, float], baseline: Mapping[str, float], higher_is_better: bool) -> PairedStat:
    """``values`` (one method, image → value) against ``baseline`` on the images both have a value
    (not NaN) on; ``diff`` and its interval on those where both are finite (module docstring).

    Images in either mapping but not paired are counted in ``left_out``.
    """
    images = sorted(set(values) | set(baseline))
    pairs = [(values[k], baseline[k]) for k in images
             if k in values and k in baseline and not math.isnan(values[k]) and not math.isnan(baseline[k])]
    n = len(pairs)
    if n == 0:
        nan = math.nan
        return PairedStat(0, len(images), 0, 0, 0, nan, nan, nan, nan, nan)
    better = sum(1 for a, b in pairs if (a > b if higher_is_better else a < b))
    worse = sum(1 for a, b in pairs if (a < b if higher_is_better else a > b))
    ties = n - better - worse
    diffs = [a - b for a, b in pairs if math.isfinite(a) and math.isfinite(b)]
    low, high = mean_ci(diffs)
    mean = math.fsum(diffs) / len(diffs) if diffs else math.nan
    return PairedStat(n, len(images) - n, better, ties, worse, (better + 0.5 * ties) / n,
                      mean, low, high, sign_test_p(better, worse), n_diff=len(diffs))


def compare_to_baseline(records: Iterable[Record], baseline: str, methods: Sequence[str],
                        directions: Mapping[str, bool]) -> BaselineComparison:
    """Every method of ``methods`` but ``baseline`` against it, on every metric of ``directions``."""
    by_method: dict[str, list[Record]] = {}
    for r in records:
        by_method.setdefault(r.method, []).append(r)
    out = BaselineComparison(baseline, dict(directions))
    base = {m: image_values(by_method.get(baseline, []), m) for m in directions}
    for name in dict.fromkeys(methods):
        if name == baseline:
            continue
        recs = by_method.get(name, [])
        out.stats[name] = {m: paired_stat(image_values(recs, m), base[m], hib) for m, hib in directions.items()}
    return out
