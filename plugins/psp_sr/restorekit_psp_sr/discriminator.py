"""StyleGAN2's residual discriminator, with rosinality's module names.

``convs.0`` maps RGB to features (1×1 conv + leaky ReLU); ``convs.1…`` are residual blocks that
halve the resolution (3×3 conv, then FIR blur + stride-2 3×3 conv, plus a blurred stride-2 1×1
skip, summed and scaled by 1/√2) down to 4×4; then the minibatch standard deviation (one extra
feature map, groups of up to 4 images), ``final_conv`` (3×3), ``final_linear`` (two equalized
linear layers) and one logit per image. Every weight is stored unscaled and multiplied by
``1/√fan_in`` at run time (equalized learning rate), as in StyleGAN2.

Widths come from a ``channels`` table (resolution → width) like the generator's, so a small
discriminator can mirror a small generator. Images are taken in restorekit's ``[0, 1]``
convention and mapped to ``[-1, 1]`` inside.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .ops import FusedLeakyReLU, Impl, upfirdn2d
from .stylegan2 import BLUR_KERNEL, ChannelTable, EqualLinear, channels_for


class EqualConv2d(nn.Module):
    """Conv with equalized learning rate (weight scaled by ``1/√(in·k²)`` at run time)."""

    def __init__(self, in_channel: int, out_channel: int, kernel_size: int, stride: int = 1,
                 padding: int = 0, bias: bool = True) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_channel, in_channel, kernel_size, kernel_size))
        self.scale = 1 / math.sqrt(in_channel * kernel_size**2)
        self.stride, self.padding = stride, padding
        self.bias = nn.Parameter(torch.zeros(out_channel)) if bias else None

    def forward(self, x: Tensor) -> Tensor:
        return F.conv2d(x, self.weight * self.scale, self.bias, stride=self.stride, padding=self.padding)

    def extra_repr(self) -> str:
        o, i, k, _ = self.weight.shape
        return f"{i}, {o}, {k}, stride={self.stride}, padding={self.padding}"


class _Blur(nn.Module):
    """FIR low-pass before a stride-2 conv (``upfirdn2d`` with a separable filter)."""

    kernel: Tensor  # buffer

    def __init__(self, kernel: Sequence[float], pad: tuple[int, int], impl: Impl) -> None:
        super().__init__()
        k = torch.tensor(kernel, dtype=torch.float32)
        self.register_buffer("kernel", k / k.sum(), persistent=False)
        self.pad, self.impl = pad, impl

    def forward(self, x: Tensor) -> Tensor:
        return upfirdn2d(x, self.kernel.to(x.dtype), pad=self.pad, impl=self.impl)


class ConvLayer(nn.Sequential):
    """[blur →] equalized conv (stride 2 when downsampling) [→ bias + leaky ReLU·√2]."""

    def __init__(self, in_channel: int, out_channel: int, kernel_size: int, *, downsample: bool = False,
                 blur_kernel: Sequence[float] = BLUR_KERNEL, bias: bool = True, activate: bool = True,
                 impl: Impl = "auto") -> None:
        layers: list[nn.Module] = []
        if downsample:
            p = len(blur_kernel) - 2 + (kernel_size - 1)
            layers.append(_Blur(blur_kernel, ((p + 1) // 2, p // 2), impl))
            stride, padding = 2, 0
        else:
            stride, padding = 1, kernel_size // 2
        layers.append(EqualConv2d(in_channel, out_channel, kernel_size, stride, padding, bias=bias and not activate))
        if activate:
            layers.append(FusedLeakyReLU(out_channel, bias=bias, impl=impl))
        super().__init__(*layers)


class ResBlock(nn.Module):
    """Two convs (the second downsamples) plus a downsampled 1×1 skip, sum scaled by 1/√2."""

    def __init__(self, in_channel: int, out_channel: int, blur_kernel: Sequence[float] = BLUR_KERNEL,
                 impl: Impl = "auto") -> None:
        super().__init__()
        self.conv1 = ConvLayer(in_channel, in_channel, 3, impl=impl)
        self.conv2 = ConvLayer(in_channel, out_channel, 3, downsample=True, blur_kernel=blur_kernel, impl=impl)
        self.skip = ConvLayer(in_channel, out_channel, 1, downsample=True, blur_kernel=blur_kernel,
                              activate=False, bias=False, impl=impl)

    def forward(self, x: Tensor) -> Tensor:
        return (self.conv2(self.conv1(x)) + self.skip(x)) * (1 / math.sqrt(2))


def minibatch_stddev(x: Tensor, group_size: int = 4) -> Tensor:
    """Append one feature map: the mean standard deviation of features across groups of images.

    The group is the largest divisor of the batch that is ≤ ``group_size``, so any batch works.
    """
    n, c, h, w = x.shape
    g = max(d for d in range(1, min(group_size, n) + 1) if n % d == 0)
    y = x.to(torch.promote_types(x.dtype, torch.float32)).reshape(g, n // g, c, h, w)  # bf16 → fp32
    y = (y.var(0, unbiased=False) + 1e-8).sqrt().mean(dim=(1, 2, 3))  # n/g values
    y = y.reshape(1, n // g, 1, 1, 1).expand(g, -1, 1, h, w).reshape(n, 1, h, w)
    return torch.cat([x, y.to(x.dtype)], dim=1)


class StyleGAN2Discriminator(nn.Module):
    """The residual discriminator for ``resolution``-px images; ``forward`` returns ``N`` logits."""

    def __init__(self, resolution: int = 1024, channel_multiplier: int = 2, *, channel_max: int = 512,
                 channels: ChannelTable | None = None, mbstd_group: int = 4,
                 blur_kernel: Sequence[float] = BLUR_KERNEL, impl: Impl = "auto") -> None:
        super().__init__()
        log_size = int(math.log2(resolution))
        if 2**log_size != resolution or resolution < 8:
            raise ValueError(f"discriminator resolution must be a power of two ≥ 8, got {resolution}")
        levels = [2**i for i in range(2, log_size + 1)]
        if channels is not None:
            table = {int(k): int(v) for k, v in channels.items()}
            if sorted(table) != levels or min(table.values()) < 1:
                raise ValueError(f"discriminator channels must give a positive width for each of {levels}; "
                                 f"got {table}")
        else:
            table = {r: channels_for(r, channel_multiplier, channel_max) for r in levels}
        self.resolution = resolution
        self.channels = table
        self.mbstd_group = mbstd_group
        convs: list[nn.Module] = [ConvLayer(3, table[resolution], 1, impl=impl)]
        in_ch = table[resolution]
        for i in range(log_size, 2, -1):
            out_ch = table[2 ** (i - 1)]
            convs.append(ResBlock(in_ch, out_ch, blur_kernel, impl=impl))
            in_ch = out_ch
        self.convs = nn.Sequential(*convs)
        c4 = table[4]
        self.final_conv = ConvLayer(in_ch + 1, c4, 3, impl=impl)
        self.final_linear = nn.Sequential(EqualLinear(c4 * 4 * 4, c4, activation=True, impl=impl),
                                          EqualLinear(c4, 1))

    def config(self) -> dict[str, object]:
        """Keyword arguments that rebuild this architecture."""
        return {"resolution": self.resolution, "channels": {str(k): v for k, v in self.channels.items()},
                "mbstd_group": self.mbstd_group}

    def forward(self, image: Tensor) -> Tensor:
        """``N×3×R×R`` images in [0,1] → ``N`` real-vs-fake logits."""
        if image.shape[-2:] != (self.resolution, self.resolution):
            raise ValueError(f"discriminator expects {self.resolution}×{self.resolution} images, "
                             f"got {tuple(image.shape[-2:])}")
        x = self.convs(image * 2 - 1)
        x = self.final_conv(minibatch_stddev(x, self.mbstd_group))
        return self.final_linear(x.flatten(1)).squeeze(1)


__all__ = ["ConvLayer", "EqualConv2d", "ResBlock", "StyleGAN2Discriminator", "minibatch_stddev"]
