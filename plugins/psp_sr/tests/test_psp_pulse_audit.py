"""Audit of the PULSE methods, psp_pulse's part: the search stops at eps, and keeps its iterate, by
the face as it is returned (clamped to [0,1], at the output size), not the generator's raw image.

The stand-in decoder blends a flat grey face (0.7) with a pixel checkerboard of 0.2 and 1.4
whose unclamped downscale is the input (0.8): the objective heads for the checkerboard, which
clamped downscales to 0.6. Its unclamped downscale MSE falls below eps while the returned face's
never does (at least 0.0033 for every blend).
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from torch import nn

from restorekit.degradations import bicubic_resize
from restorekit.optim.latent import downscale_mse
from tiny_models import save_tiny
from restorekit_psp_sr.psp_pulse import PSPPulse, PSPPulseOptions, as_returned, search_w_plus

EPS = 2e-3


class OvershootDecoder(nn.Module):
    """``0.7 + t·(checkerboard − 0.7)``, ``t = sigmoid(3·mean_l(w_l·d) − 5)``."""

    def __init__(self, resolution: int = 16, dim: int = 8) -> None:
        super().__init__()
        self.direction = nn.Parameter(torch.ones(dim) / math.sqrt(dim))
        idx = torch.arange(resolution)
        checker = ((idx[:, None] + idx[None, :]) % 2).float()
        self.register_buffer("checker", (0.2 + 1.2 * checker).expand(1, 3, resolution, resolution).clone())
        self.seen: list[torch.Tensor] = []

    def noise_buffers(self) -> list[torch.Tensor]:
        return []

    def synthesize(self, w: torch.Tensor, noise: list[torch.Tensor] | None = None) -> torch.Tensor:
        t = torch.sigmoid(3 * (w @ self.direction).mean(1) - 5).view(-1, 1, 1, 1)
        out = 0.7 + t * (self.checker - 0.7)
        self.seen.append(out.detach().clone())
        return out


def test_search_stops_and_keeps_by_the_returned_face() -> None:
    dec = OvershootDecoder()
    lr = bicubic_resize(dec.checker, (4, 4))
    start = torch.full((1, 2, 8), 0.3)  # t ≈ 0.08: near the grey face
    r = search_w_plus(dec, lr, start, torch.ones(8), out_size=(32, 32), steps=20, eps=EPS, learning_rate=0.1)
    raw = [float(downscale_mse(bicubic_resize(img, (32, 32)), lr)) for img in dec.seen]
    returned = [float(downscale_mse(as_returned(img, (32, 32)), lr)) for img in dec.seen]
    assert any(a < EPS < b for a, b in zip(raw, returned)), (raw, returned)  # the audit's case
    assert min(returned) > 3e-3
    # Before: stopped at the first iterate whose raw MSE was below eps (0.0008), returned at 0.016.
    assert r.reached == [False] and r.steps == [20] and len(dec.seen) == 21
    assert [h[0] for h in r.history] == pytest.approx(returned, rel=1e-6)
    assert float(r.start_mse) == pytest.approx(returned[0], rel=1e-6)
    best = min(range(len(returned)), key=returned.__getitem__)  # no anchor: the objective is the data term
    assert best != min(range(len(raw)), key=raw.__getitem__)
    torch.testing.assert_close(r.images, dec.seen[best], rtol=0, atol=0)
    assert float(r.mse) == pytest.approx(returned[best], rel=1e-6)
    assert float(r.objective) == pytest.approx(returned[best], rel=1e-6)
    # A reachable eps: stops at the first returned face within it.
    loose = search_w_plus(OvershootDecoder(), lr, start, torch.ones(8), out_size=(32, 32), steps=20, eps=5e-3,
                          learning_rate=0.1)
    first = next(k for k, v in enumerate(returned) if v < 5e-3)
    assert loose.reached == [True] and loose.steps == [first]
    assert float(loose.mse) == pytest.approx(returned[first], rel=1e-6) and float(loose.mse) < 5e-3


def test_report_figures_are_the_returned_outputs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """On a tiny pSp model whose generator is made to overshoot [0,1], with no projection the
    searched figure is the returned output's, and eps_reached agrees with it."""
    model_file = save_tiny(tmp_path / "tiny.safetensors")
    lr = torch.rand(1, 3, 8, 8, generator=torch.Generator().manual_seed(3))
    for eps in (0.0, 1.0):
        m = PSPPulse(PSPPulseOptions(weights=str(model_file), impl="ref", steps=4, eps=eps, consistency_steps=0,
                                     quiet=True))
        m.load()
        dec = m.model.decoder
        plain = dec.synthesize
        monkeypatch.setattr(dec, "synthesize", lambda w, **kw: 0.5 + 4 * (plain(w, **kw) - 0.5))
        out = m.restore(lr, 4)
        rep = m.last_reports[0]
        assert m.last_w_plus is not None
        with torch.no_grad():
            raw = dec.synthesize(m.last_w_plus)
        assert float(((raw < 0) | (raw > 1)).float().mean()) > 0.05  # the clamp matters
        unclamped = float(downscale_mse(bicubic_resize(raw, (32, 32)), lr))
        assert rep["downscale_mse"] == pytest.approx(float(downscale_mse(out, lr)), rel=1e-6)
        assert rep["downscale_mse_searched"] == pytest.approx(rep["downscale_mse"], rel=1e-6)
        assert rep["downscale_mse_searched"] != pytest.approx(unclamped, rel=1e-3)  # was the unclamped figure
        assert rep["downscale_mse_psp"] >= rep["downscale_mse_searched"]
        assert rep["eps_reached"] is (eps == 1.0) and rep["steps"] == (0 if eps == 1.0 else 4)
