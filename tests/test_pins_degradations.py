"""Pins for degradation details that the mutation audit found unguarded."""

from __future__ import annotations

import torch

from restorekit.degradations import bicubic_resize, crop_to_multiple, downscale, parse_spec


def _edge(h: int = 32, w: int = 32) -> torch.Tensor:
    hr = torch.zeros(1, 3, h, w)
    hr[..., w // 2:] = 1.0
    return hr


def test_pin_downscale_clamps_ringing_to_unit_range():
    hr = _edge()
    raw = bicubic_resize(hr, (8, 8))
    assert float(raw.max()) > 1.0 and float(raw.min()) < 0.0  # the edge rings: the clamp matters
    lr = downscale(hr, 4)
    assert lr.shape == (1, 3, 8, 8)
    assert float(lr.min()) >= 0.0 and float(lr.max()) <= 1.0
    assert torch.equal(lr, raw.clamp(0, 1))


def test_pin_crop_to_multiple_crops_height_and_width_separately():
    x = torch.arange(30 * 21, dtype=torch.float32).reshape(1, 1, 30, 21).expand(1, 3, 30, 21)
    out = crop_to_multiple(x, 4)
    assert tuple(out.shape[-2:]) == (28, 20)
    assert torch.equal(out, x[..., :28, :20])


def test_pin_noise_is_sigma_over_255_from_the_generator():
    # A colour image (channels 0.4, 0.5, 0.6): one draw of the whole batch's shape.
    hr = torch.tensor([0.4, 0.5, 0.6]).view(1, 3, 1, 1).expand(1, 3, 16, 16).contiguous()
    out = parse_spec("noise:5")(hr, generator=torch.Generator().manual_seed(0))
    n = torch.randn(hr.shape, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(out, hr + n * (5 / 255.0), atol=1e-7, rtol=0)
    # A black-and-white one (every channel equal): one plane, on every channel.
    grey = torch.full((1, 3, 16, 16), 0.5)
    out = parse_spec("noise:5")(grey, generator=torch.Generator().manual_seed(0))
    plane = torch.randn((1, 1, 16, 16), generator=torch.Generator().manual_seed(0))
    assert torch.allclose(out, 0.5 + plane.expand(1, 3, 16, 16) * (5 / 255.0), atol=1e-7, rtol=0)


def test_pin_noise_is_clipped_to_unit_range():
    g = torch.Generator().manual_seed(0)
    for v in (0.0, 1.0):
        hr = torch.full((1, 3, 16, 16), v)
        out = parse_spec("noise:50")(hr, generator=g)
        assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0
        assert not torch.equal(out, hr)  # some noise went the inward way


def test_pin_jpeg_q100_round_trips_every_flat_grey_level():
    levels = torch.arange(256, dtype=torch.float32)
    # one 8×8 flat block per level (one JPEG block each: no neighbour bleeds in)
    hr = (levels / 255.0).view(256, 1, 1, 1).expand(256, 3, 8, 8).contiguous()
    out = parse_spec("jpeg:100")(hr)
    back = (out * 255).round()
    assert torch.equal(back, levels.view(256, 1, 1, 1).expand(256, 3, 8, 8))


def test_pin_jpeg_rounds_off_grid_values_to_the_nearest_level():
    # values between 8-bit levels (as a blur or resize leaves them) go to the nearest level, not down
    k = torch.arange(255, dtype=torch.float32)
    up = ((k + 0.7) / 255.0).view(255, 1, 1, 1).expand(255, 3, 8, 8).contiguous()
    down = ((k + 0.3) / 255.0).view(255, 1, 1, 1).expand(255, 3, 8, 8).contiguous()
    jpeg = parse_spec("jpeg:100")
    want = k.view(255, 1, 1, 1).expand(255, 3, 8, 8)
    assert torch.equal((jpeg(up) * 255).round(), want + 1)
    assert torch.equal((jpeg(down) * 255).round(), want)
