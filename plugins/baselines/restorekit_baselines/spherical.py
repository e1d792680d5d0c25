"""Latent optimisation on spheres, as in PULSE (Menon et al., CVPR 2020), for any ``Generator``.

PULSE searches a generator's latent space for an image whose downscale matches a low-resolution
input. Three ideas make the search stay on "natural" faces; this module implements each so that
other methods (``psp_pulse`` starts from an encoder's W+) can reuse them through
:func:`optimise_latents`:

* **Gaussianised W.** The mapping network's last layer is a leaky ReLU (slope 0.2), so ``w`` is
  far from Gaussian. Undoing that activation (a leaky ReLU with slope 1/0.2) makes it close to a
  Gaussian, fitted per dimension by :func:`fit_gaussian`. Latents ``u`` live in that whitened
  space and map to ``w = leaky_relu(u·std + mean, 0.2)`` (:meth:`GaussianFit.to_w`). A positive
  gain after the activation (StyleGAN2's √2) needs no special case: leaky ReLUs are positively
  homogeneous, so the fitted mean/std absorb it.
* **Spheres.** High-dimensional Gaussians concentrate on the sphere of radius √dim, so every
  layer's latent (and every optimised noise map) is kept on its own sphere: after each Adam
  step it is rescaled to its radius (:class:`SphericalOptimizer`). Random starts are put on the
  sphere of radius √dim; a given start keeps the radius it has (PULSE keeps initial radii).
* **GEOCROSS.** In W+ the per-layer latents may drift apart; :func:`geocross` penalises the mean
  squared geodesic (angular) distance between them.

The data term downsamples the generated image with restorekit's antialiased bicubic
(:func:`restorekit.degradations.bicubic_resize`, PIL's convention, not clamped so gradients reach
every pixel) to the input's size and compares it with L2 (and optionally L1); a sample is done
when its downscale MSE drops below ``eps``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from restorekit.degradations import bicubic_resize
from restorekit.interfaces import Generator

LatentSpace = Literal["w+", "z"]
NoiseMode = Literal["trainable", "fixed", "const", "zero"]
Schedule = Literal["fixed", "linear1cycle", "linear1cycledrop"]

__all__ = [
    "GaussianFit", "OptimiseConfig", "OptimiseResult", "SphericalOptimizer", "fit_gaussian",
    "geocross", "lr_factor", "optimise_latents", "project_to_sphere",
]


# -- spheres ------------------------------------------------------------------------------
def project_to_sphere(x: Tensor, radius: Tensor | float, start_dim: int = 2) -> Tensor:
    """Rescale each ``x[i, j]`` (flattened over dims ``start_dim…``) to norm ``radius``."""
    dims = tuple(range(start_dim, x.ndim))
    norm = x.pow(2).sum(dims, keepdim=True).add(1e-9).sqrt()
    return x / norm * radius


def sphere_radius(x: Tensor, start_dim: int = 2) -> Tensor:
    """Norms of ``x`` over dims ``start_dim…`` (kept as broadcastable dims)."""
    return x.pow(2).sum(tuple(range(start_dim, x.ndim)), keepdim=True).sqrt()


class SphericalOptimizer:
    """Adam (or another torch optimiser) whose parameters are projected back onto their spheres.

    Each parameter has shape ``N×K×…``: every ``[i, k]`` slice is one point on a sphere whose
    radius is its norm at construction (``radii`` overrides). After the inner optimiser's step,
    the slices are rescaled to those radii.
    """

    def __init__(self, params: Sequence[Tensor], lr: float, *, radii: Sequence[Tensor] | None = None,
                 optimizer: Callable[..., torch.optim.Optimizer] = torch.optim.Adam) -> None:
        self.params = list(params)
        with torch.no_grad():
            self.radii = [r.detach().clone() for r in radii] if radii is not None else \
                [sphere_radius(p) for p in self.params]
        self.opt = optimizer(self.params, lr=lr)

    def zero_grad(self) -> None:
        self.opt.zero_grad(set_to_none=True)

    @torch.no_grad()
    def step(self) -> None:
        self.opt.step()
        for p, r in zip(self.params, self.radii):
            p.copy_(project_to_sphere(p, r))


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


# -- the optimisation ---------------------------------------------------------------------
@dataclass(frozen=True)
class OptimiseConfig:
    """What :func:`optimise_latents` does; defaults are PULSE's."""

    steps: int = 100
    learning_rate: float = 0.4
    schedule: Schedule = "linear1cycledrop"
    eps: float = 2e-3
    l2_weight: float = 100.0
    l1_weight: float = 0.0
    geocross_weight: float = 0.05
    latent: LatentSpace = "w+"
    tile_latent: bool = False
    noise: NoiseMode = "trainable"
    trainable_noise_layers: int = 5
    stop_at_eps: bool = True

    def __post_init__(self) -> None:
        if self.steps < 1:
            raise ValueError(f"steps must be ≥ 1, got {self.steps}")
        if self.learning_rate <= 0 or self.eps < 0:
            raise ValueError("learning_rate must be > 0 and eps ≥ 0")
        if self.latent not in ("w+", "z"):
            raise ValueError(f"latent must be 'w+' or 'z', got {self.latent!r}")
        if self.noise not in ("trainable", "fixed", "const", "zero"):
            raise ValueError(f"noise must be trainable, fixed, const or zero, got {self.noise!r}")


