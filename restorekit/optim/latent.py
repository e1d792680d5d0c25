"""Building blocks for searching a generator's latent space, shared by PULSE and ``psp_pulse``.

PULSE (Menon et al., CVPR 2020) looks for a generator image whose downscale matches a
low-resolution input; ``psp_pulse`` (restorekit-psp-sr) starts the same search from a pSp
encoder's W+. Both need the same pieces, kept here so neither plugin copies the other:

* :func:`downscale_mse`: PULSE's data term, per sample, with restorekit's antialiased bicubic
  (:func:`restorekit.degradations.bicubic_resize`, the ``bicubic:K`` degradation's resize, not
  clamped so gradients reach every pixel).
* :class:`GaussianFit` / :func:`fit_gaussian`: the mapping network's last layer is a leaky ReLU
  (slope 0.2), so ``w`` is far from Gaussian; undoing it (a leaky ReLU with slope 1/0.2) makes it
  close to one, fitted per dimension. A positive gain after the activation (StyleGAN2's √2)
  needs no special case: leaky ReLUs are positively homogeneous, so mean/std absorb it.
* :func:`project_to_sphere` / :class:`SphericalOptimizer`: high-dimensional Gaussians
  concentrate on a sphere, so PULSE keeps each layer's whitened latent (and each optimised noise
  map) on its own sphere, rescaling after every optimiser step.
* :class:`LatentAdam`: torch's Adam update without ``torch.optim.Optimizer`` around it, whose
  first use imports ``torch._dynamo`` (1.3–2.5 s on a CPU, sympy included) in a process that
  compiles nothing.
* :func:`geocross`: the mean squared geodesic distance between the per-layer latents of W+.
* :func:`lr_factor`: PULSE's learning-rate schedules.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.optim.adam import adam as _adam_update

from ..degradations import bicubic_resize
from ..interfaces import Generator

Schedule = Literal["fixed", "linear1cycle", "linear1cycledrop"]

__all__ = [
    "GaussianFit", "LatentAdam", "Schedule", "SphericalOptimizer", "downscale_mse", "fit_gaussian", "geocross",
    "lr_factor", "project_to_sphere", "sphere_radius",
]


# -- the data term ------------------------------------------------------------------------
def downscale_mse(images: Tensor, lr: Tensor) -> Tensor:
    """Per-sample ``mean((downscale(images) − lr)²)``; ``images`` are resized to ``lr``'s size.

    The resize is restorekit's antialiased bicubic (PIL's convention), differentiable and not
    clamped. ``images`` ``N×C×H×W`` and ``lr`` ``N×C×h×w`` (or ``1×C×h×w``, broadcast) in [0, 1].
    """
    if images.ndim != 4 or lr.ndim != 4 or images.shape[1] != lr.shape[1]:
        raise ValueError(f"downscale_mse needs N×C×H×W batches with equal channels, got "
                         f"{tuple(images.shape)} and {tuple(lr.shape)}")
    small = bicubic_resize(images, (lr.shape[-2], lr.shape[-1]))
    return (small - lr).pow(2).mean((1, 2, 3))


# -- spheres ------------------------------------------------------------------------------
def project_to_sphere(x: Tensor, radius: Tensor | float, start_dim: int = 2) -> Tensor:
    """Rescale each ``x[i, j]`` (flattened over dims ``start_dim…``) to norm ``radius``."""
    dims = tuple(range(start_dim, x.ndim))
    norm = x.pow(2).sum(dims, keepdim=True).add(1e-9).sqrt()
    return x / norm * radius


def sphere_radius(x: Tensor, start_dim: int = 2) -> Tensor:
    """Norms of ``x`` over dims ``start_dim…`` (kept as broadcastable dims)."""
    return x.pow(2).sum(tuple(range(start_dim, x.ndim)), keepdim=True).sqrt()


class LatentAdam:
    """Adam on a few tensors, updated by torch's own functional Adam (:func:`torch.optim.adam.adam`).

    The update is ``torch.optim.Adam``'s (defaults: no weight decay, no AMSGrad): the same function,
    called with the same arguments on the same state (a CPU ``step`` tensor, ``exp_avg``,
    ``exp_avg_sq``), so the iterates equal the class's bit for bit. What is left out is
    ``torch.optim.Optimizer``'s machinery (hooks, state dicts, compile support), whose first use
    (construction) imports ``torch._dynamo``, sympy with it: 1.3–2.5 s of a CPU process that
    restores a couple of images and compiles nothing. ``lr`` (also ``param_groups[0]["lr"]``, as
    on a torch optimiser) may change between steps. Parameters without a gradient are skipped.
    """

    def __init__(self, params: Iterable[Tensor], lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8) -> None:
        self.params = list(params)
        if not self.params:
            raise ValueError("LatentAdam got no parameters")
        if not lr >= 0.0:
            raise ValueError(f"LatentAdam: invalid learning rate {lr}")
        if not eps >= 0.0:
            raise ValueError(f"LatentAdam: invalid eps {eps}")
        if not (0.0 <= betas[0] < 1.0 and 0.0 <= betas[1] < 1.0):
            raise ValueError(f"LatentAdam: invalid betas {betas} (each in [0, 1))")
        self.param_groups: list[dict[str, Any]] = [
            {"params": self.params, "lr": lr, "betas": tuple(betas), "eps": eps}]
        #: per parameter index: step (a CPU scalar tensor, as torch.optim.Adam keeps it), exp_avg, exp_avg_sq
        self.state: dict[int, dict[str, Tensor]] = {}

    @property
    def lr(self) -> float:
        return float(self.param_groups[0]["lr"])

    @lr.setter
    def lr(self, value: float) -> None:
        self.param_groups[0]["lr"] = value

    def zero_grad(self, set_to_none: bool = True) -> None:
        for p in self.params:
            if p.grad is None:
                continue
            if set_to_none:
                p.grad = None
            else:
                p.grad.detach_().zero_()

    @torch.no_grad()
    def step(self) -> None:
        group = self.param_groups[0]
        params: list[Tensor] = []
        grads: list[Tensor] = []
        exp_avgs: list[Tensor] = []
        exp_avg_sqs: list[Tensor] = []
        steps: list[Tensor] = []
        for i, p in enumerate(self.params):
            if p.grad is None:
                continue
            if p.grad.is_sparse:
                raise RuntimeError("LatentAdam does not take sparse gradients")
            state = self.state.get(i)
            if state is None:
                # torch.optim.Adam's layout: the step count on the CPU, in the default float dtype's precision.
                scalar = torch.float64 if torch.get_default_dtype() == torch.float64 else torch.float32
                state = self.state[i] = {
                    "step": torch.tensor(0.0, dtype=scalar),
                    "exp_avg": torch.zeros_like(p, memory_format=torch.preserve_format),
                    "exp_avg_sq": torch.zeros_like(p, memory_format=torch.preserve_format),
                }
            params.append(p)
            grads.append(p.grad)
            exp_avgs.append(state["exp_avg"])
            exp_avg_sqs.append(state["exp_avg_sq"])
            steps.append(state["step"])
        if not params:
            return
        beta1, beta2 = group["betas"]
        _adam_update(params, grads, exp_avgs, exp_avg_sqs, [], steps, foreach=None,
                     has_complex=any(torch.is_complex(p) for p in params), amsgrad=False, beta1=beta1,
                     beta2=beta2, lr=group["lr"], weight_decay=0.0, eps=group["eps"], maximize=False)


class SphericalOptimizer:
    """Adam (or another optimiser) whose parameters are projected back onto their spheres.

    Each parameter has shape ``N×K×…``: every ``[i, k]`` slice is one point on a sphere whose
    radius is its norm at construction (``radii`` overrides). After the inner optimiser's step,
    the slices are rescaled to those radii. ``optimizer`` builds the inner optimiser from
    ``(params, lr=lr)``: :class:`LatentAdam` keeps ``torch._dynamo`` out of the process; the
    default, ``torch.optim.Adam``, is a ``torch.optim.Optimizer``, for a torch scheduler on
    :attr:`opt`. ``lr_lambda`` schedules the learning rate here instead, as ``LambdaLR`` would:
    the ``k``-th step (from 0) runs at ``lr · lr_lambda(k)``.
    """

    def __init__(self, params: Sequence[Tensor], lr: float, *, radii: Sequence[Tensor] | None = None,
                 optimizer: Callable[..., Any] = torch.optim.Adam,
                 lr_lambda: Callable[[int], float] | None = None) -> None:
        self.params = list(params)
        with torch.no_grad():
            self.radii = [r.detach().clone() for r in radii] if radii is not None else \
                [sphere_radius(p) for p in self.params]
        self.base_lr = lr
        self.lr_lambda = lr_lambda
        self.steps_taken = 0
        self.opt = optimizer(self.params, lr=lr)
        self._schedule()

    def _schedule(self) -> None:
        if self.lr_lambda is not None:
            for group in self.opt.param_groups:
                group["lr"] = self.base_lr * self.lr_lambda(self.steps_taken)

    def zero_grad(self) -> None:
        self.opt.zero_grad(set_to_none=True)

    @torch.no_grad()
    def step(self) -> None:
        self.opt.step()
        for p, r in zip(self.params, self.radii):
            p.copy_(project_to_sphere(p, r))
        self.steps_taken += 1
        self._schedule()


# -- schedules ----------------------------------------------------------------------------
def lr_factor(schedule: Schedule, step: int, steps: int) -> float:
    """Learning-rate multiplier at ``step`` of ``steps`` (PULSE's schedules).

    ``linear1cycle``: a triangle from 0.1 up to 1 at mid-run and back to 0.1.
    ``linear1cycledrop``: that triangle squeezed into the first 90 % of the steps, then a linear
    fall from 0.1 to 0.001 over the last 10 %. ``fixed``: 1.
    """
    if schedule == "fixed":
        return 1.0
    if schedule == "linear1cycle":
        t = step / steps
        return 0.1 + 0.9 * (1.0 - abs(2.0 * t - 1.0))
    if schedule == "linear1cycledrop":
        cut = 0.9 * steps
        if step < cut:
            t = step / cut
            return 0.1 + 0.9 * (1.0 - abs(2.0 * t - 1.0))
        return 0.1 + (step - cut) / (steps - cut) * (0.001 - 0.1)
    raise ValueError(f"unknown learning-rate schedule '{schedule}'; known: fixed, linear1cycle, linear1cycledrop")


# -- GEOCROSS -----------------------------------------------------------------------------
def geocross(latents: Tensor) -> Tensor:
    """Per-sample GEOCROSS of ``N×L×D`` latents: ``D/8 ·`` mean over layer pairs of angle².

    The angle between two layers is ``2·atan2(|a−b|, |a+b|)`` (stable for equal-norm vectors,
    exact on a sphere). The ``D/8`` factor makes weights comparable with PULSE's (0.05 at D=512).
    A single layer (tiled latent) gives 0.
    """
    n, layers, dim = latents.shape
    if layers == 1:
        return latents.new_zeros(n)
    a = latents.unsqueeze(1)
    b = latents.unsqueeze(2)
    diff = (a - b).pow(2).sum(-1).add(1e-9).sqrt()
    summ = (a + b).pow(2).sum(-1).add(1e-9).sqrt()
    angle = 2.0 * torch.atan2(diff, summ)
    return angle.pow(2).mean((1, 2)) * (dim / 8.0)


# -- gaussianised W -----------------------------------------------------------------------
@dataclass(frozen=True)
class GaussianFit:
    """Per-dimension mean/std of the mapping's pre-activation, ``leaky_relu(map(z), 1/slope)``."""

    mean: Tensor
    std: Tensor
    slope: float = 0.2

    def to_w(self, u: Tensor) -> Tensor:
        """Whitened latents ``…×D`` to W."""
        return F.leaky_relu(u * self.std + self.mean, self.slope)

    def from_w(self, w: Tensor) -> Tensor:
        """W latents ``…×D`` to the whitened space (the inverse of :meth:`to_w`)."""
        return (F.leaky_relu(w, 1.0 / self.slope) - self.mean) / self.std

    def to(self, device: torch.device | str) -> GaussianFit:
        return GaussianFit(self.mean.to(device), self.std.to(device), self.slope)


@torch.no_grad()
def fit_gaussian(generator: Generator, n: int = 100_000, *, slope: float = 0.2, seed: int = 0,
                 chunk: int = 8192) -> GaussianFit:
    """Fit :class:`GaussianFit` to ``n`` mapped normal samples drawn with ``seed`` (PULSE: 10⁶)."""
    if n < 2:
        raise ValueError(f"fit_gaussian needs at least 2 samples, got {n}")
    device = next(generator.parameters()).device
    g = torch.Generator().manual_seed(seed)
    total = torch.zeros(generator.style_dim, dtype=torch.float64, device=device)
    total_sq = torch.zeros_like(total)
    done = 0
    while done < n:
        m = min(chunk, n - done)
        z = torch.randn(m, generator.z_dim, generator=g).to(device)
        x = F.leaky_relu(generator.map(z), 1.0 / slope).double()
        total += x.sum(0)
        total_sq += x.pow(2).sum(0)
        done += m
    mean = total / n
    var = (total_sq - n * mean.pow(2)) / (n - 1)
    std = var.clamp_min(1e-12).sqrt()
    return GaussianFit(mean.float(), std.float(), slope)
