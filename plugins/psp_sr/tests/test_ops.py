"""StyleGAN2 ops: reference paths against plain-PyTorch compositions, gradients, impl handling.

GPU tests (kernel vs reference) run only where CUDA is available.
"""

from __future__ import annotations

import math
import warnings

import pytest
import torch
import torch.nn.functional as F

from restorekit_psp_sr.ops import (OpsBuildError, bias_act_ref, fused_bias_act, upfirdn2d,
                                   upfirdn2d_ref)
from restorekit_psp_sr.ops import _ext

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def naive_upfirdn2d(x, f, up=(1, 1), down=(1, 1), pad=(0, 0, 0, 0), gain=1.0):
    """Literal definition: zero insertion, pad/crop, true 2-D convolution, decimation."""
    (upx, upy), (downx, downy) = up, down
    px0, px1, py0, py1 = pad
    n, c, h, w = x.shape
    f2 = torch.outer(f, f) if f.ndim == 1 else f
    z = x.new_zeros(n, c, h * upy, w * upx)
    z[:, :, ::upy, ::upx] = x
    z = F.pad(z, [px0, px1, py0, py1])
    y = F.conv2d(z.reshape(n * c, 1, *z.shape[2:]), (f2 * gain).flip(0, 1)[None, None].to(x))
    y = y[:, :, ::downy, ::downx]
    return y.reshape(n, c, *y.shape[2:])


CASES = [
    # (filter shape, up, down, pad)
    ((4,), (1, 1), (1, 1), (1, 1, 1, 1)),      # the StyleGAN2 blur
    ((4,), (2, 2), (1, 1), (2, 1, 2, 1)),      # ToRGB skip upsampling
    ((4,), (1, 1), (2, 2), (1, 1, 1, 1)),      # downsampling (encoders, discriminators)
    ((3,), (2, 2), (2, 2), (1, 1, 1, 1)),      # odd length, up and down
    ((5,), (1, 1), (2, 2), (2, 2, 2, 2)),
    ((3, 4), (2, 1), (1, 2), (0, 2, 1, 1)),    # non-separable, different per axis
    ((2, 3), (1, 1), (1, 1), (-1, 2, 3, -2)),  # negative pads crop
    ((4, 4), (2, 2), (1, 1), (1, 2, 2, 1)),
    ((1,), (3, 2), (2, 1), (0, 0, 0, 0)),
    ((7,), (2, 2), (2, 1), (3, 3, 3, 3)),      # long separable filter: two 1-D passes
    ((8,), (1, 1), (1, 1), (3, 4, 3, 4)),
]


@pytest.mark.parametrize("fshape,up,down,pad", CASES)
def test_upfirdn2d_ref_matches_definition(fshape, up, down, pad):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 3, 9, 11, generator=g, dtype=torch.float64)
    f = torch.randn(*fshape, generator=g, dtype=torch.float64)
    want = naive_upfirdn2d(x, f, up, down, pad, gain=1.7)
    got = upfirdn2d_ref(x, f, up=up, down=down, pad=pad, gain=1.7)
    assert got.shape == want.shape
    assert torch.allclose(got, want, atol=1e-12)
    # Public entry point on CPU takes the reference path.
    assert torch.allclose(upfirdn2d(x, f, up=up, down=down, pad=pad, gain=1.7), want, atol=1e-12)


def test_upfirdn2d_output_size_and_scipy_convention():
    # A unit impulse through a length-3 filter returns the filter itself (true convolution).
    x = torch.zeros(1, 1, 1, 5, dtype=torch.float64)
    x[..., 2] = 1
    f = torch.tensor([[1.0, 2.0, 3.0]], dtype=torch.float64)
    y = upfirdn2d_ref(x, f, pad=(1, 1, 0, 0))
    assert y.flatten().tolist() == [0.0, 1.0, 2.0, 3.0, 0.0]
    # Output size (n·up + p0 + p1 − k) // down + 1.
    y = upfirdn2d_ref(torch.ones(1, 1, 8, 8), torch.ones(4) / 4, up=2, pad=(2, 1), gain=4)
    assert y.shape[-2:] == (16, 16)
    # The StyleGAN2 ×2 upsampler preserves a constant image away from the borders.
    assert torch.allclose(y[..., 2:-2, 2:-2], torch.ones(12, 12))


def test_upfirdn2d_empty_output_is_an_error():
    with pytest.raises(ValueError, match="empty output"):
        upfirdn2d(torch.ones(1, 1, 2, 2), torch.ones(5), pad=0)


