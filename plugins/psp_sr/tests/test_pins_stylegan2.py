"""Pins for StyleGAN2 details that the mutation audit found unguarded."""

from __future__ import annotations

import torch

from restorekit_psp_sr.stylegan2 import StyleGAN2Generator


def _g() -> StyleGAN2Generator:
    torch.manual_seed(0)
    return StyleGAN2Generator(32, style_dim=16, n_mlp=2, channel_multiplier=1, channel_max=16, impl="ref")


def test_pin_make_noise_draws_only_from_its_generator():
    g = _g()
    torch.manual_seed(123)
    before = torch.get_rng_state()
    a = g.make_noise(2, torch.Generator().manual_seed(1))
    b = g.make_noise(2, torch.Generator().manual_seed(1))
    assert torch.equal(torch.get_rng_state(), before)  # the global RNG is not touched
    c = g.make_noise(2, torch.Generator().manual_seed(2))
    bufs = g.noise_buffers()
    assert len(a) == len(bufs) == g.num_layers
    for x, y, z, buf in zip(a, b, c, bufs):
        assert x.shape == (2, 1, buf.shape[2], buf.shape[3])
        assert torch.equal(x, y)
        assert not torch.equal(x, z)
    # the first layer's noise is the generator's first draw
    first = torch.randn(2, 1, bufs[0].shape[2], bufs[0].shape[3], generator=torch.Generator().manual_seed(1))
    assert torch.equal(a[0], first)
