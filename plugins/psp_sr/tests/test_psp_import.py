"""PSP model (forward, resizing, style mixing) and the official pSp checkpoint import (tiny, CPU)."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest
import torch

from restorekit.errors import RestorekitError, UnsafeFileError
from restorekit_psp_sr.checkpoint_psp import (PSPCheckpointError, load_psp_official, official_encoder_keys,
                                              save_psp_official)
from restorekit_psp_sr.encoder import BackboneEncoderUsingLastLayerIntoW, GradualStyleEncoder, resize_input
from restorekit_psp_sr.irse import BACKBONES
from restorekit_psp_sr.psp import PSP, default_latent_mask
from restorekit_psp_sr.stylegan2 import StyleGAN2Generator

STYLE_DIM = 16


def tiny_generator(resolution: int = 32) -> StyleGAN2Generator:
    return StyleGAN2Generator(resolution, STYLE_DIM, n_mlp=2, channel_multiplier=1, channel_max=16, impl="ref")


def randomize_bn(module: torch.nn.Module) -> None:
    for m in module.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
            m.num_batches_tracked.fill_(100)


def tiny_psp(resolution: int = 32, learn_in_w: bool = False, seed: int = 0) -> PSP:
    torch.manual_seed(seed)
    g = tiny_generator(resolution)
    cls = BackboneEncoderUsingLastLayerIntoW if learn_in_w else GradualStyleEncoder
    enc = cls(g.n_styles, STYLE_DIM, backbone="ir_se_light", input_size=64)
    randomize_bn(enc)
    la = torch.randn(STYLE_DIM) * 0.1
    return PSP(enc, g, la, start_from_latent_avg=True).eval()


def official_names_light_gradual(n_styles: int, head_convs: list[int]) -> set[str]:
    """Official GradualStyleEncoder keys for the light backbone (1,1,2,1 units), written out by hand."""
    keys = {"input_layer.0.weight", "input_layer.2.weight"}
    bn = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
    keys |= {f"input_layer.1.{s}" for s in bn}
    for i in range(5):  # units 0..4; widths 16,32,64,64,128 → conv shortcuts at 1, 2, 4
        keys |= {f"body.{i}.res_layer.{j}.{s}" for j in (0, 4) for s in bn}
        keys |= {f"body.{i}.res_layer.{j}.weight" for j in (1, 2, 3)}
        keys |= {f"body.{i}.res_layer.5.fc1.weight", f"body.{i}.res_layer.5.fc2.weight"}
        if i in (1, 2, 4):
            keys |= {f"body.{i}.shortcut_layer.0.weight"} | {f"body.{i}.shortcut_layer.1.{s}" for s in bn}
    for i in range(n_styles):
        keys |= {f"styles.{i}.convs.{2 * j}.{p}" for j in range(head_convs[i]) for p in ("weight", "bias")}
        keys |= {f"styles.{i}.linear.weight", f"styles.{i}.linear.bias"}
    keys |= {f"latlayer{j}.{p}" for j in (1, 2) for p in ("weight", "bias")}
    return keys


def write_official(model: PSP, path: Path, opts: dict) -> None:
    """An official-layout file, assembled by the test itself (not by save_psp_official)."""
    state = {f"encoder.{k}": v.clone() for k, v in model.encoder.state_dict().items()}
    state |= {f"decoder.{k}": v.clone() for k, v in model.decoder.state_dict().items()}
    torch.save({"state_dict": state, "opts": opts, "latent_avg": model.latent_avg.clone()}, path)


OPTS = {"exp_dir": "/tmp/exp", "dataset_type": "celebs_super_resolution", "encoder_type": "GradualStyleEncoder",
        "input_nc": 3, "label_nc": 0, "output_size": 32, "start_from_latent_avg": True, "learn_in_w": False,
        "lpips_lambda": 0.8, "l2_lambda": 1.0, "id_lambda": 0.1, "w_norm_lambda": 0.005,
        "resize_factors": "1,2,4,8,16,32", "batch_size": 8, "optim_name": "ranger", "device": "cuda:0",
        "n_styles": 8, "checkpoint_path": None, "stylegan_weights": "pretrained_models/stylegan2-ffhq-config-f.pt"}


def test_official_layout_imports_and_matches(tmp_path: Path) -> None:
    model = tiny_psp()
    assert model.latent_avg.shape == (8, STYLE_DIM)  # repeated, as official
    heads = [2] * 3 + [3] * 4 + [4] * 1  # 64-px input: 4/8/16-px maps
    names = official_names_light_gradual(8, heads)
    assert set(model.encoder.state_dict()) == names
    assert set(official_encoder_keys("GradualStyleEncoder", BACKBONES["ir_se_light"], n_styles=8,
                                     head_convs=heads)) == names
    path = tmp_path / "psp_tiny.pt"
    write_official(model, path, OPTS)
    torch.load(path, weights_only=True)  # the official layout is weights-only loadable
    loaded = load_psp_official(path, impl="ref")
    assert loaded.official_opts.resize_factors == (1, 2, 4, 8, 16, 32)
    assert loaded.encoder.input_size == 64 and loaded.encoder.n_styles == 8
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        a, wa = model(x)
        b, wb = loaded(x)
    assert a.shape == (2, 3, 32, 32)
    torch.testing.assert_close(wb, wa, rtol=0, atol=0)
    torch.testing.assert_close(b, a, rtol=0, atol=0)


def test_save_psp_official_round_trip(tmp_path: Path) -> None:
    model = tiny_psp(seed=3)
    path = save_psp_official(model, tmp_path / "x.pt", {"device": "cuda:0", "lpips_lambda": 0.8})
    ckpt = torch.load(path, weights_only=True)
    assert set(ckpt) == {"state_dict", "opts", "latent_avg"}
    assert ckpt["opts"]["device"] == "cuda:0" and ckpt["opts"]["n_styles"] == 8
    assert all(k.startswith(("encoder.", "decoder.")) for k in ckpt["state_dict"])
    assert "decoder.style.1.weight" in ckpt["state_dict"] and "decoder.noises.noise_0" in ckpt["state_dict"]
    loaded = load_psp_official(path)
    x = torch.rand(1, 3, 40, 40)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x)[0], model(x)[0], rtol=0, atol=0)


def test_learn_in_w_round_trip(tmp_path: Path) -> None:
    model = tiny_psp(learn_in_w=True, seed=4)
    assert model.latent_avg.shape == (1, STYLE_DIM)
    opts = dict(OPTS, encoder_type="BackboneEncoderUsingLastLayerIntoW", learn_in_w=True)
    path = save_psp_official(model, tmp_path / "w.pt", opts)
    assert torch.load(path, weights_only=True)["latent_avg"].shape == (1, STYLE_DIM)
    loaded = load_psp_official(path)
    assert isinstance(loaded.encoder, BackboneEncoderUsingLastLayerIntoW)
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        a, wa = model(x)
        b, wb = loaded(x)
    torch.testing.assert_close(b, a, rtol=0, atol=0)
    # learn_in_w: one W vector for every style
    torch.testing.assert_close(wa, wa[:, :1].expand_as(wa))
    # Old checkpoints lack learn_in_w: the encoder type implies it; a contradicting value is refused.
    ckpt = torch.load(path, weights_only=True)
    assert ckpt["opts"]["restorekit_input_size"] == 64  # not derivable from a globally pooled encoder
    old = tmp_path / "old_w.pt"
    write_official(model, old, {k: v for k, v in ckpt["opts"].items() if k != "learn_in_w"})
    with torch.no_grad():
        torch.testing.assert_close(load_psp_official(old)(x)[0], a, rtol=0, atol=0)
    bad = tmp_path / "bad_w.pt"
    write_official(model, bad, dict(ckpt["opts"], learn_in_w=False))
    with pytest.raises(PSPCheckpointError, match="learn_in_w=False"):
        load_psp_official(bad)


def test_old_checkpoints_default_output_size_1024(tmp_path: Path) -> None:
    model = tiny_psp()
    opts = {k: v for k, v in OPTS.items() if k not in ("output_size", "learn_in_w", "n_styles")}
    path = tmp_path / "old.pt"
    write_official(model, path, opts)
    with pytest.raises(PSPCheckpointError, match="1024 assumed"):
        load_psp_official(path)


def test_import_rejections(tmp_path: Path) -> None:
    model = tiny_psp()
    bad_styles = tmp_path / "n.pt"
    write_official(model, bad_styles, dict(OPTS, n_styles=18))
    with pytest.raises(PSPCheckpointError, match="n_styles is 18"):
        load_psp_official(bad_styles)
    wplus = tmp_path / "wp.pt"
    write_official(model, wplus, dict(OPTS, encoder_type="BackboneEncoderUsingLastLayerIntoWPlus"))
    with pytest.raises(PSPCheckpointError, match="not supported"):
        load_psp_official(wplus)
    pickled = tmp_path / "ns.pt"
    torch.save({"state_dict": {}, "opts": argparse.Namespace(**OPTS), "latent_avg": model.latent_avg}, pickled)
    with pytest.raises(UnsafeFileError):
        load_psp_official(pickled)
    extra = tmp_path / "extra.pt"
    ckpt = {"state_dict": {f"encoder.{k}": v for k, v in model.encoder.state_dict().items()}
            | {f"decoder.{k}": v for k, v in model.decoder.state_dict().items()}
            | {"encoder.styles.99.linear.weight": torch.zeros(1)},
            "opts": OPTS, "latent_avg": model.latent_avg}
    torch.save(ckpt, extra)
    with pytest.raises(PSPCheckpointError, match="unexpected encoder.styles.99"):
        load_psp_official(extra)
    with pytest.raises(RestorekitError):
        load_psp_official(tmp_path / "missing.pt")


def test_forward_matches_rosinality_call_and_resizes_input() -> None:
    model = tiny_psp()
    x = torch.rand(2, 3, 16, 16)  # a 16-px LR face: resized to the encoder's 64 px first
    with torch.no_grad():
        img, w = model(x)
        codes = model.encoder(resize_input(x, 64) * 2 - 1) + model.latent_avg
        torch.testing.assert_close(w, codes)
        ref, _ = model.decoder([codes], input_is_latent=True, randomize_noise=False)
        torch.testing.assert_close(img, (ref + 1) / 2)
        pooled, _ = model(x, resize_output=16)
    assert pooled.shape == (2, 3, 16, 16)
    torch.testing.assert_close(pooled, torch.nn.functional.avg_pool2d(img, 2))


def test_gradients_flow_to_encoder_only_through_psp() -> None:
    model = tiny_psp().train()
    model.decoder.requires_grad_(False)
    img, w = model(torch.rand(1, 3, 64, 64))
    img.mean().backward()
    assert model.encoder.styles[0].linear.weight.grad.abs().sum() > 0
    assert model.encoder.input_layer[0].weight.grad.abs().sum() > 0


def test_default_latent_mask_scales_official_fine_layers() -> None:
    assert default_latent_mask(18) == list(range(8, 18))
    assert default_latent_mask(14) == list(range(6, 14))
    assert default_latent_mask(10) == list(range(4, 10))
    assert default_latent_mask(8) == list(range(4, 8))


def test_style_mixing_is_multimodal_and_reproducible() -> None:
    model = tiny_psp(64)
    assert model.n_styles == 10
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        imgs, w = model.mix(x, 4, seed=7)
        imgs2, w2 = model.mix(x, 4, seed=7)
        imgs3, _ = model.mix(x, 4, seed=8)
        base = model.encode(x)
    assert imgs.shape == (4, 3, 64, 64) and w.shape == (4, 10, STYLE_DIM)
    torch.testing.assert_close(imgs2, imgs, rtol=0, atol=0)
    torch.testing.assert_close(w2, w, rtol=0, atol=0)
    assert not torch.allclose(imgs3, imgs)
    keep = [i for i in range(10) if i not in default_latent_mask(10)]  # 0..3: coarse + first medium
    for s in range(4):
        torch.testing.assert_close(w[s, keep], base[0, keep])
        # fine styles: one mapped W repeated over the masked layers
        torch.testing.assert_close(w[s, 4:], w[s, 4:5].expand(6, -1))
    for i in range(4):
        for j in range(i + 1, 4):
            assert (imgs[i] - imgs[j]).abs().max() > 1e-4  # the 4 outputs differ
            assert not torch.allclose(w[i, 4:], w[j, 4:])


def test_style_mixing_batches_are_image_major_and_alpha_blends() -> None:
    model = tiny_psp()
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        _, w = model.mix(x, 3, seed=1)
        base = model.encode(x)
        _, w0 = model.mix(x, 3, seed=1, mix_alpha=0.0)
        _, wh = model.mix(x, 3, seed=1, mix_alpha=0.5)
        _, wm = model.mix(x, 3, seed=1, latent_mask=[7])
    torch.testing.assert_close(w[:3, :4], base[0:1, :4].expand(3, -1, -1))
    torch.testing.assert_close(w[3:, :4], base[1:2, :4].expand(3, -1, -1))
    torch.testing.assert_close(w0, base.repeat_interleave(3, 0))
    torch.testing.assert_close(wh, 0.5 * w + 0.5 * base.repeat_interleave(3, 0))
    torch.testing.assert_close(wm[:, :7], base.repeat_interleave(3, 0)[:, :7])
    with pytest.raises(ValueError, match="out of range"):
        model.mix(x, 2, seed=0, latent_mask=[8])


def test_many_samples_go_through_the_generator_a_few_rows_at_a_time(monkeypatch: pytest.MonkeyPatch) -> None:
    """``mix`` decodes MIX_DECODE_ROWS rows at a time (memory bounded by that, not by n_samples),
    giving the images one pass over all rows gives."""
    from restorekit_psp_sr import psp as P

    model = tiny_psp(64)
    x = torch.rand(2, 3, 64, 64)
    batches: list[int] = []
    decode = model.decode
    monkeypatch.setattr(model, "decode", lambda w, **k: batches.append(w.shape[0]) or decode(w, **k))
    monkeypatch.setattr(P, "MIX_DECODE_ROWS", 4)
    with torch.no_grad():
        imgs, w = model.mix(x, 5, seed=3)
        whole = decode(w)
    assert batches == [4, 4, 2] and imgs.shape == (10, 3, 64, 64)
    torch.testing.assert_close(imgs, whole, rtol=1e-5, atol=1e-6)


def test_psp_checks_shapes() -> None:
    g = tiny_generator(32)
    enc = GradualStyleEncoder(10, STYLE_DIM, backbone="ir_se_light", input_size=64)
    with pytest.raises(ValueError, match="encoder gives 10"):
        PSP(enc, g)
    enc8 = GradualStyleEncoder(8, STYLE_DIM, backbone="ir_se_light", input_size=64)
    with pytest.raises(ValueError, match="latent_avg has 3 rows"):
        PSP(enc8, g, torch.zeros(3, STYLE_DIM))
    m = PSP(enc8, g)  # no latent_avg: the generator's mean W
    torch.testing.assert_close(m.latent_avg, g.mean_latent().expand(8, -1))
