"""The Fréchet distance between two Gaussians, and feature statistics that feed it.

``d² = |μ₁ − μ₂|² + tr Σ₁ + tr Σ₂ − 2 tr (Σ₁ Σ₂)^½`` (Dowson & Landau 1982), the formula FID
uses. ``tr (Σ₁ Σ₂)^½`` is computed as ``tr (Σ₁^½ Σ₂ Σ₁^½)^½``: the inner matrix is symmetric
positive semi-definite (same eigenvalues as ``Σ₁ Σ₂``), so two symmetric eigen-decompositions
(float64) replace a general matrix square root — no scipy, no complex round-off, and
rank-deficient covariances (fewer samples than dimensions) need no special case: eigenvalues
below zero from rounding are clipped to zero.

Statistics are accumulated batch by batch in float64 around a shift (the first batch's mean),
so a million features cost no more memory than one batch and lose no precision to cancellation.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import NamedTuple

import numpy as np
from numpy.typing import ArrayLike, NDArray
from torch import Tensor

__all__ = ["FeatureStats", "StatsAccumulator", "frechet_distance", "psd_sqrt", "stats_of"]


class FeatureStats(NamedTuple):
    """Mean (``D``), covariance (``D×D``, unbiased) and sample count of a feature set (float64)."""

    mu: NDArray[np.float64]
    sigma: NDArray[np.float64]
    n: int


def _square(name: str, m: ArrayLike, d: int) -> NDArray[np.float64]:
    a = np.asarray(m, dtype=np.float64)
    if a.shape != (d, d):
        raise ValueError(f"frechet_distance: {name} must be {d}×{d}, got shape {a.shape}")
    if not np.all(np.isfinite(a)):
        raise ValueError(f"frechet_distance: {name} has non-finite entries")
    sym = (a + a.T) / 2
    w = np.linalg.eigvalsh(sym)
    # A covariance has no negative eigenvalue but from rounding (relative 1e-12 or so): one past
    # that is no covariance, and clipping it inside the square roots alone gave a distance of 0.
    if w[0] < -1e-9 * max(float(np.abs(w).max()), np.finfo(np.float64).tiny):
        raise ValueError(f"frechet_distance: {name} is not a covariance (eigenvalue {w[0]:.3g} < 0)")
    return sym


def psd_sqrt(m: NDArray[np.float64]) -> NDArray[np.float64]:
    """The symmetric square root of a symmetric positive semi-definite matrix (negative
    eigenvalues from rounding are taken as zero)."""
    w, v = np.linalg.eigh(m)
    return (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T


def frechet_distance(mu1: ArrayLike, sigma1: ArrayLike, mu2: ArrayLike, sigma2: ArrayLike) -> float:
    """Squared Fréchet (2-Wasserstein) distance between N(mu1, sigma1) and N(mu2, sigma2).

    float64 throughout; the result is clipped at 0 (rounding can give −1e-12 for equal inputs).
    """
    m1 = np.asarray(mu1, dtype=np.float64).reshape(-1)
    m2 = np.asarray(mu2, dtype=np.float64).reshape(-1)
    if m1.shape != m2.shape:
        raise ValueError(f"frechet_distance: means of different lengths ({m1.size} and {m2.size})")
    d = m1.size
    if d == 0 or not (np.all(np.isfinite(m1)) and np.all(np.isfinite(m2))):
        raise ValueError("frechet_distance: the means must be non-empty and finite")
    s1, s2 = _square("sigma1", sigma1, d), _square("sigma2", sigma2, d)
    r = psd_sqrt(s1)
    inner = r @ s2 @ r
    eig = np.linalg.eigvalsh((inner + inner.T) / 2)
    tr_covmean = float(np.sqrt(np.clip(eig, 0.0, None)).sum())
    diff = m1 - m2
    value = float(diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * tr_covmean)
    return max(value, 0.0)


class StatsAccumulator:
    """Running mean and covariance of ``N×D`` feature batches (float64, shifted sums)."""

    def __init__(self) -> None:
        self.n = 0
        self._shift: NDArray[np.float64] | None = None
        self._sum: NDArray[np.float64] | None = None
        self._outer: NDArray[np.float64] | None = None

    def add(self, features: Tensor | ArrayLike) -> None:
        """Add a batch of features (``N×D``; a torch tensor on any device or an array)."""
        if isinstance(features, Tensor):
            x = features.detach().to("cpu").double().numpy()
        else:
            x = np.asarray(features, dtype=np.float64)
        if x.ndim != 2:
            raise ValueError(f"features must be N×D, got shape {x.shape}")
        if len(x) == 0:
            return
        if not np.all(np.isfinite(x)):
            raise ValueError("features contain NaN or infinity")
        if self._shift is None:
            self._shift = x.mean(0)
            d = x.shape[1]
            self._sum, self._outer = np.zeros(d), np.zeros((d, d))
        elif x.shape[1] != self._shift.size:
            raise ValueError(f"features of width {x.shape[1]} after width {self._shift.size}")
        assert self._sum is not None and self._outer is not None
        c = x - self._shift
        self._sum += c.sum(0)
        self._outer += c.T @ c
        self.n += len(x)

    def stats(self) -> FeatureStats:
        """Mean and unbiased covariance so far; at least two samples are needed."""
        if self.n < 2 or self._shift is None or self._sum is None or self._outer is None:
            raise ValueError(f"feature statistics need at least 2 samples, got {self.n}")
        m = self._sum / self.n
        sigma = (self._outer - self.n * np.outer(m, m)) / (self.n - 1)
        return FeatureStats(mu=m + self._shift, sigma=(sigma + sigma.T) / 2, n=self.n)


def stats_of(batches: Iterable[Tensor | ArrayLike]) -> FeatureStats:
    """:class:`FeatureStats` of feature batches (each ``N×D``)."""
    acc = StatsAccumulator()
    for b in batches:
        acc.add(b)
    return acc.stats()
