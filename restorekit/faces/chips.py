"""dlib-style face chips: 5-point alignment to a square chip, differentiable in torch.

dlib's ``get_face_chip_details(det, size, padding)`` + ``extract_image_chip`` (dlib/image_
transforms/interpolation.h), restated:

1. The 5-point mean face (``DLIB_FIVE_POINT_MEAN``, unit square) is padded,
   ``p' = (padding + p) / (2·padding + 1)``, and scaled by ``size`` (chip pixels).
2. A least-squares similarity transform ``T`` (Umeyama: rotation, uniform scale,
   translation) maps those chip points onto the detected landmarks (image pixels).
3. ``T`` is reduced to an angle ``a`` and scale ``s`` (from ``T·(1,0)``) and a rectangle centred
   at ``T(size/2, size/2)`` of ``size·s`` pixels, whose corner coordinates span ``size·s - 1``.
4. Chip pixel ``(x, y)`` samples the image at
   ``c + R(a)·((x - (size-1)/2)·k, (y - (size-1)/2)·k)`` with ``k = (size·s - 1)/(size - 1)``,
   by bilinear interpolation with pixel centres on integer coordinates; a sample whose 2×2
   neighbourhood leaves the image is 0.
5. When the rectangle is more than about twice the chip size, dlib samples a level of a 2×
   image pyramid instead (``pyramid_down<2>``, built on a crop around the chip). The pyramid
   here uses the same filter and dlib's point mapping, but runs on the whole image in floating
   point (dlib truncates each level to 8 bits and its crop may start on an odd pixel), so such
   chips differ from dlib's by a few grey levels.

:func:`extract_face_chips` does this with ``affine_grid``/``grid_sample`` (``align_corners=True``
reproduces the pixel-centre convention), so gradients reach the image. :func:`dlib_face_chip`
calls dlib itself, as the reference.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from .align import similarity_fit as similarity_transform

__all__ = [
    "DLIB_FIVE_POINT_MEAN", "ChipGeometry", "chip_template", "similarity_transform",
    "chip_geometry", "warp_affine", "pyramid_down2", "extract_face_chips", "dlib_face_chip",
]

# dlib's 5-point mean face in the unit square (interpolation.h, get_face_chip_details):
# outer and inner corner of the eye on the image's right, then of the eye on the image's left,
# then the bottom of the nose.
DLIB_FIVE_POINT_MEAN = np.array([
    [0.8595674595992, 0.2134981538014],
    [0.6460604764104, 0.2289674387677],
    [0.1205750620789, 0.2137274526848],
    [0.3340850613712, 0.2290642403242],
    [0.4901123135679, 0.6277975316475],
], dtype=np.float64)


def chip_template(size: int = 150, padding: float = 0.25) -> np.ndarray:
    """Chip-pixel positions (5×2) of the 5 landmarks in a ``size`` chip with ``padding``."""
    return (padding + DLIB_FIVE_POINT_MEAN) / (2 * padding + 1) * size


@dataclass(frozen=True)
class ChipGeometry:
    """Where a chip comes from: chip px → image px (``affine``, 2×3) at full resolution,
    dlib's rotation ``angle`` and ``scale`` (image px per chip px) and pyramid ``levels``
    (0: sample the image itself; ``L``: sample the image reduced ``L`` times by 2)."""

    affine: np.ndarray
    angle: float
    scale: float
    levels: int


def chip_geometry(landmarks: np.ndarray, size: int = 150, padding: float = 0.25) -> ChipGeometry:
    """dlib's chip placement for 5 ``landmarks`` (5×2 image pixels, dlib's part order)."""
    lm = np.asarray(landmarks, dtype=np.float64).reshape(-1, 2)
    if lm.shape[0] != 5:
        raise ValueError(f"expected 5 landmarks, got {lm.shape[0]}")
    tform = similarity_transform(chip_template(size, padding), lm)
    p = tform[:, :2] @ np.array([1.0, 0.0])
    angle = math.atan2(p[1], p[0])
    scale = float(np.hypot(p[0], p[1]))
    centre = tform @ np.array([size / 2.0, size / 2.0, 1.0])
    k = (size * scale - 1.0) / (size - 1.0)
    rot = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    lin = rot * k
    offset = centre - lin @ np.array([(size - 1) / 2.0, (size - 1) / 2.0])
    affine = np.concatenate([lin, offset[:, None]], axis=1)
    # dlib's pyramid depth: halve the rectangle while the halved one still has more pixels
    # than the chip (drectangle widths count both end pixels: w -> (w - 1)/2 + 1).
    width = height = size * scale
    levels = 0
    while True:
        w2, h2 = (width - 1) / 2 + 1, (height - 1) / 2 + 1
        if w2 * h2 <= size * size:
            break
        width, height = w2, h2
        levels += 1
    return ChipGeometry(affine=affine, angle=angle, scale=scale, levels=levels)


def _to_theta(affine: Tensor, in_hw: tuple[int, int], out_hw: tuple[int, int]) -> Tensor:
    """Pixel affine (out px → in px, N×2×3) to ``affine_grid``'s normalised theta."""
    (hi, wi), (ho, wo) = in_hw, out_hw
    dev, dt = affine.device, affine.dtype
    to_norm = torch.tensor([[2.0 / max(wi - 1, 1), 0, -1], [0, 2.0 / max(hi - 1, 1), -1], [0, 0, 1]],
                           device=dev, dtype=dt)
    from_norm = torch.tensor([[(wo - 1) / 2.0, 0, (wo - 1) / 2.0], [0, (ho - 1) / 2.0, (ho - 1) / 2.0],
                              [0, 0, 1]], device=dev, dtype=dt)
    bottom = torch.tensor([0, 0, 1], device=dev, dtype=dt).expand(affine.shape[0], 1, 3)
    full = torch.cat([affine, bottom], dim=1)
    return (to_norm @ full @ from_norm)[:, :2, :]


