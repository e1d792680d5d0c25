"""FFHQ alignment: the oriented square crop that FFHQ, StyleGAN2-FFHQ and pSp expect.

The crop follows the FFHQ dataset recipe, from the eye centres and the mouth corners:
``c = eye_avg + 0.1·eye_to_mouth``; the crop's x axis is ``eye_to_eye − rot90(eye_to_mouth)``,
normalised, of half-length ``max(2·|eye_to_eye|, 1.8·|eye_to_mouth|)``; the y axis is x turned by
90°. The four corners form the quad that is resampled to an ``S×S`` image.

When only eyes and nose are known (dlib's 5-point model: eye corners + nose base), the quad comes
from a least-squares similarity transform of those points onto ``FFHQ_TEMPLATE_128`` — the mean
landmark positions measured with dlib on 400 FFHQ-aligned faces at 128 px (the measurement is
reproduced by ``scripts/measure_ffhq_template.py``).

The transform is kept (``AlignedFace.to_source``), so a restored crop can be warped back, blended
with a paste mask (``face_mask``) of one of ``PASTE_MASKS``: the whole crop (``square``), or the
ellipse ``FACE_ELLIPSE_128`` around face and hair (``face``), which leaves the crop's corners (the
background the FFHQ framing takes in, which a face method re-draws) to the photo.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import RestorekitError

# Mean landmark positions in a 128×128 FFHQ-aligned image (x, y), pixel centres at +0.5.
FFHQ_TEMPLATE_128: dict[str, tuple[float, float]] = {
    "eye_left": (48.27, 60.69),     # image-left eye centre (the person's right eye)
    "eye_right": (79.51, 60.78),
    "mouth_left": (49.42, 93.10),
    "mouth_right": (78.42, 93.16),
    "nose_base": (63.71, 84.58),    # dlib 5-point model, point 4
}
TEMPLATE_SIZE = 128


def _face_ellipse(t: dict[str, tuple[float, float]]) -> tuple[float, float, float, float]:
    """The face-and-hair ellipse ``(cx, cy, a, b)`` of a template, in its pixel coordinates.

    Anchored on the landmarks, with proportions read off the mean of the 1,100 FFHQ-aligned faces
    of ``ffhq128`` (``scripts/paste_masks.py --mean-face`` draws it on that mean): with ``d`` the
    eye distance and ``m`` the eye-line-to-mouth-line distance, the hair's top lies ``1.75·m``
    above the eye line (y ≈ 4: the hair reaches the crop's top), the chin ``0.7·m`` below the
    mouth line (y ≈ 116), and the hair's sides ``1.45·d`` either side of the eye midpoint at the
    eye line (x ≈ 19 and 109). The ellipse spans the first two and is centred on the eye midpoint's
    x; it leaves out the crop's corners and the neck and shoulders below the chin.
    """
    (elx, ely), (erx, ery) = t["eye_left"], t["eye_right"]
    (_, mly), (_, mry) = t["mouth_left"], t["mouth_right"]
    eye_x, eye_y, mouth_y = (elx + erx) / 2, (ely + ery) / 2, (mly + mry) / 2
    d, m = math.hypot(erx - elx, ery - ely), mouth_y - eye_y
    top, chin = eye_y - 1.75 * m, mouth_y + 0.7 * m
    return eye_x, (top + chin) / 2, 1.45 * d, (chin - top) / 2


#: ``(cx, cy, a, b)`` of the ``face`` paste mask in a 128-px FFHQ crop (x, y semi-axes a, b): its
#: 0.5 contour; the mask ramps from 1 to 0 across it over the feather width.
FACE_ELLIPSE_128: tuple[float, float, float, float] = _face_ellipse(FFHQ_TEMPLATE_128)
#: The paste masks ``face_mask`` makes: ``square`` (the whole crop) and ``face`` (FACE_ELLIPSE_128).
PASTE_MASKS: tuple[str, ...] = ("square", "face")


@dataclass(frozen=True)
class AlignedFace:
    """An aligned crop's geometry: ``quad`` corners in source pixels (TL, BL, BR, TR), crop size."""

    quad: np.ndarray
    size: int

    @property
    def to_source(self) -> np.ndarray:
        """2×3 affine taking crop pixel coordinates (x, y) to source pixel coordinates."""
        tl, bl, _, tr = self.quad
        ax = (tr - tl) / self.size
        ay = (bl - tl) / self.size
        return np.array([[ax[0], ay[0], tl[0]], [ax[1], ay[1], tl[1]]])

    @property
    def to_crop(self) -> np.ndarray:
        """2×3 affine taking source pixel coordinates to crop pixel coordinates."""
        m = np.vstack([self.to_source, [0, 0, 1]])
        return np.linalg.inv(m)[:2]

    @property
    def scale(self) -> float:
        """Source pixels per crop pixel (>1: the crop shrinks the face)."""
        return float(np.hypot(*(self.quad[3] - self.quad[0])) / self.size)


def ffhq_quad(eye_left: np.ndarray, eye_right: np.ndarray, mouth_left: np.ndarray,
              mouth_right: np.ndarray) -> np.ndarray:
    """The FFHQ recipe's crop quad (TL, BL, BR, TR) from eye centres and mouth corners."""
    eye_left, eye_right = np.asarray(eye_left, float), np.asarray(eye_right, float)
    eye_avg = (eye_left + eye_right) / 2
    eye_to_eye = eye_right - eye_left
    mouth_avg = (np.asarray(mouth_left, float) + np.asarray(mouth_right, float)) / 2
    eye_to_mouth = mouth_avg - eye_avg
    x = eye_to_eye - np.array([-eye_to_mouth[1], eye_to_mouth[0]])
    x /= np.hypot(*x)
    x *= max(np.hypot(*eye_to_eye) * 2.0, np.hypot(*eye_to_mouth) * 1.8)
    y = np.array([-x[1], x[0]])
    c = eye_avg + eye_to_mouth * 0.1
    return np.stack([c - x - y, c - x + y, c + x + y, c + x - y])


def similarity_fit(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares similarity (rotation, uniform scale, shift) with ``dst ≈ A·src + t`` (Umeyama
    1991, reflections excluded), as a 2×3 matrix. Used for FFHQ, dlib-chip and ArcFace alignment."""
    src, dst = np.asarray(src, float), np.asarray(dst, float)
    if src.shape != dst.shape or src.ndim != 2 or src.shape[1] != 2 or len(src) < 2:
        raise ValueError(f"expected two matching K×2 point sets (K ≥ 2), got {src.shape} and {dst.shape}")
    mu_s, mu_d = src.mean(0), dst.mean(0)
    s, d = src - mu_s, dst - mu_d
    var_s = (s**2).sum(1).mean()
    if var_s <= 0:
        raise ValueError("source points coincide; no similarity transform")
    cov = d.T @ s / len(src)
    u, sig, vt = np.linalg.svd(cov)
    sign = np.diag([1.0, np.sign(np.linalg.det(u) * np.linalg.det(vt)) or 1.0])
    rot = u @ sign @ vt
    scale = np.trace(np.diag(sig) @ sign) / var_s
    a = scale * rot
    return np.hstack([a, (mu_d - a @ mu_s)[:, None]])


def quad_from_points(points: dict[str, tuple[float, float]]) -> np.ndarray:
    """The crop quad from any subset of the template's landmarks (at least two).

    With both eyes and both mouth corners the exact FFHQ recipe is used; otherwise the
    similarity fit onto ``FFHQ_TEMPLATE_128``.
    """
    need = ("eye_left", "eye_right", "mouth_left", "mouth_right")
    if all(k in points for k in need):
        return ffhq_quad(*(np.asarray(points[k]) for k in need))
    keys = [k for k in points if k in FFHQ_TEMPLATE_128]
    if len(keys) < 2:
        raise ValueError(f"need at least two of {sorted(FFHQ_TEMPLATE_128)} to align a face, got {sorted(points)}")
    src = np.array([points[k] for k in keys], float)
    dst = np.array([FFHQ_TEMPLATE_128[k] for k in keys], float)
    m = np.vstack([similarity_fit(src, dst), [0, 0, 1]])
    inv = np.linalg.inv(m)
    s = TEMPLATE_SIZE
    corners = np.array([[0, 0, 1], [0, s, 1], [s, s, 1], [s, 0, 1]], float)
    return (inv @ corners.T).T[:, :2]


def dlib5_points(landmarks: list[tuple[float, float]]) -> dict[str, tuple[float, float]]:
    """dlib's 5-point layout (two corners per eye, then the nose base) to named points."""
    lm = np.asarray(landmarks, float)
    return {"eye_left": tuple(lm[2:4].mean(0)), "eye_right": tuple(lm[0:2].mean(0)), "nose_base": tuple(lm[4])}


def _grid(affine: np.ndarray, out_h: int, out_w: int, in_h: int, in_w: int) -> Tensor:
    """A grid_sample grid for an affine from output pixel coordinates to input pixel coordinates."""
    ys, xs = torch.meshgrid(torch.arange(out_h, dtype=torch.float64) + 0.5,
                            torch.arange(out_w, dtype=torch.float64) + 0.5, indexing="ij")
    a = torch.from_numpy(affine)
    sx = a[0, 0] * xs + a[0, 1] * ys + a[0, 2]
    sy = a[1, 0] * xs + a[1, 1] * ys + a[1, 2]
    gx = sx / in_w * 2 - 1
    gy = sy / in_h * 2 - 1
    return torch.stack([gx, gy], -1).float()[None]


def warp(image: Tensor, affine: np.ndarray, out_h: int, out_w: int, *, shrink: float = 1.0,
         padding_mode: str = "reflection") -> Tensor:
    """Resample ``image`` (1×C×H×W) at ``affine``·(output pixel) with antialiasing.

    ``shrink`` (> 1) is how many source pixels one output pixel spans; the source is
    prefiltered by an area resize first so the bilinear sampling does not alias.
    """
    src = image
    factor = int(np.floor(shrink))
    a = affine.copy()
    if factor >= 2:
        # Exact box prefilter: pad bottom/right to a multiple of the factor, then average blocks,
        # so pooled pixel i covers source pixels [i·f, (i+1)·f) and coordinates scale by 1/f.
        ph, pw = (-image.shape[-2]) % factor, (-image.shape[-1]) % factor
        padded = F.pad(image, (0, pw, 0, ph), mode="replicate") if ph or pw else image
        src = F.avg_pool2d(padded, factor)
        a = a / factor
    grid = _grid(a, out_h, out_w, src.shape[-2], src.shape[-1]).to(image.device, image.dtype)
    return F.grid_sample(src, grid, mode="bilinear", padding_mode=padding_mode, align_corners=False)


def align_face(image: Tensor, quad: np.ndarray, size: int) -> tuple[Tensor, AlignedFace]:
    """Crop the quad from a 1×3×H×W image to ``size×size``; returns the crop and its geometry."""
    geom = AlignedFace(np.asarray(quad, float), size)
    crop = warp(image, geom.to_source, size, size, shrink=geom.scale)
    return crop, geom


def unalign(crop: Tensor, geom: AlignedFace, out_h: int, out_w: int, scale: float = 1.0) -> Tensor:
    """Warp a (restored) crop back into source coordinates, upscaled by ``scale``.

    Pixels outside the crop are zero; ``face_mask`` gives the matching coverage mask.
    """
    inv = geom.to_crop.copy()
    inv[:, :2] /= scale  # output pixel (scaled source) → source → crop
    inv[0] *= crop.shape[-1] / geom.size
    inv[1] *= crop.shape[-2] / geom.size
    return warp(crop, inv, out_h, out_w, shrink=float(crop.shape[-1]) / (geom.size * geom.scale * scale),
                padding_mode="zeros")


def check_paste_mask(shape: object) -> str:
    """``shape`` if it names one of ``PASTE_MASKS``; else a one-line ``RestorekitError``."""
    if not isinstance(shape, str) or shape not in PASTE_MASKS:
        raise RestorekitError(f"unknown paste mask {shape!r} (known: {', '.join(PASTE_MASKS)})")
    return shape


def paste_mask_at(x: Tensor, y: Tensor, n: int, feather: float = 0.08, shape: str = "square") -> Tensor:
    """The paste mask of an ``n``-px aligned crop at crop coordinates ``x``, ``y`` (broadcast
    together; pixel centres at +0.5), in [0, 1].

    ``square``: a linear ramp over ``feather·n`` px at every edge, starting at 0 on the outermost
    pixels. ``face``: that square times a ramp of the same width across ``FACE_ELLIPSE_128``
    (scaled to ``n``; 0.5 on the ellipse, 1 inside it, 0 beyond), from the ellipse's first-order
    distance ``(r − 1)/|∇r|`` (exact on its axes; ``r = √((x−cx)²/a² + (y−cy)²/b²)``): linear along
    every ray from the ellipse's centre, so the mask falls monotonically along it.
    """
    check_paste_mask(shape)
    ramp = max(1.0, feather * n)
    m = _edge(x, n, ramp) * _edge(y, n, ramp)
    if shape == "face":
        k = n / TEMPLATE_SIZE
        cx, cy, a, b = (c * k for c in FACE_ELLIPSE_128)
        u, v = (x.double() - cx) / a, (y.double() - cy) / b
        r = torch.sqrt(u**2 + v**2)
        # 1/|∇r| = r / √((u/a)² + (v/b)²): between a and b, the same along a ray (at the centre,
        # where it has no direction, min(a, b): the ramp is 1 there whatever it is).
        span = r / torch.sqrt((u / a) ** 2 + (v / b) ** 2).clamp(min=1e-30)
        dist = (r - 1) * torch.where(r > 0, span, torch.full_like(span, min(a, b)))
        m = m * torch.clamp(0.5 - dist / ramp, 0, 1).float()
    return m


def _edge(t: Tensor, n: int, ramp: float) -> Tensor:
    """The square mask's ramp along one axis: 0 on the outermost pixels, 1 from ``ramp`` px in."""
    return torch.clamp((torch.minimum(t, n - t) - 0.5) / ramp, 0, 1)


def crop_mask(n: int, feather: float = 0.08, shape: str = "square") -> Tensor:
    """The paste mask (n×n, in [0, 1]) of an ``n``-px aligned crop (``paste_mask_at`` at its pixel
    centres), before it is warped back."""
    t = torch.arange(n, dtype=torch.float32) + 0.5
    return paste_mask_at(t[None, :], t[:, None], n, feather, shape)


def face_mask(geom: AlignedFace, out_h: int, out_w: int, scale: float = 1.0, feather: float = 0.08,
              shape: str = "square") -> Tensor:
    """A soft mask (1×1×H×W) of the crop region in source coordinates, feathered at the edges.

    ``shape`` is one of ``PASTE_MASKS`` (``crop_mask``): the whole crop, or the ellipse around
    face and hair. ``feather`` is the ramp width as a fraction of the crop size. The ramp starts
    at 0 on the crop's outermost pixels, so the mask warped back into the photo is 0 along the
    crop's border and beyond it (sampling between those pixels and the outside gives 0): nothing of
    it is cut off by a paste window around the crop, which would leave a straight seam.
    """
    m = crop_mask(geom.size, feather, shape)[None, None]
    return unalign(m, geom, out_h, out_w, scale)
