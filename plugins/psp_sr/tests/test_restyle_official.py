"""Official ReStyle-pSp checkpoints (github.com/yuval-alaluf/restyle-encoder): a 6-channel encoder
imports as a ReStyle model making ``opts.n_iters_per_batch`` passes, and infers as the official
``run_on_batch`` does (reconstructions average-pooled to the encoder's size); encoders reading
channels restorekit cannot feed are refused at load. Tiny models, assembled in the official
layout by the tests themselves (no official code, no downloads)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from restorekit.testing.data import smooth_batch
from restorekit_psp_sr.checkpoint_psp import (RECON_RESIZE_OPT, PSPCheckpointError, load_psp_official,
                                              save_psp_official)
from restorekit_psp_sr.encoder import GradualStyleEncoder, _pool_matrix, pool_input
from restorekit_psp_sr.method import PSPSR, PSPModelError, PSPSROptions, load_psp_safetensors, save_psp_safetensors
from restorekit_psp_sr.psp import PSP
from restorekit_psp_sr.stylegan2 import StyleGAN2Generator

STYLE_DIM = 16
ENC_SIZE = 32  # the official 256, scaled down; the 64-px generator's images are pooled 2×2
# ReStyle's opts as its training script saves them (vars(opts)): no n_styles, label_nc or learn_in_w.
RESTYLE_OPTS = {"exp_dir": "experiment/restyle_psp_ffhq_encode", "dataset_type": "ffhq_encode",
                "encoder_type": "GradualStyleEncoder", "input_nc": 6, "output_size": 64, "batch_size": 8,
                "test_batch_size": 8, "learning_rate": 0.0001, "optim_name": "ranger", "train_decoder": False,
                "start_from_latent_avg": True, "lpips_lambda": 0.8, "id_lambda": 0.1, "l2_lambda": 1.0,
                "w_norm_lambda": 0.0, "moco_lambda": 0.0, "stylegan_weights": "pretrained_models/stylegan2.pt",
                "checkpoint_path": None, "max_steps": 500000, "n_iters_per_batch": 3, "device": "cuda:0"}


def tiny_parts(input_nc: int = 6, seed: int = 0) -> tuple[GradualStyleEncoder, StyleGAN2Generator, Tensor]:
    """A light 32-px encoder reading ``input_nc`` channels, a 64-px generator and a latent_avg."""
    torch.manual_seed(seed)
    g = StyleGAN2Generator(64, STYLE_DIM, n_mlp=2, channel_multiplier=1, channel_max=16, impl="ref").eval()
    with torch.no_grad():  # noise that matters: fine detail that pooling and bilinear resizing tell apart
        for k, v in g.named_parameters():
            if k.endswith("noise.weight"):
                v.fill_(0.5)
    enc = GradualStyleEncoder(g.n_styles, STYLE_DIM, backbone="ir_se_light", input_size=ENC_SIZE,
                              head_channels=16, input_nc=input_nc).eval()
    for m in enc.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    return enc, g, torch.randn(g.n_styles, STYLE_DIM) * 0.3


def write_restyle(path: Path, enc: torch.nn.Module, g: torch.nn.Module, latent_avg: Tensor | None,
                  **opts: object) -> Path:
    """``{"state_dict", "opts", "latent_avg"}`` as ReStyle's coach saves it, assembled here."""
    state = {f"encoder.{k}": v.clone() for k, v in enc.state_dict().items()}
    state |= {f"decoder.{k}": v.clone() for k, v in g.state_dict().items()}
    ckpt: dict = {"state_dict": state, "opts": {**RESTYLE_OPTS, **opts}}
    if latent_avg is not None:
        ckpt["latent_avg"] = latent_avg.clone()
    torch.save(ckpt, path)
    return path


@pytest.fixture(scope="module")
def restyle_file(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, tuple]:
    parts = tiny_parts()
    return write_restyle(tmp_path_factory.mktemp("restyle") / "restyle_psp_tiny.pt", *parts), parts


