"""ReStyle's iterative encoder on pSp: the passes' arithmetic, what reaches the gradient, the file
round trip, psp_sr's ``restyle_iterations`` option, and training with a loss after every pass."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import Tensor

from restorekit.errors import RestorekitError
from restorekit.losses import L2Loss, WNormLoss
from restorekit.testing.data import smooth_batch
from restorekit.training import sr_datasets
from restorekit_psp_sr.encoder import GradualStyleEncoder, resize_input
from restorekit_psp_sr.method import PSPSR, PSPModelError, PSPSROptions, load_psp_safetensors, save_psp_safetensors
from restorekit_psp_sr.psp import PSP
from restorekit_psp_sr.stylegan2 import StyleGAN2Generator
from restorekit_psp_sr.train import PSPTrainConfig, PSPTrainer, build_psp, with_input_channels
from tiny_models import tiny_train_config, write_faces



@pytest.fixture(scope="module")
def faces(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_faces(tmp_path_factory.mktemp("faces"), 6)


def tiny_config(out: Path, **over: object) -> PSPTrainConfig:
    return tiny_train_config(out, **{"steps": 4, "val_every": 4, "ckpt_every": 4, **over})


def tiny_generator(seed: int = 0) -> StyleGAN2Generator:
    torch.manual_seed(seed)
    return StyleGAN2Generator(32, style_dim=16, n_mlp=2, channel_multiplier=1, channel_max=16, impl="ref").eval()


def tiny_encoder(g: StyleGAN2Generator, input_nc: int, seed: int = 1) -> GradualStyleEncoder:
    torch.manual_seed(seed)
    return GradualStyleEncoder(g.n_styles, g.style_dim, backbone="ir_se_light", input_size=32, head_channels=16,
                               input_nc=input_nc)


def tiny_restyle(passes: int = 3, seed: int = 0) -> PSP:
    g = tiny_generator(seed)
    return PSP(tiny_encoder(g, 6, seed + 1), g, g.mean_latent(256), restyle_iterations=passes).eval()


def manual_passes(model: PSP, x: Tensor, n: int) -> list[tuple[Tensor, Tensor]]:
    """ReStyle written out: codes from latent_avg, the encoder reading [input, reconstruction]."""
    target = resize_input(x, 32) * 2 - 1
    codes = model.latent_avg[None].expand(x.shape[0], -1, -1)
    image = model.decoder.synthesize(model.latent_avg[None], noise_mode="const").expand(x.shape[0], -1, -1, -1)
    out = []
    for _ in range(n):
        codes = codes + model.encoder(torch.cat([target, resize_input(image, 32) * 2 - 1], 1))
        image = model.decoder.synthesize(codes, noise_mode="const")
        out.append((codes, image))
    return out


@torch.no_grad()
def test_passes_are_restyle_arithmetic() -> None:
    model = tiny_restyle(3)
    x = smooth_batch(2, 16, 16, seed=3)
    expected = manual_passes(model, x, 3)
    images, codes = model(x, all_passes=True)
    assert images.shape == (3, 2, 3, 32, 32) and codes.shape == (3, 2, model.n_styles, 16)
    for t, (w, im) in enumerate(expected):
        torch.testing.assert_close(codes[t], w, rtol=0, atol=1e-5)
        torch.testing.assert_close(images[t], im, rtol=0, atol=1e-5)
    image, w_plus = model(x)
    assert torch.equal(image, images[-1]) and torch.equal(w_plus, codes[-1])
    assert torch.equal(model.encode(x), w_plus)
    # Each pass moves the codes: a pass that reads a different reconstruction takes a different step.
    assert (codes[1] - codes[0]).abs().max() > 1e-4 and (codes[2] - codes[1]).abs().max() > 1e-4
    # The number of passes is the model's, or the caller's.
    assert len(model.refine(x, 1)) == 1 and torch.equal(model.refine(x, 1)[0][0], codes[0])
    model.set_restyle_iterations(2)
    assert torch.equal(model.encode(x), codes[1])
    # encode() skips the last pass's image; forward pooled to a loss size pools each pass.
    assert model.refine(x, decode_last=False)[-1][1] is None
    pooled, _ = model(x, all_passes=True, resize_output=16)
    torch.testing.assert_close(pooled[0], torch.nn.functional.adaptive_avg_pool2d(images[0], 16))


def test_each_pass_gradient_reaches_only_its_own_step() -> None:
    """Between passes the codes and the image are detached (ReStyle's training): the gradient of
    the second pass's codes is that of the encoder's second step alone."""
    model = tiny_restyle(2).train()
    model.decoder.eval()
    x = smooth_batch(2, 32, 32, seed=4)
    params = list(model.encoder.parameters())
    (_, _), (w2, _) = model.refine(x)
    got = torch.autograd.grad(w2.square().sum(), params, allow_unused=True)
    with torch.no_grad():
        w1_fixed, im1_fixed = [t.detach() for t in model.refine(x, 1)[0]]  # type: ignore[union-attr]
    step = model.encoder(torch.cat([resize_input(x, 32) * 2 - 1, resize_input(im1_fixed, 32) * 2 - 1], 1))
    want = torch.autograd.grad((w1_fixed + step).square().sum(), params, allow_unused=True)
    for a, b in zip(got, want):
        assert (a is None) == (b is None)
        if a is not None:
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_restyle_refusals() -> None:
    g = tiny_generator()
    with pytest.raises(ValueError, match="reads 3"):
        PSP(tiny_encoder(g, 3), g, restyle_iterations=2)
    with pytest.raises(ValueError, match="start_from_latent_avg"):
        PSP(tiny_encoder(g, 6), g, restyle_iterations=2, start_from_latent_avg=False)
    with pytest.raises(ValueError, match="at least one pass"):
        PSP(tiny_encoder(g, 6), g, restyle_iterations=0)
    one_pass = PSP(tiny_encoder(g, 3), g)
    with pytest.raises(ValueError, match="one pass"):
        one_pass.set_restyle_iterations(3)
    with pytest.raises(ValueError, match="one pass"):
        one_pass.refine(smooth_batch(1, 32, 32))
    # A one-pass model's all_passes is its output with a pass dimension of one.
    x = smooth_batch(1, 32, 32, seed=2)
    with torch.no_grad():
        images, codes = one_pass(x, all_passes=True)
        image, w = one_pass(x)
    assert images.shape[0] == 1 and torch.equal(images[0], image) and torch.equal(codes[0], w)


def test_file_round_trip_and_psp_sr_option(tmp_path: Path) -> None:
    model = tiny_restyle(3)
    path = save_psp_safetensors(model, tmp_path / "restyle.safetensors", factors=[1, 2], license="CC0-1.0")
    loaded, cfg = load_psp_safetensors(path, impl="ref")
    assert cfg["restyle_iterations"] == 3 and loaded.restyle_iterations == 3
    assert cfg["encoder"]["input_nc"] == 6
    x = smooth_batch(2, 16, 16, seed=6)
    with torch.no_grad():
        a, wa = model(x)
        b, wb = loaded(x)
    assert torch.equal(a, b) and torch.equal(wa, wb)
    # A one-pass model's file records no passes.
    g = tiny_generator()
    plain = save_psp_safetensors(PSP(tiny_encoder(g, 3), g), tmp_path / "psp.safetensors", factors=[1],
                                 license="CC0-1.0")
    assert "restyle_iterations" not in load_psp_safetensors(plain, impl="ref")[1]

    lr = smooth_batch(1, 16, 16, seed=7)
    default = PSPSR(PSPSROptions(weights=str(path), keep_native_size=True, impl="ref"))
    out3 = default.restore(lr, 2)
    assert any("3 ReStyle passes" in n for n in default.notes)
    one = PSPSR(PSPSROptions(weights=str(path), keep_native_size=True, impl="ref", restyle_iterations=1))
    out1 = one.restore(lr, 2)
    with torch.no_grad():
        ref = manual_passes(model, default._to_input(lr), 3)
    torch.testing.assert_close(out3, ref[-1][1].clamp(0, 1), rtol=0, atol=1e-4)
    torch.testing.assert_close(out1, ref[0][1].clamp(0, 1), rtol=0, atol=1e-4)
    assert (out1 - out3).abs().max() > 1e-3
    with pytest.raises(PSPModelError, match="one pass"):
        PSPSR(PSPSROptions(weights=str(plain), restyle_iterations=2, impl="ref")).load()


def test_pass_one_of_a_restyle_encoder_started_from_psp_is_psp(tmp_path: Path) -> None:
    """A pSp encoder's stem widened with zeros for the reconstruction: the first pass draws what
    the pSp model draws, and the reconstruction channels learn (their gradient is not zero)."""
    g = tiny_generator()
    psp = PSP(tiny_encoder(g, 3), g, g.mean_latent(256)).eval()
    init = save_psp_safetensors(psp, tmp_path / "psp.safetensors", factors=[1, 2, 4], license="CC0-1.0")
    cfg = tiny_config(tmp_path / "run", init=str(init), restyle_iterations=2, encoder_backbone="ir_se_light",
                      head_channels=16, impl="ref")
    restyle = build_psp(cfg).eval()
    x = smooth_batch(2, 32, 32, seed=8)
    with torch.no_grad():
        (w1, im1), _ = restyle.refine(x)
        want_image, want_w = psp(x)
    torch.testing.assert_close(w1, want_w, rtol=0, atol=1e-5)
    torch.testing.assert_close(im1, want_image, rtol=0, atol=1e-5)
    stem = restyle.encoder.input_layer[0].weight
    assert stem.shape[1] == 6 and torch.equal(stem[:, 3:], torch.zeros_like(stem[:, 3:]))
    restyle.train()
    restyle.decoder.eval()
    images, _ = restyle(x, all_passes=True)
    (images[-1] - x).square().mean().backward()
    assert stem.grad is not None and stem.grad[:, 3:].abs().max() > 0
    # The other way round is refused: a ReStyle model does not become a one-pass encoder.
    path = save_psp_safetensors(restyle.eval(), tmp_path / "restyle.safetensors", factors=[1], license="CC0-1.0")
    with pytest.raises(RestorekitError, match="reads 6 channels, this config.s 3"):
        build_psp(tiny_config(tmp_path / "run2", init=str(path), encoder_backbone="ir_se_light", head_channels=16,
                              impl="ref"))
    # The widening leaves a stem that already reads six channels, or none, untouched.
    sd = {"input_layer.0.weight": stem.detach()}
    assert with_input_channels(sd, 6) is sd and with_input_channels({}, 6) == {}


def test_training_takes_a_loss_after_every_pass(faces: Path, tmp_path: Path) -> None:
    cfg = tiny_config(tmp_path / "run", steps=6, restyle_iterations=2, val_every=3, ckpt_every=3)
    g = tiny_generator()
    model = PSP(tiny_encoder(g, 6), g, g.mean_latent(256), restyle_iterations=2)
    train, val = sr_datasets(faces, 32, cfg.data, hr_size=32, seed=cfg.seed)
    losses = {"l2": L2Loss(1.0, value_range="symmetric"), "w_norm": WNormLoss(0.005)}
    trainer = PSPTrainer(cfg, model, train, val, losses=losses, quiet=True)
    from torch.utils.data import default_collate

    batch = default_collate([train[i] for i in range(2)])
    out = trainer.train_step(trainer.net, batch)
    with torch.no_grad():
        images, codes = model(batch["lr_up"], all_passes=True)
        per_pass = [trainer.compute_losses(im, batch["hr"], w) for im, w in zip(images, codes)]
    torch.testing.assert_close(out["loss"].detach(), (per_pass[0]["loss"] + per_pass[1]["loss"]) / 2)
    torch.testing.assert_close(out["l2"], per_pass[1]["l2"])
    assert per_pass[0]["l2"] != per_pass[1]["l2"]
    summary = trainer.fit()
    loaded, exported = load_psp_safetensors(summary["exported"], impl="ref")
    assert loaded.restyle_iterations == 2 and exported["training"]["restyle_iterations"] == 2


def test_a_restyle_run_resumes_exactly(faces: Path, tmp_path: Path) -> None:
    """Cut at step 2 and resumed, a ReStyle run ends where the uninterrupted one does."""

    def trainer(out: Path) -> PSPTrainer:
        cfg = tiny_config(out, steps=4, restyle_iterations=2, ckpt_every=2, val_every=100)
        g = tiny_generator()
        model = PSP(tiny_encoder(g, 6), g, g.mean_latent(256), restyle_iterations=2)
        train, val = sr_datasets(faces, 32, cfg.data, hr_size=32, seed=cfg.seed)
        losses = {"l2": L2Loss(1.0, value_range="symmetric"), "w_norm": WNormLoss(0.005)}
        return PSPTrainer(cfg, model, train, val, losses=losses, quiet=True)

    full = trainer(tmp_path / "full")
    full.fit()
    assert trainer(tmp_path / "part").fit(until=2)["step"] == 2
    resumed = trainer(tmp_path / "part")
    assert resumed.fit(resume=True)["step"] == 4
    for (k, a), b in zip(full.model.encoder.state_dict().items(), resumed.model.encoder.state_dict().values()):
        assert torch.equal(a, b), k


def test_config_field_bounds() -> None:
    with pytest.raises(ValueError):
        PSPTrainConfig(restyle_iterations=0)
    assert PSPTrainConfig().restyle_iterations is None


def test_onnx_export_unrolls_the_passes_that_shrink_the_generators_image(tmp_path: Path) -> None:
    """The passes are unrolled into the graph: it records their number, and running it for
    another number is refused. Each pass brings the generator's image to the encoder's size with
    an antialiased resize, which ONNX lacks: the export spells it as two matrix products, and the
    graph still agrees with PyTorch (a 64-px generator read by a 32-px encoder, as the shipped
    128/64 pair)."""
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    from click.testing import CliRunner

    from restorekit.cli import build_cli
    from restorekit.onnx_backend import OnnxBackendError, onnx_method
    from restorekit.onnx_export import read_sidecar
    from restorekit_psp_sr.encoder import _resize_matrix
    from tiny_models import tiny_generator as tiny_generator_64

    x = torch.rand(2, 3, 64, 48)
    ref = torch.nn.functional.interpolate(x, size=(32, 32), mode="bilinear", align_corners=False, antialias=True)
    torch.testing.assert_close(torch.einsum("ih,nchw,jw->ncij", _resize_matrix(64, 32), x, _resize_matrix(48, 32)),
                               ref, rtol=0, atol=1e-6)
    g = tiny_generator_64(0)
    model = PSP(tiny_encoder(g, 6, 1), g, g.mean_latent(256), restyle_iterations=3).eval()
    assert model.decoder.resolution == 64 and model.input_size == 32
    path = save_psp_safetensors(model, tmp_path / "restyle.safetensors", factors=[1, 2], license="CC0-1.0")
    out = tmp_path / "restyle.onnx"
    # The export compares onnxruntime's output with PyTorch's and fails past --tolerance.
    res = CliRunner().invoke(build_cli(), ["export", "psp_sr", "--weights", str(path), "--out", str(out), "--opt",
                                           "impl=ref", "--opt", "restyle_iterations=2", "--tolerance", "1e-4",
                                           "--json"])
    assert res.exit_code == 0, res.output
    side = read_sidecar(out)
    assert side is not None and side["source"]["graph"]["restyle_iterations"] == 2
    assert side["max_abs_diff"] <= side["tolerance"] == 1e-4
    # The passes are in the graph: running it for another number of passes (the model's own 3
    # included) is refused, not silently the two-pass output; the number it was made for runs.

    def method(passes: int) -> PSPSR:
        return PSPSR(PSPSROptions(weights=str(path), impl="ref", restyle_iterations=passes))

    with pytest.raises(OnnxBackendError, match="exported with other settings .*restyle_iterations: 2 → 3"):
        onnx_method(method(3), onnx_path=out, threads=1)
    assert onnx_method(method(2), onnx_path=out, threads=1).session.path == out


def test_psp_pulse_starts_from_the_restyle_codes(tmp_path: Path) -> None:
    """psp_pulse on a ReStyle model anchors its search at the codes after all the passes."""
    from restorekit_psp_sr.psp_pulse import PSPPulse, PSPPulseOptions

    model = tiny_restyle(2)
    path = save_psp_safetensors(model, tmp_path / "restyle.safetensors", factors=[1, 2, 4], license="CC0-1.0")
    m = PSPPulse(PSPPulseOptions(weights=str(path), impl="ref", steps=3, quiet=True, gaussian_fit_samples=256,
                                 keep_native_size=True))
    lr = smooth_batch(1, 8, 8, seed=9)
    out = m.restore(lr, 4)
    assert out.shape == (1, 3, 32, 32) and m.last_w_psp is not None
    with torch.no_grad():
        want = model.encode(m._to_input(lr))
    torch.testing.assert_close(m.last_w_psp, want, rtol=0, atol=1e-5)
    assert m.last_w_plus is not None and (m.last_w_plus - want).abs().max() > 0  # the search moved
