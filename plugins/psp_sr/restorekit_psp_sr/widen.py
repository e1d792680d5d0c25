"""Widen a trained StyleGAN2 generator or discriminator without changing what it computes.

A run trained with too few channels at some resolution can go on wider instead of starting over
(``init_from`` with ``init_widen``). :func:`widen_state_dict` fills a wider network's state dict
from the narrow one so that the wider network computes exactly the same function:

* every old weight keeps its effective value — the stored weight is multiplied by
  ``√(new fan-in / old fan-in)``, undoing the equalized-learning-rate scale's change;
* the weights from new input channels into old output channels are zero, so old features see
  nothing of the new ones (neither does demodulation: a zero weight adds nothing to its norm);
* everything else new (new output channels, their biases, the modulation of new input channels)
  keeps the wide network's own values — its fresh initialisation.

The new channels therefore start disconnected downstream but not upstream: their own weights are
random, so the gradients into the zero block are non-zero from the first step, and training
connects them. Only layers whose widths are known (modulated and equalized convolutions,
equalized linear layers, bias + leaky ReLU, the constant input) may differ; anything else that
differs — resolution, style size, another architecture — is refused.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
from torch import Tensor, nn

from restorekit.errors import RestorekitError

from .discriminator import EqualConv2d
from .ops import FusedLeakyReLU
from .stylegan2 import ConstantInput, EqualLinear, ModulatedConv2d


class WidenError(RestorekitError):
    """The narrow state dict cannot be widened into the given network."""


# Module type → {parameter name: (output axis, input axis or None)}: the axes that may grow. A
# growing input axis is a larger fan-in, so old weights are rescaled (run-time scale 1/√fan-in).
# Linear layers may not grow their inputs: that would be a larger style (PixelNorm averages over
# it) or D's 4-px features, which its minibatch-stddev channel follows rather than ends.
_AXES: dict[type[nn.Module], dict[str, tuple[int, int | None]]] = {
    ModulatedConv2d: {"weight": (1, 2)},
    EqualConv2d: {"weight": (0, 1), "bias": (0, None)},
    EqualLinear: {"weight": (0, None), "bias": (0, None)},  # outputs only: e.g. a modulation's rows
    FusedLeakyReLU: {"bias": (0, None)},
    ConstantInput: {"input": (1, None)},
}


def _axes_of(wide: nn.Module) -> dict[str, tuple[int, int | None]]:
    """State-dict key → (output axis, input axis) for every tensor whose width may change."""
    found: dict[str, tuple[int, int | None]] = {}
    for prefix, module in wide.named_modules():
        for name, axes in _AXES.get(type(module), {}).items():
            found[f"{prefix}.{name}" if prefix else name] = axes
    return found


def widen_tensor(old: Tensor, fresh: Tensor, out_axis: int, in_axis: int | None) -> Tensor:
    """``fresh`` with ``old`` in its leading block (rescaled for the larger fan-in) and zeros from
    the new inputs into the old outputs."""
    new = fresh.detach().clone().to(torch.float32)
    lead = tuple(slice(0, n) for n in old.shape)
    gain = 1.0
    if in_axis is not None and fresh.shape[in_axis] != old.shape[in_axis]:
        gain = math.sqrt(fresh.shape[in_axis] / old.shape[in_axis])
        block: list[slice] = [slice(None)] * new.dim()
        block[out_axis] = slice(0, old.shape[out_axis])
        block[in_axis] = slice(old.shape[in_axis], None)
        new[tuple(block)] = 0
    new[lead] = old.detach().to(torch.float32) * gain
    return new.to(fresh.dtype)


def widen_state_dict(narrow: Mapping[str, Tensor], wide: nn.Module) -> dict[str, Tensor]:
    """A state dict for ``wide`` that computes what ``narrow`` computed (see the module doc).

    ``narrow`` must hold exactly ``wide``'s keys, each no larger than ``wide``'s on every axis,
    and larger only along channel axes. New entries are taken from ``wide``'s current values.
    """
    target = wide.state_dict()
    missing, extra = sorted(set(target) - set(narrow)), sorted(set(narrow) - set(target))
    if missing or extra:
        raise WidenError(f"not the same architecture: missing {missing[:3]}, unexpected {extra[:3]}")
    axes = _axes_of(wide)
    out: dict[str, Tensor] = {}
    for key, fresh in target.items():
        old = narrow[key]
        if old.dim() != fresh.dim():
            raise WidenError(f"{key}: {tuple(old.shape)} cannot become {tuple(fresh.shape)}")
        if old.shape == fresh.shape:
            out[key] = old.detach().to(fresh.dtype).clone()
            continue
        grown = [i for i, (a, b) in enumerate(zip(old.shape, fresh.shape)) if a != b]
        out_axis, in_axis = axes.get(key, (-1, None))
        if key not in axes or any(i not in (out_axis, in_axis) or old.shape[i] > fresh.shape[i] for i in grown):
            raise WidenError(f"{key}: {tuple(old.shape)} cannot be widened to {tuple(fresh.shape)} "
                             "(only channel counts may grow)")
        out[key] = widen_tensor(old, fresh, out_axis, in_axis)
    return out


__all__ = ["WidenError", "widen_state_dict", "widen_tensor"]
