"""The pSp encoders' inference path: the same function as their ``forward``, computed faster.

:func:`optimize_encoder` attaches an :class:`InferencePath` to a
:class:`~.encoder.GradualStyleEncoder`, :class:`~.encoder.BackboneEncoder` or
:class:`~.encoder.BackboneEncoderUsingLastLayerIntoW`;
the encoder's ``forward`` then takes it in eval mode, unless gradients for the encoder's own
weights are wanted (``train()`` mode, or grad enabled with weights that require it). The
modules, their parameters and the state dict stay as they are (official pSp layout): the path
holds only what it derives from them, and derives it again when any of them changes
(``load_state_dict``, an optimizer step, ``.to()``).

What it changes (results equal to float rounding):

- the IR-SE backbone runs folded (:mod:`.fast_irse`);
- on CPU every activation is ``channels_last`` and the encoder's own conv weights are converted
  to that layout in place (same values, no copy kept), so oneDNN reorders nothing per call;
- the FPN's upsample-and-add adds into the lateral convolution's fresh output;
- the map2style heads' equalized linear layers run as one batched product with their
  ``lr_mul/sqrt(in)`` scaling applied once, not per call.

The heads' convolutions stay one call per head: measured on this project's 2-core CPU,
concatenating the heads that read the same map into one convolution, or running the later head
layers as grouped convolutions, was no faster (batch 1 and 8; docs/performance.md).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .fast_irse import FoldedBackbone
from .stylegan2 import in_onnx_export

if TYPE_CHECKING:
    from .encoder import BackboneEncoder, BackboneEncoderUsingLastLayerIntoW, GradualStyleEncoder, _HeadedEncoder


def _sources(module: nn.Module) -> list[Tensor]:
    return [*module.parameters(), *module.buffers()]


def _stamp(tensors: Iterable[Tensor]) -> tuple[tuple[int, int], ...]:
    return tuple((t.data_ptr(), t._version) for t in tensors)


def _shape_key(x: Tensor) -> tuple[tuple[int, ...], torch.dtype, torch.device]:
    # int(): a tracer hands out sizes as tensors.
    return tuple(int(d) for d in x.shape[1:]), x.dtype, x.device


def _channels_last_in_place(modules: Iterable[nn.Module]) -> None:
    """Store every 4-D weight of these modules as ``channels_last`` (values unchanged)."""
    with torch.no_grad():
        for m in modules:
            for p in m.parameters(recurse=False):
                if p.ndim == 4 and not p.is_contiguous(memory_format=torch.channels_last):
                    p.data = p.data.contiguous(memory_format=torch.channels_last)


class InferencePath:
    """Fast eval-mode forward of a pSp encoder (see the module docstring)."""

    def __init__(self, encoder: _HeadedEncoder | BackboneEncoderUsingLastLayerIntoW,
                 memory_format: torch.memory_format | None) -> None:
        self.memory_format = memory_format
        self._backbone_modules = (encoder.input_layer, encoder.body)
        self._backbone_sources = [t for m in self._backbone_modules for t in _sources(m)]
        self._stamp: tuple[tuple[int, int], ...] | None = None
        self._backbone: FoldedBackbone | None = None
        self._linear: tuple[Tensor, Tensor] | None = None
        self._linear_stamp: tuple[tuple[int, int], ...] | None = None
        self._served: set[tuple[tuple[int, ...], torch.dtype, torch.device]] = set()

    def usable(self, encoder: nn.Module, x: Tensor) -> bool:
        """Eval mode, and no gradient wanted for the encoder's weights. While a graph exporter
        traces, only when everything derived is ready for ``x``'s shape (an earlier call made it):
        deriving it inside the trace would put the float64 folding into the graph."""
        if encoder.training:
            return False
        if torch.is_grad_enabled() and any(p.requires_grad for p in encoder.parameters()):
            return False
        if torch.jit.is_tracing() or in_onnx_export():
            return (_shape_key(x) in self._served and self._backbone is not None
                    and _stamp(self._backbone_sources) == self._stamp)
        return True

    def served(self, x: Tensor) -> None:
        """Record that everything derived for ``x``'s shape now exists (see :meth:`usable`)."""
        self._served.add(_shape_key(x))

    def backbone(self) -> FoldedBackbone:
        stamp = _stamp(self._backbone_sources)
        if self._backbone is None or stamp != self._stamp:
            with torch.inference_mode(False), torch.no_grad():  # plain tensors, usable in any mode
                self._backbone = FoldedBackbone(*self._backbone_modules, memory_format=self.memory_format)
            self._stamp = stamp
            self._served.clear()
        return self._backbone

    def linears(self, layers: list[nn.Module]) -> tuple[Tensor, Tensor]:
        """EqualLinear layers (same shapes) as ``(W [L×in×out] scaled, bias [L×1×out] scaled)``."""
        srcs = [t for m in layers for t in (m.weight, m.bias)]
        stamp = _stamp(srcs)
        if self._linear is None or stamp != self._linear_stamp:
            with torch.inference_mode(False), torch.no_grad():
                w = torch.stack([m.weight * m.scale for m in layers]).transpose(1, 2).contiguous()
                b = torch.stack([m.bias * m.lr_mul for m in layers]).unsqueeze(1)
            self._linear, self._linear_stamp = (w, b), stamp
        return self._linear