def warp_affine(images: Tensor, affine: Tensor | np.ndarray, size: int | tuple[int, int],
                dlib_border: bool = True) -> Tensor:
    """Sample ``images`` (N×C×H×W) at ``affine`` (N×2×3 or 2×3, output px → input px).

    Bilinear with pixel centres on integers; with ``dlib_border`` a sample whose 2×2
    neighbourhood is not inside the image is 0 (dlib), else ``grid_sample``'s zero padding.
    """
    n, _, h, w = images.shape
    out_hw = (size, size) if isinstance(size, int) else tuple(size)
    a = torch.as_tensor(affine, dtype=torch.float64, device=images.device)
    if a.ndim == 2:
        a = a.expand(n, 2, 3)
    theta = _to_theta(a, (h, w), out_hw)  # type: ignore[arg-type]
    grid = F.affine_grid(theta, [n, 1, out_hw[0], out_hw[1]], align_corners=True)
    out = F.grid_sample(images, grid.to(images.dtype), mode="bilinear", padding_mode="zeros",
                        align_corners=True)
    if dlib_border:
        with torch.no_grad():
            x = (grid[..., 0] + 1) * (w - 1) / 2
            y = (grid[..., 1] + 1) * (h - 1) / 2
            eps = 1e-9
            inside = (x >= -eps) & (y >= -eps) & (torch.floor(x + eps) + 1 <= w - 1) & \
                     (torch.floor(y + eps) + 1 <= h - 1)
        out = out * inside.unsqueeze(1).to(out.dtype)
    return out


_BINOMIAL = torch.tensor([1.0, 4.0, 6.0, 4.0, 1.0]) / 16.0
# dlib's pyramid_down<2> maps a point p to p/2 - (1.25, 0.75) when it places chips.
PYRAMID_OFFSET = (1.25, 0.75)


def pyramid_down2(images: Tensor) -> Tensor:
    """dlib's ``pyramid_down<2>`` (without its 8-bit truncation): a 5-tap binomial filter over
    whole windows only, keeping every second sample, so output pixel ``q`` is centred on input
    pixel ``2q + 2`` and the output is ``(H-3)//2 × (W-3)//2``."""
    c = images.shape[1]
    k = _BINOMIAL.to(images)
    x = F.conv2d(images, k.view(1, 1, 1, 5).expand(c, 1, 1, 5), groups=c, stride=(1, 2))
    return F.conv2d(x, k.view(1, 1, 5, 1).expand(c, 1, 5, 1), groups=c, stride=(2, 1))


