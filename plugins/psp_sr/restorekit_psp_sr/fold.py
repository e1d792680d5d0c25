"""Batch-norm folding: an eval-mode BatchNorm next to a convolution, rewritten into the convolution.

In eval mode ``bn(x) = scale·x + shift`` per channel (:func:`bn_affine`). After a convolution
this folds exactly into its weight and bias (:func:`fold_bn_after`). Before a zero-padded
convolution only the scale folds into the weight; the shift becomes a bias that is constant in
the interior but differs within ``padding`` pixels of the border, where the convolution sees the
padding's zeros instead of ``shift`` (:func:`fold_bn_before` and :class:`BorderBias`). All
arithmetic is done in float64 and rounded once to the weight's dtype.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def bn_affine(bn: nn.BatchNorm2d) -> tuple[Tensor, Tensor]:
    """``(scale, shift)`` in float64 with ``bn(x) = scale·x + shift`` in eval mode."""
    if bn.running_var is None or bn.running_mean is None:  # track_running_stats=False: batch statistics
        raise ValueError(f"{bn}: keeps no running statistics, so it is no fixed affine map to fold")
    var = bn.running_var.detach().double()
    mean = bn.running_mean.detach().double()
    inv = torch.rsqrt(var + bn.eps)
    scale = inv * bn.weight.detach().double() if bn.affine else inv
    shift = (bn.bias.detach().double() if bn.affine else torch.zeros_like(mean)) - mean * scale
    return scale, shift


def fold_bn_after(weight: Tensor, bias: Tensor | None, bn: nn.BatchNorm2d) -> tuple[Tensor, Tensor]:
    """Weight and bias of ``bn(conv(x))`` as one convolution (exact up to rounding)."""
    scale, shift = bn_affine(bn)
    w = weight.detach().double() * scale.reshape(-1, 1, 1, 1)
    b = shift if bias is None else bias.detach().double() * scale + shift
    return w.to(weight.dtype), b.to(weight.dtype)


@dataclass
class BorderBias:
    """The bias that ``conv(pad(shift))`` adds: ``interior`` per output channel, and per input
    size the difference near the border (:meth:`full`), where the padding is zero, not ``shift``."""

    weight: Tensor  # the unscaled convolution weight, float64
    shift: Tensor  # per input channel, float64
    padding: int
    interior: Tensor  # per output channel, float64

    def full(self, height: int, width: int) -> Tensor:
        """``Cout×H'×W'`` (the convolution's output size for an ``H×W`` input): ``conv(pad(shift))``
        minus ``interior``, zero away from the border.

        With ``p = padding``, output row ``i`` reaches the top padding only for ``i < p`` (how far
        depending on ``i``) and the bottom padding only for ``i ≥ H' − p`` (depending on
        ``H' − i``); every other row sees no padding. Columns alike. So once ``H', W' ≥ 2p + 1``
        the map is that of a kernel-sized input, whose output is ``(2p+1)×(2p+1)``, with its middle
        row and column repeated: a convolution over ``k_h·k_w`` pixels, not ``H·W``."""
        p = self.padding
        kh, kw = (int(k) for k in self.weight.shape[-2:])
        out_h, out_w = height + 2 * p - kh + 1, width + 2 * p - kw + 1
        if min(out_h, out_w) < 2 * p + 1:  # border rows (or columns) meet: no middle to repeat
            return self._map(height, width)
        return _stretch(_stretch(self._map(kh, kw), 2, out_w, p), 1, out_h, p)

    def _map(self, height: int, width: int) -> Tensor:
        """The map computed directly, by a convolution over an ``H×W`` input."""
        const = self.shift.reshape(1, -1, 1, 1).expand(1, -1, height, width)
        return (F.conv2d(const, self.weight, padding=self.padding)[0]
                - self.interior.reshape(-1, 1, 1))


def _stretch(t: Tensor, dim: int, n: int, p: int) -> Tensor:
    """``t`` (``2p+1`` long along ``dim``) made ``n ≥ 2p+1`` long: its first ``p`` slices, its
    middle slice ``n − 2p`` times, its last ``p`` slices (one pass writing the result)."""
    shape = list(t.shape)
    shape[dim] = n - 2 * p
    return torch.cat([t.narrow(dim, 0, p), t.narrow(dim, p, 1).expand(shape), t.narrow(dim, p + 1, p)], dim)


def fold_bn_before(bn: nn.BatchNorm2d, weight: Tensor, padding: int) -> tuple[Tensor, BorderBias]:
    """``conv(pad(bn(x)))`` (stride 1) as ``conv'(pad(x)) + bias``: the scaled weight, and the bias."""
    scale, shift = bn_affine(bn)
    w64 = weight.detach().double()
    interior = (w64 * shift.reshape(1, -1, 1, 1)).sum((1, 2, 3))
    folded = (w64 * scale.reshape(1, -1, 1, 1)).to(weight.dtype)
    return folded, BorderBias(w64, shift, padding, interior)
