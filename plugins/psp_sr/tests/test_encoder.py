"""GradualStyleEncoder / learn-in-W encoder: shapes, official naming and pyramid wiring (tiny, CPU)."""

from __future__ import annotations

import pytest
import torch

from restorekit.interfaces import Encoder
from restorekit_psp_sr.encoder import (BackboneEncoderUsingLastLayerIntoW, GradualStyleBlock, GradualStyleEncoder,
                                       build_gradual_style_encoder, resize_input)
from restorekit_psp_sr.irse import BACKBONES, BackboneConfig, infer_backbone_config


def n_styles_for(resolution: int) -> int:
    return 2 * resolution.bit_length() - 4  # 2·log2(res) − 2


def tiny(n_styles: int, **kw: object) -> GradualStyleEncoder:
    torch.manual_seed(0)
    return GradualStyleEncoder(n_styles, 16, backbone="ir_se_light", input_size=64, **kw).eval()


@pytest.mark.parametrize("resolution", [32, 64])
def test_output_shape_matches_generator_latent(resolution: int) -> None:
    n = n_styles_for(resolution)
    assert n == {32: 8, 64: 10}[resolution]
    enc = tiny(n)
    assert isinstance(enc, Encoder)
    x = torch.rand(2, 3, 48, 48)  # any size: encode resizes to input_size
    w = enc.encode(x)
    assert w.shape == (2, n, 16)
    assert torch.isfinite(w).all()
    # encode == forward on the resized [-1, 1] input
    torch.testing.assert_close(w, enc(resize_input(x, 64) * 2 - 1))


def test_paper_backbone_taps_and_official_shapes() -> None:
    cfg = BACKBONES["ir_se50"]
    assert cfg.stage_ends() == [2, 6, 20, 23]  # pSp taps c1=6, c2=20, c3=23
    with torch.device("meta"):
        enc = GradualStyleEncoder()
    assert enc._taps == (6, 20, 23)
    sd = enc.state_dict()
    assert sd["input_layer.0.weight"].shape == (64, 3, 3, 3)
    assert sd["latlayer1.weight"].shape == (512, 256, 1, 1)
    assert sd["latlayer2.weight"].shape == (512, 128, 1, 1)
    assert sd["body.23.res_layer.5.fc1.weight"].shape == (32, 512, 1, 1)
    assert "body.24.res_layer.1.weight" not in sd
    # map2style: 16 px → 4 stride-2 convs (coarse), 32 → 5 (medium), 64 → 6 (fine)
    for i, n_convs in [(0, 4), (2, 4), (3, 5), (6, 5), (7, 6), (17, 6)]:
        assert f"styles.{i}.convs.{2 * (n_convs - 1)}.weight" in sd
        assert f"styles.{i}.convs.{2 * n_convs}.weight" not in sd
    assert sd["styles.17.linear.weight"].shape == (512, 512)
    assert "styles.18.linear.weight" not in sd
    n_params = sum(v.numel() for k, v in sd.items() if "running" not in k and "num_batches" not in k)
    # 4 × 2.36M-param convs per coarse head, 5 per medium, 6 per fine, plus the IR-SE50 body.
    assert 260e6 < n_params < 275e6


def test_heads_read_the_right_pyramid_level() -> None:
    enc = tiny(10)
    seen: dict[int, tuple[int, int]] = {}
    for i, head in enumerate(enc.styles):
        head.register_forward_hook(lambda m, a, o, i=i: seen.__setitem__(i, tuple(a[0].shape[-2:])))
    enc(torch.zeros(1, 3, 64, 64))
    assert [seen[i] for i in range(10)] == [(4, 4)] * 3 + [(8, 8)] * 4 + [(16, 16)] * 3


def test_fpn_upsample_is_bilinear_align_corners() -> None:
    top = torch.tensor([[[[0.0, 1.0], [2.0, 3.0]]]])
    out = GradualStyleEncoder._upsample_add(top, torch.zeros(1, 1, 3, 3))
    expected = torch.tensor([[0.0, 0.5, 1.0], [1.0, 1.5, 2.0], [2.0, 2.5, 3.0]])
    torch.testing.assert_close(out[0, 0], expected)


