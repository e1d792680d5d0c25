"""Explicit StyleGAN2 channel tables: build, checkpoint inference, config round trip."""

from __future__ import annotations

import pytest
import torch

from restorekit_psp_sr.method import build_generator, generator_config
from restorekit_psp_sr.rosinality import generator_from_state_dict, infer_config
from restorekit_psp_sr.stylegan2 import StyleGAN2Generator

TABLE = {4: 32, 8: 32, 16: 16, 32: 8}


def test_explicit_channels_shape_every_layer():
    g = StyleGAN2Generator(32, style_dim=16, n_mlp=2, channels=TABLE, impl="ref")
    assert g.channels == TABLE
    assert g.input.input.shape[1] == 32
    assert g.convs[2].conv.weight.shape[1:3] == (16, 32)  # 16-px upsampling conv: 32 → 16
    assert g.to_rgbs[-1].conv.weight.shape[2] == 8
    with pytest.raises(ValueError, match="positive width for each of"):
        StyleGAN2Generator(32, style_dim=16, n_mlp=2, channels={4: 8, 8: 8})


def test_channels_survive_checkpoint_inference_and_config():
    torch.manual_seed(0)
    g = StyleGAN2Generator(32, style_dim=16, n_mlp=2, channels=TABLE, impl="ref").eval()
    sd = g.state_dict()
    cfg = infer_config(sd)
    assert dict(cfg.channels) == TABLE
    g2 = generator_from_state_dict(sd, impl="ref").eval()
    g3 = build_generator(generator_config(g), impl="ref").eval()
    g3.load_state_dict(sd)
    w = torch.randn(2, g.n_styles, 16)
    with torch.no_grad():
        ref = g.synthesize(w)
        assert torch.equal(g2.synthesize(w), ref)
        assert torch.equal(g3.synthesize(w), ref)


def test_rosinality_tables_still_inferred_as_such():
    g = StyleGAN2Generator(32, style_dim=16, n_mlp=2, channel_multiplier=1, channel_max=16, impl="ref")
    cfg = infer_config(g.state_dict())
    assert cfg.channels is None and cfg.channel_max == 16