def _pyramid_crop(g: ChipGeometry, size: int, h: int, w: int) -> tuple[int, int, int, int]:
    """dlib's crop before building the pyramid: the rotated chip rectangle grown by
    ``6, 14, 30, …`` pixels for 1, 2, 3… levels, clipped to the image, rounded to integers."""
    grow = 2.0
    for _ in range(g.levels):
        grow = grow * 2 + 2
    corners = np.array([[0, 0, 1], [size - 1, 0, 1], [0, size - 1, 1], [size - 1, size - 1, 1]], float)
    pts = corners @ g.affine.T
    left = max(pts[:, 0].min() - grow, 0.0)
    top = max(pts[:, 1].min() - grow, 0.0)
    right = min(pts[:, 0].max() + grow, w - 1.0)
    bottom = min(pts[:, 1].max() + grow, h - 1.0)
    return tuple(int(math.floor(v + 0.5)) for v in (left, top, right, bottom))  # type: ignore[return-value]


def extract_face_chips(images: Tensor, landmarks: Tensor | np.ndarray, size: int = 150,
                       padding: float = 0.25, pyramid: bool = True) -> Tensor:
    """dlib-aligned chips (N×C×size×size) from ``images`` (N×C×H×W) and 5 landmarks each
    (N×5×2), or one 5×2 set shared by the whole batch.

    Differentiable with respect to ``images``. With ``pyramid``, large faces are sampled from
    a reduced image as dlib does: the level image comes from :func:`pyramid_down2` and chip
    positions go through dlib's ``point_down`` (``p/2 - (1.25, 0.75)`` per level), which is what
    dlib's own ``extract_image_chips`` does.
    """
    lms = np.asarray(landmarks.detach().cpu() if isinstance(landmarks, Tensor) else landmarks,
                     dtype=np.float64)
    if lms.shape == (5, 2):  # one placement for the whole batch
        return _extract(images, chip_geometry(lms, size, padding), size, pyramid)
    lms = lms.reshape(images.shape[0], 5, 2)
    return torch.cat([_extract(images[i:i + 1], chip_geometry(lms[i], size, padding), size, pyramid)
                      for i in range(images.shape[0])], dim=0)


def _extract(images: Tensor, g: ChipGeometry, size: int, pyramid: bool) -> Tensor:
    """Chips of the whole batch ``images`` at one placement ``g``."""
    img = images
    affine = g.affine.copy()
    if pyramid and g.levels > 0:
        x0, y0, x1, y1 = _pyramid_crop(g, size, images.shape[2], images.shape[3])
        img = img[:, :, y0:y1 + 1, x0:x1 + 1]
        affine[:, 2] -= (x0, y0)
        for _ in range(g.levels):
            img = pyramid_down2(img)
            affine = affine / 2.0
            affine[:, 2] -= PYRAMID_OFFSET
    return warp_affine(img, affine, size)


def dlib_face_chip(image: np.ndarray, landmarks: np.ndarray, size: int = 150,
                   padding: float = 0.25) -> np.ndarray:
    """dlib's own ``get_face_chip`` for an ``H×W×3`` uint8 image and 5×2 landmarks (reference)."""
    import dlib

    lm = np.asarray(landmarks, dtype=np.float64).reshape(5, 2)
    pts = [dlib.point(int(round(x)), int(round(y))) for x, y in lm]
    x0, y0 = lm.min(0)
    x1, y1 = lm.max(0)
    rect = dlib.rectangle(int(x0), int(y0), int(math.ceil(x1)), int(math.ceil(y1)))
    shape = dlib.full_object_detection(rect, pts)
    return np.asarray(dlib.get_face_chip(np.ascontiguousarray(image, dtype=np.uint8), shape, size, padding))