def official_recursion(enc: torch.nn.Module, g: StyleGAN2Generator, latent_avg: Tensor, x: Tensor,
                       n: int) -> list[tuple[Tensor, Tensor]]:
    """ReStyle's inference written out as its code runs it, in [-1, 1]: the average image
    G(latent_avg) and every pass's image pooled with ``AdaptiveAvgPool2d`` to the encoder's size,
    the first step added to latent_avg, each later one to the previous codes.
    Returns ``[(codes, image at the generator's size), …]``."""
    pool = torch.nn.AdaptiveAvgPool2d((ENC_SIZE, ENC_SIZE))
    avg_image, _ = g([latent_avg[None]], input_is_latent=True, randomize_noise=False)
    y_hat = pool(avg_image)[0][None].repeat(x.shape[0], 1, 1, 1)
    latent: Tensor | None = None
    out = []
    for _ in range(n):
        codes = enc(torch.cat([x, y_hat], dim=1))
        codes = codes + (latent_avg.repeat(x.shape[0], 1, 1) if latent is None else latent)
        image, latent = g([codes], input_is_latent=True, randomize_noise=False, return_latents=True)
        out.append((latent, image))
        y_hat = pool(image)
    return out


@torch.no_grad()
def test_an_official_restyle_checkpoint_infers_as_the_official_recursion(restyle_file: tuple[Path, tuple]) -> None:
    path, (enc, g, latent_avg) = restyle_file
    model = load_psp_official(path, impl="ref")
    assert model.restyle_iterations == 3  # opts.n_iters_per_batch
    assert model.restyle_recon_resize == "adaptive_avg_pool" and model.start_from_latent_avg
    assert model.encoder.input_nc == 6 and model.input_size == ENC_SIZE
    x = smooth_batch(2, ENC_SIZE, ENC_SIZE, seed=5)
    want = official_recursion(enc, g, latent_avg, x * 2 - 1, 3)
    images, codes = model(x, all_passes=True)
    assert images.shape == (3, 2, 3, 64, 64)
    for t, (w, im) in enumerate(want):
        torch.testing.assert_close(codes[t], w, rtol=0, atol=1e-5)
        torch.testing.assert_close(images[t] * 2 - 1, im, rtol=0, atol=1e-5)
    # The comparison tells the two resizes apart, and a wrong start: the golden values mean something.
    model.restyle_recon_resize = "antialiased_bilinear"
    assert (model.refine(x, 1)[0][1] * 2 - 1 - want[0][1]).abs().max() > 1e-3  # type: ignore[operator]
    blank_start = enc(torch.cat([x * 2 - 1, torch.zeros_like(x)], 1)) + latent_avg  # not G(latent_avg) first
    assert (blank_start - want[0][0]).abs().max() > 1e-3 and (latent_avg.abs().max() > 1e-3)
    # ReStyle's passes start from latent_avg even when its opts leave start_from_latent_avg unset.
    other = write_restyle(path.with_name("no_flag.pt"), enc, g, latent_avg, start_from_latent_avg=False,
                          n_iters_per_batch=None)
    plain = load_psp_official(other, impl="ref")
    assert plain.restyle_iterations == 5 and plain.start_from_latent_avg  # 5: ReStyle's default
    torch.testing.assert_close(plain.refine(x, 1)[0][0], codes[0], rtol=0, atol=1e-6)


