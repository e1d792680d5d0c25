"""Degradations: PIL-convention bicubic, blur, noise, JPEG, and the spec language."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from restorekit.degradations import downscale, gaussian_kernel1d, parse_spec
from restorekit.errors import RestorekitError

from restorekit.testing.data import smooth_image


def test_bicubic_downscale_matches_pillow():
    arr = np.random.default_rng(1).integers(0, 256, (64, 48, 3), dtype=np.uint8)
    x = torch.from_numpy(arr.transpose(2, 0, 1) / 255.0).float()[None]
    ours = downscale(x, 4)[0].numpy().transpose(1, 2, 0) * 255
    ref = np.asarray(Image.fromarray(arr).resize((12, 16), Image.BICUBIC), dtype=np.float64)
    assert ours.shape == ref.shape
    # pillow rounds to 8 bits and clips; ours is float: within one level.
    assert np.abs(ours - ref).max() <= 1.0


def test_spec_round_trip_and_scale():
    chain = parse_spec("blur:1.5+bicubic:4+noise:5+jpeg:60")
    assert chain.spec() == "blur:1.5+bicubic:4+noise:5+jpeg:60"
    assert chain.scale == 4
    assert parse_spec("bicubic:2+bicubic:4").scale == 8


@pytest.mark.parametrize("spec,msg", [("bicubc:4", "did you mean 'bicubic'"), ("bicubic:0", "greater than"),
                                      ("jpeg:abc", "integer"), ("", "empty")])
def test_bad_specs(spec, msg):
    with pytest.raises(RestorekitError, match=msg):
        parse_spec(spec)


def test_noise_is_seeded_and_has_requested_sigma():
    x = torch.full((1, 3, 128, 128), 0.5)
    chain = parse_spec("noise:10")
    a = chain(x, generator=torch.Generator().manual_seed(3))
    b = chain(x, generator=torch.Generator().manual_seed(3))
    c = chain(x, generator=torch.Generator().manual_seed(4))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert abs((a - x).std().item() * 255 - 10) < 0.3


def test_blur_preserves_mean_and_grows_with_sigma():
    img = torch.from_numpy(smooth_image(32, 32, 0).transpose(2, 0, 1) / 255.0).float()[None]
    noisy = (img + torch.randn(img.shape, generator=torch.Generator().manual_seed(0)) * 0.1)
    errs = [(parse_spec(f"blur:{s}")(noisy) - noisy).abs().mean().item() for s in (0.5, 1, 2, 4)]
    assert errs == sorted(errs)
    assert abs(parse_spec("blur:2")(noisy).mean().item() - noisy.mean().item()) < 1e-3
    k = gaussian_kernel1d(1.5)
    assert k.numel() == 11 and abs(k.sum().item() - 1) < 1e-6


def test_jpeg_loses_more_at_low_quality():
    img = torch.from_numpy(smooth_image(64, 64, 2).transpose(2, 0, 1) / 255.0).float()[None]
    img = img + torch.randn(img.shape, generator=torch.Generator().manual_seed(0)) * 0.05
    img = img.clamp(0, 1)
    e90 = (parse_spec("jpeg:90")(img) - img).abs().mean().item()
    e20 = (parse_spec("jpeg:20")(img) - img).abs().mean().item()
    assert 0 < e90 < e20


@pytest.mark.parametrize("spec", ["blur:1.23456789+bicubic:4", "noise:0.1234567", "blur:49.99999999",
                                  "blur:0.30000000000000004+noise:2.5"])
def test_spec_string_keeps_the_values_exactly(spec):
    """compare stores chain.spec() and parses it again to make its LR, so a value cut to six
    digits ('blur:1.23457') degraded with another sigma than the one asked for."""
    chain = parse_spec(spec)
    again = parse_spec(chain.spec())
    assert [s.params for s in again.steps] == [s.params for s in chain.steps]
    assert chain.spec() == spec
    # Values that were already short keep their short form (compare's stored settings and LR folders).
    assert parse_spec("blur:1.5+noise:5.0+bicubic:4+jpeg:60").spec() == "blur:1.5+noise:5+bicubic:4+jpeg:60"
