"""Inference optimisation (fold.py, fast_irse.py, fast_encoder.py, inference.py): the optimised
forward equals the modules' own, to float rounding, with non-trivial batch-norm statistics."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from restorekit_psp_sr.encoder import BackboneEncoderUsingLastLayerIntoW, GradualStyleEncoder
from restorekit_psp_sr.fast_irse import FoldedBackbone
from restorekit_psp_sr.fold import bn_affine, fold_bn_after, fold_bn_before
from restorekit_psp_sr.inference import optimize_for_inference, optimize_generator
from restorekit_psp_sr.irse import make_body, make_input_layer, backbone_config
from restorekit_psp_sr.psp import PSP
from restorekit_psp_sr.stylegan2 import StyleGAN2Generator


def randomize_bn(module: nn.Module, seed: int = 0) -> nn.Module:
    """Running stats and affine parameters far from their defaults, so folding mistakes show."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, nn.BatchNorm2d):
                n = m.num_features
                m.running_mean.copy_(torch.rand(n, generator=g) - 0.5)
                m.running_var.copy_(torch.rand(n, generator=g) * 1.5 + 0.5)
                m.weight.copy_(torch.rand(n, generator=g) + 0.5)
                m.bias.copy_(torch.rand(n, generator=g) * 0.6 - 0.3)
            elif isinstance(m, nn.PReLU):
                m.weight.copy_(torch.rand(m.weight.shape, generator=g) * 0.5)
    return module


def randomize_noise_strength(g: StyleGAN2Generator, seed: int = 0) -> StyleGAN2Generator:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for k, v in g.named_parameters():
            if k.endswith("noise.weight"):
                v.copy_(torch.rand(1, generator=gen) * 0.3 + 0.05)
            elif k.endswith("activate.bias") or (k.startswith("to_rgb") and k.endswith(".bias")):
                v.copy_(torch.randn(v.shape, generator=gen) * 0.1)
    return g


# -- folding arithmetic -------------------------------------------------------------------------
def test_bn_affine_is_eval_batch_norm() -> None:
    bn = randomize_bn(nn.BatchNorm2d(5)).eval().double()
    x = torch.randn(2, 5, 3, 3, dtype=torch.float64)
    scale, shift = bn_affine(bn)
    torch.testing.assert_close(bn(x), x * scale[:, None, None] + shift[:, None, None], rtol=0, atol=1e-12)


def test_fold_bn_after_conv() -> None:
    torch.manual_seed(0)
    conv = nn.Conv2d(4, 6, 3, stride=2, padding=1, bias=True).double()
    bn = randomize_bn(nn.BatchNorm2d(6)).eval().double()
    x = torch.randn(2, 4, 9, 9, dtype=torch.float64)
    w, b = fold_bn_after(conv.weight, conv.bias, bn)
    torch.testing.assert_close(F.conv2d(x, w, b, 2, 1), bn(conv(x)), rtol=0, atol=1e-12)


@pytest.mark.parametrize("size", [(1, 1), (2, 5), (3, 3), (8, 6)])
def test_fold_bn_before_padded_conv_including_the_border(size: tuple[int, int]) -> None:
    torch.manual_seed(1)
    bn = randomize_bn(nn.BatchNorm2d(4)).eval().double()
    conv = nn.Conv2d(4, 7, 3, padding=1, bias=False).double()
    x = torch.randn(2, 4, *size, dtype=torch.float64)
    w, border = fold_bn_before(bn, conv.weight, 1)
    want = conv(bn(x))  # zero padding applied after the BN
    got = F.conv2d(x, w, border.interior, padding=1) + border.full(*size)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-12)
    # Without the border term the interior is right and the border is not (the shift matters).
    plain = F.conv2d(x, w, border.interior, padding=1)
    if min(size) >= 3:
        torch.testing.assert_close(plain[..., 1:-1, 1:-1], want[..., 1:-1, 1:-1], rtol=0, atol=1e-12)
    assert (plain - want).abs().max() > 1e-3


# -- the folded backbone ------------------------------------------------------------------------
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("size", [32, 20, 4])
def test_folded_backbone_equals_modules(channels_last: bool, size: int) -> None:
    torch.manual_seed(2)
    cfg = backbone_config("ir_se_light")
    stem, body = make_input_layer(3, cfg.stem_width), make_body(cfg)
    randomize_bn(stem, 3), randomize_bn(body, 4)
    stem.eval(), body.eval()
    x = torch.rand(2, 3, size, size) * 2 - 1
    taps = (0, 2)
    with torch.no_grad():
        want, want_taps = x, []
        want = stem(want)
        for i, unit in enumerate(body):
            want = unit(want)
            if i in taps:
                want_taps.append(want)
        folded = FoldedBackbone(stem, body, torch.channels_last if channels_last else None)
        got, got_taps = folded(x, taps)
    assert got.shape == want.shape and len(got_taps) == 2
    for a, b in [(got, want), *zip(got_taps, want_taps)]:
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


