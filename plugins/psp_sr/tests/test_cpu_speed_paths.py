"""The generator's and encoder's faster CPU paths compute what the code they replaced computed.

Each faster path is checked against that code, kept here as a reference (``old_*``): bit for bit
where the arithmetic is the same (the skip upsampling with its filter made once, everything the
training path runs), and within a stated
tolerance where it is not (a latent search modulates activations instead of weights: max abs
difference ≤ 1e-5 on the image, ≤ 1e-4 relative on the latent's gradient, and a short search
lands ≥ 60 dB from where the old path lands). Building on the meta device, as the weight loaders
do, runs no randomness or arithmetic there (the first such call imports sympy and torch._dynamo:
seconds per process).
"""

from __future__ import annotations

import copy
import math
import sys
import types

import pytest
import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from restorekit_psp_sr.encoder import GradualStyleEncoder
from restorekit_psp_sr.inference import optimize_generator
from restorekit_psp_sr.ops import upfirdn2d, upfirdn2d_ref
from restorekit_psp_sr.stylegan2 import (BLUR_KERNEL, ModulatedConv2d, StyleGAN2Generator, Upsample,
                                         in_onnx_export)


# -- the code these paths replaced ---------------------------------------------------------------
def old_upsample_forward(self: Upsample, x: torch.Tensor) -> torch.Tensor:
    return upfirdn2d(x, self.kernel_1d, up=self.factor, pad=self.pad, gain=self.factor**2, impl=self.impl)


def old_weight_modulation_pays(self: ModulatedConv2d, x: torch.Tensor, s: torch.Tensor | None = None) -> bool:
    hw = x.shape[2] * x.shape[3]
    return self.weight.numel() <= hw * (self.in_channel + self.out_channel * (4 if self.upsample else 1))


def old_generator(g: StyleGAN2Generator) -> StyleGAN2Generator:
    """A copy of ``g`` that runs the replaced code."""
    old = copy.deepcopy(g)
    for m in old.modules():
        if isinstance(m, Upsample):
            m.forward = types.MethodType(old_upsample_forward, m)  # type: ignore[method-assign]
        elif isinstance(m, ModulatedConv2d):
            m._weight_modulation_pays = types.MethodType(old_weight_modulation_pays, m)  # type: ignore[method-assign]
    return old


def tiny_generator(seed: int = 0, resolution: int = 32) -> StyleGAN2Generator:
    """Wide enough that the old cost rule modulates weights at 16 and 32 px; noise strengths and
    biases non-zero, so the noise maps and bias terms count."""
    torch.manual_seed(seed)
    g = StyleGAN2Generator(resolution, 16, 2, 1, channel_max=16, impl="ref")
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, p in g.named_parameters():
            if name.endswith("noise.weight") or name.endswith("activate.bias") or name.endswith("to_rgbs.0.bias"):
                p.copy_(torch.randn(p.shape, generator=gen) * 0.3)
    return g.eval()


def latents(g: StyleGAN2Generator, n: int = 1, seed: int = 3) -> torch.Tensor:
    return torch.randn(n, g.n_styles, g.style_dim, generator=torch.Generator().manual_seed(seed))


# -- ToRGB's skip upsampling: upfirdn2d's reference arithmetic with its filter made once ---------
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("channels_last", [False, True])
def test_skip_upsampling_equals_the_upfirdn2d_reference_bit_for_bit(dtype: torch.dtype, channels_last: bool) -> None:
    up = Upsample(BLUR_KERNEL).to(dtype)
    gen = torch.Generator().manual_seed(0)
    for shape in ((2, 3, 4, 4), (1, 3, 7, 5), (1, 5, 6, 6)):
        x = torch.randn(shape, generator=gen, dtype=dtype)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        x.requires_grad_(True)
        want = upfirdn2d_ref(x, up.kernel_1d, up=2, pad=up.pad, gain=4)
        got = up(x)
        assert got.shape == want.shape and torch.equal(got, want)
        dy = torch.randn(want.shape, generator=gen, dtype=dtype)
        (g_want,) = torch.autograd.grad(want, x, dy)
        (g_got,) = torch.autograd.grad(got, x, dy)
        assert torch.equal(g_got, g_want)
    assert up._depthwise is not None and up._depthwise.dtype == dtype  # the cached path ran
    with pytest.raises(ValueError, match="impl='cuda' needs a CUDA tensor"):
        Upsample(BLUR_KERNEL, impl="cuda")(torch.zeros(1, 3, 4, 4))


