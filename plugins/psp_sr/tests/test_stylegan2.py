"""StyleGAN2 generator: rosinality naming, arithmetic against an independent reference,
checkpoint round trips, truncation, style mixing, noise modes. Tiny models, CPU, offline."""

from __future__ import annotations

import math
import pickle
import warnings
from argparse import Namespace

import pytest
import torch
import torch.nn.functional as F

from restorekit.errors import UnsafeFileError
from restorekit_psp_sr.rosinality import (CheckpointError, StyleGAN2Config, generator_from_state_dict,
                                          infer_config, load_rosinality, save_rosinality)
from restorekit_psp_sr.stylegan2 import ModulatedConv2d, StyledConv, StyleGAN2Generator

TINY = dict(resolution=32, style_dim=16, n_mlp=2, channel_max=8)


def tiny(seed: int = 0, **kw) -> StyleGAN2Generator:
    torch.manual_seed(seed)
    g = StyleGAN2Generator(**{**TINY, **kw}).eval()
    # Fresh models have zero biases and noise strengths; randomise them so tests see them.
    with torch.no_grad():
        for name, p in g.named_parameters():
            if name.endswith("noise.weight") or name.endswith("activate.bias") or name.endswith("to_rgb1.bias") \
                    or (name.startswith("to_rgbs") and name.endswith(".bias")):
                p.normal_(0, 0.3)
    return g


# Key names of rosinality's Generator(32, 512, 8) state dict (channel_multiplier 2).
def expected_keys_32() -> set[str]:
    keys = {f"style.{i}.{p}" for i in range(1, 9) for p in ("weight", "bias")}
    keys |= {"input.input", "to_rgb1.bias", "to_rgb1.conv.weight", "to_rgb1.conv.modulation.weight",
             "to_rgb1.conv.modulation.bias", "conv1.conv.weight", "conv1.conv.modulation.weight",
             "conv1.conv.modulation.bias", "conv1.noise.weight", "conv1.activate.bias"}
    for i in range(6):
        keys |= {f"convs.{i}.conv.weight", f"convs.{i}.conv.modulation.weight",
                 f"convs.{i}.conv.modulation.bias", f"convs.{i}.noise.weight", f"convs.{i}.activate.bias"}
        if i % 2 == 0:
            keys.add(f"convs.{i}.conv.blur.kernel")
    for i in range(3):
        keys |= {f"to_rgbs.{i}.bias", f"to_rgbs.{i}.upsample.kernel", f"to_rgbs.{i}.conv.weight",
                 f"to_rgbs.{i}.conv.modulation.weight", f"to_rgbs.{i}.conv.modulation.bias"}
    keys |= {f"noises.noise_{i}" for i in range(7)}
    return keys


def test_state_dict_matches_rosinality_naming_and_shapes():
    g = StyleGAN2Generator(32, 512, 8, channel_multiplier=2)
    sd = g.state_dict()
    assert set(sd) == expected_keys_32()
    shapes = {k: tuple(v.shape) for k, v in sd.items()}
    assert shapes["style.1.weight"] == (512, 512)
    assert shapes["input.input"] == (1, 512, 4, 4)
    assert shapes["conv1.conv.weight"] == (1, 512, 512, 3, 3)
    assert shapes["conv1.activate.bias"] == (512,)
    assert shapes["to_rgb1.bias"] == (1, 3, 1, 1)
    assert shapes["to_rgbs.0.conv.weight"] == (1, 3, 512, 1, 1)
    assert shapes["convs.0.conv.blur.kernel"] == (4, 4)
    assert shapes["noises.noise_0"] == (1, 1, 4, 4)
    assert shapes["noises.noise_6"] == (1, 1, 32, 32)
    assert shapes["convs.0.noise.weight"] == (1,)
    assert g.n_styles == 8 and g.num_layers == 7 and g.z_dim == 512
    # EqualLinear weights are stored unscaled: the mapping layers' N(0,1)/lr_mul init.
    assert 50 < sd["style.1.weight"].std().item() < 150
    k = torch.tensor([1.0, 3, 3, 1])
    assert torch.allclose(sd["convs.0.conv.blur.kernel"], torch.outer(k, k) / 64 * 4)
    # Inference on the shapes of the official 1024 config-f layout (18 styles, 32 ch at 1024).
    assert infer_config({"style.1.weight": torch.empty(512, 512),
                         **{f"style.{i}.weight": torch.empty(0) for i in range(2, 9)},
                         "input.input": torch.empty(1, 512, 4, 4), "conv1.conv.weight": torch.empty(0),
                         **{f"to_rgbs.{i}.bias": torch.empty(0) for i in range(8)},
                         **{f"convs.{2 * i}.conv.weight": torch.empty(1, c, 1, 1, 1)
                            for i, c in enumerate([512, 512, 512, 512, 256, 128, 64, 32])}}
                        ) == StyleGAN2Config(1024, 512, 8, 2, 512)