@pytest.mark.parametrize("fshape,up,down,pad", [CASES[1], CASES[2], CASES[5], CASES[6]])
def test_upfirdn2d_ref_gradcheck(fshape, up, down, pad):
    g = torch.Generator().manual_seed(2)
    x = torch.randn(1, 2, 5, 6, generator=g, dtype=torch.float64, requires_grad=True)
    f = torch.randn(*fshape, generator=g, dtype=torch.float64, requires_grad=True)
    fn = lambda x, f: upfirdn2d_ref(x, f, up=up, down=down, pad=pad, gain=2.0)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (x, f))
    assert torch.autograd.gradgradcheck(fn, (x, f))


@pytest.mark.parametrize("fshape,up,down,pad", CASES)
def test_cuda_backward_formula_on_cpu(fshape, up, down, pad):
    # The CUDA backward is upfirdn2d with grad_params(); check that identity with the reference.
    from restorekit_psp_sr.ops.upfirdn2d import grad_params

    g = torch.Generator().manual_seed(7)
    x = torch.randn(1, 2, 9, 11, generator=g, dtype=torch.float64, requires_grad=True)
    f = torch.randn(*fshape, generator=g, dtype=torch.float64)
    f2 = torch.outer(f, f) if f.ndim == 1 else f
    y = upfirdn2d_ref(x, f2, up=up, down=down, pad=pad)
    dy = torch.randn(y.shape, generator=g, dtype=torch.float64)
    (gx,) = torch.autograd.grad(y, x, dy)
    gp = grad_params((*up, *down, *pad), (9, 11), tuple(y.shape[2:]), tuple(f2.shape))
    got = upfirdn2d_ref(dy, f2.flip(0, 1), up=gp[0:2], down=gp[2:4], pad=gp[4:8])
    assert got.shape == gx.shape and torch.allclose(got, gx, atol=1e-12)


def test_fused_bias_act_matches_composition():
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, 5, 4, 3, generator=g)
    b = torch.randn(5, generator=g)
    want = F.leaky_relu(x + b.view(1, -1, 1, 1), 0.2) * math.sqrt(2)
    assert torch.allclose(fused_bias_act(x, b), want, atol=1e-6)
    assert torch.allclose(fused_bias_act(x, b, act="linear"), x + b.view(1, -1, 1, 1), atol=1e-6)
    clamped = fused_bias_act(x, b, clamp=0.5)
    assert torch.allclose(clamped, want.clamp(-0.5, 0.5), atol=1e-6)
    # Bias along another dim (e.g. N×C linear outputs, or channels-last).
    b3 = torch.randn(3, generator=g)
    want3 = F.leaky_relu(x + b3, 0.2) * math.sqrt(2)
    assert torch.allclose(fused_bias_act(x, b3, dim=-1), want3, atol=1e-6)
    y = fused_bias_act(x, None, alpha=0.0, gain=1.0)
    assert torch.equal(y, F.relu(x))
    with pytest.raises(ValueError, match="does not match"):
        fused_bias_act(x, torch.zeros(4))
    with pytest.raises(ValueError, match="act must be"):
        fused_bias_act(x, b, act="gelu")  # type: ignore[arg-type]


def test_bias_act_ref_gradcheck():
    g = torch.Generator().manual_seed(4)
    x = torch.randn(2, 4, 3, 3, generator=g, dtype=torch.float64)
    # Keep pre-activations away from the kinks at 0 and ±clamp so finite differences are valid.
    x = x + 0.05 * x.sign()
    x.requires_grad_(True)
    b = torch.zeros(4, dtype=torch.float64, requires_grad=True)
    fn = lambda x, b: bias_act_ref(x, b, clamp=1.7)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (x, b))
    assert torch.autograd.gradgradcheck(fn, (x, b))


def test_impl_selection_on_cpu():
    x = torch.randn(1, 2, 4, 4)
    with pytest.raises(ValueError, match="needs a CUDA tensor"):
        upfirdn2d(x, torch.ones(2), impl="cuda")
    with pytest.raises(ValueError, match="needs a CUDA tensor"):
        fused_bias_act(x, impl="cuda")
    with pytest.raises(ValueError, match="impl must be"):
        fused_bias_act(x, impl="triton")  # type: ignore[arg-type]
    # CPU tensors never trigger a build.
    _ext.reset_for_tests()
    fused_bias_act(x, impl="auto")
    upfirdn2d(x, torch.ones(2), impl="auto")
    assert not _ext._modules and not _ext._failures


class _FakeCuda:
    is_cuda = True
    device = "cuda:0"


