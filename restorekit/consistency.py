"""Data consistency for super-resolution: make an output downscale to its input.

A face prior that cannot draw a given person (a hair colour it never learned, a background,
skin tone, lighting) returns a face whose downscale visibly differs from the LR input.
:func:`back_project` corrects the output's low frequencies until its downscale matches the input
and keeps its high frequencies: iterative back-projection (Irani & Peleg, 1991), the projection
onto the set of consistent images that consistency-enforcing SR modules use (Bahat & Michaeli,
Explorable Super Resolution, CVPR 2020), alternated with the [0,1] box (POCS).

One step: ``x ← clamp(x + U(lr − D(x)), 0, 1)`` with ``D`` restorekit's antialiased bicubic
downscale (the ``bicubic:K`` degradation, PIL's convention) and ``U`` bicubic upscaling back.
``D∘U`` acts on LR images as a low-pass filter with gain in (0, 1], so each step shrinks the
downscale error, fastest in the low frequencies where faces keep most of their energy: on the
128-px validation faces at ×8, three steps take psp_sr's error from 1.1e-2 to 3.8e-5 (bicubic
upscaling's own: 4.7e-4) and lower its mean dlib distance to the person from 0.599 to 0.576
(``recipes/prior128/README.md``).

At ×1 (an output of the input's own size: a denoiser, a JPEG-artefact remover, a deblurrer, or
psp_sr at ``--scale 1``) ``D`` is the identity: the only consistent image is the input itself, and
there are no frequencies above the input's for the method to keep. Projecting would hand back the
degraded input bit for bit, erasing what the method did, so :func:`back_project` returns the
output unchanged there (``consistency_steps`` has no effect at ×1).

It assumes the input was made the way ``bicubic:K`` makes it. Blur, noise and JPEG in a real
input are copied into the output's low frequencies along with the face: for such inputs the
correction follows the input's flaws too.
"""

from __future__ import annotations

from torch import Tensor

from .degradations import bicubic_resize

__all__ = ["back_project", "downscale_error"]


def downscale_error(sr: Tensor, lr: Tensor) -> Tensor:
    """Per-image ``mean((D(sr) − lr)²)`` on [0,1], ``D`` the antialiased bicubic downscale to ``lr``'s size."""
    _check(sr, lr)
    small = bicubic_resize(sr, (lr.shape[-2], lr.shape[-1])).clamp(0, 1)
    return (small - lr.to(small.dtype)).pow(2).flatten(1).mean(1)


def back_project(sr: Tensor, lr: Tensor, *, steps: int = 3, clamp: bool = True) -> Tensor:
    """``sr`` (``N×C×H×W`` in [0,1]) corrected in ``steps`` back-projection steps to downscale to ``lr``.

    ``lr`` is ``N×C×h×w`` (or ``1×C×h×w`` for every row), the input ``sr`` was restored from;
    ``H×W`` may be any multiple of it (or the generator's native size). Differentiable, same
    dtype and device as ``sr``; ``steps=0`` returns ``sr`` itself, whatever ``lr`` (so callers pass
    their option through), and so does an ``sr`` of ``lr``'s own size (×1: projecting would return
    ``lr`` itself; see the module's docstring). ``clamp=False`` leaves out the [0,1] box (for
    training: a clamped pixel passes no gradient).
    """
    if steps < 0:
        raise ValueError(f"back_project: steps must be >= 0, got {steps}")
    if steps == 0:
        return sr
    _check(sr, lr)
    if sr.shape[-2:] == lr.shape[-2:]:
        return sr
    target = lr.to(device=sr.device, dtype=sr.dtype)
    x = sr
    for _ in range(steps):
        residual = target - bicubic_resize(x, (target.shape[-2], target.shape[-1]))
        x = x + bicubic_resize(residual, (x.shape[-2], x.shape[-1]))
        if clamp:
            x = x.clamp(0, 1)
    return x


def _check(sr: Tensor, lr: Tensor) -> None:
    if sr.ndim != 4 or lr.ndim != 4 or sr.shape[1] != lr.shape[1]:
        raise ValueError(f"consistency: need N×C×H×W batches with equal channels, got {tuple(sr.shape)} and "
                         f"{tuple(lr.shape)}")
    if lr.shape[0] not in (1, sr.shape[0]):
        raise ValueError(f"consistency: {lr.shape[0]} LR images for {sr.shape[0]} outputs")
    if lr.shape[-2] > sr.shape[-2] or lr.shape[-1] > sr.shape[-1]:
        raise ValueError(f"consistency: the LR input {tuple(lr.shape[-2:])} is larger than the output "
                         f"{tuple(sr.shape[-2:])}")
