"""The core metrics of ``restorekit compare``, each named after the convention it follows.

Conventions (those of the super-resolution literature, so numbers are comparable to papers):

- Inputs are the image convention (``N×3×H×W`` in [0,1], float32: an 8-bit value k is k/255 rounded
  to float32, which moves a PSNR by ~2e-8 relative); from there all arithmetic is float64.
- ``*_y_crop``: the BT.601 luma of the studio-swing YCbCr transform used by Matlab's
  ``rgb2ycbcr`` and every SR paper since SRCNN, ``Y = 16 + 65.481·R + 128.553·G + 24.966·B``
  on the [0,255] scale (R, G, B in [0,1]); ``scale`` pixels are cropped from every border.
- ``*_rgb``: all three channels on the [0,255] scale, no border crop.
- PSNR: ``10·log10(255² / MSE)``; identical images give ``+inf``.
- SSIM: Wang et al. 2004 with an 11×11 Gaussian window (σ = 1.5, normalised), K1 = 0.01,
  K2 = 0.03, L = 255, population (not sample) covariances, averaged over the "valid" region
  only (windows that fit entirely inside the image). This is the Matlab ``ssim_index`` convention
  and equals scikit-image's ``structural_similarity(gaussian_weights=True, sigma=1.5,
  use_sample_covariance=False, data_range=255)``; for RGB, the mean of the per-channel SSIMs.
- ``lr_consistency``: PULSE's criterion, the mean squared error (on [0,1]) between the
  prediction downscaled to the LR size with antialiased bicubic (PIL convention, the same
  kernel as the ``bicubic`` degradation) and the LR input. Lower is better. At ×1 (denoising,
  deblurring, JPEG) it is the distance between the output and the degraded input itself, lowest
  for a method that changes nothing: ``compare --scale 1`` leaves it out unless ``--metrics``
  names it (:attr:`~restorekit.interfaces.Metric.sr_only`).
- At ×1, ``*_y_crop`` still shave 1 px from every border (crop = scale); ``*_rgb`` crop nothing,
  as denoising papers report.
"""

from __future__ import annotations

import math
from typing import ClassVar

import torch
from torch import Tensor

from ..degradations import bicubic_resize
from ..interfaces import Metric, check_image_batch

# BT.601 studio-swing luma, as in Matlab's rgb2ycbcr (coefficients for R, G, B in [0,1]).
Y_OFFSET = 16.0
Y_COEFFS = (65.481, 128.553, 24.966)
SSIM_WINDOW = 11
SSIM_SIGMA = 1.5
SSIM_K1 = 0.01
SSIM_K2 = 0.03
DATA_RANGE = 255.0


def rgb_to_y(x: Tensor) -> Tensor:
    """``N×3×H×W`` RGB in [0,1] to ``N×1×H×W`` BT.601 luma on the [0,255] scale (16–235), float64."""
    x = x.to(torch.float64)
    r, g, b = x[:, 0:1], x[:, 1:2], x[:, 2:3]
    return Y_OFFSET + Y_COEFFS[0] * r + Y_COEFFS[1] * g + Y_COEFFS[2] * b


def crop_border(x: Tensor, border: int) -> Tensor:
    """Remove ``border`` pixels from each side of the last two dimensions."""
    if border <= 0:
        return x
    h, w = x.shape[-2:]
    if h <= 2 * border or w <= 2 * border:
        raise ValueError(f"a {h}×{w} image is too small for a border crop of {border} px")
    return x[..., border:h - border, border:w - border]


def psnr(pred: Tensor, target: Tensor, data_range: float = DATA_RANGE) -> Tensor:
    """Per-image PSNR in dB of ``N×C×H×W`` float64 tensors on the ``data_range`` scale (+inf when
    equal; NaN when either image has a NaN, as SSIM gives, not the +inf of a perfect score)."""
    mse = (pred - target).pow(2).flatten(1).mean(1)
    out = torch.where(mse == 0, math.inf, math.nan).to(mse)
    nz = mse > 0
    out[nz] = 10.0 * torch.log10(data_range**2 / mse[nz])
    return out