# -- encoders -----------------------------------------------------------------------------------
def light_encoder(seed: int = 0, **kw: object) -> GradualStyleEncoder:
    torch.manual_seed(seed)
    enc = GradualStyleEncoder(10, 16, backbone="ir_se_light", input_size=64, head_channels=16, **kw)
    return randomize_bn(enc, seed).eval()


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


@pytest.mark.parametrize("channels_last", [False, True])
def test_gradual_style_encoder_fast_path_equals_official(channels_last: bool) -> None:
    enc = light_encoder(5)
    fast = copy.deepcopy(enc)
    from restorekit_psp_sr.fast_encoder import optimize_encoder

    optimize_encoder(fast, channels_last=channels_last)
    x = torch.rand(3, 3, 64, 64) * 2 - 1
    with torch.no_grad():
        want, got = enc(x), fast(x)
    assert fast.inference_path is not None and fast.inference_path._backbone is not None  # the fast path ran
    assert got.shape == want.shape == (3, 10, 16)
    assert rel(got, want) < 1e-5
    # The state dict is the official one, values unchanged (layout aside).
    sd, sd_fast = enc.state_dict(), fast.state_dict()
    assert list(sd) == list(sd_fast)
    assert all(torch.equal(sd[k], sd_fast[k]) for k in sd)


def test_fast_path_follows_new_weights_and_steps_aside_for_training() -> None:
    from restorekit_psp_sr.fast_encoder import optimize_encoder

    enc = optimize_encoder(light_encoder(6), channels_last=True)
    other = light_encoder(7)
    x = torch.rand(2, 3, 64, 64) * 2 - 1
    with torch.no_grad():
        enc(x)
        enc.load_state_dict(other.state_dict())  # in-place copies: the folded weights must follow
        assert rel(enc(x), other(x)) < 1e-5
    # Gradients for the encoder's weights: the official modules run (the fast path holds none).
    enc.train()
    y = enc(x)
    y.square().mean().backward()
    assert enc.body[0].res_layer[1].weight.grad is not None
    enc.eval()
    enc.zero_grad()
    y = enc(x)  # eval, grad enabled, weights require grad: still the official path
    y.square().mean().backward()
    assert enc.body[0].res_layer[0].weight.grad is not None


def test_learn_in_w_encoder_fast_path() -> None:
    from restorekit_psp_sr.fast_encoder import optimize_encoder

    torch.manual_seed(8)
    enc = randomize_bn(BackboneEncoderUsingLastLayerIntoW(10, 16, backbone="ir_se_light", input_size=64), 8).eval()
    fast = optimize_encoder(copy.deepcopy(enc))
    x = torch.rand(2, 3, 64, 64) * 2 - 1
    with torch.no_grad():
        assert rel(fast(x), enc(x)) < 1e-5


# -- generator ----------------------------------------------------------------------------------
@pytest.mark.parametrize("batch", [1, 3])
def test_optimized_generator_equals_plain(batch: int) -> None:
    torch.manual_seed(9)
    g = randomize_noise_strength(StyleGAN2Generator(64, 16, 2, 1, channel_max=32, impl="ref")).eval()
    fast = optimize_generator(copy.deepcopy(g))
    wp = torch.randn(batch, g.n_styles, 16)
    with torch.no_grad():
        want, got = g.synthesize(wp), fast.synthesize(wp)
        noise = g.make_noise(batch, torch.Generator().manual_seed(1))
        want_n, got_n = g.synthesize(wp, noise=noise), fast.synthesize(wp, noise=noise)
    assert got.is_contiguous()
    assert (got - want).abs().max() < 1e-5
    assert (got_n - want_n).abs().max() < 1e-5
    assert list(g.state_dict()) == list(fast.state_dict())


def test_optimized_generator_gradients_and_cache_invalidation() -> None:
    torch.manual_seed(10)
    g = randomize_noise_strength(StyleGAN2Generator(32, 16, 2, 1, channel_max=16, impl="ref")).eval()
    fast = optimize_generator(copy.deepcopy(g)).requires_grad_(False)
    g.requires_grad_(False)
    wp = torch.randn(1, g.n_styles, 16)
    grads = []
    for net in (g, fast):
        w = wp.clone().requires_grad_(True)
        (gw,) = torch.autograd.grad(net.synthesize(w).square().mean(), w)
        grads.append(gw)
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-4, atol=1e-6)
    with torch.no_grad():
        fast.synthesize(wp)  # fills the caches
        for net in (g, fast):  # an in-place change of the weights must reach the cached copies
            net.convs[0].conv.weight.mul_(1.5)
            net.convs[0].conv.modulation.weight.mul_(0.5)
            net.style[1].weight.mul_(2.0)
        assert (fast.synthesize(wp) - g.synthesize(wp)).abs().max() < 1e-5
        assert (fast.map(torch.ones(1, 16)) - g.map(torch.ones(1, 16))).abs().max() < 1e-5


