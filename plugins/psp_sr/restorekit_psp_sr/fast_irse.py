"""The IR/IR-SE backbone rewritten for inference: batch norm folded, fewer passes over memory.

:class:`FoldedBackbone` computes what ``input_layer`` + ``body`` (:mod:`.irse`) compute in eval
mode, from tensors derived once from their weights:

- every BatchNorm is folded into the adjacent convolution (:mod:`.fold`): the stem's and the
  shortcut's and each unit's last BN into the convolution before them; each unit's first BN into
  the 3×3 convolution after it, its shift as a bias plus a correction on the one-pixel border,
  where that convolution pads with zeros (computed once per input size);
- the 1×1 max-pool shortcut is a strided view (no pass at all for stride 1);
- SE gate and residual add are one ``addcmul`` pass; the SE's 1×1 convolutions are matrix
  products on the pooled vectors;
- weights are stored in ``memory_format`` (``channels_last`` on CPU, where oneDNN then needs no
  reorder of activations or weights per call).

It holds no reference to the modules it came from; :class:`~.fast_encoder.InferencePath`
rebuilds it when their tensors change.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .fold import BorderBias, fold_bn_after, fold_bn_before
from .irse import IRBlock, SEModule
from .stylegan2 import in_onnx_export


def _fmt(t: Tensor, memory_format: torch.memory_format | None) -> Tensor:
    t = t.detach()
    return t.contiguous(memory_format=memory_format) if memory_format is not None else t.contiguous()


@dataclass
class FoldedConv:
    """A convolution with its bias (BN folded in)."""

    weight: Tensor
    bias: Tensor | None
    stride: int
    padding: int

    def __call__(self, x: Tensor) -> Tensor:
        return F.conv2d(x, self.weight, self.bias, self.stride, self.padding)


class BorderCorrection:
    """Adds :class:`~.fold.BorderBias`'s border terms to a convolution's output, in place (out of
    place, as one constant map, while a graph exporter traces)."""

    def __init__(self, bias: BorderBias) -> None:
        self.bias = bias
        self._by_size: dict[tuple[int, int, torch.dtype, torch.device], tuple[Tensor, tuple[Tensor, ...]]] = {}

    def _entry(self, out: Tensor) -> tuple[Tensor, tuple[Tensor, ...]]:
        """``(whole map 1×C×H×W, its non-zero parts)`` for ``out``'s size, computed once."""
        h, w = int(out.shape[-2]), int(out.shape[-1])
        key = (h, w, out.dtype, out.device)
        entry = self._by_size.get(key)
        if entry is None:
            with torch.inference_mode(False), torch.no_grad():  # plain tensors, usable in any mode
                full = self.bias.full(h, w).to(device=out.device, dtype=out.dtype)
                p = self.bias.padding
                parts: tuple[Tensor, ...]
                if h > 2 * p and w > 2 * p:  # only the border ring is non-zero
                    parts = (full[:, :p], full[:, h - p:], full[:, p:h - p, :p], full[:, p:h - p, w - p:])
                else:
                    parts = (full,)
                entry = (full.unsqueeze(0), tuple(t.contiguous() for t in parts))
            self._by_size[key] = entry
        return entry

    def __call__(self, out: Tensor) -> Tensor:
        full, parts = self._entry(out)
        if torch.jit.is_tracing() or in_onnx_export():
            return out + full  # one constant, out of place: what graph exporters handle well
        if len(parts) == 1:
            return out.add_(parts[0])
        p = self.bias.padding
        h, w = out.shape[-2:]
        top, bottom, left, right = parts
        out[:, :, :p].add_(top)
        out[:, :, h - p:].add_(bottom)
        out[:, :, p:h - p, :p].add_(left)
        out[:, :, p:h - p, w - p:].add_(right)
        return out


class FoldedUnit:
    """One IR/IR-SE unit with its three BatchNorms folded away."""

    def __init__(self, unit: IRBlock, memory_format: torch.memory_format | None) -> None:
        layers = list(unit.res_layer)
        bn0, conv1, prelu, conv2, bn4 = layers[:5]
        se = layers[5] if len(layers) > 5 else None
        w1, border = fold_bn_before(bn0, conv1.weight, int(conv1.padding[0]))
        self.conv1 = FoldedConv(_fmt(w1, memory_format), border.interior.to(w1.dtype), 1, int(conv1.padding[0]))
        self.border = BorderCorrection(border)
        self.prelu = prelu.weight.detach().clone()
        w2, b2 = fold_bn_after(conv2.weight, conv2.bias, bn4)
        self.conv2 = FoldedConv(_fmt(w2, memory_format), b2, int(conv2.stride[0]), int(conv2.padding[0]))
        self.se: tuple[Tensor, Tensor] | None = None
        if isinstance(se, SEModule):
            self.se = (se.fc1.weight.detach().flatten(1).clone(), se.fc2.weight.detach().flatten(1).clone())
        self.stride = int(conv2.stride[0])
        self.shortcut: FoldedConv | None = None
        if isinstance(unit.shortcut_layer, nn.Sequential):
            conv, bn = unit.shortcut_layer[0], unit.shortcut_layer[1]
            ws, bs = fold_bn_after(conv.weight, conv.bias, bn)
            self.shortcut = FoldedConv(_fmt(ws, memory_format), bs, int(conv.stride[0]), 0)

    def __call__(self, x: Tensor) -> Tensor:
        res = F.prelu(self.border(self.conv1(x)), self.prelu)
        res = self.conv2(res)
        if self.shortcut is not None:
            short = self.shortcut(x)
        else:  # MaxPool2d(1, stride): a subsample
            short = x[:, :, ::self.stride, ::self.stride] if self.stride > 1 else x
        if self.se is None:
            return res.add_(short)
        fc1, fc2 = self.se
        gate = torch.sigmoid(F.linear(torch.relu(F.linear(res.mean((2, 3)), fc1)), fc2))
        return torch.addcmul(short, res, gate[:, :, None, None])


class FoldedBackbone:
    """``input_layer`` + ``body`` of an IR/IR-SE encoder, folded (see the module docstring)."""

    def __init__(self, input_layer: nn.Sequential, body: nn.Sequential,
                 memory_format: torch.memory_format | None = None) -> None:
        conv, bn, prelu = input_layer[0], input_layer[1], input_layer[2]
        w, b = fold_bn_after(conv.weight, conv.bias, bn)
        self.stem = FoldedConv(_fmt(w, memory_format), b, int(conv.stride[0]), int(conv.padding[0]))
        self.stem_prelu = prelu.weight.detach().clone()
        self.units = [FoldedUnit(u, memory_format) for u in body]
        self.memory_format = memory_format

    def __call__(self, x: Tensor, taps: tuple[int, ...] = ()) -> tuple[Tensor, list[Tensor]]:
        """``(last unit's output, outputs of the units whose indices are in taps)``."""
        if self.memory_format is not None:
            x = x.contiguous(memory_format=self.memory_format)
        x = F.prelu(self.stem(x), self.stem_prelu)
        tapped: list[Tensor] = []
        for i, unit in enumerate(self.units):
            x = unit(x)
            if i in taps:
                tapped.append(x)
        return x, tapped