def gaussian_window(size: int = SSIM_WINDOW, sigma: float = SSIM_SIGMA) -> Tensor:
    """The normalised 1-D Gaussian whose outer product is Matlab's ``fspecial('gaussian', size, sigma)``."""
    r = size // 2
    t = torch.arange(-r, r + 1, dtype=torch.float64)
    g = torch.exp(-(t**2) / (2 * sigma**2))
    return g / g.sum()


def filter_valid(z: Tensor, g: Tensor) -> Tensor:
    """Separable "valid" filtering of the last two dims with the 1-D kernel ``g`` (shift-and-add).

    Shift-and-add on float64 is an order of magnitude faster on CPU than ``conv2d``, which has no
    optimised float64 path; the result is the same sum.
    """
    k = g.numel()
    h, w = z.shape[-2] - k + 1, z.shape[-1] - k + 1
    weights = [float(v) for v in g]
    acc = z[..., :, 0:w] * weights[0]
    for i in range(1, k):
        acc.add_(z[..., :, i:i + w], alpha=weights[i])
    out = acc[..., 0:h, :] * weights[0]
    for i in range(1, k):
        out.add_(acc[..., i:i + h, :], alpha=weights[i])
    return out


def _ssim_plane(x: Tensor, y: Tensor, g: Tensor, c1: float, c2: float) -> Tensor:
    mx, my = filter_valid(x, g), filter_valid(y, g)
    vx = filter_valid(x * x, g).sub_(mx * mx)
    vy = filter_valid(y * y, g).sub_(my * my)
    cxy = filter_valid(x * y, g).sub_(mx * my)
    num = (2 * mx * my + c1).mul_(2 * cxy + c2)
    return num.div_((mx * mx + my * my + c1).mul_(vx.add_(vy).add_(c2)))


def ssim_map(pred: Tensor, target: Tensor, data_range: float = DATA_RANGE) -> Tensor:
    """SSIM index map over the valid region, per channel (``N×C×(H-10)×(W-10)``), float64.

    Computed one image plane at a time: the planes stay in cache, about twice as fast on CPU.
    """
    if min(pred.shape[-2:]) < SSIM_WINDOW:
        raise ValueError(f"SSIM needs at least {SSIM_WINDOW}×{SSIM_WINDOW} px, got "
                         f"{pred.shape[-2]}×{pred.shape[-1]}")
    g = gaussian_window()
    x, y = pred.to(torch.float64), target.to(torch.float64)
    c1, c2 = (SSIM_K1 * data_range) ** 2, (SSIM_K2 * data_range) ** 2
    planes = [_ssim_plane(x[n, c], y[n, c], g, c1, c2) for n in range(x.shape[0]) for c in range(x.shape[1])]
    return torch.stack(planes).reshape(x.shape[0], x.shape[1], *planes[0].shape)


def ssim(pred: Tensor, target: Tensor, data_range: float = DATA_RANGE) -> Tensor:
    """Per-image mean SSIM (mean over channels and valid positions), float64."""
    return ssim_map(pred, target, data_range).flatten(1).mean(1)


def _check_pair(name: str, pred: Tensor, target: Tensor) -> None:
    """Both follow the image convention (N×3×H×W, floating point, values in [0, 1] give or take
    the slack of :func:`~restorekit.interfaces.check_image_batch`) and have one size; else one-line
    ``ValueError`` (a 0-255 or 3×H×W input would otherwise give a wrong number, not an error)."""
    check_image_batch(pred, f"{name}: prediction")
    check_image_batch(target, f"{name}: target")
    if pred.shape != target.shape:
        raise ValueError(f"{name}: prediction {tuple(pred.shape)} and target {tuple(target.shape)} differ in size")