# -- whole models (golden: optimised vs unoptimised) ------------------------------------------------
def psp_model(resolution: int, encoder: GradualStyleEncoder, seed: int, **gen: object) -> PSP:
    torch.manual_seed(seed)
    g = randomize_noise_strength(StyleGAN2Generator(resolution, **gen), seed)  # type: ignore[arg-type]
    return PSP(randomize_bn(encoder, seed), g, g.mean_latent(256)).eval().requires_grad_(False)


def assert_same_outputs(model: PSP, x: torch.Tensor) -> None:
    """The model's outputs, then the same model's once optimised in place (no copy of a paper-sized
    model: the optimisation changes no parameter's value, only layouts and how outputs are computed)."""
    with torch.inference_mode():
        want, w_want = model(x)
    fast = optimize_for_inference(model)
    assert fast.encoder.inference_path is not None and fast.decoder.memory_format is not None
    with torch.inference_mode():
        got, w_got = fast(x)
    assert fast.encoder.inference_path._backbone is not None  # the folded path ran
    assert (got - want).abs().max().item() <= 1e-4
    assert rel(w_got, w_want) <= 1e-5
    assert ((w_got - w_want).abs() / w_want.abs().clamp_min(1e-3)).max() <= 1e-4


def test_tiny_1024_layout_model() -> None:
    torch.manual_seed(11)
    enc = GradualStyleEncoder(18, 16, backbone="ir_se_light", input_size=256, head_channels=16)
    model = psp_model(1024, enc, 11, style_dim=16, n_mlp=2, channel_multiplier=1, channel_max=16)
    assert_same_outputs(model, torch.rand(1, 3, 64, 64))


def test_paper_psp_sr_model_at_256() -> None:
    """The paper's encoder (IR-SE50, 256-px input, 512-wide heads) on a config-f 256-px generator."""
    torch.manual_seed(12)
    model = psp_model(256, GradualStyleEncoder(14, 512), 12, style_dim=512, n_mlp=8, channel_multiplier=2)
    assert_same_outputs(model, torch.rand(1, 3, 64, 64))


# -- the method: optimised on load, optimize=false, export, bench ---------------------------------
@pytest.fixture(scope="module")
def tiny_file(tmp_path_factory: pytest.TempPathFactory):
    from tiny_models import save_tiny

    return save_tiny(tmp_path_factory.mktemp("model") / "tiny.safetensors")


def test_method_runs_optimised_unless_asked_not_to(tiny_file) -> None:
    from restorekit.testing.data import smooth_batch
    from restorekit_psp_sr.method import PSPSR, PSPSROptions

    fast = PSPSR(PSPSROptions(weights=str(tiny_file), impl="ref"))
    plain = PSPSR(PSPSROptions(weights=str(tiny_file), impl="ref", optimize=False))
    fast.load(), plain.load()
    assert fast.model.encoder.inference_path is not None and fast.model.decoder.memory_format is not None
    assert plain.model.encoder.inference_path is None and plain.model.decoder.memory_format is None
    lr = smooth_batch(2, 8, 8, seed=3)
    with torch.inference_mode():
        a, b = fast.restore(lr, 4), plain.restore(lr, 4)
    assert (a - b).abs().max() <= 1e-4


def test_onnx_export_uses_the_folded_encoder(tiny_file, tmp_path) -> None:
    onnx = pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    from restorekit.onnx_export import export_onnx
    from restorekit_psp_sr.method import PSPSR, PSPSROptions
    from restorekit_psp_sr.onnx_graph import psp_sr_export_spec

    counts = {}
    for optimize in (True, False):
        m = PSPSR(PSPSROptions(weights=str(tiny_file), impl="ref", optimize=optimize))
        out = tmp_path / f"opt{optimize}.onnx"
        export_onnx(psp_sr_export_spec(m), out, tolerance=1e-4)  # checks onnxruntime against torch
        counts[optimize] = sum(n.op_type == "BatchNormalization" for n in onnx.load(str(out)).graph.node)
    assert counts[True] == 0 and counts[False] > 0


