"""StyleGAN2 generator (config-f and smaller) with rosinality's module and parameter names.

The state dict of :class:`StyleGAN2Generator` has exactly the keys and shapes of
rosinality/stylegan2-pytorch's ``Generator`` (``style.1``…``style.8``, ``input.input``,
``conv1.*``, ``to_rgb1.*``, ``convs.N.*``, ``to_rgbs.N.*``, ``noises.noise_N``), so converted
official weights load without renaming. The arithmetic is StyleGAN2's; the implementation is
organised for speed:

* Modulated convs never build per-sample weights for a batch: activations are scaled by the
  style, convolved with the shared weight and scaled by the demodulation coefficients, which is
  the same function as weight modulation and exports to ONNX for any batch size. For a batch of
  one in eager mode the weight is modulated instead (cheaper: the weight is small); with the
  inference settings, only where that is fewer products and the style needs no gradient (in a
  latent search the modulated weight's gradient would cost one more convolution per layer).
* On CPU (and with ``impl="ref"``) bias, activation gain and demodulation are folded into the
  convolution where that is exact, leaving two element-wise passes per layer; on CUDA the layer
  runs conv → noise → :func:`fused_bias_act` kernel.

:meth:`StyleGAN2Generator.synthesize` follows restorekit's image convention (``[0, 1]``,
unclamped); :meth:`StyleGAN2Generator.forward` keeps rosinality's call signature and returns
``[-1, 1]`` images, for code ported from pSp.
"""

from __future__ import annotations

import math
import random
import sys
from collections.abc import Mapping
from typing import Literal, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from restorekit.interfaces import Generator

from .ops import FusedLeakyReLU, Impl, fused_bias_act, upfirdn2d
from .ops.upfirdn2d import _pad2

BLUR_KERNEL = (1, 3, 3, 1)
RESOLUTIONS = tuple(2**i for i in range(5, 11))  # 32 … 1024
#: An explicit width per resolution: int keys, or str keys as a JSON config holds them.
ChannelTable = Mapping[int, int] | Mapping[str, int]


def channels_for(resolution: int, channel_multiplier: int = 2, channel_max: int = 512) -> int:
    """Feature maps at ``resolution`` in rosinality's table, capped at ``channel_max``."""
    base = {4: 512, 8: 512, 16: 512, 32: 512, 64: 256, 128: 128, 256: 64, 512: 32, 1024: 16}
    c = base[resolution] if resolution <= 32 else base[resolution] * channel_multiplier
    return min(c, channel_max)


def _kernel2d(k: Sequence[float]) -> Tensor:
    t = torch.tensor(k, dtype=torch.float32)
    t = torch.outer(t, t)
    return t / t.sum()


def _shape_only() -> bool:
    """Whether modules are being built on the meta device: shapes without values, as the weight
    loaders build a network to check a file against its config before allocating anything."""
    return torch.get_default_device().type == "meta"


def _randn(*shape: int) -> Tensor:
    """``torch.randn(*shape)``; on the meta device an empty tensor. Meta's ``randn`` and tensor
    arithmetic run Python decompositions whose first use imports sympy and ``torch._dynamo``
    (seconds, once per process: most of a one-image ``restorekit run``), for values a
    shape-only build never has."""
    return torch.empty(*shape) if _shape_only() else torch.randn(*shape)


def _filter_kernels(kernel: Sequence[float], gain: float) -> tuple[Tensor, Tensor]:
    """``(rosinality's 2-D kernel·gain, the 1-D kernel normalised to sum 1)``; on the meta device
    computed on the CPU and moved there (see :func:`_randn`)."""
    if _shape_only():
        with torch.device("cpu"):
            k2, k1 = _filter_kernels(kernel, gain)
        return k2.to("meta"), k1.to("meta")
    k1 = torch.tensor(kernel, dtype=torch.float32)
    return _kernel2d(kernel) * gain, k1 / k1.sum()


def in_onnx_export() -> bool:
    """``torch.onnx.is_in_onnx_export()`` without importing ``torch.onnx`` when nothing has (an
    export imports it first): that import took a quarter of a second of a process's first image."""
    onnx = sys.modules.get("torch.onnx")
    return bool(onnx is not None and onnx.is_in_onnx_export())


def _exporting() -> bool:
    """Tracing, ONNX export or torch.compile: shapes must not depend on the batch size."""
    if torch.jit.is_tracing() or in_onnx_export():
        return True
    # Asking torch.compiler would import dynamo (seconds); no dynamo loaded means not compiling.
    dynamo = sys.modules.get("torch._dynamo")
    return bool(dynamo is not None and dynamo.is_compiling())