def test_map2style_head_and_wrong_size() -> None:
    head = GradualStyleBlock(8, 12, 16, style_dim=5)
    assert sum(isinstance(m, torch.nn.Conv2d) for m in head.convs) == 4
    assert head(torch.randn(3, 8, 16, 16)).shape == (3, 5)
    with pytest.raises(ValueError, match="map2style head"):
        head(torch.randn(1, 8, 32, 32))
    with pytest.raises(ValueError, match="power-of-two"):
        GradualStyleBlock(8, 8, 12)


def test_equal_linear_runtime_scale() -> None:
    head = GradualStyleBlock(4, 4, 2, style_dim=3)
    lin = head.linear
    assert set(dict(lin.named_parameters())) == {"weight", "bias"}
    x = torch.randn(2, 4)
    torch.testing.assert_close(lin(x), x @ (lin.weight / 2.0).T + lin.bias)  # 1/sqrt(4)


def test_gradients_reach_encoder_and_input() -> None:
    enc = tiny(8).train()
    x = torch.rand(2, 3, 64, 64, requires_grad=True)
    enc.encode(x).square().mean().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert enc.input_layer[0].weight.grad.abs().sum() > 0
    assert enc.styles[7].linear.weight.grad.abs().sum() > 0


def test_learn_in_w_encoder() -> None:
    torch.manual_seed(1)
    enc = build_gradual_style_encoder(8, 16, backbone="ir_se_light", input_size=64, learn_in_w=True)
    assert isinstance(enc, BackboneEncoderUsingLastLayerIntoW)
    enc.eval()
    x = torch.rand(2, 3, 64, 64)
    w = enc(x * 2 - 1)
    assert w.shape == (2, 16)
    wp = enc.encode(x)
    assert wp.shape == (2, 8, 16)
    torch.testing.assert_close(wp, w[:, None].expand(-1, 8, -1))
    assert {k.split(".")[0] for k in enc.state_dict()} == {"input_layer", "body", "linear"}


def test_input_channels_and_bad_configs() -> None:
    enc = GradualStyleEncoder(8, 16, backbone="ir_se_light", input_size=32, input_nc=1)
    assert enc(torch.zeros(1, 1, 32, 32)).shape == (1, 8, 16)
    with pytest.raises(ValueError, match="n_styles >= 8"):
        GradualStyleEncoder(6, 16, backbone="ir_se_light", input_size=32)
    with pytest.raises(ValueError, match="power of two"):
        GradualStyleEncoder(8, 16, backbone="ir_se_light", input_size=48)
    with pytest.raises(ValueError, match="unknown IR backbone"):
        GradualStyleEncoder(8, 16, backbone="resnet9")


@pytest.mark.parametrize("name", ["ir_se50", "ir_se_light", "ir50"])
def test_backbone_config_reads_back_from_weights(name: str) -> None:
    cfg = BACKBONES[name]
    with torch.device("meta"):
        enc = GradualStyleEncoder(8, 16, backbone=cfg, input_size=32)
    assert infer_backbone_config(enc.state_dict()) == cfg


def test_custom_backbone_config() -> None:
    cfg = BackboneConfig((2, 1, 1, 1), (8, 16, 24, 32), se=True, se_reduction=4)
    enc = GradualStyleEncoder(8, 8, backbone=cfg, input_size=32)
    assert enc._taps == (2, 3, 4)
    assert enc(torch.zeros(2, 3, 32, 32)).shape == (2, 8, 8)


def test_plugin_registers_gradual_style(monkeypatch: pytest.MonkeyPatch) -> None:
    from restorekit.plugins import load_registry

    monkeypatch.setenv("RESTOREKIT_LOAD_PLUGINS", "psp_sr")
    reg = load_registry(strict=True)
    enc = reg.get("encoders", "gradual_style").build(n_styles=8, style_dim=16, backbone="ir_se_light", input_size=32)
    assert isinstance(enc, GradualStyleEncoder) and enc.encode(torch.rand(1, 3, 32, 32)).shape == (1, 8, 16)
    w_enc = reg.get("encoders", "gradual_style").build(n_styles=8, style_dim=16, backbone="ir_se_light",
                                                      input_size=32, learn_in_w=True)
    assert isinstance(w_enc, BackboneEncoderUsingLastLayerIntoW)