class PsnrYCrop(Metric):
    """PSNR on BT.601 Y ([0,255]), border crop = scale, float64 — the SR-paper PSNR."""

    name: ClassVar[str] = "psnr_y_crop"
    higher_is_better: ClassVar[bool] = True
    summary: ClassVar[str] = "PSNR (dB) on BT.601 Y [16,235], border crop = scale, float64"
    fmt: ClassVar[str] = ".2f"

    def __call__(self, pred: Tensor, target: Tensor, *, lr: Tensor, scale: int) -> Tensor:
        _check_pair(self.name, pred, target)
        return psnr(crop_border(rgb_to_y(pred), scale), crop_border(rgb_to_y(target), scale))


class SsimYCrop(Metric):
    """SSIM on BT.601 Y ([0,255]), border crop = scale, Gaussian 11×11 σ=1.5 (Matlab convention)."""

    name: ClassVar[str] = "ssim_y_crop"
    higher_is_better: ClassVar[bool] = True
    summary: ClassVar[str] = ("SSIM on BT.601 Y, border crop = scale, Gaussian 11x11 sigma 1.5, "
                              "K1=0.01 K2=0.03, L=255, valid region (Matlab/skimage-gaussian)")
    fmt: ClassVar[str] = ".4f"

    def __call__(self, pred: Tensor, target: Tensor, *, lr: Tensor, scale: int) -> Tensor:
        _check_pair(self.name, pred, target)
        return ssim(crop_border(rgb_to_y(pred), scale), crop_border(rgb_to_y(target), scale))


class PsnrRgb(Metric):
    """PSNR over the three RGB channels ([0,255]), no border crop, float64."""

    name: ClassVar[str] = "psnr_rgb"
    higher_is_better: ClassVar[bool] = True
    summary: ClassVar[str] = "PSNR (dB) over RGB [0,255], no border crop, float64"
    fmt: ClassVar[str] = ".2f"

    def __call__(self, pred: Tensor, target: Tensor, *, lr: Tensor, scale: int) -> Tensor:
        _check_pair(self.name, pred, target)
        return psnr(pred.to(torch.float64) * 255.0, target.to(torch.float64) * 255.0)


class SsimRgb(Metric):
    """Mean of per-channel SSIMs on RGB ([0,255]), no border crop, Gaussian 11×11 σ=1.5."""

    name: ClassVar[str] = "ssim_rgb"
    higher_is_better: ClassVar[bool] = True
    summary: ClassVar[str] = ("SSIM, mean over R,G,B [0,255], no border crop, Gaussian 11x11 sigma 1.5, "
                              "K1=0.01 K2=0.03, valid region")
    fmt: ClassVar[str] = ".4f"

    def __call__(self, pred: Tensor, target: Tensor, *, lr: Tensor, scale: int) -> Tensor:
        _check_pair(self.name, pred, target)
        return ssim(pred.to(torch.float64) * 255.0, target.to(torch.float64) * 255.0)


class LrConsistency(Metric):
    """PULSE's criterion: MSE on [0,1] between bicubic-downscaled prediction and the LR input."""

    name: ClassVar[str] = "lr_consistency"
    higher_is_better: ClassVar[bool] = False
    sr_only: ClassVar[bool] = True  # at ×1: the distance to the degraded input, which doing nothing wins
    summary: ClassVar[str] = ("MSE on [0,1] between bicubic(antialiased, PIL)-downscaled SR and the LR "
                              "input (PULSE's criterion), float64")
    fmt: ClassVar[str] = ".3e"

    def __call__(self, pred: Tensor, target: Tensor, *, lr: Tensor, scale: int) -> Tensor:
        check_image_batch(pred, f"{self.name}: prediction")
        check_image_batch(lr, f"{self.name}: lr")
        if pred.shape[0] != lr.shape[0]:
            raise ValueError(f"{self.name}: {pred.shape[0]} predictions for {lr.shape[0]} LR images")
        down = bicubic_resize(pred.to(torch.float64), (lr.shape[-2], lr.shape[-1])).clamp(0, 1)
        return (down - lr.to(torch.float64)).pow(2).flatten(1).mean(1)


HARNESS_METRICS: tuple[type[Metric], ...] = (PsnrYCrop, SsimYCrop, PsnrRgb, SsimRgb, LrConsistency)
