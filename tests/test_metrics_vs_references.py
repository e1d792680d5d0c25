"""SSIM details the smooth mid-grey test images cannot see: the K1 constant and the smallest size."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from skimage.metrics import structural_similarity

from restorekit.harness.metrics import SsimRgb, SsimYCrop
from restorekit.testing.data import smooth_batch

SK = dict(gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=255)


def _hwc255(x: torch.Tensor) -> np.ndarray:
    return x[0].double().numpy().transpose(1, 2, 0) * 255


def _y(x: torch.Tensor) -> np.ndarray:
    """BT.601 studio-swing luma on [0,255], written independently of the module."""
    return 16.0 + x[0].double().numpy().transpose(1, 2, 0) @ np.array([65.481, 128.553, 24.966])


def test_ssim_luminance_constant_is_k1_0_01_on_dark_images():
    """Where the means are small and differ (a near-black image, brightened), the luminance term
    (2·μx·μy + C1) / (μx² + μy² + C1) depends on C1 = (0.01·255)²; a mid-grey pair hides it."""
    hr = smooth_batch(1, 24, 20, 3) * 0.05
    pred = hr + 0.02
    a, b = _hwc255(pred), _hwc255(hr)
    ref = structural_similarity(b, a, channel_axis=2, **SK)
    assert abs(structural_similarity(b, a, channel_axis=2, K1=0.02, **SK) - ref) > 1e-2  # C1 matters here
    assert SsimRgb()(pred, hr, lr=hr, scale=1).item() == pytest.approx(ref, abs=1e-10)
    ya, yb = _y(pred)[2:-2, 2:-2], _y(hr)[2:-2, 2:-2]
    ref_y = structural_similarity(yb, ya, **SK)
    assert abs(structural_similarity(yb, ya, K1=0.02, **SK) - ref_y) > 1e-4
    assert SsimYCrop()(pred, hr, lr=hr, scale=2).item() == pytest.approx(ref_y, abs=1e-10)


def test_ssim_of_an_image_exactly_the_window_size_is_one_window():
    """11×11 px (after the border crop) is the smallest SSIM measures: one window, not an error."""
    hr = smooth_batch(1, 11, 11, 4)
    pred = hr * 0.8 + 0.1
    ref = structural_similarity(_hwc255(hr), _hwc255(pred), channel_axis=2, **SK)
    assert SsimRgb()(pred, hr, lr=hr, scale=1).item() == pytest.approx(ref, abs=1e-10)
    hr15, pred15 = smooth_batch(1, 15, 15, 5), smooth_batch(1, 15, 15, 6)
    ref_y = structural_similarity(_y(hr15)[2:-2, 2:-2], _y(pred15)[2:-2, 2:-2], **SK)
    assert SsimYCrop()(pred15, hr15, lr=hr15, scale=2).item() == pytest.approx(ref_y, abs=1e-10)
    with pytest.raises(ValueError, match="at least 11"):
        SsimRgb()(pred[..., :10, :], hr[..., :10, :], lr=hr, scale=1)