# ------------------------------------------------------------------ independent reference

def _upfirdn_naive(x, k2d, up, pad):
    n, c, h, w = x.shape
    z = x.new_zeros(n, c, h * up, w * up)
    z[:, :, ::up, ::up] = x
    z = F.pad(z, [pad[0], pad[1], pad[0], pad[1]])
    y = F.conv2d(z.reshape(n * c, 1, *z.shape[2:]), k2d.flip(0, 1)[None, None])
    return y.reshape(n, c, *y.shape[2:])


def reference_synthesis(sd, w_plus, noises, n_layers_rgb):
    """StyleGAN2 synthesis written literally from the state dict: per-sample weight modulation
    via grouped convs, naive zero-insertion upsampling — no code shared with the module."""
    def lin(prefix, x):
        w = sd[f"{prefix}.weight"]
        return F.linear(x, w / math.sqrt(w.shape[1]), sd[f"{prefix}.bias"])

    def modconv(prefix, x, s, demod, up):
        n = x.shape[0]
        wt = sd[f"{prefix}.weight"][0]
        o, i, k, _ = wt.shape
        wt = wt / math.sqrt(i * k * k)
        st = lin(f"{prefix}.modulation", s)
        wm = wt[None] * st[:, None, :, None, None]
        if demod:
            wm = wm * torch.rsqrt(wm.square().sum([2, 3, 4]) + 1e-8)[:, :, None, None, None]
        if up:
            wg = wm.transpose(1, 2).reshape(n * i, o, k, k)
            y = F.conv_transpose2d(x.reshape(1, n * i, *x.shape[2:]), wg, stride=2, groups=n)
            y = y.reshape(n, o, *y.shape[2:])
            return _upfirdn_naive(y, sd[f"{prefix}.blur.kernel"], 1, (1, 1))
        y = F.conv2d(x.reshape(1, n * i, *x.shape[2:]), wm.reshape(n * o, i, k, k), padding=k // 2, groups=n)
        return y.reshape(n, o, *y.shape[2:])

    def styled(prefix, x, s, noise, up=False):
        y = modconv(f"{prefix}.conv", x, s, True, up)
        y = y + sd[f"{prefix}.noise.weight"] * noise
        return F.leaky_relu(y + sd[f"{prefix}.activate.bias"][None, :, None, None], 0.2) * math.sqrt(2)

    def to_rgb(prefix, x, s, skip):
        y = modconv(f"{prefix}.conv", x, s, False, False) + sd[f"{prefix}.bias"]
        if skip is not None:
            y = y + _upfirdn_naive(skip, sd[f"{prefix}.upsample.kernel"], 2, (2, 1))
        return y

    n = w_plus.shape[0]
    x = sd["input.input"].repeat(n, 1, 1, 1)
    x = styled("conv1", x, w_plus[:, 0], noises[0])
    skip = to_rgb("to_rgb1", x, w_plus[:, 1], None)
    for k in range(n_layers_rgb):
        x = styled(f"convs.{2 * k}", x, w_plus[:, 2 * k + 1], noises[2 * k + 1], up=True)
        x = styled(f"convs.{2 * k + 1}", x, w_plus[:, 2 * k + 2], noises[2 * k + 2])
        skip = to_rgb(f"to_rgbs.{k}", x, w_plus[:, 2 * k + 3], skip)
    return skip


def reference_mapping(sd, z, n_mlp, lr_mul=0.01):
    x = z * torch.rsqrt(z.square().mean(1, keepdim=True) + 1e-8)
    for i in range(1, n_mlp + 1):
        w, b = sd[f"style.{i}.weight"], sd[f"style.{i}.bias"]
        x = F.leaky_relu(F.linear(x, w * lr_mul / math.sqrt(w.shape[1]), b * lr_mul), 0.2) * math.sqrt(2)
    return x


@pytest.mark.parametrize("batch", [1, 3])
def test_generator_matches_independent_reference(batch):
    g = tiny(1, resolution=64, channel_multiplier=1)
    sd = {k: v.double() for k, v in g.state_dict().items()}
    g = g.double()
    z = torch.randn(batch, 16, dtype=torch.float64)
    w = g.map(z)
    assert torch.allclose(w, reference_mapping(sd, z, 2), atol=1e-10)
    wp = torch.randn(batch, g.n_styles, 16, dtype=torch.float64)  # distinct per-layer styles
    want = reference_synthesis(sd, wp, g.noise_buffers(), 4)
    with torch.no_grad():
        got = g.synthesize_signed(wp)
        # Unfused CPU layers (conv → noise → fused_bias_act) and forced activation modulation.
        for m in g.modules():
            if isinstance(m, StyledConv):
                m.fold = False
            if isinstance(m, ModulatedConv2d):
                m.fused = False
        got2 = g.synthesize_signed(wp)
    assert got.shape == (batch, 3, 64, 64)
    assert torch.allclose(got, want, atol=1e-9), (got - want).abs().max()
    assert torch.allclose(got2, want, atol=1e-9), (got2 - want).abs().max()
    assert torch.allclose(g.synthesize(wp).detach(), (want + 1) / 2, atol=1e-9)


def test_gradients_reach_latents_and_noise():
    g = tiny(2)
    wp = g.broadcast(g.map(torch.randn(2, 16))).detach().clone().requires_grad_(True)
    noise = [n.clone().requires_grad_(True) for n in g.make_noise(2, torch.Generator().manual_seed(0))]
    img = g.synthesize(wp, noise=noise)
    img.square().mean().backward()
    assert wp.grad is not None and wp.grad.abs().sum() > 0
    assert all(n.grad is not None and n.grad.abs().sum() > 0 for n in noise)
    # Every synthesis parameter gets a gradient (the mapping net is not on this path).
    assert all(p.grad is not None for k, p in g.named_parameters() if not k.startswith("style."))


def test_rosinality_checkpoint_round_trip(tmp_path):
    g = tiny(3, resolution=64, channel_multiplier=2, channel_max=16)
    la = g.mean_latent(256)
    path = save_rosinality(g, tmp_path / "g.pt", latent_avg=la)
    raw = torch.load(path, weights_only=True)
    assert set(raw) == {"g_ema", "latent_avg"} and raw["latent_avg"].shape == (16,)
    g2 = load_rosinality(path)
    assert g2.config() == g.config()
    assert torch.equal(g2.mean_latent(), la)
    wp = g.broadcast(g.map(torch.randn(2, 16)))
    with torch.no_grad():
        assert torch.equal(g.synthesize(wp), g2.synthesize(wp))
    # The {"g", "d", "g_ema", ...} layout (tensors only) loads g_ema; key="g" picks g.
    torch.save({"g": g.state_dict(), "d": {"w": torch.zeros(1)}, "g_ema": g2.state_dict()}, tmp_path / "t.pt")
    assert load_rosinality(tmp_path / "t.pt", key="g").config() == g.config()


def test_training_checkpoint_needs_consent(tmp_path):
    g = tiny(4)
    p = tmp_path / "train.pt"
    torch.save({"g": g.state_dict(), "g_ema": g.state_dict(), "d": {}, "args": Namespace(size=32),
                "ada_aug_p": 0.0}, p)
    with pytest.raises(UnsafeFileError, match="allow_unsafe=True"):
        load_rosinality(p)
    g2 = load_rosinality(p, allow_unsafe=True)
    wp = g.broadcast(g.map(torch.randn(1, 16)))
    with torch.no_grad():
        assert torch.equal(g.synthesize(wp), g2.synthesize(wp))


def test_import_errors_name_the_problem(tmp_path):
    g = tiny(5)
    sd = g.state_dict()
    bad = dict(sd)
    del bad["convs.1.noise.weight"]
    bad["convs.1.extra"] = torch.zeros(1)
    with pytest.raises(CheckpointError, match=r"missing keys \['convs.1.noise.weight'\].*unexpected keys \['convs.1.extra'\]"):
        generator_from_state_dict(bad)
    bad = dict(sd)
    bad["convs.0.conv.blur.kernel"] = torch.ones(4, 4)
    with pytest.raises(CheckpointError, match="blur.kernel"):
        generator_from_state_dict(bad)
    with pytest.raises(CheckpointError, match="style.1.weight"):
        generator_from_state_dict({"foo": torch.zeros(1)})
    # Kernel buffers are derived constants and may be absent; a prefix selects a sub-dict.
    slim = {f"decoder.{k}": v for k, v in sd.items() if not k.endswith("kernel")}
    assert generator_from_state_dict(slim, prefix="decoder.").config() == g.config()
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises((CheckpointError, UnsafeFileError)):
        load_rosinality(tmp_path / "junk.pt")
    with pytest.raises(CheckpointError, match="no such file"):
        load_rosinality(tmp_path / "missing.pt")


def test_truncation_zero_gives_mean_latent_image_for_every_seed():
    g = tiny(6)
    center = g.mean_latent(512)
    want = g.synthesize(g.broadcast(center[None]))
    for seed in range(3):
        z = torch.randn(2, 16, generator=torch.Generator().manual_seed(seed))
        with torch.no_grad():
            img, _ = g([z], truncation=0.0, truncation_latent=center[None], randomize_noise=False)
            w = g.map(z, truncation=0.0, truncation_latent=center)
        assert torch.allclose((img + 1) / 2, want.expand(2, -1, -1, -1), atol=1e-5)
        assert torch.allclose(w, center.expand(2, -1), atol=1e-6)
    # truncation 0.5 lands halfway.
    z = torch.randn(1, 16)
    assert torch.allclose(g.map(z, truncation=0.5, truncation_latent=center),
                          (g.map(z) + center) / 2, atol=1e-5)
    # Without a checkpoint latent_avg, mean_latent is a seeded Monte-Carlo estimate.
    assert torch.equal(g.mean_latent(128, seed=1), g.mean_latent(128, seed=1))


def test_style_mixing():
    g = tiny(7)
    w1, w2 = g.map(torch.randn(2, 16)), g.map(torch.randn(2, 16))
    mixed = g.mix_styles(w1, w2, 3)
    assert torch.equal(mixed[:, :3], g.broadcast(w1)[:, :3]) and torch.equal(mixed[:, 3:], g.broadcast(w2)[:, 3:])
    with torch.no_grad():
        img_mix, lat = g([w1, w2], input_is_latent=True, inject_index=3, randomize_noise=False, return_latents=True)
        assert torch.equal(lat, mixed)
        assert torch.allclose((img_mix + 1) / 2, g.synthesize(mixed), atol=1e-6)
        # inject_index = n_styles is no mixing; 0 is all second style.
        a = g.synthesize(g.mix_styles(w1, w2, g.n_styles))
        assert torch.allclose(a, g.synthesize(g.broadcast(w1)), atol=1e-6)
        # Mixing only the last (finest) layer changes the image less than mixing from layer 1.
        base = g.synthesize(g.broadcast(w1))
        fine = g.synthesize(g.mix_styles(w1, w2, g.n_styles - 1))
        coarse = g.synthesize(g.mix_styles(w1, w2, 1))
        assert 0 < (fine - base).abs().mean() < (coarse - base).abs().mean()
    # pSp latent_mask mixing with alpha.
    wp = g.broadcast(w1)
    out = g.mix_latents(wp, w2, [5, 6, 7], alpha=0.25)
    assert torch.equal(out[:, :5], wp[:, :5])
    assert torch.allclose(out[:, 5:], 0.75 * wp[:, 5:] + 0.25 * g.broadcast(w2)[:, 5:])
    with pytest.raises(ValueError, match="out of range"):
        g.mix_latents(wp, w2, [8])


def test_noise_modes():
    g = tiny(8)
    wp = g.broadcast(g.map(torch.randn(1, 16)))
    with torch.no_grad():
        a, b = g.synthesize(wp), g.synthesize(wp)
        assert torch.equal(a, b)  # const: the noises.noise_i buffers
        torch.manual_seed(0)
        r1 = g.synthesize(wp, noise_mode="random")
        torch.manual_seed(0)
        r2 = g.synthesize(wp, noise_mode="random")
        assert torch.equal(r1, r2) and not torch.allclose(r1, a)
        explicit = g.synthesize(wp, noise=g.noise_buffers())
        assert torch.equal(explicit, a)
    assert [tuple(n.shape[-2:]) for n in g.noise_buffers()] == [(4, 4), (8, 8), (8, 8), (16, 16), (16, 16), (32, 32), (32, 32)]
    with pytest.raises(ValueError, match="noise_mode"):
        g.synthesize(wp, noise_mode="off")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="w_plus must be"):
        g.synthesize(wp[:, :3])


