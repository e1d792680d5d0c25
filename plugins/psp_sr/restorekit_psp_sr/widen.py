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
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from restorekit.errors import RestorekitError

from .discriminator import EqualConv2d, StyleGAN2Discriminator
from .ops import FusedLeakyReLU
from .stylegan2 import ConstantInput, EqualLinear, ModulatedConv2d


class WidenError(RestorekitError):
    """The narrow state dict cannot be widened into the given network."""


@dataclass(frozen=True)
class Axes:
    """How a tensor may grow: along ``out`` (its layer's output channels) and ``inp`` (its input
    channels: a larger fan-in, so old weights are rescaled for the run-time scale 1/√fan-in).
    ``last_input_fixed``: the last input channel is not a feature of the previous layer but one
    appended after them (D's minibatch standard deviation), and stays last."""

    out: int
    inp: int | None = None
    last_input_fixed: bool = False


# Module type → {parameter name: axes}. Linear layers grow only their outputs (a modulation's rows)
# unless placed below: a larger input would be a larger style, which PixelNorm averages over.
_AXES: dict[type[nn.Module], dict[str, Axes]] = {
    ModulatedConv2d: {"weight": Axes(1, 2)},
    EqualConv2d: {"weight": Axes(0, 1), "bias": Axes(0)},
    EqualLinear: {"weight": Axes(0), "bias": Axes(0)},
    FusedLeakyReLU: {"bias": Axes(0)},
    ConstantInput: {"input": Axes(1)},
}
# D's head, behind its 4-px features: [features…, minibatch stddev] → conv → flatten (channel-major,
# so new channels' values come last) → linear → linear.
_D_HEAD = {"final_conv.0.weight": Axes(0, 1, last_input_fixed=True),
           "final_linear.0.weight": Axes(0, 1), "final_linear.1.weight": Axes(0, 1)}


def _axes_of(wide: nn.Module) -> dict[str, Axes]:
    """State-dict key → :class:`Axes` for every tensor whose width may change."""
    found: dict[str, Axes] = {}
    heads: dict[str, Axes] = {}
    for prefix, module in wide.named_modules():
        dot = f"{prefix}." if prefix else ""
        for name, axes in _AXES.get(type(module), {}).items():
            found[dot + name] = axes
        if isinstance(module, StyleGAN2Discriminator):
            heads.update({dot + k: v for k, v in _D_HEAD.items()})
    return {**found, **heads}


def widen_tensor(old: Tensor, fresh: Tensor, axes: Axes) -> Tensor:
    """``fresh`` with ``old`` in its leading block (rescaled for the larger fan-in) and zeros from
    the new inputs into the old outputs."""
    new = fresh.detach().clone().to(torch.float32)
    src = old.detach().to(torch.float32)
    n_in = axes.inp
    if n_in is None or fresh.shape[n_in] == old.shape[n_in]:
        new[tuple(slice(0, n) for n in old.shape)] = src
        return new.to(fresh.dtype)
    src = src * math.sqrt(fresh.shape[n_in] / old.shape[n_in])
    fixed = 1 if axes.last_input_fixed else 0
    old_in, new_in = old.shape[n_in] - fixed, fresh.shape[n_in] - fixed

    def at(out: slice, inp: slice) -> tuple[slice, ...]:
        index = [slice(None)] * new.dim()
        index[axes.out], index[n_in] = out, inp
        return tuple(index)

    keep = slice(0, old.shape[axes.out])
    old_block = [slice(0, n) for n in old.shape]
    old_block[n_in] = slice(0, old_in)
    new[at(keep, slice(old_in, new_in))] = 0  # new inputs → old outputs
    new[tuple(old_block)] = src[at(slice(None), slice(0, old_in))]
    if fixed:
        tail = [slice(0, n) for n in old.shape]
        tail[n_in] = slice(new_in, new_in + 1)
        new[tuple(tail)] = src[at(slice(None), slice(old_in, old_in + 1))]
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
        how = axes.get(key)
        if how is None or any(i not in (how.out, how.inp) or old.shape[i] > fresh.shape[i] for i in grown):
            raise WidenError(f"{key}: {tuple(old.shape)} cannot be widened to {tuple(fresh.shape)} "
                             "(only channel counts may grow)")
        out[key] = widen_tensor(old, fresh, how)
    return out


__all__ = ["Axes", "WidenError", "widen_state_dict", "widen_tensor"]
