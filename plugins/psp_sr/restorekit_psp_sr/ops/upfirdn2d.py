"""``upfirdn2d``: upsample by zero insertion, pad, FIR-filter, downsample — in one op.

Semantics (same as scipy's ``upfirdn`` per axis, and the StyleGAN2 op): along each axis the
input is upsampled to ``n·up`` samples by inserting ``up-1`` zeros after every sample, padded
with ``pad0`` zeros in front and ``pad1`` behind (negative pads crop), convolved with the filter
(a true convolution, i.e. the filter is flipped; "valid" mode), then every ``down``-th sample is
kept. Output size per axis: ``(n·up + pad0 + pad1 - k) // down + 1``.

The filter is 2-D ``[kh, kw]`` or 1-D ``[k]``, which means the separable filter ``f ⊗ f``;
the result is multiplied by ``gain``. The reference path uses depthwise convolutions only
(strided convs instead of discarding samples, transposed convs instead of multiplying inserted
zeros) and supports gradients of any order, also w.r.t. the filter. The CUDA path is a gather kernel; its backward is the same op with the flipped filter
and up/down swapped, so it is differentiable to any order w.r.t. the input.
"""

from __future__ import annotations

from typing import Sequence, Union

import torch
import torch.nn.functional as F
from torch import Tensor

from ._ext import Impl, use_cuda

IntPair = Union[int, Sequence[int]]


def _pair(v: IntPair, what: str) -> tuple[int, int]:
    if isinstance(v, int):
        return v, v
    t = tuple(int(a) for a in v)
    if len(t) != 2:
        raise ValueError(f"upfirdn2d: {what} must be an int or (x, y), got {v!r}")
    return t  # type: ignore[return-value]


def _pads(pad: IntPair) -> tuple[int, int, int, int]:
    """``pad`` as ``(x0, x1, y0, y1)`` from an int, ``(p0, p1)`` or a 4-tuple."""
    if isinstance(pad, int):
        return pad, pad, pad, pad
    t = tuple(int(a) for a in pad)
    if len(t) == 2:
        return t[0], t[1], t[0], t[1]
    if len(t) == 4:
        return t  # type: ignore[return-value]
    raise ValueError(f"upfirdn2d: pad must be an int, (p0, p1) or (x0, x1, y0, y1); got {pad!r}")


def _filter_size(f: Tensor) -> tuple[int, int]:
    if f.ndim == 1:
        return f.shape[0], f.shape[0]
    if f.ndim == 2:
        return f.shape[1], f.shape[0]
    raise ValueError(f"upfirdn2d: filter must be 1-D (separable) or 2-D, got shape {tuple(f.shape)}")


def out_size(n: int, up: int, down: int, p0: int, p1: int, k: int) -> int:
    """Samples along one axis after upfirdn."""
    return (n * up + p0 + p1 - k) // down + 1


def _pad_axis(x: Tensor, axis: int, lo: int, hi: int) -> Tensor:
    """Zero-pad (positive) or crop (negative) ``x`` along ``axis`` (2: rows, 3: columns)."""
    if lo == 0 and hi == 0:
        return x
    if lo < 0 or hi < 0:
        n = x.shape[axis]
        start, stop = max(-lo, 0), n - max(-hi, 0)
        x = x.narrow(axis, start, max(stop - start, 0))
        lo, hi = max(lo, 0), max(hi, 0)
    if lo or hi:
        x = F.pad(x, [0, 0, lo, hi] if axis == 2 else [lo, hi, 0, 0])
    return x


def _pad2(x: Tensor, px0: int, px1: int, py0: int, py1: int) -> Tensor:
    if min(px0, px1, py0, py1) >= 0:
        return F.pad(x, [px0, px1, py0, py1]) if (px0 or px1 or py0 or py1) else x
    return _pad_axis(_pad_axis(x, 2, py0, py1), 3, px0, px1)


def _fir(x: Tensor, f2: Tensor, up: tuple[int, int], down: tuple[int, int],
         pad: tuple[int, int, int, int]) -> Tensor:
    """upfirdn with a 2-D filter ``f2`` (``kh×kw``, unflipped) as one depthwise conv."""
    (upx, upy), (downx, downy) = up, down
    px0, px1, py0, py1 = pad
    c = x.shape[1]
    kh, kw = f2.shape
    if upx > 1 or upy > 1:
        # Transposed conv = zero insertion + full convolution; shift/crop the result to the pads.
        w = f2.reshape(1, 1, kh, kw).expand(c, 1, kh, kw)
        y = F.conv_transpose2d(x, w, stride=(upy, upx), groups=c)
        y = _pad2(y, px0 - kw + 1, px1 + upx - kw, py0 - kh + 1, py1 + upy - kh)
        return y[:, :, ::downy, ::downx] if (downx > 1 or downy > 1) else y
    w = f2.flip(0, 1).reshape(1, 1, kh, kw).expand(c, 1, kh, kw)
    if px0 == px1 >= 0 and py0 == py1 >= 0:
        # Symmetric zero padding inside the conv: no padded copy of the input (large at 1024 px).
        return F.conv2d(x, w, stride=(downy, downx), padding=(py0, px0), groups=c)
    return F.conv2d(_pad2(x, px0, px1, py0, py1), w, stride=(downy, downx), groups=c)