# -- inference: the optimised generator, bit for bit ---------------------------------------------
@pytest.mark.parametrize("batch", [1, 2])
def test_inference_output_is_unchanged_bit_for_bit(batch: int) -> None:
    g = optimize_generator(tiny_generator()).requires_grad_(False)
    old = old_generator(g)
    wp = latents(g, batch)
    noise = g.make_noise(batch, torch.Generator().manual_seed(5))
    with torch.no_grad():
        for _ in range(2):  # the second call reads the filters the first one made
            assert torch.equal(g.synthesize(wp), old.synthesize(wp))
            assert torch.equal(g.synthesize(wp, noise=noise), old.synthesize(wp, noise=noise))
    with torch.inference_mode():  # noise made here is an inference tensor (no version counter)
        noise_inf = g.make_noise(batch, torch.Generator().manual_seed(6))
        assert torch.equal(g.synthesize(wp, noise=noise_inf), old.synthesize(wp, noise=noise_inf))
        assert torch.equal(g.synthesize(wp), old.synthesize(wp))


# -- training: what train and train_gan run is the old code's arithmetic, gradients included -----
@pytest.mark.parametrize("batch", [1, 2])
def test_training_forward_and_parameter_gradients_are_unchanged_bit_for_bit(batch: int) -> None:
    g = tiny_generator(2).train()
    old = old_generator(g)
    wp = latents(g, batch)
    results = []
    for net in (g, old):
        net.zero_grad(set_to_none=True)
        img = net.synthesize(wp.clone())
        (img.square().mean() + img.mean()).backward()
        results.append((img.detach(), {k: p.grad.clone() for k, p in net.named_parameters() if p.grad is not None}))
    (img_new, grads_new), (img_old, grads_old) = results
    assert torch.equal(img_new, img_old)
    assert grads_new.keys() == grads_old.keys() and any("noise.weight" in k for k in grads_new)
    for k in grads_new:
        assert torch.equal(grads_new[k], grads_old[k]), k


# -- a latent search (psp_pulse): activations modulated, to a stated tolerance -------------------
def test_a_latent_search_modulates_activations_within_tolerance() -> None:
    g = optimize_generator(tiny_generator(3)).requires_grad_(False)
    old = old_generator(g)
    acts = copy.deepcopy(g)
    for m in acts.modules():
        if isinstance(m, ModulatedConv2d):
            m.fused = False
    wp = latents(g)
    out = {}
    for name, net in (("new", g), ("old", old), ("activations", acts)):
        w = wp.clone().requires_grad_(True)
        img = net.synthesize(w)
        (grad,) = torch.autograd.grad(img.square().mean(), w)
        out[name] = (img.detach(), grad)
    # The old rule modulated weights somewhere in this network (else the comparison shows nothing).
    assert not torch.equal(out["old"][0], out["activations"][0])
    assert torch.equal(out["new"][0], out["activations"][0]) and torch.equal(out["new"][1], out["activations"][1])
    assert (out["new"][0] - out["old"][0]).abs().max() <= 1e-5
    assert (out["new"][1] - out["old"][1]).norm() <= 1e-4 * out["old"][1].norm()
    with torch.no_grad():  # without a gradient the old rule still decides
        assert torch.equal(g.synthesize(wp), old.synthesize(wp))


