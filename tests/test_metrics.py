"""Core metrics against independent references (scikit-image) and their defining properties."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from restorekit.degradations import downscale
from restorekit.harness.metrics import (HARNESS_METRICS, LrConsistency, PsnrRgb, PsnrYCrop, SsimRgb, SsimYCrop,
                                        rgb_to_y)
from restorekit.plugins import registry
from restorekit.testing.conformance import check_metric
from restorekit.testing.data import smooth_batch


def _pair(seed: int = 0, h: int = 48, w: int = 40) -> tuple[torch.Tensor, torch.Tensor]:
    """An 8-bit HR and a distorted 8-bit prediction (smooth content plus noise)."""
    hr = smooth_batch(1, h, w, seed)
    g = torch.Generator().manual_seed(seed + 100)
    pred = (hr + 0.04 * torch.randn(hr.shape, generator=g)).clamp(0, 1)
    return (pred * 255).round() / 255, hr


def _y_numpy(x: torch.Tensor, crop: int) -> np.ndarray:
    """Reference Y conversion written independently in numpy (float64, [0,255] scale)."""
    a = x[0].double().numpy().transpose(1, 2, 0)
    y = 16.0 + a @ np.array([65.481, 128.553, 24.966])
    return y[crop:-crop, crop:-crop] if crop else y


SK_SSIM = dict(gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=255)


@pytest.mark.parametrize("seed,scale", [(0, 2), (1, 4), (2, 3)])
def test_y_metrics_match_skimage(seed, scale):
    pred, hr = _pair(seed)
    lr = downscale(hr, scale)
    yp, yh = _y_numpy(pred, scale), _y_numpy(hr, scale)
    ref_psnr = peak_signal_noise_ratio(yh, yp, data_range=255)
    ref_ssim = structural_similarity(yh, yp, **SK_SSIM)
    got_psnr = PsnrYCrop()(pred, hr, lr=lr, scale=scale)
    got_ssim = SsimYCrop()(pred, hr, lr=lr, scale=scale)
    assert got_psnr.dtype == torch.float64 and got_psnr.shape == (1,)
    assert abs(got_psnr.item() - ref_psnr) < 1e-4
    assert abs(got_ssim.item() - ref_ssim) < 1e-4
    assert 20 < ref_psnr < 40 and 0.3 < ref_ssim < 0.99  # a real distortion, not a trivial case


def test_rgb_metrics_match_skimage():
    pred, hr = _pair(3, 33, 47)
    a = pred[0].double().numpy().transpose(1, 2, 0) * 255
    b = hr[0].double().numpy().transpose(1, 2, 0) * 255
    lr = downscale(hr, 2)
    ref_psnr = peak_signal_noise_ratio(b, a, data_range=255)
    ref_ssim = structural_similarity(b, a, channel_axis=2, **SK_SSIM)
    assert abs(PsnrRgb()(pred, hr, lr=lr, scale=2).item() - ref_psnr) < 1e-4
    assert abs(SsimRgb()(pred, hr, lr=lr, scale=2).item() - ref_ssim) < 1e-4


def test_y_conversion_matches_matlab_rgb2ycbcr_anchor_points():
    # Matlab rgb2ycbcr on uint8: black -> 16, white -> 235, pure red -> 81.481.
    x = torch.tensor([[0, 0, 0], [1, 1, 1], [1, 0, 0]], dtype=torch.float32).T.reshape(1, 3, 1, 3)
    y = rgb_to_y(x).flatten().tolist()
    assert y == pytest.approx([16.0, 235.0, 81.481], abs=1e-9)


def test_batch_values_are_per_image():
    p0, h0 = _pair(0)
    p1, h1 = _pair(1)
    pred, hr = torch.cat([p0, p1]), torch.cat([h0, h1])
    lr = downscale(hr, 2)
    for cls in HARNESS_METRICS:
        both = cls()(pred, hr, lr=lr, scale=2)
        one = torch.cat([cls()(p0, h0, lr=lr[:1], scale=2), cls()(p1, h1, lr=lr[1:], scale=2)])
        assert torch.allclose(both, one, rtol=0, atol=1e-12), cls.name


def test_identical_images_give_inf_psnr_and_unit_ssim():
    hr = smooth_batch(1, 32, 32, 5)
    lr = downscale(hr, 2)
    assert PsnrYCrop()(hr, hr, lr=lr, scale=2).item() == math.inf
    assert PsnrRgb()(hr, hr, lr=lr, scale=2).item() == math.inf
    assert SsimYCrop()(hr, hr, lr=lr, scale=2).item() == pytest.approx(1.0, abs=1e-12)
    assert SsimRgb()(hr, hr, lr=lr, scale=2).item() == pytest.approx(1.0, abs=1e-12)


def test_lr_consistency_is_pulse_criterion():
    hr = smooth_batch(2, 32, 32, 7)
    lr = downscale(hr, 4)
    m = LrConsistency()
    # Downscaling the HR itself reproduces the (float) LR: zero.
    assert m(hr, hr, lr=lr, scale=4).abs().max().item() < 1e-12
    # A constant offset of d in the prediction shows up as d² (away from the clamp).
    pred = (hr * 0.8 + 0.1) + 0.05
    want = ((downscale(pred, 4).double() - lr.double()) ** 2).flatten(1).mean(1)
    got = m(pred, hr, lr=lr, scale=4)
    assert torch.allclose(got, want, atol=1e-7)
    assert m.higher_is_better is False


def test_border_crop_ignores_the_border():
    hr = smooth_batch(1, 40, 40, 9)
    pred = hr.clone()
    pred[..., :4, :] = 1 - pred[..., :4, :]  # damage only the top 4 rows
    lr = downscale(hr, 4)
    assert PsnrYCrop()(pred, hr, lr=lr, scale=4).item() == math.inf
    assert PsnrYCrop()(pred, hr, lr=lr, scale=2).item() < 40
    assert PsnrRgb()(pred, hr, lr=lr, scale=4).item() < 40  # RGB variants do not crop


def test_too_small_for_ssim_is_an_error():
    x = smooth_batch(1, 16, 16, 0)
    with pytest.raises(ValueError, match="at least 11"):
        SsimYCrop()(x, x, lr=downscale(x, 4), scale=4)


@pytest.mark.parametrize("cls", HARNESS_METRICS, ids=lambda c: c.name)
def test_metric_conformance_and_registration(cls):
    check_metric(cls)
    reg = registry()
    assert reg.metric(cls.name) is cls and reg.owner["metrics"][cls.name] == "restorekit"
    assert cls.summary
