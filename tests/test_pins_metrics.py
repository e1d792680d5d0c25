"""Pins for metric edge cases that the mutation audit found unguarded (border crop, NaN, clamps)."""

from __future__ import annotations

import math

import pytest
import torch

from restorekit.consistency import downscale_error
from restorekit.degradations import downscale
from restorekit.harness.metrics import LrConsistency, PsnrRgb, PsnrYCrop, SsimYCrop


def _edge(h: int = 32, w: int = 32) -> torch.Tensor:
    """Left half black, right half white: bicubic resampling of it rings past [0, 1]."""
    hr = torch.zeros(1, 3, h, w)
    hr[..., w // 2:] = 1.0
    return hr


@pytest.mark.parametrize("metric", [PsnrYCrop, SsimYCrop])
def test_pin_image_of_exactly_twice_the_border_is_too_small(metric):
    # 8×8 with scale 4: the crop would leave nothing; an error, not +inf (or an empty mean).
    x = torch.full((1, 3, 8, 8), 0.5)
    y = torch.full((1, 3, 8, 8), 0.25)
    with pytest.raises(ValueError, match="too small"):
        metric()(x, y, lr=x[..., :2, :2], scale=4)


def test_pin_psnr_y_crop_one_px_more_than_twice_the_border_is_measured():
    x = torch.full((1, 3, 9, 9), 0.5)
    y = x.clone()
    y[..., 4, 4] = 0.25  # the single pixel that survives a 4-px crop of 9×9
    v = float(PsnrYCrop()(x, y, lr=x[..., :2, :2], scale=4)[0])
    dy = 0.25 * (65.481 + 128.553 + 24.966)
    assert v == pytest.approx(10 * math.log10(255.0**2 / dy**2), abs=1e-9)


@pytest.mark.parametrize("metric", [PsnrYCrop, PsnrRgb])
def test_pin_psnr_of_a_nan_prediction_is_nan(metric):
    target = torch.full((1, 3, 16, 16), 0.5)
    pred = target.clone()
    pred[0, 1, 8, 8] = float("nan")
    v = float(metric()(pred, target, lr=target[..., :4, :4], scale=4)[0])
    assert math.isnan(v)


def test_pin_lr_consistency_clamps_the_downscaled_prediction():
    hr = _edge()
    lr = downscale(hr, 4)  # clamped to [0, 1]
    v = LrConsistency()(hr, hr, lr=lr, scale=4)
    assert v.shape == (1,)
    # the clamped downscale of hr is lr itself (up to float32 rounding); unclamped it rings (~4e-5)
    assert float(v[0]) < 1e-12


def test_pin_downscale_error_clamps_the_downscaled_prediction():
    hr = _edge()
    lr = downscale(hr, 4)
    assert float(downscale_error(hr, lr)[0]) < 1e-12
