"""Differentiable augmentation for GAN training on small data sets (DiffAugment, Zhao et al. 2020).

A discriminator trained on 8k faces memorises them within tens of thousands of images; showing
it real *and* generated images through the same random, differentiable transforms — in the
discriminator's step and in the generator's — keeps it from overfitting without leaking the
augmentations into the generated distribution (the generator's gradient flows through them).

Three transform families, each applied to every image with its own random parameters:

* ``color``: brightness shift, saturation and contrast scaling;
* ``translation``: an integer shift of up to ``1/8`` of the side, the uncovered border mid-grey;
* ``cutout``: a mid-grey square of half the side at a random place.

Images are in restorekit's ``[0, 1]`` convention; "mid-grey" is 0.5 (the zero of StyleGAN's
``[-1, 1]`` range, as in the paper). Randomness comes from the global generator of the images'
device, which a training checkpoint saves and restores.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

POLICIES = ("color", "translation", "cutout")


def _rand(x: Tensor, *shape: int) -> Tensor:
    return torch.rand(x.shape[0], *shape, device=x.device, dtype=x.dtype)


def brightness(x: Tensor) -> Tensor:
    """Add a per-image shift in ``[-0.25, 0.25)`` (``[-0.5, 0.5)`` in StyleGAN's range)."""
    return x + (_rand(x, 1, 1, 1) - 0.5) * 0.5


def saturation(x: Tensor) -> Tensor:
    """Scale each pixel's distance to its grey value by a per-image factor in ``[0, 2)``."""
    mean = x.mean(dim=1, keepdim=True)
    return (x - mean) * (_rand(x, 1, 1, 1) * 2) + mean


def contrast(x: Tensor) -> Tensor:
    """Scale the distance to the image mean by a per-image factor in ``[0.5, 1.5)``."""
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    return (x - mean) * (_rand(x, 1, 1, 1) + 0.5) + mean


def translation(x: Tensor, ratio: float = 0.125) -> Tensor:
    """Shift each image by whole pixels, up to ``ratio`` of its side on each axis (border 0.5)."""
    n, _, h, w = x.shape
    sy, sx = int(h * ratio + 0.5), int(w * ratio + 0.5)
    if sy == 0 and sx == 0:
        return x
    dy = torch.randint(-sy, sy + 1, (n, 1, 1), device=x.device)
    dx = torch.randint(-sx, sx + 1, (n, 1, 1), device=x.device)
    ys = torch.arange(h, device=x.device).view(1, h, 1) - dy  # source row for each output row
    xs = torch.arange(w, device=x.device).view(1, 1, w) - dx
    # Pad by the largest shift with mid-grey and gather the shifted window from the padded image.
    padded = F.pad(x - 0.5, (sx, sx, sy, sy)) + 0.5
    rows = (ys + sy).clamp(0, h + 2 * sy - 1)
    cols = (xs + sx).clamp(0, w + 2 * sx - 1)
    wp = w + 2 * sx
    flat = (rows * wp + cols).view(n, 1, h * w).expand(-1, x.shape[1], -1)
    return padded.flatten(2).gather(2, flat).view_as(x)


def cutout(x: Tensor, ratio: float = 0.5) -> Tensor:
    """Replace a square of ``ratio`` of the side, centred anywhere in the image, with 0.5."""
    n, _, h, w = x.shape
    ch, cw = int(h * ratio + 0.5), int(w * ratio + 0.5)
    cy = torch.randint(0, h + (1 - ch % 2), (n, 1, 1), device=x.device)
    cx = torch.randint(0, w + (1 - cw % 2), (n, 1, 1), device=x.device)
    ys = torch.arange(h, device=x.device).view(1, h, 1)
    xs = torch.arange(w, device=x.device).view(1, 1, w)
    inside = (ys >= cy - ch // 2) & (ys < cy - ch // 2 + ch) & (xs >= cx - cw // 2) & (xs < cx - cw // 2 + cw)
    keep = (~inside).unsqueeze(1).to(x.dtype)
    return x * keep + 0.5 * (1 - keep)


_FAMILIES: dict[str, tuple[Callable[[Tensor], Tensor], ...]] = {
    "color": (brightness, saturation, contrast),
    "translation": (translation,),
    "cutout": (cutout,),
}


def parse_policy(policy: str | Sequence[str]) -> tuple[str, ...]:
    """``"color,translation,cutout"`` (or a list) as a tuple of known family names; ``""`` → none."""
    names = [p.strip() for p in (policy.split(",") if isinstance(policy, str) else policy) if p.strip()]
    unknown = [p for p in names if p not in _FAMILIES]
    if unknown:
        raise ValueError(f"unknown DiffAugment policy '{unknown[0]}'; known: {', '.join(POLICIES)}")
    return tuple(names)


def diff_augment(x: Tensor, policy: str | Sequence[str] = POLICIES) -> Tensor:
    """``x`` (``N×C×H×W`` in [0,1]) through the policy's transforms, differentiably."""
    for name in parse_policy(policy):
        for fn in _FAMILIES[name]:
            x = fn(x)
    return x


__all__ = ["POLICIES", "brightness", "contrast", "cutout", "diff_augment", "parse_policy", "saturation",
           "translation"]