def test_a_short_latent_search_lands_where_the_old_path_lands() -> None:
    """psp_pulse's objective (downscale MSE + anchor), descended for a few steps (plain gradient
    steps: ``torch.optim`` imports torch._dynamo on first use, seconds)."""
    g = optimize_generator(tiny_generator(4)).requires_grad_(False)
    old = old_generator(g)
    target = torch.rand(1, 3, 8, 8, generator=torch.Generator().manual_seed(9))
    start = latents(g, seed=10) * 0.5
    kept = []
    for net in (g, old):
        w = start.clone().requires_grad_(True)
        losses = []
        for _ in range(8):
            img = net.synthesize(w)
            small = F.interpolate(img, size=(8, 8), mode="bicubic", align_corners=False, antialias=True)
            loss = (small - target).square().mean() + 0.05 * (w - start).square().mean()
            (grad,) = torch.autograd.grad(loss, w)
            losses.append(loss.item())
            with torch.no_grad():
                w -= 1.0 * grad
        assert losses[-1] < 0.6 * losses[0]  # the search moved
        with torch.no_grad():
            kept.append(net.synthesize(w).clamp(0, 1))
    mse = (kept[0] - kept[1]).square().mean().item()
    assert mse == 0.0 or 10 * math.log10(1 / mse) >= 60, mse


# -- building on the meta device (the weight loaders' shape check) -------------------------------
class _MetaWork(TorchFunctionMode):
    """Records torch functions that produced a meta tensor, except allocation and moves."""

    FREE = {"empty", "zeros", "full", "ones", "to", "uniform_", "zero_", "fill_", "__get__", "__set__",
            "requires_grad_", "detach", "size", "dim", "__setstate__"}

    def __init__(self) -> None:
        super().__init__()
        self.calls: set[str] = set()

    def __torch_function__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        out = func(*args, **(kwargs or {}))
        name = getattr(func, "__name__", str(func))
        results = out if isinstance(out, (tuple, list)) else (out,)
        if name not in self.FREE and any(isinstance(t, torch.Tensor) and t.is_meta for t in results):
            self.calls.add(name)
        return out


def test_building_on_the_meta_device_runs_no_randomness_or_arithmetic_there() -> None:
    with _MetaWork() as probe, torch.device("meta"):
        torch.randn(2)  # the probe sees what the old constructors did
    assert probe.calls == {"randn"}

    with _MetaWork() as probe, torch.device("meta"):
        g = StyleGAN2Generator(64, 16, 2, 1, channel_max=16)
        enc = GradualStyleEncoder(g.n_styles, 16, backbone="ir_se_light", input_size=64, head_channels=16)
    assert not probe.calls & {"randn", "normal_", "outer", "div_", "div", "__truediv__", "mul", "__mul__", "sum"}, \
        probe.calls
    cpu = StyleGAN2Generator(64, 16, 2, 1, channel_max=16)
    shapes = {k: (tuple(v.shape), v.dtype) for k, v in g.state_dict().items()}
    assert shapes == {k: (tuple(v.shape), v.dtype) for k, v in cpu.state_dict().items()}
    assert all(t.is_meta for t in [*g.state_dict().values(), *enc.state_dict().values()])
    assert torch.equal(cpu.to_rgbs[0].upsample.kernel, StyleGAN2Generator(64, 16, 2, 1, channel_max=16)
                       .to_rgbs[0].upsample.kernel)


# -- ONNX export checks without importing torch.onnx ---------------------------------------------
def test_export_checks_do_not_import_torch_onnx(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delitem(sys.modules, "torch.onnx", raising=False)
    assert in_onnx_export() is False
    assert "torch.onnx" not in sys.modules
    monkeypatch.setitem(sys.modules, "torch.onnx", types.SimpleNamespace(is_in_onnx_export=lambda: True))
    assert in_onnx_export() is True
