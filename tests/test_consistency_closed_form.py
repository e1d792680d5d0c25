"""Back-projection on non-square images, against its defining iteration written with torch directly."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from restorekit.consistency import back_project, downscale_error


def _resize(x: torch.Tensor, h: int, w: int) -> torch.Tensor:
    return F.interpolate(x, size=(h, w), mode="bicubic", align_corners=False, antialias=True)


def _reference(sr: torch.Tensor, lr: torch.Tensor, steps: int, box_each_step: bool = True) -> torch.Tensor:
    """x ← clamp(x + U(lr − D(x)), 0, 1), U and D antialiased bicubic (PIL convention)."""
    (h, w), (hh, ww) = lr.shape[-2:], sr.shape[-2:]
    x = sr
    for _ in range(steps):
        x = x + _resize(lr - _resize(x, h, w), hh, ww)
        if box_each_step:
            x = x.clamp(0, 1)
    return x if box_each_step else x.clamp(0, 1)


def test_downscale_error_of_constant_images_is_the_squared_difference():
    sr = torch.tensor([0.2, 0.9]).view(2, 1, 1, 1).expand(2, 3, 8, 12).contiguous()
    lr = torch.tensor([0.5, 0.4]).view(2, 1, 1, 1).expand(2, 3, 2, 3).contiguous()
    got = downscale_error(sr, lr)
    assert got.shape == (2,)
    assert float((got - torch.tensor([0.09, 0.25])).abs().max()) < 1e-6


def test_back_project_is_the_boxed_iteration_on_a_non_square_image():
    g = torch.Generator().manual_seed(0)
    sr = torch.rand(1, 3, 12, 20, generator=g, dtype=torch.float64)
    lr = (torch.rand(1, 3, 3, 5, generator=g, dtype=torch.float64) > 0.5).double()  # 0s and 1s: the box bites
    want = _reference(sr, lr, 3)
    assert (want - _reference(sr, lr, 3, box_each_step=False)).abs().max() > 1e-3  # boxing each step matters
    got = back_project(sr, lr, steps=3)
    assert got.dtype == torch.float64 and float((got - want).abs().max()) < 1e-12


def test_lr_wider_but_not_taller_than_the_output_is_an_error():
    with pytest.raises(ValueError, match="larger than the output"):
        back_project(torch.zeros(1, 3, 8, 8), torch.zeros(1, 3, 2, 16))
    with pytest.raises(ValueError, match="larger than the output"):
        downscale_error(torch.zeros(1, 3, 8, 8), torch.zeros(1, 3, 16, 2))