def test_psp_sr_runs_an_official_restyle_checkpoint_for_any_number_of_passes(
        restyle_file: tuple[Path, tuple]) -> None:
    path, (enc, g, latent_avg) = restyle_file
    lr = smooth_batch(1, ENC_SIZE, ENC_SIZE, seed=6)
    with torch.no_grad():
        want = official_recursion(enc, g, latent_avg, lr * 2 - 1, 3)
    default = PSPSR(PSPSROptions(weights=str(path), keep_native_size=True, impl="ref"))
    out = default.restore(lr, 2)
    assert any("3 ReStyle passes" in n for n in default.notes)
    torch.testing.assert_close(out, ((want[-1][1] + 1) / 2).clamp(0, 1), rtol=0, atol=1e-5)
    two = PSPSR(PSPSROptions(weights=str(path), keep_native_size=True, impl="ref", restyle_iterations=2))
    torch.testing.assert_close(two.restore(lr, 2), ((want[1][1] + 1) / 2).clamp(0, 1), rtol=0, atol=1e-5)


@pytest.mark.parametrize("channels", [1, 19])
def test_encoders_reading_channels_restorekit_cannot_feed_are_refused_at_load(tmp_path: Path,
                                                                             channels: int) -> None:
    enc, g, latent_avg = tiny_parts(input_nc=channels)
    opts = {"input_nc": channels, "label_nc": 19 if channels == 19 else 0, "n_iters_per_batch": None}
    path = write_restyle(tmp_path / f"psp_{channels}ch.pt", enc, g, latent_avg, **opts)
    with pytest.raises(PSPCheckpointError) as err:
        load_psp_official(path, impl="ref")
    msg = str(err.value)
    assert "\n" not in msg and str(path) in msg and f"reads {channels}-channel inputs" in msg
    with pytest.raises(PSPCheckpointError, match=f"reads {channels}-channel"):  # the method, before any image
        PSPSR(PSPSROptions(weights=str(path), impl="ref")).load()


def test_restyle_checkpoint_refusals(tmp_path: Path) -> None:
    enc, g, latent_avg = tiny_parts()
    no_avg = write_restyle(tmp_path / "no_avg.pt", enc, g, None)
    with pytest.raises(PSPCheckpointError, match="no_avg.pt: ReStyle checkpoint .* no 'latent_avg'"):
        load_psp_official(no_avg)
    zero = write_restyle(tmp_path / "zero.pt", enc, g, latent_avg, n_iters_per_batch=0)
    with pytest.raises(PSPCheckpointError, match="n_iters_per_batch is 0"):
        load_psp_official(zero)
    lying = write_restyle(tmp_path / "lying.pt", enc, g, latent_avg, input_nc=3)
    with pytest.raises(PSPCheckpointError, match="opts.input_nc is 3 but the encoder's first conv takes 6"):
        load_psp_official(lying)
    with pytest.raises(ValueError, match="restyle_recon_resize 'nearest'"):
        PSP(enc, g, latent_avg, restyle_iterations=2, restyle_recon_resize="nearest")  # type: ignore[arg-type]


