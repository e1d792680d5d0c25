"""Pins for PULSE's retries and output range that the mutation audit found unguarded.

The search itself (``optimise_latents``) is replaced by a recording stub: these tests are about
what ``Pulse.restore`` does around it (which RNGs each try gets, how tries combine, the resize).
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import restorekit_baselines.pulse as pulse_mod
from restorekit.degradations import bicubic_resize
from restorekit.interfaces import Generator
from restorekit.plugins import Factory, registry
from restorekit_baselines.pulse import Pulse, PulseOptions
from restorekit_baselines.spherical import OptimiseResult

TINY = "tiny-pulse-pins-test"


class _TinyGenerator(Generator):
    def __init__(self, resolution: int = 16, dim: int = 8, n_styles: int = 4) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.resolution, self.z_dim, self.style_dim, self.n_styles = resolution, dim, dim, n_styles
        self.m1 = nn.Parameter(torch.randn(dim, dim, generator=g) / math.sqrt(dim))
        self.basis = nn.Parameter(torch.randn(n_styles, dim, 3, resolution, resolution, generator=g))

    def map(self, z: torch.Tensor) -> torch.Tensor:
        return F.leaky_relu(z @ self.m1, 0.2) * math.sqrt(2)

    def noise_buffers(self) -> list[torch.Tensor]:
        return []

    def synthesize(self, w_plus, *, noise_mode="const", noise=None):  # type: ignore[no-untyped-def]
        x = torch.einsum("nld,ldchw->nchw", w_plus, self.basis) / math.sqrt(self.n_styles * self.style_dim)
        return 0.5 + 0.5 * torch.tanh(x)


@pytest.fixture
def tiny() -> str:
    reg = registry()
    reg.add("generators", TINY, Factory(TINY, lambda **kw: _TinyGenerator(**kw), "test"), "tests")
    yield TINY
    del reg.items["generators"][TINY]
    del reg.owner["generators"][TINY]


def _opts(**kw) -> PulseOptions:  # type: ignore[no-untyped-def]
    return PulseOptions(**{"generator": TINY, "steps": 5, "quiet": True, "gaussian_fit_samples": 1000, **kw})


def _edge_images(m: int, r: int) -> torch.Tensor:
    """Left half black, right half white: a bicubic resize of it rings past [0, 1]."""
    x = torch.zeros(m, 3, r, r)
    x[..., r // 2:] = 1.0
    return x


class _Search:
    """Stands in for ``optimise_latents``: records each call's start draws (row k's from the RNG it
    would draw row k's start from: the one generator, or row k's own) and returns set outcomes."""

    def __init__(self, outcomes: list[tuple[list[float], list[bool]]] | None = None) -> None:
        self.outcomes = outcomes or []
        self.starts: list[torch.Tensor] = []

    def __call__(self, generator, lr, init_w_plus=None, *, config=None, rng=None, **kw):  # type: ignore[no-untyped-def]
        m = lr.shape[0]
        assert rng is not None
        rngs = [rng] if isinstance(rng, torch.Generator) else list(rng)
        assert len(rngs) in (1, m)
        if len(rngs) == 1:
            starts = torch.randn((m, 6), generator=rngs[0])
        else:
            starts = torch.cat([torch.randn((1, 6), generator=g) for g in rngs])
        self.starts.append(starts)
        i = len(self.starts) - 1
        mse, reached = self.outcomes[i] if i < len(self.outcomes) else ([0.5 - 0.01 * i] * m, [False] * m)
        assert len(mse) == len(reached) == m
        r = generator.resolution
        return OptimiseResult(images=_edge_images(m, r), w_plus=torch.zeros(m, generator.n_styles, generator.style_dim),
                              mse=torch.tensor(mse), loss=torch.tensor(mse), steps=[config.steps] * m,
                              reached=list(reached))


def test_pin_every_try_starts_from_new_latents(tiny: str, monkeypatch: pytest.MonkeyPatch) -> None:
    search = _Search()
    monkeypatch.setattr(pulse_mod, "optimise_latents", search)
    m = Pulse(_opts(tries=3, eps=0.0))
    lr = torch.full((1, 3, 4, 4), 0.5)
    m.restore(lr, 4, seed=5, n_samples=2)
    assert len(search.starts) == 3 and all(s.shape == (2, 6) for s in search.starts)
    assert [r["tries"] for r in m.last_reports] == [3, 3]
    assert [r["eps_reached"] for r in m.last_reports] == [False, False]
    for k in range(2):
        per_try = [s[k] for s in search.starts]
        for a in range(3):
            for b in range(a + 1, 3):
                assert not torch.equal(per_try[a], per_try[b]), (k, a, b)
    for s in search.starts:  # the two samples of one try start apart too
        assert not torch.equal(s[0], s[1])
    # and the same seed gives the same starts again
    again = _Search()
    monkeypatch.setattr(pulse_mod, "optimise_latents", again)
    Pulse(_opts(tries=3, eps=0.0)).restore(lr, 4, seed=5, n_samples=2)
    assert all(torch.equal(a, b) for a, b in zip(search.starts, again.starts))


def test_pin_a_samples_starts_do_not_depend_on_the_other_samples(tiny: str, monkeypatch: pytest.MonkeyPatch) -> None:
    lr = torch.full((1, 3, 4, 4), 0.5)
    all_miss = _Search()
    monkeypatch.setattr(pulse_mod, "optimise_latents", all_miss)
    Pulse(_opts(tries=3, eps=1e-3)).restore(lr, 4, seed=2, n_samples=2)
    first_done = _Search([([1e-4, 0.5], [True, False])])  # sample 0 is not retried
    monkeypatch.setattr(pulse_mod, "optimise_latents", first_done)
    Pulse(_opts(tries=3, eps=1e-3)).restore(lr, 4, seed=2, n_samples=2)
    assert [s.shape[0] for s in first_done.starts] == [2, 1, 1]
    for t in range(3):  # sample 1's start in every try is the same either way
        assert torch.equal(first_done.starts[t][-1], all_miss.starts[t][1]), t
    one = _Search()
    monkeypatch.setattr(pulse_mod, "optimise_latents", one)
    Pulse(_opts(tries=3, eps=1e-3)).restore(lr, 4, seed=2, n_samples=1)
    for t in range(3):  # and sample 0's does not depend on n_samples
        assert torch.equal(one.starts[t][0], all_miss.starts[t][0]), t


def test_pin_a_sample_that_reached_eps_stays_reached(tiny: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # try 1: sample 0 reaches eps, sample 1 misses; every later try misses
    search = _Search([([1e-4, 0.5], [True, False])])
    monkeypatch.setattr(pulse_mod, "optimise_latents", search)
    m = Pulse(_opts(tries=3, eps=1e-3))
    m.restore(torch.full((1, 3, 4, 4), 0.5), 4, seed=0, n_samples=2)
    r0, r1 = m.last_reports
    assert r0["eps_reached"] is True and r0["tries"] == 1
    assert r0["downscale_mse_searched"] == pytest.approx(1e-4)
    assert r1["eps_reached"] is False and r1["tries"] == 3 and r1["total_steps"] == 15
    assert r1["downscale_mse_searched"] == pytest.approx(0.48)  # the best of its three tries


def test_pin_resized_output_stays_in_unit_range(tiny: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pulse_mod, "optimise_latents", _Search())
    m = Pulse(_opts())
    lr = torch.full((1, 3, 8, 8), 0.5)  # ×4: 32 px from the generator's 16 px
    out = m.restore(lr, 4, seed=0)
    raw = bicubic_resize(_edge_images(1, 16), (32, 32))
    assert float(raw.max()) > 1.0 and float(raw.min()) < 0.0  # the resize rings: the clamp matters
    assert out.shape == (1, 3, 32, 32)
    assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0
    torch.testing.assert_close(out, raw.clamp(0, 1), rtol=0, atol=0)
