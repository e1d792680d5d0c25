"""ReStyle's BackboneEncoder (every map2style head on the backbone's last map; the encoder of
ReStyle's FFHQ pSp models): official checkpoints import by exact key list, infer as ReStyle's
recursion with heads written out here from the state dict, survive both file formats, run on the
inference path, export to ONNX and train. Tiny models assembled by the tests (no downloads)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from restorekit.testing.data import smooth_batch
from restorekit_psp_sr.checkpoint_psp import (PSPCheckpointError, load_psp_official, official_encoder_keys,
                                              save_psp_official)
from restorekit_psp_sr.encoder import BackboneEncoder, build_gradual_style_encoder
from restorekit_psp_sr.fast_encoder import optimize_encoder
from restorekit_psp_sr.irse import backbone_config, official_body_keys
from restorekit_psp_sr.method import PSPSR, PSPSROptions, load_psp_safetensors, save_psp_safetensors
from restorekit_psp_sr.stylegan2 import StyleGAN2Generator
from test_restyle_official import ENC_SIZE, STYLE_DIM, official_recursion, write_restyle


def tiny_backbone_parts(seed: int = 0) -> tuple[BackboneEncoder, StyleGAN2Generator, Tensor]:
    """A light 32-px ReStyle BackboneEncoder (6 channels, heads 16 wide), a 64-px generator, latent_avg."""
    torch.manual_seed(seed)
    g = StyleGAN2Generator(64, STYLE_DIM, n_mlp=2, channel_multiplier=1, channel_max=16, impl="ref").eval()
    enc = BackboneEncoder(g.n_styles, STYLE_DIM, backbone="ir_se_light", input_size=ENC_SIZE, head_channels=16,
                          input_nc=6).eval()
    with torch.no_grad():
        for m in enc.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
        for head in enc.styles:  # heads that differ enough for a wrong wiring to show
            head.linear.bias.normal_(0, 0.2)
    return enc, g, torch.randn(g.n_styles, STYLE_DIM) * 0.3


def official_heads(sd: dict[str, Tensor], body: torch.nn.Module, x: Tensor, n_styles: int) -> Tensor:
    """ReStyle's BackboneEncoder forward with the heads written out from the state dict: each head
    halves the last map with stride-2 3×3 convs + LeakyReLU(0.01) to 1×1, then an equalized linear
    layer (weight scaled by 1/√in at run time, lr_mul 1)."""
    top = body(x)
    codes = []
    for i in range(n_styles):
        h, j = top, 0
        while f"styles.{i}.convs.{2 * j}.weight" in sd:
            h = F.leaky_relu(F.conv2d(h, sd[f"styles.{i}.convs.{2 * j}.weight"], sd[f"styles.{i}.convs.{2 * j}.bias"],
                                      stride=2, padding=1), 0.01)
            j += 1
        w = sd[f"styles.{i}.linear.weight"]
        codes.append(F.linear(h.flatten(1), w / math.sqrt(w.shape[1]), sd[f"styles.{i}.linear.bias"]))
    return torch.stack(codes, 1)


@pytest.fixture(scope="module")
def backbone_file(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, tuple]:
    parts = tiny_backbone_parts()
    path = write_restyle(tmp_path_factory.mktemp("restyle_bb") / "restyle_psp_backbone.pt", *parts,
                         encoder_type="BackboneEncoder")
    return path, parts


def test_the_backbone_encoder_has_the_official_keys_and_no_pyramid() -> None:
    enc, _, _ = tiny_backbone_parts()
    cfg = backbone_config("ir_se_light")
    # 32 px in, 2 px out of the body: one stride-2 conv per head (ReStyle's 256 → 16 px: four).
    keys = official_body_keys(cfg) + [f"styles.{i}.{p}" for i in range(enc.n_styles)
                                      for p in ("convs.0.weight", "convs.0.bias", "linear.weight", "linear.bias")]
    assert sorted(enc.state_dict()) == sorted(keys)
    assert sorted(official_encoder_keys("BackboneEncoder", cfg, n_styles=enc.n_styles,
                                        head_convs=[1] * enc.n_styles)) == sorted(keys)
    assert enc(torch.zeros(2, 6, ENC_SIZE, ENC_SIZE)).shape == (2, enc.n_styles, STYLE_DIM)
    with pytest.raises(ValueError, match="learn_in_w and pyramid=False"):
        build_gradual_style_encoder(10, 16, learn_in_w=True, pyramid=False)


@torch.no_grad()
def test_an_official_restyle_backbone_checkpoint_infers_as_the_official_recursion(
        backbone_file: tuple[Path, tuple]) -> None:
    path, (enc, g, latent_avg) = backbone_file
    model = load_psp_official(path, impl="ref")
    assert type(model.encoder) is BackboneEncoder and model.restyle_iterations == 3
    assert model.encoder.input_size == ENC_SIZE and model.encoder.head_channels == 16
    sd = {k: v.clone() for k, v in enc.state_dict().items()}
    body = torch.nn.Sequential(enc.input_layer, enc.body)
    x = smooth_batch(2, ENC_SIZE, ENC_SIZE, seed=5)
    want = official_recursion(lambda t: official_heads(sd, body, t, enc.n_styles), g, latent_avg, x * 2 - 1, 3)
    images, codes = model(x, all_passes=True)
    for t, (w, im) in enumerate(want):
        torch.testing.assert_close(codes[t], w, rtol=0, atol=1e-5)
        torch.testing.assert_close(images[t] * 2 - 1, im, rtol=0, atol=1e-5)
    # The pyramid would be a different function of the same input: the check tells them apart.
    assert (enc.styles[0](body(torch.cat([x, x], 1))) - enc.styles[-1](body(torch.cat([x, x], 1)))).abs().max() > 1e-3
    # psp_sr runs it end to end (the method's inference path included).
    out = PSPSR(PSPSROptions(weights=str(path), keep_native_size=True, impl="ref")).restore(x[:1], 2)
    torch.testing.assert_close(out, ((want[-1][1][:1] + 1) / 2).clamp(0, 1), rtol=0, atol=1e-4)


@torch.no_grad()
def test_the_inference_path_equals_the_official_forward() -> None:
    enc, _, _ = tiny_backbone_parts(seed=2)
    x = torch.rand(3, 6, ENC_SIZE, ENC_SIZE) * 2 - 1
    want = enc(x)
    optimize_encoder(enc)
    assert enc.inference_path is not None
    torch.testing.assert_close(enc(x), want, rtol=0, atol=1e-5)


@torch.no_grad()
def test_backbone_models_survive_both_file_formats(backbone_file: tuple[Path, tuple], tmp_path: Path) -> None:
    path, _ = backbone_file
    model = load_psp_official(path, impl="ref")
    x = smooth_batch(1, ENC_SIZE, ENC_SIZE, seed=7)
    want = model(x)[0]
    st = save_psp_safetensors(model, tmp_path / "bb.safetensors", factors=[1], license="CC0-1.0")
    loaded, cfg = load_psp_safetensors(st, impl="ref")
    assert cfg["encoder"]["type"] == "BackboneEncoder" and type(loaded.encoder) is BackboneEncoder
    torch.testing.assert_close(loaded(x)[0], want, rtol=0, atol=0)
    pt = save_psp_official(model, tmp_path / "again.pt")
    assert torch.load(pt, weights_only=True)["opts"]["encoder_type"] == "BackboneEncoder"
    torch.testing.assert_close(load_psp_official(pt, impl="ref")(x)[0], want, rtol=0, atol=0)


def test_backbone_checkpoints_that_do_not_fit_are_refused(tmp_path: Path) -> None:
    enc, g, latent_avg = tiny_backbone_parts()
    # Heads of different depths are a pyramid's, not a BackboneEncoder's.
    deeper = BackboneEncoder(g.n_styles, STYLE_DIM, backbone="ir_se_light", input_size=2 * ENC_SIZE,
                             head_channels=16, input_nc=6)
    sd = enc.state_dict()
    sd.update({k: v for k, v in deeper.state_dict().items() if k.startswith("styles.0.")})
    enc.load_state_dict(sd, strict=False)
    mixed = dict(enc.state_dict())
    mixed.update({k: v for k, v in deeper.state_dict().items() if k.startswith("styles.0.")})
    state = {f"encoder.{k}": v for k, v in mixed.items()} | {f"decoder.{k}": v for k, v in g.state_dict().items()}
    bad = tmp_path / "mixed.pt"
    torch.save({"state_dict": state, "latent_avg": latent_avg,
                "opts": {"encoder_type": "BackboneEncoder", "input_nc": 6, "output_size": 64}}, bad)
    with pytest.raises(PSPCheckpointError, match="mixed.pt: map2style heads have conv counts .* one count"):
        load_psp_official(bad, impl="ref")
    # ReStyle's ResNet-34 encoders are named in the refusal.
    resnet = write_restyle(tmp_path / "resnet.pt", *tiny_backbone_parts(), encoder_type="ResNetBackboneEncoder")
    with pytest.raises(PSPCheckpointError, match="encoder_type 'ResNetBackboneEncoder' is not supported"):
        load_psp_official(resnet, impl="ref")


def test_psp_sr_training_trains_and_exports_a_backbone_encoder(tmp_path: Path) -> None:
    from restorekit.losses import L2Loss
    from restorekit.training import sr_datasets
    from restorekit_psp_sr.train import PSPTrainer, build_psp, save_stylegan2_safetensors
    from tiny_models import tiny_generator, tiny_train_config, write_faces

    g = tiny_generator(3)
    gen = save_stylegan2_safetensors(g, tmp_path / "g.safetensors", license="CC0-1.0")
    cfg = tiny_train_config(tmp_path / "run", generator=str(gen), encoder_type="BackboneEncoder", steps=4,
                            encoder_backbone="ir_se_light", head_channels=8, impl="ref", restyle_iterations=2,
                            lpips_lambda=0.0, id_lambda=0.0, w_norm_lambda=0.0)
    model = build_psp(cfg)
    assert type(model.encoder) is BackboneEncoder and model.encoder.input_nc == 6
    heads_before = [p.detach().clone() for p in model.encoder.styles.parameters()]
    size = g.resolution
    train, val = sr_datasets(write_faces(tmp_path / "faces"), 32, cfg.data, hr_size=size, seed=cfg.seed)
    summary = PSPTrainer(cfg, model, train, val, losses={"l2": L2Loss(1.0, value_range="symmetric")},
                         quiet=True).fit()
    assert summary["finished"]
    assert any((p - b).abs().max() > 0 for p, b in zip(model.encoder.styles.parameters(), heads_before))
    loaded, saved = load_psp_safetensors(Path(summary["exported"]), impl="ref")
    assert saved["encoder"]["type"] == "BackboneEncoder" and loaded.restyle_iterations == 2
    x = smooth_batch(1, 32, 32, seed=3)
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(x)[0], model(x)[0], rtol=0, atol=0)