def upfirdn2d_ref(x: Tensor, f: Tensor, *, up: IntPair = 1, down: IntPair = 1, pad: IntPair = 0,
                  gain: float = 1.0) -> Tensor:
    """Pure-PyTorch upfirdn2d on ``x`` shaped ``N×C×H×W``; see the module docstring.

    Depthwise (``groups=C``) convs: filtering as a strided conv (no discarded samples),
    upsampling as a strided transposed conv (no multiplications by inserted zeros). Short
    separable filters run as one 2-D depthwise pass — on CPU that beats two 1-D passes (4×4:
    ~3× faster) and is ~30× faster than single-channel convs on ``(N·C)×1×H×W``; separable
    filters longer than 6 taps run as two 1-D passes.
    """
    upx, upy = _pair(up, "up")
    downx, downy = _pair(down, "down")
    px0, px1, py0, py1 = _pads(pad)
    kw, kh = _filter_size(f)
    h, w = x.shape[2], x.shape[3]
    if out_size(h, upy, downy, py0, py1, kh) <= 0 or out_size(w, upx, downx, px0, px1, kw) <= 0:
        raise ValueError(f"upfirdn2d: input {h}×{w} with filter {kh}×{kw}, up {up}, down {down}, "
                         f"pad {pad} leaves an empty output")
    f = f.to(x.dtype)
    if f.ndim == 1 and f.shape[0] > 6:
        y = _fir(x, (f * gain).reshape(-1, 1), (1, upy), (1, downy), (0, 0, py0, py1))
        return _fir(y, f.reshape(1, -1), (upx, 1), (downx, 1), (px0, px1, 0, 0))
    f2 = torch.outer(f, f) if f.ndim == 1 else f
    return _fir(x, f2 * gain, (upx, upy), (downx, downy), (px0, px1, py0, py1))


class _Upfirdn2dCuda(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, f: Tensor, params: tuple[int, ...], gain: float, ext) -> Tensor:  # type: ignore[override]
        upx, upy, downx, downy, px0, px1, py0, py1 = params
        y = ext.upfirdn2d(x.contiguous(), f, upx, upy, downx, downy, px0, px1, py0, py1, gain)
        ctx.save_for_backward(f)
        ctx.meta = (params, gain, ext, x.shape[2], x.shape[3])
        return y

    @staticmethod
    def backward(ctx, dy: Tensor):  # type: ignore[override]
        (f,) = ctx.saved_tensors
        params, gain, ext, h, w = ctx.meta
        gp = grad_params(params, (h, w), (dy.shape[2], dy.shape[3]), tuple(f.shape))
        dx = _Upfirdn2dCuda.apply(dy, f.flip(0, 1).contiguous(), gp, gain, ext)
        return dx, None, None, None, None


def grad_params(params: tuple[int, ...], in_hw: tuple[int, int], out_hw: tuple[int, int],
                k_hw: tuple[int, int]) -> tuple[int, int, int, int, int, int, int, int]:
    """``(upx, upy, downx, downy, px0, px1, py0, py1)`` of the upfirdn whose output is the
    input gradient: the flipped filter, up and down swapped, pads chosen so the size is the
    input's (``p0' = k − p0 − 1``; ``p1'`` closes the length)."""
    upx, upy, downx, downy, px0, px1, py0, py1 = params
    (h, w), (oh, ow), (kh, kw) = in_hw, out_hw, k_hw
    return (downx, downy, upx, upy,
            kw - px0 - 1, w * upx - ow * downx + px0 - upx + 1,
            kh - py0 - 1, h * upy - oh * downy + py0 - upy + 1)


def upfirdn2d(x: Tensor, f: Tensor, *, up: IntPair = 1, down: IntPair = 1, pad: IntPair = 0,
              gain: float = 1.0, impl: Impl = "auto") -> Tensor:
    """Upsample, pad, FIR-filter and downsample ``x`` (``N×C×H×W``).

    ``up``/``down``: int or ``(x, y)``; ``pad``: int, ``(p0, p1)`` (both axes) or
    ``(x0, x1, y0, y1)``; ``f``: 1-D (separable) or 2-D filter. The CUDA kernel does not give
    gradients w.r.t. ``f``: a filter that requires grad takes the reference path.
    """
    if x.ndim != 4:
        raise ValueError(f"upfirdn2d: expected N×C×H×W input, got shape {tuple(x.shape)}")
    _filter_size(f)
    upx, upy = _pair(up, "up")
    downx, downy = _pair(down, "down")
    if min(upx, upy, downx, downy) < 1:
        raise ValueError(f"upfirdn2d: up and down must be ≥ 1, got up={up}, down={down}")
    ext = use_cuda("upfirdn2d", x, impl)
    if ext is None or f.requires_grad:
        return upfirdn2d_ref(x, f, up=up, down=down, pad=pad, gain=gain)
    px0, px1, py0, py1 = _pads(pad)
    f2 = torch.outer(f, f) if f.ndim == 1 else f
    acc = torch.float64 if x.dtype == torch.float64 else torch.float32
    f2 = f2.to(device=x.device, dtype=acc).contiguous()
    kh, kw = f2.shape
    if out_size(x.shape[2], upy, downy, py0, py1, kh) <= 0 or out_size(x.shape[3], upx, downx, px0, px1, kw) <= 0:
        raise ValueError(f"upfirdn2d: input {tuple(x.shape[2:])} with filter {kh}×{kw}, up {up}, "
                         f"down {down}, pad {pad} leaves an empty output")
    return _Upfirdn2dCuda.apply(x, f2, (upx, upy, downx, downy, px0, px1, py0, py1), float(gain), ext)
