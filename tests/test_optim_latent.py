"""restorekit.optim.latent: the shared data term and sphere helpers (PULSE's tests cover the rest)."""

from __future__ import annotations

import pytest
import torch

from restorekit.degradations import Bicubic, ScaleParams
from restorekit.optim.latent import downscale_mse, project_to_sphere, sphere_radius


def test_downscale_mse_is_the_bicubic_degradation_error() -> None:
    g = torch.Generator().manual_seed(0)
    # Values in [0.2, 0.8] stay inside [0, 1] after the resize: the degradation's clamp is a no-op.
    hr = 0.2 + 0.6 * torch.rand(3, 3, 16, 12, generator=g)
    lr = torch.rand(3, 3, 4, 3, generator=g)
    degraded = Bicubic(ScaleParams(scale=4))(hr)
    got = downscale_mse(hr, lr)
    assert got.shape == (3,)
    torch.testing.assert_close(got, (degraded - lr).pow(2).mean((1, 2, 3)))
    assert downscale_mse(hr, degraded).abs().max() < 1e-12
    # One LR row broadcasts over all rows.
    torch.testing.assert_close(downscale_mse(hr, lr[:1])[0], got[0])


def test_downscale_mse_gradient_reaches_pixels() -> None:
    hr = torch.full((1, 3, 8, 8), 1.2, requires_grad=True)  # outside [0,1]: not clamped
    downscale_mse(hr, torch.zeros(1, 3, 2, 2)).backward()
    assert hr.grad is not None and bool((hr.grad > 0).all())
    with pytest.raises(ValueError, match="equal channels"):
        downscale_mse(torch.zeros(1, 3, 8, 8), torch.zeros(1, 1, 2, 2))


def test_sphere_projection_radii() -> None:
    x = torch.randn(2, 3, 5)
    y = project_to_sphere(x, 2.5)
    torch.testing.assert_close(sphere_radius(y), torch.full((2, 3, 1), 2.5))
    torch.testing.assert_close(y / 2.5, x / sphere_radius(x), rtol=1e-5, atol=1e-6)