def _head_features(head: nn.Module, x: Tensor) -> Tensor:
    """A map2style head's convolutions (stride-2 3×3 + LeakyReLU 0.01) down to ``N×C``."""
    convs = list(head.convs)
    for conv, act in zip(convs[::2], convs[1::2]):
        x = F.leaky_relu_(conv(x), act.negative_slope)
    return x.flatten(1)


def _codes(path: InferencePath, styles: Iterable[nn.Module], feats: list[Tensor], x: Tensor) -> Tensor:
    """The heads' equalized linear layers on their features (``feats[i]``: ``N×C`` of head ``i``),
    as one batched product: ``N×n_styles×style_dim``."""
    w, b = path.linears([s.linear for s in styles])
    path.served(x)
    return torch.baddbmm(b, torch.stack(feats), w).transpose(0, 1).contiguous()


def gradual_style_forward(encoder: GradualStyleEncoder, path: InferencePath, x: Tensor) -> Tensor:
    """:class:`~.encoder.GradualStyleEncoder`'s forward on the inference path."""
    t1, t2, t3 = encoder._taps
    _, (c1, c2, c3) = path.backbone()(x, (t1, t2, t3))
    styles = encoder.styles
    feats = [_head_features(styles[j], c3) for j in range(encoder.coarse_ind)]
    p2 = encoder.latlayer1(c2).add_(F.interpolate(c3, size=c2.shape[-2:], mode="bilinear", align_corners=True))
    feats += [_head_features(styles[j], p2) for j in range(encoder.coarse_ind, encoder.middle_ind)]
    p1 = encoder.latlayer2(c1).add_(F.interpolate(p2, size=c1.shape[-2:], mode="bilinear", align_corners=True))
    feats += [_head_features(styles[j], p1) for j in range(encoder.middle_ind, encoder.n_styles)]
    return _codes(path, styles, feats, x)


def backbone_heads_forward(encoder: BackboneEncoder, path: InferencePath, x: Tensor) -> Tensor:
    """:class:`~.encoder.BackboneEncoder`'s forward on the inference path."""
    top, _ = path.backbone()(x)
    return _codes(path, encoder.styles, [_head_features(head, top) for head in encoder.styles], x)


def single_w_forward(encoder: BackboneEncoderUsingLastLayerIntoW, path: InferencePath, x: Tensor) -> Tensor:
    """:class:`~.encoder.BackboneEncoderUsingLastLayerIntoW`'s forward on the inference path."""
    top, _ = path.backbone()(x)
    w, b = path.linears([encoder.linear])
    path.served(x)
    return torch.addmm(b[0], top.mean((2, 3)), w[0])


def optimize_encoder(encoder: nn.Module, *, channels_last: bool | None = None) -> nn.Module:
    """Attach the inference path to ``encoder`` (in place; returned for chaining).

    ``channels_last``: default on CPU (where it pays), off elsewhere.
    """
    from .encoder import BackboneEncoderUsingLastLayerIntoW, _HeadedEncoder

    if not isinstance(encoder, (_HeadedEncoder, BackboneEncoderUsingLastLayerIntoW)):
        raise TypeError(f"{type(encoder).__name__} has no inference path (pSp's and ReStyle's encoders have)")
    if channels_last is None:
        channels_last = next(encoder.parameters()).device.type == "cpu"
    fmt = torch.channels_last if channels_last else None
    if fmt is not None:
        _channels_last_in_place(encoder.modules())
    encoder.inference_path = InferencePath(encoder, fmt)
    return encoder
