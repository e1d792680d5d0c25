"""Degradations against independent references: scipy's Gaussian filter, pillow's float resize and
JPEG round trip; sizes of non-multiple images; the order of a chain."""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
import torch
from PIL import Image
from scipy import ndimage

from restorekit.degradations import bicubic_resize, downscale, parse_spec, upscale


def _blur_ref(a: np.ndarray, sigma: float, mode: str) -> np.ndarray:
    """``N×C×H×W`` float64 blurred plane by plane by scipy, radius ``max(1, ceil(3σ))``."""
    r = max(1, math.ceil(3 * sigma))
    return np.stack([np.stack([ndimage.gaussian_filter(p, sigma, mode=mode, radius=r) for p in img]) for img in a])


@pytest.mark.parametrize("sigma", [0.7, 1.5, 2.3])
def test_blur_is_scipys_gaussian_filter_with_mirror_borders(sigma):
    a = np.random.default_rng(0).random((1, 3, 13, 17))
    out = parse_spec(f"blur:{sigma}")(torch.from_numpy(a))
    assert out.dtype == torch.float64 and out.shape == (1, 3, 13, 17)
    np.testing.assert_allclose(out.numpy(), _blur_ref(a, sigma, "mirror"), rtol=0, atol=1e-12)


@pytest.mark.parametrize("h,mode", [(2, "nearest"), (3, "nearest"), (4, "mirror")])
def test_blur_of_an_image_not_longer_than_the_radius_repeats_the_edge(h, mode):
    """blur:1 has radius 3: a side of 3 px or less is padded by repeating the edge pixel."""
    a = np.random.default_rng(h).random((1, 3, h, 7))
    out = parse_spec("blur:1")(torch.from_numpy(a))
    np.testing.assert_allclose(out.numpy(), _blur_ref(a, 1.0, mode), rtol=0, atol=1e-12)


def _pil_float(a: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """``H×W×3`` float resized by pillow's bicubic in float mode ("F": no 8-bit rounding or clipping)."""
    return np.stack([np.asarray(Image.fromarray(a[..., c].astype(np.float32), "F").resize(size, Image.BICUBIC))
                     for c in range(3)], -1)


def test_downscale_of_a_non_multiple_size_is_floored_and_matches_pillow():
    a = np.random.default_rng(1).random((10, 9, 3))
    out = downscale(torch.from_numpy(a.transpose(2, 0, 1)).float()[None], 4)
    assert out.shape == (1, 3, 2, 2)  # floor(10/4) × floor(9/4)
    np.testing.assert_allclose(out[0].numpy().transpose(1, 2, 0), np.clip(_pil_float(a, (2, 2)), 0, 1),
                               rtol=0, atol=1e-6)


def test_upscale_is_pillows_bicubic_clamped_to_unit_range():
    e = np.zeros((8, 8, 3))
    e[:, 4:] = 1.0
    e[2:5, 1:3] = 1.0
    ref = _pil_float(e, (24, 24))
    assert ref.min() < -0.05 and ref.max() > 1.05  # edges ring: the clamp matters
    out = upscale(torch.from_numpy(e.transpose(2, 0, 1)).float()[None], 3)
    np.testing.assert_allclose(out[0].numpy().transpose(1, 2, 0), np.clip(ref, 0, 1), rtol=0, atol=1e-6)


def _jpeg_ref(arr: np.ndarray, quality: int) -> np.ndarray:
    buf = io.BytesIO()
    Image.fromarray(arr, "RGB").save(buf, "JPEG", quality=quality, subsampling="4:2:0")
    return np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"), dtype=np.float32) / 255


def test_jpeg_is_pillows_4_2_0_round_trip_of_the_clamped_input():
    rng = np.random.default_rng(2)
    arr = rng.integers(0, 256, (20, 28, 3), dtype=np.uint8)
    arr[:6, :6], arr[-6:, -6:] = 255, 0
    x = torch.from_numpy(arr.transpose(2, 0, 1) / 255.0).float()[None]
    out = parse_spec("jpeg:60")(x)
    np.testing.assert_array_equal(out[0].numpy().transpose(1, 2, 0), _jpeg_ref(arr, 60))
    # A value just outside [0, 1] is clamped first, not wrapped around by the 8-bit conversion.
    y = x.clone()
    y[..., :6, :6], y[..., -6:, -6:] = 1.04, -0.03
    assert torch.equal(parse_spec("jpeg:60")(y), out)


def test_chain_applies_its_steps_left_to_right():
    x = torch.from_numpy(np.random.default_rng(3).random((1, 3, 16, 16))).float()
    chain = parse_spec("blur:1.5+bicubic:2")
    blur, bic = chain.steps
    want = bicubic_resize(blur(x), (8, 8)).clamp(0, 1)
    assert torch.equal(chain(x), want)
    assert (chain(x) - blur(bic(x))).abs().max() > 1e-3  # the other order is another image