def test_failed_build_falls_back_once_under_auto_and_raises_under_cuda(monkeypatch):
    _ext.reset_for_tests()
    calls = []

    def broken(name):
        calls.append(name)
        raise OpsBuildError("nvcc not found")

    monkeypatch.setattr(_ext, "_build", broken)
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        assert _ext.use_cuda("upfirdn2d", _FakeCuda(), "auto") is None
        assert _ext.use_cuda("upfirdn2d", _FakeCuda(), "auto") is None
    msgs = [str(w.message) for w in rec]
    assert len(msgs) == 1 and "cannot build the CUDA op 'upfirdn2d'" in msgs[0] and "reference" in msgs[0]
    with pytest.raises(OpsBuildError, match="cannot build the CUDA op 'upfirdn2d': nvcc not found"):
        _ext.use_cuda("upfirdn2d", _FakeCuda(), "cuda")
    assert calls == ["upfirdn2d"]  # the failure is remembered, not retried
    _ext.reset_for_tests()


# --------------------------------------------------------------------------- GPU only

@cuda
@pytest.mark.parametrize("fshape,up,down,pad", CASES)
def test_upfirdn2d_cuda_matches_ref(fshape, up, down, pad):
    g = torch.Generator().manual_seed(5)
    x = torch.randn(2, 3, 17, 13, generator=g).cuda().requires_grad_(True)
    f = torch.randn(*fshape, generator=g).cuda()
    y_ref = upfirdn2d(x, f, up=up, down=down, pad=pad, gain=1.3, impl="ref")
    y_cu = upfirdn2d(x, f, up=up, down=down, pad=pad, gain=1.3, impl="cuda")
    assert y_cu.shape == y_ref.shape
    assert (y_cu - y_ref).abs().max().item() < 1e-4
    dy = torch.randn_like(y_ref).requires_grad_(True)
    (gx_ref,) = torch.autograd.grad(y_ref, x, dy, create_graph=True)
    (gx_cu,) = torch.autograd.grad(y_cu, x, dy, create_graph=True)
    assert (gx_cu - gx_ref).abs().max().item() < 1e-4
    # Double backward through the kernel's backward. The op is linear in x, so the gradient of
    # grad_x w.r.t. x is always None; differentiate <grad_x, v> w.r.t. dy instead (= the op applied to v).
    v = torch.randn_like(gx_ref)
    (hr,) = torch.autograd.grad((gx_ref * v).sum(), dy)
    (hc,) = torch.autograd.grad((gx_cu * v).sum(), dy)
    assert hr is not None and hc is not None and hc.shape == hr.shape == y_ref.shape
    assert hr.abs().max().item() > 0
    assert (hc - hr).abs().max().item() < 1e-4


@cuda
def test_upfirdn2d_cuda_float64_gradcheck():
    x = torch.randn(1, 2, 6, 5, dtype=torch.float64, device="cuda", requires_grad=True)
    f = torch.randn(3, 4, dtype=torch.float64, device="cuda")
    fn = lambda x: upfirdn2d(x, f, up=2, down=(1, 2), pad=(1, 0, 2, 1), impl="cuda")  # noqa: E731
    assert torch.autograd.gradcheck(fn, (x,))
    assert torch.autograd.gradgradcheck(fn, (x,))


@cuda
def test_fused_bias_act_cuda_matches_ref():
    g = torch.Generator().manual_seed(6)
    x = torch.randn(3, 8, 9, 7, generator=g).cuda().requires_grad_(True)
    b = torch.randn(8, generator=g).cuda().requires_grad_(True)
    for kwargs in ({}, {"clamp": 0.7}, {"act": "linear", "gain": 0.5}):
        y_ref = fused_bias_act(x, b, impl="ref", **kwargs)
        y_cu = fused_bias_act(x, b, impl="cuda", **kwargs)
        assert (y_cu - y_ref).abs().max().item() < 1e-4
        dy = torch.randn_like(y_ref)
        gr = torch.autograd.grad(y_ref, (x, b), dy, create_graph=True)
        gc = torch.autograd.grad(y_cu, (x, b), dy, create_graph=True)
        for a, c in zip(gr, gc):
            assert (a - c).abs().max().item() < 1e-4
        # Second order: d/d(dy) of <grad_x, v> is the same mask on both paths.
        dy.requires_grad_(True)
        gr = torch.autograd.grad(y_ref, x, dy, create_graph=True)[0]
        gc = torch.autograd.grad(y_cu, x, dy, create_graph=True)[0]
        v = torch.randn_like(gr)
        (hr,) = torch.autograd.grad((gr * v).sum(), dy)
        (hc,) = torch.autograd.grad((gc * v).sum(), dy)
        assert (hr - hc).abs().max().item() < 1e-4