@dataclass
class OptimiseResult:
    """Per-sample outcome of :func:`optimise_latents` (rows follow the input rows)."""

    images: Tensor  # N×3×R×R, clamped to [0,1]: the best (lowest downscale MSE) iterate
    w_plus: Tensor  # N×n_styles×style_dim of that iterate
    mse: Tensor  # N: its downscale MSE
    loss: Tensor  # N: its total loss
    steps: list[int]  # per sample: step (1-based) at which eps was reached, else steps run
    reached: list[bool]
    # The per-layer noise maps of that iterate (N×1×r×r each), None for generators without noise;
    # ``generator.synthesize(w_plus, noise=noise)`` reproduces ``images`` (before the clamp).
    noise: list[Tensor] | None = None
    history: list[list[float]] = field(default_factory=list)  # per step: the N downscale MSEs
    latents: list[Tensor] = field(default_factory=list)  # per step (when recorded): the optimised latents


def _noise_maps(generator: Generator, n: int, config: OptimiseConfig, rng: torch.Generator,
                device: torch.device) -> tuple[list[Tensor] | None, list[Tensor]]:
    """The per-layer noise list for ``synthesize`` and the subset that is optimised."""
    buffers = generator.noise_buffers()
    if not buffers:
        return None, []
    maps: list[Tensor] = []
    trainable: list[Tensor] = []
    for i, buf in enumerate(buffers):
        shape = (n, *buf.shape[1:])
        if config.noise == "zero":
            t = torch.zeros(shape, device=device)
        elif config.noise == "const":
            t = buf.detach().expand(shape).clone()
        else:
            t = torch.randn(shape, generator=rng).to(device)
            if config.noise == "trainable" and i < config.trainable_noise_layers:
                t.requires_grad_(True)
                trainable.append(t)
        maps.append(t)
    return maps, trainable


def _downscale_to(images: Tensor, size: tuple[int, int]) -> Tensor:
    return bicubic_resize(images, size)