class PixelNorm(nn.Module):
    """Normalise each vector to unit root-mean-square (the mapping network's input)."""

    def forward(self, x: Tensor) -> Tensor:
        return x * torch.rsqrt(x.square().mean(dim=1, keepdim=True) + 1e-8)


class EqualLinear(nn.Module):
    """Linear layer with equalized learning rate: stored ``weight`` is scaled by
    ``lr_mul/sqrt(in)`` at run time, ``bias`` by ``lr_mul``; optional fused leaky ReLU."""

    def __init__(self, in_dim: int, out_dim: int, bias: bool = True, bias_init: float = 0.0,
                 lr_mul: float = 1.0, activation: bool = False, impl: Impl = "auto") -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(out_dim, in_dim) if _shape_only() else  # (see _randn)
                                   torch.randn(out_dim, in_dim).div_(lr_mul))
        self.bias = nn.Parameter(torch.full((out_dim,), float(bias_init))) if bias else None
        self.scale = lr_mul / math.sqrt(in_dim)
        self.lr_mul = lr_mul
        self.activation = activation
        self.impl: Impl = impl
        # Set by inference.optimize_generator: keep the scaled weight and bias between calls
        # while they need no gradient (rescaled when the parameters change).
        self.cache_weights = False
        self._cache: tuple[tuple[object, ...], tuple[Tensor, Tensor | None]] | None = None

    def _apply(self, fn, recurse=True):  # type: ignore[override]
        self._cache = None
        return super()._apply(fn, recurse)

    def _scaled(self) -> tuple[Tensor, Tensor | None]:
        """``(weight·scale, bias·lr_mul)``."""
        wt, bt = self.weight, self.bias
        cacheable = self.cache_weights and not _exporting() and not (
            torch.is_grad_enabled() and (wt.requires_grad or (bt is not None and bt.requires_grad)))
        if not cacheable:
            return wt * self.scale, bt * self.lr_mul if bt is not None else None
        key = (wt.data_ptr(), wt._version, None if bt is None else (bt.data_ptr(), bt._version),
               torch.is_inference_mode_enabled())
        cache = self._cache  # read once: another thread may replace it between a check and a use
        if cache is not None and cache[0] == key:
            return cache[1]
        scaled = (wt * self.scale, bt * self.lr_mul if bt is not None else None)
        self._cache = (key, scaled)
        return scaled

    def forward(self, x: Tensor) -> Tensor:
        weight, bias = self._scaled()
        if self.activation:
            return fused_bias_act(F.linear(x, weight), bias, impl=self.impl)
        return F.linear(x, weight, bias)

    def extra_repr(self) -> str:
        return f"{self.weight.shape[1]}, {self.weight.shape[0]}, lr_mul={self.lr_mul}, act={self.activation}"


class Blur(nn.Module):
    """FIR filter (``upfirdn2d`` with up = down = 1). ``kernel`` is rosinality's 2-D buffer;
    the computation uses the equivalent separable 1-D filter."""

    kernel: Tensor  # buffers
    kernel_1d: Tensor

    def __init__(self, kernel: Sequence[float], pad: tuple[int, int], gain: float = 1.0,
                 impl: Impl = "auto") -> None:
        super().__init__()
        k2, k1 = _filter_kernels(kernel, gain)
        self.register_buffer("kernel", k2)
        self.register_buffer("kernel_1d", k1, persistent=False)
        self.pad = pad
        self.gain = gain
        self.impl: Impl = impl
        # Set by inference.optimize_generator: off CUDA, filter with one cached depthwise conv
        # that also adds the caller's bias (the same arithmetic as upfirdn2d's reference path).
        self.cached = False
        self._depthwise: Tensor | None = None

    def _apply(self, fn, recurse=True):  # type: ignore[override]
        self._depthwise = None
        return super()._apply(fn, recurse)

    def _depthwise_weight(self, x: Tensor) -> Tensor:
        """``C×1×k×k``: the flipped separable filter times ``gain``, one copy per channel."""
        w, c = self._depthwise, x.shape[1]
        if w is None or w.shape[0] != c or w.dtype != x.dtype or w.device != x.device:
            # A plain tensor even under inference mode: it may serve a call that needs gradients later.
            with torch.inference_mode(False), torch.no_grad():
                k = self.kernel_1d.to(x.dtype)
                f2 = (torch.outer(k, k) * self.gain).flip(0, 1)
                w = f2.reshape(1, 1, *f2.shape).expand(c, 1, -1, -1).contiguous()
            self._depthwise = w
        return w

    def forward(self, x: Tensor, bias: Tensor | None = None) -> Tensor:
        """The filtered ``x``, plus ``bias`` per channel when given."""
        p0, p1 = self.pad
        if self.cached and p0 == p1 >= 0 and not x.is_cuda:
            return F.conv2d(x, self._depthwise_weight(x), bias, padding=p0, groups=x.shape[1])
        out = upfirdn2d(x, self.kernel_1d, pad=self.pad, gain=self.gain, impl=self.impl)
        # In place: the filter's output is fresh and not needed by any backward.
        return out if bias is None else out.add_(bias.reshape(1, -1, 1, 1))