@torch.no_grad()
def test_the_reconstruction_resize_survives_every_file_round_trip(restyle_file: tuple[Path, tuple],
                                                                   tmp_path: Path) -> None:
    path, _ = restyle_file
    official = load_psp_official(path, impl="ref")
    official.set_restyle_iterations(2)
    x = smooth_batch(1, ENC_SIZE, ENC_SIZE, seed=7)
    want = official(x)[0]
    # restorekit's format records it; the official layout leaves it implied (it is the official one).
    st = save_psp_safetensors(official, tmp_path / "imported.safetensors", factors=[1], license="CC0-1.0")
    loaded, cfg = load_psp_safetensors(st, impl="ref")
    assert cfg["restyle_recon_resize"] == "adaptive_avg_pool" and loaded.restyle_iterations == 2
    torch.testing.assert_close(loaded(x)[0], want, rtol=0, atol=0)
    pt = save_psp_official(official, tmp_path / "again.pt")
    opts = torch.load(pt, weights_only=True)["opts"]
    assert opts["input_nc"] == 6 and opts["n_iters_per_batch"] == 2 and RECON_RESIZE_OPT not in opts
    torch.testing.assert_close(load_psp_official(pt, impl="ref")(x)[0], want, rtol=0, atol=0)
    # Training that starts from it goes on pooling (what its encoder learnt to read).
    from restorekit_psp_sr.train import build_psp
    from tiny_models import tiny_train_config

    cfg = tiny_train_config(tmp_path / "run", init=str(path), restyle_iterations=2, encoder_backbone="ir_se_light",
                            head_channels=16, impl="ref")
    assert build_psp(cfg).restyle_recon_resize == "adaptive_avg_pool"
    # A restorekit-trained ReStyle model keeps its antialiased bilinear resize in both formats.
    enc, g, latent_avg = tiny_parts(seed=1)
    own = PSP(enc, g, latent_avg, restyle_iterations=2).eval()
    assert own.restyle_recon_resize == "antialiased_bilinear"
    own_want = own(x)[0]
    pt = save_psp_official(own, tmp_path / "own.pt", {RECON_RESIZE_OPT: "adaptive_avg_pool"})  # the model's wins
    assert torch.load(pt, weights_only=True)["opts"][RECON_RESIZE_OPT] == "antialiased_bilinear"
    back = load_psp_official(pt, impl="ref")
    assert back.restyle_recon_resize == "antialiased_bilinear" and back.restyle_iterations == 2
    torch.testing.assert_close(back(x)[0], own_want, rtol=0, atol=0)
    st = save_psp_safetensors(own, tmp_path / "own.safetensors", factors=[1], license="CC0-1.0")
    assert load_psp_safetensors(st, impl="ref")[0].restyle_recon_resize == "antialiased_bilinear"
    # Files written before the setting existed are restorekit's own: bilinear.
    from safetensors import safe_open
    from safetensors.torch import save_file
    import json

    with safe_open(str(st), framework="pt") as f:
        meta, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    config = json.loads(meta["config"])
    del config["restyle_recon_resize"]
    old = tmp_path / "old.safetensors"
    save_file(tensors, str(old), metadata={**meta, "config": json.dumps(config)})
    assert load_psp_safetensors(old, impl="ref")[0].restyle_recon_resize == "antialiased_bilinear"
    config["restyle_recon_resize"] = "nearest"
    bad = tmp_path / "bad.safetensors"
    save_file(tensors, str(bad), metadata={**meta, "config": json.dumps(config)})
    with pytest.raises(PSPModelError, match="restyle_recon_resize 'nearest'"):
        load_psp_safetensors(bad, impl="ref")


def test_pool_input_as_the_onnx_export_writes_it(monkeypatch: pytest.MonkeyPatch) -> None:
    """While exporting, pooling by a whole factor (an average pool) and by any other factor or
    enlarging (two matrix products) equal PyTorch's adaptive average pooling."""
    cases = [(torch.rand(2, 3, 128, 128), 32), (torch.rand(2, 3, 50, 20), 32), (torch.rand(1, 3, 50, 20), 7)]
    want = [F.adaptive_avg_pool2d(x, size) for x, size in cases]
    monkeypatch.setattr(torch.onnx, "is_in_onnx_export", lambda: True)
    for (x, size), w in zip(cases, want):
        torch.testing.assert_close(pool_input(x, size), w, rtol=0, atol=1e-6)
    assert _pool_matrix(20, 32).sum(1).allclose(torch.ones(32))


def test_onnx_export_of_an_official_restyle_model(restyle_file: tuple[Path, tuple], tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime")
    from restorekit.onnx_export import export_onnx, find_export_spec

    path, _ = restyle_file
    m = PSPSR(PSPSROptions(weights=str(path), impl="ref", restyle_iterations=2))
    m.load()
    res = export_onnx(find_export_spec(m), tmp_path / "restyle.onnx", tolerance=1e-4)
    graph = res.info["source"]["graph"]
    assert graph["restyle_iterations"] == 2 and graph["restyle_recon_resize"] == "adaptive_avg_pool"
    assert res.info["max_abs_diff"] <= 1e-4