def test_random_weights_options() -> None:
    from restorekit_psp_sr.method import PSPSR, PSPModelError, PSPSROptions
    from restorekit_psp_sr.random_model import paper_shaped_psp

    with pytest.raises(PSPModelError, match="random_weights=true only"):
        PSPSR(PSPSROptions(resolution=256)).load()
    with pytest.raises(PSPModelError, match="exclude each other"):
        PSPSR(PSPSROptions(random_weights=True, weights="x.safetensors")).load()
    with pytest.raises(ValueError, match="resolution must be one of"):
        paper_shaped_psp(100)
    for bad in (100, 0):  # 0 was read as "not given" and built the 1024-px default
        with pytest.raises(PSPModelError, match=f"resolution must be one of .*; got {bad}$"):
            PSPSR(PSPSROptions(random_weights=True, resolution=bad)).load()
    assert PSPSR.bench_model_options(256) == {"random_weights": True, "resolution": 256}


def test_bench_method_breakdown_json(tiny_file) -> None:
    import json

    from click.testing import CliRunner

    from restorekit.cli import build_cli

    r = CliRunner().invoke(build_cli(), ["bench", "method", "psp_sr", "--weights", str(tiny_file), "--scale", "4",
                                         "--batch", "1", "--repeat", "2", "--warmup", "0", "--device", "cpu",
                                         "--opt", "impl=ref", "--compare-to", "psp_sr", "--compare-opt", "impl=ref",
                                         "--compare-opt", f"weights={tiny_file}", "--compare-opt", "optimize=false",
                                         "--json"], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    res = json.loads(r.stdout)  # (notes go to stderr)
    fast, plain = res["results"][0], res["compare_results"][0]
    assert plain["options"] == ["impl=ref", f"weights={tiny_file}", "optimize=false"]
    for row in (fast, plain):
        assert set(row["breakdown"]) == {"encoder", "generator"}
        for part in row["breakdown"].values():
            assert part["ms_per_image"] > 0 and part["n_convs"] > 0 and part["gflop_per_image"] > 0
            assert part["fraction"] > 0 and part["fraction_nchw"] > 0
            assert part["fraction"] == pytest.approx(part["conv_ms_per_image"] / part["ms_per_image"])
    assert fast["breakdown"]["generator"]["layout"] == "channels_last"
    assert plain["breakdown"]["generator"]["layout"] == "NCHW"
    # The same convolutions, whichever way they are laid out (the encoder's SE gates become
    # matrix products, a sliver of its FLOPs).
    assert fast["breakdown"]["generator"]["conv_gflop_per_image"] == pytest.approx(
        plain["breakdown"]["generator"]["conv_gflop_per_image"])
    assert fast["breakdown"]["encoder"]["conv_gflop_per_image"] == pytest.approx(
        plain["breakdown"]["encoder"]["conv_gflop_per_image"], rel=0.01)


def test_bench_method_resolution_needs_a_benchmark_model() -> None:
    from click.testing import CliRunner

    from restorekit.cli import build_cli

    r = CliRunner().invoke(build_cli(), ["bench", "method", "bicubic", "--resolution", "256"])
    assert r.exit_code == 2 and "no untrained benchmark model" in r.output


def test_bench_generator_reports_both_references() -> None:
    import json

    from click.testing import CliRunner

    from restorekit.cli import build_cli

    for flag, layout in (("--optimize", "channels_last"), ("--no-optimize", "NCHW")):
        r = CliRunner().invoke(build_cli(), ["bench", "generator", "--resolution", "32", "--channel-max", "16",
                                             "--repeats", "1", flag, "--json"])
        assert r.exit_code == 0, r.output
        out = json.loads(r.output)
        assert out["optimized"] is (flag == "--optimize") and out["layout"] == layout and out["n_convs"] == 11
        assert out["ratio"] == pytest.approx(out["conv_ms_per_image"] / out["ms_per_image"])
        assert out["ratio_nchw"] == pytest.approx(out["conv_nchw_ms_per_image"] / out["ms_per_image"])


# -- CUDA (the GPU script runs this beside training; skipped elsewhere) ---------------------------
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("batch", [1, 2])
def test_optimized_model_on_cuda_equals_plain_on_cpu(batch: int) -> None:
    """On CUDA the batch-norm folding, the modulation choice and the weight caches apply
    (channels_last and the cached blur are CPU-only): the optimised model on the GPU gives the
    unoptimised model's CPU outputs to float rounding (TF32 off, so rounding stays fp32)."""
    torch.manual_seed(13)
    enc = GradualStyleEncoder(12, 32, backbone="ir_se_light", input_size=64, head_channels=32)
    model = psp_model(128, enc, 13, style_dim=32, n_mlp=2, channel_multiplier=1, channel_max=64)
    x = torch.rand(batch, 3, 16, 16)
    with torch.inference_mode():
        want, w_want = model(x)
    fast = optimize_for_inference(copy.deepcopy(model).cuda())
    tf32 = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        with torch.inference_mode():
            got, w_got = fast(x.cuda())
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = tf32
    assert got.device.type == "cuda"
    assert (got.cpu() - want).abs().max().item() <= 2e-4
    assert rel(w_got.cpu(), w_want) <= 1e-5