def test_invalid_config():
    with pytest.raises(ValueError, match="power of two"):
        StyleGAN2Generator(48)
    with pytest.raises(ValueError, match="power of two"):
        StyleGAN2Generator(16)


def test_exports_to_onnx_style_trace_with_any_batch():
    # Tracing must not bake the batch size into shapes: trace with 2, run with 3.
    g = tiny(9)
    wp2 = torch.randn(2, g.n_styles, 16)
    wp3 = torch.randn(3, g.n_styles, 16)

    class Synth(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.g = g

        def forward(self, w):
            return self.g.synthesize(w)

    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for example in (wp2, wp2[:1]):
            traced = torch.jit.trace(Synth(), (example,), check_trace=False)
            assert torch.allclose(traced(wp3), g.synthesize(wp3), atol=1e-5)


def test_pickle_free_round_trip_uses_weights_only(tmp_path):
    g = tiny(10)
    p = save_rosinality(g, tmp_path / "x.pt")
    # weights_only loading works (no pickled objects beyond tensors and dicts).
    torch.load(p, weights_only=True)
    with open(p, "rb") as fh:
        assert b"argparse" not in fh.read()
    assert pickle is not None


# ------------------------------------------------------------------ registration, CLI, bench

def test_registered_factory_builds_and_loads(tmp_path):
    from restorekit.plugins import registry, reset

    reset()
    factory = registry().get("generators", "stylegan2")
    g = factory.build(resolution=32, style_dim=16, n_mlp=2, channel_max=8, random_weights=True)
    assert isinstance(g, StyleGAN2Generator) and g.n_styles == 8 and g.channels[32] == 8
    assert g.notes == ["stylegan2: random weights (random_weights=true): an untrained 32-px generator"]
    path = save_rosinality(g, tmp_path / "tiny.pt")
    g2 = factory.build(weights=str(path))
    assert g2.config() == g.config()
    assert factory.build(weights=path, resolution=32).resolution == 32
    with pytest.raises(ValueError, match=r"resolution=64 \(file has 32\)"):
        factory.build(weights=path, resolution=64)
    with pytest.raises(ValueError, match="exclude each other"):
        factory.build(weights=path, random_weights=True)
    reset()


def test_bench_generator_cli_json():
    import json

    from click.testing import CliRunner

    from restorekit.cli import build_cli

    res = CliRunner().invoke(build_cli(), ["bench", "generator", "--resolution", "32", "--channel-max", "16",
                                           "--repeats", "1", "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.output)
    assert out["resolution"] == 32 and out["batch"] == 1 and out["device"] == "cpu"
    # 32 px: conv1 + 3 levels × 2 styled convs + 4 ToRGBs = 11 dense convs.
    assert out["n_convs"] == 11
    assert out["gflop_per_image"] >= out["conv_gflop_per_image"] > 0
    assert out["ms_per_image"] > 0 and out["conv_ms_per_image"] > 0 and out["ratio"] > 0
    assert abs(out["images_per_s"] * out["ms_per_image"] - 1000) < 1e-6 * 1000


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_generator_cuda_kernels_match_reference():
    g = tiny(11, resolution=64).cuda()
    tf32 = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        wp = torch.randn(3, g.n_styles, 16, device="cuda")
        out = {}
        for impl in ("cuda", "ref"):
            g.set_impl(impl)
            w = wp.clone().requires_grad_(True)
            img = g.synthesize(w)
            (gw,) = torch.autograd.grad(img.square().mean(), w)
            out[impl] = (img.detach(), gw)
        assert (out["cuda"][0] - out["ref"][0]).abs().max().item() < 1e-4
        assert (out["cuda"][1] - out["ref"][1]).abs().max().item() < 1e-4
        z = torch.randn(2, 16, device="cuda")
        g.set_impl("cuda")
        a = g.map(z)
        g.set_impl("ref")
        assert (a - g.map(z)).abs().max().item() < 1e-4
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = tf32


def test_set_impl_reaches_every_op():
    g = tiny(12)
    g.set_impl("cuda")
    impls = {m.impl for m in g.modules() if hasattr(m, "impl") and m is not g}
    assert impls == {"cuda"} and g.impl == "cuda"
    with pytest.raises(ValueError, match="needs a CUDA tensor"):
        g.synthesize(torch.randn(1, g.n_styles, 16))
    g.set_impl("ref")
    assert g.synthesize(torch.randn(1, g.n_styles, 16)).shape == (1, 3, 32, 32)


def test_weight_cache_survives_mode_switches_and_updates():
    # A frozen generator (pSp training): inference first, then gradients w.r.t. the latents.
    g = tiny(13).requires_grad_(False)
    wp = torch.randn(1, g.n_styles, 16)
    with torch.inference_mode():
        a = g.synthesize(wp)
    w = wp.clone().requires_grad_(True)
    b = g.synthesize(w)
    b.sum().backward()
    assert torch.allclose(a, b.detach()) and w.grad is not None
    # In-place weight updates (load_state_dict, optimiser steps) invalidate the cache.
    # (ToRGB has no demodulation, so its weight scale shows in the image.)
    with torch.no_grad():
        g.to_rgbs[-1].conv.weight.mul_(2.0)
        c = g.synthesize(wp)
        g.to_rgbs[-1].conv._cache = None
        d = g.synthesize(wp)
    assert torch.equal(c, d) and not torch.allclose(c, a)