class Upsample(nn.Module):
    """×2 upsampling with a FIR filter (ToRGB skip path); ``kernel`` as in rosinality.

    Off CUDA the filter runs as :func:`upfirdn2d`'s reference does it (one transposed depthwise
    convolution, then a crop), with its ``C×1×k×k`` weight made once instead of on every call:
    the same numbers, bit for bit, without the per-call filter set-up that cost more than the
    convolution itself on the 3-channel skip images.
    """

    kernel: Tensor  # buffers
    kernel_1d: Tensor

    def __init__(self, kernel: Sequence[float], factor: int = 2, impl: Impl = "auto") -> None:
        super().__init__()
        self.factor = factor
        k2, k1 = _filter_kernels(kernel, factor**2)
        self.register_buffer("kernel", k2)
        self.register_buffer("kernel_1d", k1, persistent=False)
        p = len(kernel) - factor
        self.pad = ((p + 1) // 2 + factor - 1, p // 2)
        self.impl: Impl = impl
        self._depthwise: Tensor | None = None

    def _apply(self, fn, recurse=True):  # type: ignore[override]
        self._depthwise = None
        return super()._apply(fn, recurse)

    def _depthwise_weight(self, x: Tensor) -> Tensor:
        """``C×1×k×k``: ``upfirdn2d_ref``'s filter for ``x`` (``outer(k, k)·factor²``, unflipped:
        a transposed convolution applies it as a true convolution), one copy per channel."""
        w, c = self._depthwise, x.shape[1]
        if w is None or w.shape[0] != c or w.dtype != x.dtype or w.device != x.device:
            # A plain tensor even under inference mode: it may serve a call that needs gradients later.
            with torch.inference_mode(False), torch.no_grad():
                k = self.kernel_1d.to(device=x.device, dtype=x.dtype)
                f2 = torch.outer(k, k) * self.factor**2
                w = f2.reshape(1, 1, *f2.shape).expand(c, 1, -1, -1).contiguous()
            self._depthwise = w
        return w

    def forward(self, x: Tensor) -> Tensor:
        k = self.kernel_1d.shape[0]
        if x.is_cuda or self.impl == "cuda" or k > 6 or x.ndim != 4 or _exporting():
            return upfirdn2d(x, self.kernel_1d, up=self.factor, pad=self.pad, gain=self.factor**2,
                             impl=self.impl)
        f, (p0, p1) = self.factor, self.pad
        y = F.conv_transpose2d(x, self._depthwise_weight(x), stride=f, groups=x.shape[1])
        return _pad2(y, p0 - k + 1, p1 + f - k, p0 - k + 1, p1 + f - k)


class ModulatedConv2d(nn.Module):
    """Style-modulated convolution with optional demodulation and ×2 upsampling.

    ``weight`` is ``[1, out, in, k, k]`` (rosinality); ``modulation`` maps a W vector to
    per-input-channel scales (bias initialised to 1). Upsampling is a stride-2 transposed conv
    followed by a FIR blur, as in StyleGAN2.
    """

    def __init__(self, in_channel: int, out_channel: int, kernel_size: int, style_dim: int,
                 demodulate: bool = True, upsample: bool = False,
                 blur_kernel: Sequence[float] = BLUR_KERNEL, impl: Impl = "auto") -> None:
        super().__init__()
        self.in_channel, self.out_channel, self.kernel_size = in_channel, out_channel, kernel_size
        self.upsample = upsample
        self.demodulate = demodulate
        self.eps = 1e-8
        if upsample:
            factor = 2
            p = (len(blur_kernel) - factor) - (kernel_size - 1)
            self.blur = Blur(blur_kernel, pad=((p + 1) // 2 + factor - 1, p // 2 + 1),
                             gain=factor**2, impl=impl)
        self.scale = 1 / math.sqrt(in_channel * kernel_size**2)
        self.padding = kernel_size // 2
        self.weight = nn.Parameter(_randn(1, out_channel, in_channel, kernel_size, kernel_size))
        self.modulation = EqualLinear(style_dim, in_channel, bias_init=1, impl=impl)
        # None: weight modulation for a batch of one in eager mode, activation modulation otherwise.
        self.fused: bool | None = None
        # Inference settings (inference.optimize_generator): the memory format of the cached
        # style-independent weights, and whether a batch of one modulates whichever is smaller,
        # the weight or the activations (at 4-32 px the activations are).
        self.memory_format: torch.memory_format | None = None
        self.modulate_by_cost = False
        self._cache: tuple[tuple[object, ...], tuple[Tensor, Tensor, Tensor | None]] | None = None

    def extra_repr(self) -> str:
        return (f"{self.in_channel}, {self.out_channel}, {self.kernel_size}, "
                f"upsample={self.upsample}, demodulate={self.demodulate}")

    def _weights(self) -> tuple[Tensor, Tensor, Tensor | None]:
        """``(scale·weight [out,in,k,k], Σ_k (scale·weight)² [out,in], transposed copy or None)``.

        Style-independent; cached while the weight needs no gradient (inference), keyed on the
        parameter's storage and version so in-place updates invalidate it.
        """
        wt = self.weight
        # Not while tracing or compiling: the cache key reads storage pointers.
        cacheable = not _exporting() and not (torch.is_grad_enabled() and wt.requires_grad)
        # Inference-mode tensors cannot be saved for backward later: keep the mode in the key.
        fmt = self.memory_format
        key = (wt.data_ptr(), wt._version, wt.dtype, wt.device, torch.is_inference_mode_enabled(), fmt) \
            if cacheable else None
        cache = self._cache  # read once: another thread may replace it between a check and a use
        if key is not None and cache is not None and cache[0] == key:
            return cache[1]
        w = wt[0] * self.scale
        w2 = w.square().sum([2, 3]) if self.demodulate else w.new_empty(0)
        w_t = w.transpose(0, 1).contiguous() if self.upsample else None
        if fmt is not None:
            w = w.contiguous(memory_format=fmt)
            w_t = w_t.contiguous(memory_format=fmt) if w_t is not None else None
        if key is not None:  # (cacheable)
            self._cache = (key, (w, w2, w_t))
        return w, w2, w_t

    def _apply(self, fn, recurse=True):  # type: ignore[override]
        self._cache = None  # .to()/.half() etc. move the parameter: drop derived tensors
        return super()._apply(fn, recurse)

    def _weight_modulation_pays(self, x: Tensor, s: Tensor) -> bool:
        """Whether scaling the weight (``out·in·k²`` products) costs less than scaling the
        activations before and after the convolution (``in·H·W + out·H'·W'``).

        Never while the style needs a gradient (a latent search such as psp_pulse's): the
        backward pass of a modulated weight is a weight-gradient convolution, as costly as the
        forward one (``H·W·in·out·k²``), where scaled activations cost two element-wise passes."""
        if s.requires_grad and torch.is_grad_enabled():
            return False
        hw = x.shape[2] * x.shape[3]
        return self.weight.numel() <= hw * (self.in_channel + self.out_channel * (4 if self.upsample else 1))

    def forward(self, x: Tensor, style: Tensor, *, gain: float = 1.0,
                bias: Tensor | None = None) -> Tensor:
        """``gain · demod(conv(x, weight ⊙ style)) + bias`` (``bias`` per output channel)."""
        n = x.shape[0]
        s = self.modulation(style)  # N × in
        w, w2, w_t = self._weights()
        # Demodulation: Σ_i,k (w_oik s_ni)² = (s²)·(Σ_k w_oik²)ᵀ — no N×out×in×k×k tensor needed.
        d = torch.rsqrt(s.square() @ w2.t() + self.eps) if self.demodulate else None  # N × out
        fused = self.fused if self.fused is not None else (n == 1 and not _exporting() and (
            not self.modulate_by_cost or self._weight_modulation_pays(x, s)))
        if fused and n == 1:
            col = d[0] * gain if d is not None else torch.full_like(s[0, :1], gain).expand(self.out_channel)
            coef = col[:, None] * s[0][None, :]  # out × in: one pass over the weight below
            if self.upsample:
                return self.blur(F.conv_transpose2d(x, w_t * coef.t()[:, :, None, None], stride=2), bias)
            return F.conv2d(x, w * coef[:, :, None, None], bias=bias, padding=self.padding)
        xs = x * s.reshape(n, -1, 1, 1)
        if self.upsample:
            out = self.blur(F.conv_transpose2d(xs, w_t if w_t is not None else w.transpose(0, 1), stride=2))
        else:
            out = F.conv2d(xs, w, padding=self.padding)
        scale = d * gain if d is not None else None
        if scale is None:
            out = out * gain if gain != 1.0 else out
            return out if bias is None else out + bias.reshape(1, -1, 1, 1)
        if bias is None:
            return out * scale.reshape(n, -1, 1, 1)
        return torch.addcmul(bias.reshape(1, -1, 1, 1), out, scale.reshape(n, -1, 1, 1))


class NoiseInjection(nn.Module):
    """Adds ``weight · noise`` (one learned scalar; noise ``N|1 × 1 × H × W``)."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(1))

    def forward(self, x: Tensor, noise: Tensor | None = None) -> Tensor:
        if noise is None:
            noise = x.new_empty(x.shape[0], 1, x.shape[2], x.shape[3]).normal_()
        return x + self.weight * noise


class ConstantInput(nn.Module):
    """The learned ``1 × C × 4 × 4`` input, repeated over the batch."""

    def __init__(self, channel: int, size: int = 4) -> None:
        super().__init__()
        self.input = nn.Parameter(_randn(1, channel, size, size))

    def forward(self, batch: int) -> Tensor:
        return self.input.expand(batch, -1, -1, -1)


class StyledConv(nn.Module):
    """Modulated conv → noise → bias + leaky ReLU·√2 (``activate.bias``)."""

    def __init__(self, in_channel: int, out_channel: int, kernel_size: int, style_dim: int,
                 upsample: bool = False, blur_kernel: Sequence[float] = BLUR_KERNEL,
                 demodulate: bool = True, impl: Impl = "auto") -> None:
        super().__init__()
        self.conv = ModulatedConv2d(in_channel, out_channel, kernel_size, style_dim,
                                    demodulate=demodulate, upsample=upsample,
                                    blur_kernel=blur_kernel, impl=impl)
        self.noise = NoiseInjection()
        self.activate = FusedLeakyReLU(out_channel, impl=impl)
        # None: fold bias/gain into the conv unless the fused CUDA kernel is going to run.
        self.fold: bool | None = None

    def forward(self, x: Tensor, style: Tensor, noise: Tensor | None = None) -> Tensor:
        act = self.activate
        fold = self.fold if self.fold is not None else (not x.is_cuda or act.impl == "ref")
        if not fold:
            out = self.noise(self.conv(x, style), noise)
            return act(out)
        # gain·lrelu(z) = lrelu(gain·z) (gain > 0): scale bias, noise strength and conv by gain.
        g = act.scale
        out = self.conv(x, style, gain=g, bias=act.bias * g if act.bias is not None else None)
        if noise is None:
            noise = out.new_empty(out.shape[0], 1, out.shape[2], out.shape[3]).normal_()
        out = out.add_(noise * (self.noise.weight * g))
        return F.leaky_relu_(out, act.negative_slope)


class ToRGB(nn.Module):
    """1×1 modulated conv to RGB (no demodulation) + bias ``[1,3,1,1]`` + upsampled skip."""

    def __init__(self, in_channel: int, style_dim: int, upsample: bool = True,
                 blur_kernel: Sequence[float] = BLUR_KERNEL, impl: Impl = "auto") -> None:
        super().__init__()
        if upsample:
            self.upsample = Upsample(blur_kernel, impl=impl)
        self.conv = ModulatedConv2d(in_channel, 3, 1, style_dim, demodulate=False, impl=impl)
        self.bias = nn.Parameter(torch.zeros(1, 3, 1, 1))

    def forward(self, x: Tensor, style: Tensor, skip: Tensor | None = None) -> Tensor:
        out = self.conv(x, style, bias=self.bias.reshape(3))
        if skip is not None:
            out = out + self.upsample(skip)
        return out


class StyleGAN2Generator(Generator):
    """StyleGAN2 generator, rosinality layout, any power-of-two resolution 32…1024.

    ``channel_multiplier=2`` is config-f; ``channel_max`` (default 512, StyleGAN2's value) caps
    every layer's width, which allows tiny test models. ``channels`` (resolution → width for
    every level 4…resolution) replaces that table outright, for CPU-sized models that are wide
    at low resolution and narrow at high resolution. ``impl`` selects the ops backend.
    """

    def __init__(self, resolution: int = 1024, style_dim: int = 512, n_mlp: int = 8,
                 channel_multiplier: int = 2, *, channel_max: int = 512, lr_mlp: float = 0.01,
                 blur_kernel: Sequence[float] = BLUR_KERNEL, impl: Impl = "auto",
                 channels: ChannelTable | None = None) -> None:
        super().__init__()
        if resolution not in RESOLUTIONS:
            raise ValueError(f"StyleGAN2 resolution must be a power of two in 32…1024, got {resolution}")
        if n_mlp < 1 or style_dim < 1 or channel_multiplier < 1 or channel_max < 1:
            raise ValueError("StyleGAN2: style_dim, n_mlp, channel_multiplier and channel_max must be ≥ 1")
        if n_mlp > 64:  # the paper's mapping network has 8 layers; a file's config may claim anything
            raise ValueError(f"StyleGAN2: n_mlp {n_mlp} is out of range (at most 64 mapping layers)")
        self.resolution = self.size = resolution
        self.style_dim = self.z_dim = style_dim
        self.n_mlp = n_mlp
        self.channel_multiplier = channel_multiplier
        self.channel_max = channel_max
        self.lr_mlp = lr_mlp
        self.blur_kernel = tuple(blur_kernel)
        self.log_size = int(math.log2(resolution))
        self.n_styles = self.n_latent = self.log_size * 2 - 2
        self.num_layers = (self.log_size - 2) * 2 + 1
        levels = [2**i for i in range(2, self.log_size + 1)]
        if channels is not None:
            table = {int(k): int(v) for k, v in channels.items()}
            if sorted(table) != levels or min(table.values()) < 1:
                raise ValueError(f"StyleGAN2 channels must give a positive width for each of {levels}; "
                                 f"got {table}")
            self.channels = {r: table[r] for r in levels}
            self._explicit_channels = True
        else:
            self.channels = {r: channels_for(r, channel_multiplier, channel_max) for r in levels}
            self._explicit_channels = False

        self.style = nn.Sequential(PixelNorm(), *[
            EqualLinear(style_dim, style_dim, lr_mul=lr_mlp, activation=True, impl=impl)
            for _ in range(n_mlp)])
        c4 = self.channels[4]
        self.input = ConstantInput(c4)
        self.conv1 = StyledConv(c4, c4, 3, style_dim, blur_kernel=blur_kernel, impl=impl)
        self.to_rgb1 = ToRGB(c4, style_dim, upsample=False, impl=impl)
        self.convs = nn.ModuleList()
        self.to_rgbs = nn.ModuleList()
        self.noises = nn.Module()
        for i in range(self.num_layers):
            r = 2 ** ((i + 5) // 2)
            self.noises.register_buffer(f"noise_{i}", _randn(1, 1, r, r))
        in_ch = c4
        for i in range(3, self.log_size + 1):
            out_ch = self.channels[2**i]
            self.convs.append(StyledConv(in_ch, out_ch, 3, style_dim, upsample=True,
                                         blur_kernel=blur_kernel, impl=impl))
            self.convs.append(StyledConv(out_ch, out_ch, 3, style_dim, blur_kernel=blur_kernel, impl=impl))
            self.to_rgbs.append(ToRGB(out_ch, style_dim, impl=impl))
            in_ch = out_ch
        # The checkpoint's average W (converted official weights ship one); see mean_latent().
        self.register_buffer("latent_avg", torch.empty(0), persistent=False)
        self._impl: Impl = impl
        #: Activation layout of synthesis (``torch.channels_last`` after inference.optimize_generator;
        #: None: as the ops produce it). Images are returned contiguous either way.
        self.memory_format: torch.memory_format | None = None
        #: Lines a command shows once about this generator's weights (which, license); set by the factory.
        self.notes: list[str] = []

    # -- configuration -------------------------------------------------------------------
    def config(self) -> dict[str, object]:
        """Keyword arguments that rebuild this architecture."""
        cfg: dict[str, object] = {
            "resolution": self.resolution, "style_dim": self.style_dim, "n_mlp": self.n_mlp,
            "channel_multiplier": self.channel_multiplier, "channel_max": self.channel_max,
            "lr_mlp": self.lr_mlp, "blur_kernel": self.blur_kernel}
        if self._explicit_channels:
            cfg["channels"] = {str(r): c for r, c in self.channels.items()}
        return cfg

    @property
    def impl(self) -> Impl:
        return self._impl

    def set_impl(self, impl: Impl) -> None:
        """Switch every op of this generator to ``impl`` ("auto", "cuda" or "ref")."""
        for m in self.modules():
            if hasattr(m, "impl") and not isinstance(m, StyleGAN2Generator):
                m.impl = impl
        self._impl = impl

    # -- latent space --------------------------------------------------------------------
    def map(self, z: Tensor, *, truncation: float = 1.0, truncation_latent: Tensor | None = None) -> Tensor:
        """``N×z_dim`` normal noise to ``N×style_dim`` W vectors (optionally truncated)."""
        w = self.style(z)
        return self.truncate(w, truncation, truncation_latent) if truncation != 1.0 else w

    def truncate(self, w: Tensor, truncation: float, center: Tensor | None = None) -> Tensor:
        """``center + truncation·(w − center)``; ``center`` defaults to :meth:`mean_latent`."""
        c = self.mean_latent() if center is None else center
        return torch.lerp(c.to(w), w, truncation) if truncation != 1.0 else w

    @torch.no_grad()
    def mean_latent(self, n: int = 4096, seed: int = 0) -> Tensor:
        """The checkpoint's ``latent_avg`` when it has one, else the mean of ``map(z)`` over
        ``n`` normal samples drawn with ``seed`` (``style_dim``)."""
        if self.latent_avg.numel():
            return self.latent_avg.reshape(-1, self.style_dim)[0].clone()
        g = torch.Generator().manual_seed(seed)
        z = torch.randn(n, self.z_dim, generator=g).to(self.input.input)
        return self.style(z).mean(0)

    def truncation_centre(self, centre: Tensor, n: int) -> Tensor:
        """``centre`` checked for a batch of ``n``: ``D``, ``1×D``, ``n×D`` (one per sample),
        ``1×L×D`` or ``n×L×D`` (one per layer), as rosinality's code broadcasts them.

        Any other shape is refused: reading only its first row would silently truncate every
        sample towards the same point.
        """
        d, layers, shape = self.style_dim, self.n_styles, tuple(centre.shape)
        if shape in ((d,), (1, d), (n, d), (1, layers, d), (n, layers, d)):
            return centre
        raise ValueError(f"truncation_latent must be {d}, 1×{d}, {n}×{d}, 1×{layers}×{d} or "
                         f"{n}×{layers}×{d} (batch {n}, {layers} layers), got {shape}")

    def _truncate_towards(self, style: Tensor, truncation: float, centre: Tensor) -> Tensor:
        """:meth:`truncate` of ``N×D`` or W+ ``style`` towards a :meth:`truncation_centre`: a
        per-layer centre makes ``N×D`` styles W+ first; an ``N×D`` one serves every layer."""
        if centre.ndim == 3 and style.ndim == 2:
            style = self.broadcast(style)
        elif centre.ndim == 2 and style.ndim == 3:
            centre = centre.unsqueeze(1)
        return self.truncate(style, truncation, centre)

    def set_latent_avg(self, latent_avg: Tensor | None) -> None:
        """Record (or with ``None`` forget) the checkpoint's average W (``style_dim`` values)."""
        if latent_avg is None:
            self.latent_avg = torch.empty(0, device=self.input.input.device)
            return
        la = latent_avg.detach().reshape(-1, self.style_dim)[0]
        self.latent_avg = la.to(self.input.input).clone()

    def broadcast(self, w: Tensor) -> Tensor:
        """``N×style_dim`` W vectors to ``N×n_styles×style_dim`` (W+)."""
        return w.unsqueeze(1).expand(-1, self.n_styles, -1)

    def mix_styles(self, w1: Tensor, w2: Tensor, inject_index: int) -> Tensor:
        """W+ with layers ``< inject_index`` from ``w1`` and the rest from ``w2`` (StyleGAN mixing).

        ``w1``/``w2``: ``N×style_dim`` or ``N×n_styles×style_dim``.
        """
        if not 0 <= inject_index <= self.n_styles:
            raise ValueError(f"inject_index must be in 0…{self.n_styles}, got {inject_index}")
        a = w1 if w1.ndim == 3 else self.broadcast(w1)
        b = w2 if w2.ndim == 3 else self.broadcast(w2)
        return torch.cat([a[:, :inject_index], b[:, inject_index:]], dim=1)

    def mix_latents(self, w_plus: Tensor, inject: Tensor, layers: Sequence[int], alpha: float = 1.0) -> Tensor:
        """pSp's ``latent_mask`` mixing: on ``layers``, ``alpha·inject + (1−alpha)·w_plus``."""
        bad = [i for i in layers if not 0 <= i < self.n_styles]
        if bad:
            raise ValueError(f"style layers {bad} out of range 0…{self.n_styles - 1}")
        inj = inject if inject.ndim == 3 else self.broadcast(inject)
        mask = torch.zeros(self.n_styles, 1, dtype=w_plus.dtype, device=w_plus.device)
        mask[list(layers)] = alpha
        return w_plus + mask * (inj - w_plus)

    # -- noise ---------------------------------------------------------------------------
    def noise_buffers(self) -> list[Tensor]:
        """The fixed ``noises.noise_i`` tensors (``1×1×r×r``), used by ``noise_mode="const"``."""
        return [getattr(self.noises, f"noise_{i}") for i in range(self.num_layers)]

    def make_noise(self, batch: int = 1, generator: torch.Generator | None = None) -> list[Tensor]:
        """Fresh normal noise for every layer (``batch×1×r×r``), drawn from ``generator``."""
        dev = self.input.input.device
        out = []
        for buf in self.noise_buffers():
            t = torch.randn(batch, 1, buf.shape[2], buf.shape[3], generator=generator)
            out.append(t.to(dev))
        return out

    # -- synthesis -----------------------------------------------------------------------
    def synthesize_signed(self, w_plus: Tensor, *, noise_mode: Literal["const", "random"] = "const",
                          noise: Sequence[Tensor | None] | None = None) -> Tensor:
        """Like :meth:`synthesize` but in StyleGAN's own ``[-1, 1]`` range."""
        if w_plus.ndim != 3 or w_plus.shape[1:] != (self.n_styles, self.style_dim):
            raise ValueError(f"w_plus must be N×{self.n_styles}×{self.style_dim}, got {tuple(w_plus.shape)}")
        if noise is None:
            if noise_mode == "const":
                noise = self.noise_buffers()
            elif noise_mode == "random":
                noise = [None] * self.num_layers
            else:
                raise ValueError(f"noise_mode must be 'const' or 'random', got {noise_mode!r}")
        elif len(noise) != self.num_layers:
            raise ValueError(f"noise must hold {self.num_layers} tensors, got {len(noise)}")
        n = w_plus.shape[0]
        x = self.input(n)
        fmt = self.memory_format
        if fmt is not None:
            x = x.contiguous(memory_format=fmt)
        out = self.conv1(x, w_plus[:, 0], noise[0])
        skip = self.to_rgb1(out, w_plus[:, 1])
        i = 1
        for k, to_rgb in enumerate(self.to_rgbs):
            out = self.convs[2 * k](out, w_plus[:, i], noise[2 * k + 1])
            out = self.convs[2 * k + 1](out, w_plus[:, i + 1], noise[2 * k + 2])
            skip = to_rgb(out, w_plus[:, i + 2], skip)
            i += 2
        return skip if fmt is None else skip.contiguous()

    def synthesize(self, w_plus: Tensor, *, noise_mode: Literal["const", "random"] = "const",
                   noise: list[Tensor] | None = None) -> Tensor:
        """``N×n_styles×style_dim`` latents to ``N×3×R×R`` images in [0,1], not clamped."""
        return self.synthesize_signed(w_plus, noise_mode=noise_mode, noise=noise).add(1.0).mul(0.5)

    @torch.no_grad()
    def sample(self, n: int = 1, *, seed: int = 0, truncation: float = 1.0,
               noise_mode: Literal["const", "random"] = "const") -> Tensor:
        """``n`` images in [0,1] (clamped) from normal ``z`` drawn with ``seed``."""
        g = torch.Generator().manual_seed(seed)
        z = torch.randn(n, self.z_dim, generator=g).to(self.input.input)
        w = self.map(z, truncation=truncation)
        return self.synthesize(self.broadcast(w), noise_mode=noise_mode).clamp(0, 1)

    def forward(self, styles: Sequence[Tensor] | Tensor, return_latents: bool = False,
                inject_index: int | None = None, truncation: float = 1.0,
                truncation_latent: Tensor | None = None, input_is_latent: bool = False,
                noise: Sequence[Tensor | None] | None = None, randomize_noise: bool = True
                ) -> tuple[Tensor, Tensor | None]:
        """rosinality's signature: ``(image in [-1,1], W+ or None)``.

        ``styles``: a list of one or two ``z`` (or ``w`` with ``input_is_latent``) batches, or a
        W+ tensor; two entries are style-mixed at ``inject_index`` (random when ``None``).
        As in rosinality's code, truncation applies only when ``truncation < 1``, towards
        ``truncation_latent`` (see :meth:`truncation_centre`; default :meth:`mean_latent`).
        """
        if isinstance(styles, Tensor):
            styles = [styles]
        styles = list(styles)
        if not input_is_latent:
            styles = [self.style(s) for s in styles]
        if truncation < 1.0:
            c = self.mean_latent() if truncation_latent is None else self.truncation_centre(
                truncation_latent, styles[0].shape[0])
            styles = [self._truncate_towards(s, truncation, c) for s in styles]
        if len(styles) == 1:
            s = styles[0]
            latent = s if s.ndim == 3 else self.broadcast(s)
        else:
            if inject_index is None:
                inject_index = random.randint(1, self.n_styles - 1)
            latent = self.mix_styles(styles[0], styles[1], inject_index)
        image = self.synthesize_signed(latent, noise_mode="random" if randomize_noise else "const",
                                       noise=noise)
        return image, (latent if return_latents else None)