def optimise_latents(
    generator: Generator,
    lr: Tensor,
    init_w_plus: Tensor | None = None,
    *,
    config: OptimiseConfig | None = None,
    fit: GaussianFit | None = None,
    rng: torch.Generator | None = None,
    progress: Callable[[int, Tensor], None] | None = None,
    record_latents: bool = False,
) -> OptimiseResult:
    """Find, for each row of ``lr`` (``N×3×h×w`` in [0,1]), a generator image that downscales to it.

    ``init_w_plus`` (``N×n_styles×style_dim``, W+ mode only) starts from given latents (e.g. an
    encoder's), mapped into the whitened space with ``fit`` and kept on their own spheres;
    without it the start is random from ``rng`` on the sphere of radius √dim. ``fit`` is
    required in W+ mode (see :func:`fit_gaussian`). ``progress(step, mse)`` is called after every
    step. The generator's parameters are not changed and receive no gradients.
    """
    cfg = config or OptimiseConfig()
    rng = rng if rng is not None else torch.Generator().manual_seed(0)
    device = lr.device
    n, size = lr.shape[0], (lr.shape[-2], lr.shape[-1])
    target = lr.detach().float()
    layers = 1 if cfg.tile_latent else generator.n_styles
    if cfg.latent == "w+":
        if fit is None:
            raise ValueError("optimise_latents: latent='w+' needs a GaussianFit (fit_gaussian(generator))")
        fit = fit.to(device)
        dim = generator.style_dim
    else:
        if init_w_plus is not None:
            raise ValueError("optimise_latents: init_w_plus needs latent='w+' (Z cannot be recovered from W)")
        dim = generator.z_dim

    if init_w_plus is not None:
        assert fit is not None
        if init_w_plus.shape != (n, generator.n_styles, generator.style_dim):
            raise ValueError(f"init_w_plus must be {n}×{generator.n_styles}×{generator.style_dim}, "
                             f"got {tuple(init_w_plus.shape)}")
        start = fit.from_w(init_w_plus.detach().to(device).float())
        if cfg.tile_latent:
            start = start.mean(1, keepdim=True)
        latent = start.clone().requires_grad_(True)
        radius = sphere_radius(latent.detach())
    else:
        start = torch.randn(n, layers, dim, generator=rng).to(device)
        radius = torch.full((n, layers, 1), math.sqrt(dim), device=device)
        latent = project_to_sphere(start, radius).requires_grad_(True)
    noise, noise_vars = _noise_maps(generator, n, cfg, rng, device)

    params = [latent, *noise_vars]
    opt = SphericalOptimizer(params, cfg.learning_rate,
                             radii=[radius, *[sphere_radius(v.detach()) for v in noise_vars]])
    sched = torch.optim.lr_scheduler.LambdaLR(opt.opt, lambda s: lr_factor(cfg.schedule, s, cfg.steps))

    def to_w_plus(u: Tensor) -> Tensor:
        if cfg.latent == "w+":
            assert fit is not None
            w = fit.to_w(u)
        else:
            w = generator.map(u.reshape(-1, dim)).reshape(n, u.shape[1], generator.style_dim)
        return w.expand(n, generator.n_styles, generator.style_dim) if w.shape[1] == 1 else w

    requires = [p.requires_grad for p in generator.parameters()]
    for p in generator.parameters():
        p.requires_grad_(False)
    best_mse = torch.full((n,), math.inf, device=device)
    best_loss = torch.full((n,), math.inf, device=device)
    best_img: Tensor | None = None
    best_w: Tensor | None = None
    best_noise: list[Tensor] | None = None
    steps_taken = [cfg.steps] * n
    reached = [False] * n
    done = torch.zeros(n, dtype=torch.bool, device=device)
    frozen = [p.detach().clone() for p in params]
    history: list[list[float]] = []
    recorded: list[Tensor] = []
    try:
        for step in range(cfg.steps):
            opt.zero_grad()
            w_plus = to_w_plus(latent)
            img = generator.synthesize(w_plus, noise=noise) if noise is not None else generator.synthesize(w_plus)
            small = _downscale_to(img, size)
            diff = small - target
            mse = diff.pow(2).mean((1, 2, 3))
            per = cfg.l2_weight * mse
            if cfg.l1_weight:
                per = per + cfg.l1_weight * diff.abs().mean((1, 2, 3))
            if cfg.geocross_weight and layers > 1:
                per = per + cfg.geocross_weight * geocross(latent)
            with torch.no_grad():
                better = mse.detach() < best_mse
                if best_img is None:
                    best_img, best_w = img.detach().clone(), w_plus.detach().clone()
                    best_noise = [t.detach().clone() for t in noise] if noise is not None else None
                else:
                    assert best_w is not None
                    best_img[better] = img.detach()[better]
                    best_w[better] = w_plus.detach()[better]
                    if best_noise is not None and noise_vars:
                        for b, t in zip(best_noise, noise):
                            b[better] = t.detach()[better]
                best_mse = torch.where(better, mse.detach(), best_mse)
                best_loss = torch.where(better, per.detach(), best_loss)
                history.append(mse.detach().cpu().tolist())
                if record_latents:
                    recorded.append(latent.detach().clone())
                for i in range(n):
                    if not reached[i] and float(mse[i]) < cfg.eps:
                        reached[i] = True
                        steps_taken[i] = step + 1
                        done[i] = True
                        for p, snap in zip(params, frozen):
                            snap[i] = p.detach()[i]
            if progress is not None:
                progress(step + 1, mse.detach())
            if cfg.stop_at_eps and all(reached):
                break
            per.sum().backward()
            opt.step()
            sched.step()
            if cfg.stop_at_eps and bool(done.any()):
                # Samples that reached eps stay where they were (PULSE's eps ends their data term).
                with torch.no_grad():
                    for p, snap in zip(params, frozen):
                        p[done] = snap[done]
    finally:
        for p, r in zip(generator.parameters(), requires):
            p.requires_grad_(r)
    assert best_img is not None and best_w is not None
    return OptimiseResult(images=best_img.clamp(0, 1), w_plus=best_w, mse=best_mse, loss=best_loss,
                          steps=steps_taken, reached=reached, noise=best_noise, history=history,
                          latents=recorded)
