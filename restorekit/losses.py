"""Core loss plugins: pixel (``l2``, ``l1``), perceptual (``lpips``) and latent (``w_norm``).

Every loss takes ``pred`` and ``target`` in the framework's [0, 1] convention and returns a
scalar averaged over the batch. pSp computes its pixel losses on [-1, 1] images, which scales
MSE by 4 and L1 by 2; ``value_range="symmetric"`` reproduces that, so pSp's published
lambdas (``--l2_lambda=1 --lpips_lambda=0.8 --w_norm_lambda=0.005``) can be used unchanged as
weights. LPIPS is range-independent here (it maps [0, 1] to [-1, 1] itself).
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

import torch
from torch import Tensor

from .interfaces import Loss, LossContext
from .networks.lpips_net import Backbone, LPIPSDistance

ValueRange = Literal["unit", "symmetric"]
_RANGE_SCALE = {"unit": 1.0, "symmetric": 2.0}  # [-1, 1] differences are twice [0, 1] ones


def _check_pair(name: str, pred: Tensor, target: Tensor) -> None:
    if pred.shape != target.shape:
        raise ValueError(f"{name} loss: prediction {tuple(pred.shape)} and target "
                         f"{tuple(target.shape)} differ in shape")


class L2Loss(Loss):
    """Mean squared error over all pixels and channels (pSp's ``l2`` with ``symmetric``)."""

    name: ClassVar[str] = "l2"

    def __init__(self, weight: float = 1.0, value_range: ValueRange = "unit") -> None:
        super().__init__(weight)
        if value_range not in _RANGE_SCALE:
            raise ValueError(f"l2 loss: value_range must be 'unit' or 'symmetric', got {value_range!r}")
        self.value_range = value_range

    def __call__(self, pred: Tensor, target: Tensor, **context: Any) -> Tensor:
        _check_pair(self.name, pred, target)
        s = _RANGE_SCALE[self.value_range]
        return torch.mean((pred - target) ** 2) * (s * s)


class L1Loss(Loss):
    """Mean absolute error over all pixels and channels (``symmetric``: on [-1, 1] images)."""

    name: ClassVar[str] = "l1"

    def __init__(self, weight: float = 1.0, value_range: ValueRange = "unit") -> None:
        super().__init__(weight)
        if value_range not in _RANGE_SCALE:
            raise ValueError(f"l1 loss: value_range must be 'unit' or 'symmetric', got {value_range!r}")
        self.value_range = value_range

    def __call__(self, pred: Tensor, target: Tensor, **context: Any) -> Tensor:
        _check_pair(self.name, pred, target)
        return torch.mean(torch.abs(pred - target)) * _RANGE_SCALE[self.value_range]


class LPIPSLoss(Loss):
    """Batch mean of LPIPS v0.1 (``backbone`` ``alex``, pSp's choice, or ``vgg``).

    The network is frozen and built on first use from the cached ``lpips-<backbone>`` weights
    (``restorekit weights pull lpips-alex``); without them the call raises ``WeightsMissing``,
    never falls back to random features. ``net`` injects a ready :class:`LPIPSDistance`.
    Gradients flow to ``pred`` only; the target's features carry no graph.
    """

    name: ClassVar[str] = "lpips"

    def __init__(self, weight: float = 1.0, backbone: Backbone = "alex",
                 net: LPIPSDistance | None = None) -> None:
        super().__init__(weight)
        if backbone not in ("alex", "vgg"):
            raise ValueError(f"lpips loss: unknown backbone '{backbone}'; known: alex, vgg")
        if net is not None and net.backbone != backbone:
            raise ValueError(f"lpips loss: backbone '{backbone}' but the given network is '{net.backbone}'")
        self.backbone = backbone
        self._net = net

    @property
    def net(self) -> LPIPSDistance:
        """The LPIPS network, loaded from the weights cache on first access."""
        if self._net is None:
            from .networks.lpips_net import lpips_from_registry

            self._net = lpips_from_registry(self.backbone)
        return self._net

    def __call__(self, pred: Tensor, target: Tensor, **context: Any) -> Tensor:
        _check_pair(self.name, pred, target)
        net = self.net
        if next(net.parameters()).device != pred.device:
            net.to(pred.device)
        return net(pred, target.detach()).mean()


class WNormLoss(Loss):
    """pSp's latent regulariser: batch mean of ``‖w − w_avg‖`` (Frobenius norm over W+).

    Reads ``latents`` (``N×n_styles×dim``) and, when pSp starts from the average latent,
    ``latent_avg`` (``n_styles×dim`` or ``dim``, broadcast) from the context; ``pred`` and
    ``target`` are unused. ``squared=True`` gives the squared norm instead (pSp uses the plain
    norm, so its ``w_norm_lambda`` applies only with the default).
    """

    name: ClassVar[str] = "w_norm"
    context_inputs: ClassVar[tuple[LossContext, ...]] = (
        LossContext("latents", (4, 8), description="W+ latents, N×n_styles×dim"),
        LossContext("latent_avg", (4, 8), per_image=False, required=False,
                    description="the average latent (n_styles×dim or dim), subtracted when given"),
    )

    def __init__(self, weight: float = 1.0, squared: bool = False) -> None:
        super().__init__(weight)
        self.squared = squared

    def __call__(self, pred: Tensor, target: Tensor, **context: Any) -> Tensor:
        latents = context.get("latents")
        if not isinstance(latents, Tensor) or latents.ndim != 3:
            raise ValueError("w_norm loss needs context 'latents', an N×n_styles×dim tensor")
        avg = context.get("latent_avg")
        delta = latents if avg is None else latents - avg.to(latents.dtype)
        flat = delta.flatten(1)
        if self.squared:
            return flat.pow(2).sum(dim=1).mean()
        return torch.linalg.vector_norm(flat, dim=1).mean()  # zero subgradient at w = w_avg


#: What the core registers as ``losses``.
BUILTIN_LOSSES: tuple[type[Loss], ...] = (L2Loss, L1Loss, LPIPSLoss, WNormLoss)
