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


def test_registry_factory_loads_restorekit_generator_and_psp_files(tmp_path):
    """What `train stylegan2_ae` and `train psp_sr` export is usable by any generator consumer (PULSE)."""
    from restorekit.plugins import registry
    from restorekit_psp_sr.train import save_stylegan2_safetensors
    from tiny_models import save_tiny, tiny_psp

    g = StyleGAN2Generator(32, style_dim=16, n_mlp=2, channels=TABLE, impl="ref").eval()
    path = save_stylegan2_safetensors(g, tmp_path / "generator.safetensors", license="CC0-1.0", name="t")
    build = registry().get("generators", "stylegan2").build
    loaded = build(weights=str(path), impl="ref")
    w = torch.randn(1, g.n_styles, 16)
    with torch.no_grad():
        assert torch.equal(loaded.synthesize(w), g.synthesize(w))
    psp_file = save_tiny(tmp_path / "psp.safetensors")
    dec = build(weights=str(psp_file), impl="ref")
    with torch.no_grad():
        w2 = torch.randn(1, dec.n_styles, 16)
        assert torch.equal(dec.synthesize(w2), tiny_psp().decoder.synthesize(w2))
