"""Fused bias + activation: ``clamp(gain · act(x + b), -c, c)``.

StyleGAN2's layers add a per-channel bias and apply leaky ReLU (slope 0.2) with gain √2,
which keeps activations at unit variance. ``act="linear"`` is the same op with slope 1.
The reference is a composition of PyTorch ops (any order of gradients); the CUDA kernel does
the whole thing in one pass, and its backward is a second kernel (a mask on the gradient)
whose own backward is that mask again, so second-order gradients work on both paths.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from ._ext import Impl, use_cuda

SQRT2 = math.sqrt(2.0)
Act = Literal["lrelu", "linear"]


def _alpha_gain(act: str, alpha: float | None, gain: float | None) -> tuple[float, float]:
    if act == "lrelu":
        return (0.2 if alpha is None else float(alpha)), (SQRT2 if gain is None else float(gain))
    if act == "linear":
        return 1.0, (1.0 if gain is None else float(gain))
    raise ValueError(f"fused_bias_act: act must be 'lrelu' or 'linear', got {act!r}")


def _bias_view(b: Tensor, x: Tensor, dim: int) -> Tensor:
    if b.ndim != 1 or b.shape[0] != x.shape[dim]:
        raise ValueError(f"fused_bias_act: bias of shape {tuple(b.shape)} does not match "
                         f"dimension {dim} of input {tuple(x.shape)}")
    return b.reshape([-1 if i == dim else 1 for i in range(x.ndim)])


def bias_act_ref(x: Tensor, b: Tensor | None = None, *, dim: int = 1, alpha: float = 0.2,
                 gain: float = SQRT2, clamp: float | None = None) -> Tensor:
    """Pure-PyTorch ``clamp(gain · leaky_relu(x + b, alpha))``; differentiable to any order."""
    if b is not None:
        x = x + _bias_view(b, x, dim)
    if alpha != 1.0:
        x = F.leaky_relu(x, alpha)
    if gain != 1.0:
        x = x * gain
    if clamp is not None:
        x = x.clamp(-clamp, clamp)
    return x


class _BiasActGrad(torch.autograd.Function):
    """``dx = dy · act'(y)``: a piecewise-constant mask read off the forward output ``y``."""

    @staticmethod
    def forward(ctx, dy: Tensor, y: Tensor, alpha: float, gain: float, clamp: float, ext) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(y)
        ctx.params = (alpha, gain, clamp, ext)
        return ext.bias_act_grad(dy.contiguous(), y, alpha, gain, clamp)

    @staticmethod
    def backward(ctx, ddx: Tensor):  # type: ignore[override]
        (y,) = ctx.saved_tensors
        alpha, gain, clamp, ext = ctx.params
        # The mask is constant almost everywhere: d(dx)/d(y) = 0, d(dx)/d(dy) = the mask.
        return _BiasActGrad.apply(ddx, y, alpha, gain, clamp, ext), None, None, None, None, None


class _BiasActCuda(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, b: Tensor | None, dim: int, alpha: float, gain: float, clamp: float, ext) -> Tensor:  # type: ignore[override]
        x = x.contiguous()
        bb = b.contiguous() if b is not None else x.new_empty(0)
        y = ext.bias_act(x, bb, dim, alpha, gain, clamp)
        ctx.save_for_backward(y)
        ctx.params = (x.ndim, dim, b is not None, alpha, gain, clamp, ext)
        return y

    @staticmethod
    def backward(ctx, dy: Tensor):  # type: ignore[override]
        (y,) = ctx.saved_tensors
        ndim, dim, has_b, alpha, gain, clamp, ext = ctx.params
        dx = _BiasActGrad.apply(dy, y, alpha, gain, clamp, ext)
        db = None
        if has_b and ctx.needs_input_grad[1]:
            db = dx.sum([i for i in range(ndim) if i != dim])
        return dx, db, None, None, None, None, None


def fused_bias_act(x: Tensor, b: Tensor | None = None, *, dim: int = 1, act: Act = "lrelu",
                   alpha: float | None = None, gain: float | None = None,
                   clamp: float | None = None, impl: Impl = "auto") -> Tensor:
    """``clamp(gain · act(x + b))`` with ``b`` broadcast along ``dim``.

    ``act="lrelu"`` defaults to slope 0.2 and gain √2 (StyleGAN2); ``"linear"`` to gain 1.
    ``clamp`` (if given) limits the result to ``[-clamp, clamp]``. ``impl``: ``"ref"`` the
    PyTorch composition, ``"cuda"`` the kernel (error if unavailable), ``"auto"`` the kernel on
    CUDA tensors when it builds.
    """
    alpha_, gain_ = _alpha_gain(act, alpha, gain)
    if clamp is not None and clamp < 0:
        raise ValueError(f"fused_bias_act: clamp must be ≥ 0, got {clamp}")
    dim = dim % x.ndim
    ext = use_cuda("bias_act", x, impl)
    if ext is None:
        return bias_act_ref(x, b, dim=dim, alpha=alpha_, gain=gain_, clamp=clamp)
    if b is not None:
        _bias_view(b, x, dim)  # shape check with the same message as the reference
        b = b.to(x.dtype)
    return _BiasActCuda.apply(x, b, dim, alpha_, gain_, -1.0 if clamp is None else float(clamp), ext)


class FusedLeakyReLU(torch.nn.Module):
    """Per-channel bias + leaky ReLU(0.2) × √2, with the bias named ``bias`` (rosinality)."""

    def __init__(self, channels: int, bias: bool = True, negative_slope: float = 0.2,
                 scale: float = SQRT2, impl: Impl = "auto") -> None:
        super().__init__()
        self.bias = torch.nn.Parameter(torch.zeros(channels)) if bias else None
        self.negative_slope = negative_slope
        self.scale = scale
        self.impl: Impl = impl

    def forward(self, x: Tensor) -> Tensor:
        return fused_bias_act(x, self.bias, alpha=self.negative_slope, gain=self.scale,
                              impl=self.impl)
