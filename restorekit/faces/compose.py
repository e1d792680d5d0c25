"""Compositing restored faces into photos, and synthetic group photos for tests and benchmarks.

* :func:`ring_color_stats` / :func:`color_match` — per-channel mean/std of the pasted face and
  of the picture under it, measured in the feather band of the paste mask (the "ring" where both
  show the same scene), on block-averaged copies so that detail the restorer added does not count
  as a contrast change. The face is corrected only where the difference is visible.
* :func:`blend` — ``mask·face + (1 − mask)·base``.
* :func:`is_grey` / :func:`grey` — a black-and-white photo (three equal channels) and the BT.601
  luma that makes a restored face grey again before it is pasted into one.
* :func:`make_group_photo` — copies of face photos, scaled, rotated and mirrored, pasted with
  soft round masks onto a background; returns the ground-truth eye centres of every copy.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from .align import warp

__all__ = ["ColorMatch", "ring_color_stats", "color_match", "blend", "is_grey", "grey", "GroupFace",
           "make_group_photo"]

# Below these differences (in [0,1] units / as a ratio) a correction would not be visible.
MEAN_TOLERANCE = 1.0 / 255.0
GAIN_TOLERANCE = 0.05
GAIN_LIMITS = (0.5, 2.0)
# A photo whose channels differ by at most this everywhere is black and white (8-bit rounding aside).
GREY_TOLERANCE = 1.0 / 255.0
LUMA_BT601 = (0.299, 0.587, 0.114)


@dataclass
class ColorMatch:
    """The per-channel correction ``face·gain + offset`` and whether it was applied."""

    applied: bool
    gain: list[float] = field(default_factory=lambda: [1.0, 1.0, 1.0])
    offset: list[float] = field(default_factory=lambda: [0.0, 0.0, 0.0])
    ring_pixels: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {"applied": self.applied, "gain": [round(g, 4) for g in self.gain],
                "offset": [round(o, 5) for o in self.offset], "ring_pixels": self.ring_pixels}


def ring_color_stats(face: Tensor, base: Tensor, mask: Tensor, *, lowpass: int = 1,
                     band: tuple[float, float] = (0.02, 0.98)) -> tuple[Tensor, Tensor, Tensor, Tensor, int]:
    """Mean and std per channel of ``face`` and ``base`` (1×3×H×W) where ``band[0] < mask < band[1]``.

    Both (and the mask) are first averaged over ``lowpass×lowpass`` blocks, so detail finer
    than that (what a restorer adds) does not count. Returns
    ``(mean_face, std_face, mean_base, std_base, n_pixels)`` (pixels counted after pooling).
    """
    k = max(1, int(lowpass))
    if k > 1:
        face = F.avg_pool2d(face.float(), k, ceil_mode=True)
        base = F.avg_pool2d(base.float(), k, ceil_mode=True)
        mask = F.avg_pool2d(mask.float(), k, ceil_mode=True)
    ring = ((mask > band[0]) & (mask < band[1]))[0, 0]
    n = int(ring.sum())
    if n < 16:
        z = torch.zeros(3, dtype=torch.float64)
        return z, z + 1, z, z + 1, n
    f = face[0][:, ring].double()
    b = base[0][:, ring].double()
    return f.mean(1), f.std(1), b.mean(1), b.std(1), n


def color_match(face: Tensor, base: Tensor, mask: Tensor, *, lowpass: int = 1) -> tuple[Tensor, ColorMatch]:
    """Correct ``face`` so its colour statistics in the mask's feather band match ``base``.

    The gain is the std ratio (clamped to ``GAIN_LIMITS``), the offset matches the means. When
    every channel is within ``MEAN_TOLERANCE`` and ``GAIN_TOLERANCE`` the face is returned as is.
    """
    mf, sf, mb, sb, n = ring_color_stats(face, base, mask, lowpass=lowpass)
    if n < 16:
        return face, ColorMatch(False, ring_pixels=n)
    gain = (sb / sf.clamp(min=1e-6)).clamp(*GAIN_LIMITS)
    offset = mb - gain * mf
    needed = bool(((mb - mf).abs() > MEAN_TOLERANCE).any() or ((gain - 1).abs() > GAIN_TOLERANCE).any())
    info = ColorMatch(needed, gain.tolist(), offset.tolist(), n)
    if not needed:
        return face, info
    g = gain.to(face.dtype).view(1, 3, 1, 1).to(face.device)
    o = offset.to(face.dtype).view(1, 3, 1, 1).to(face.device)
    return (face * g + o).clamp(0, 1), info


def blend(base: Tensor, face: Tensor, mask: Tensor) -> Tensor:
    """``mask·face + (1 − mask)·base``; ``mask`` is 1×1×H×W in [0,1]."""
    return base + mask * (face - base)


def is_grey(image: Tensor, tolerance: float = GREY_TOLERANCE) -> bool:
    """Whether ``image`` (N×3×H×W) is black and white: its channels differ by at most ``tolerance``
    (with a margin for float rounding, so that channels one 8-bit level apart count alike at every
    level: (v + 1)/255 − v/255 exceeds 1/255 for some v); ``tolerance=0``: exactly equal channels."""
    margin = 1e-6 if tolerance > 0 else 0.0
    return bool((image[:, 1:] - image[:, :1]).abs().max() <= tolerance + margin)


def grey(image: Tensor) -> Tensor:
    """``image`` (N×3×H×W) as its BT.601 luma in three equal channels."""
    w = torch.tensor(LUMA_BT601, dtype=image.dtype, device=image.device).view(1, 3, 1, 1)
    return (image * w).sum(1, keepdim=True).expand(-1, 3, -1, -1).contiguous()


@dataclass(frozen=True)
class GroupFace:
    """Ground truth of one pasted face: eye centres (continuous pixel coordinates) and size."""

    eye_left: tuple[float, float]
    eye_right: tuple[float, float]
    eye_distance: float
    angle_deg: float
    mirrored: bool

    @property
    def centre(self) -> tuple[float, float]:
        return ((self.eye_left[0] + self.eye_right[0]) / 2, (self.eye_left[1] + self.eye_right[1]) / 2)


def _rot(a: float) -> np.ndarray:
    return np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])


def _soft_disc(h: int, w: int, cx: float, cy: float, r: float, edge: float) -> Tensor:
    ys = torch.arange(h, dtype=torch.float32)[:, None] + 0.5
    xs = torch.arange(w, dtype=torch.float32)[None, :] + 0.5
    d = torch.sqrt((xs - cx) ** 2 + (ys - cy) ** 2)
    return ((r - d) / edge).clamp(0, 1)[None, None]


def make_group_photo(
    faces: list[tuple[Tensor, tuple[float, float], tuple[float, float]]],
    background: Tensor,
    placements: list[dict[str, float]],
    *,
    radius: float = 1.6,
) -> tuple[Tensor, list[GroupFace]]:
    """Paste faces onto ``background`` (1×3×H×W) and return the photo and its ground truth.

    ``faces``: ``(image 1×3×h×w, eye_left, eye_right)`` in that image's continuous pixel
    coordinates; ``placements``: one dict per pasted copy with ``face`` (index into ``faces``),
    ``x``, ``y`` (where the eye midpoint lands), ``eye_distance`` (pixels), ``angle`` (degrees,
    counter-clockwise on screen) and ``mirror`` (0/1). Each copy is a disc of ``radius`` eye
    distances around a point below the eye midpoint, with a soft edge.
    """
    photo = background.clone()
    h, w = photo.shape[-2:]
    truth: list[GroupFace] = []
    for p in placements:
        img, el, er = faces[int(p["face"])]
        el_a, er_a = np.asarray(el, float), np.asarray(er, float)
        src_mid = (el_a + er_a) / 2
        src_vec = er_a - el_a
        src_d = float(np.hypot(*src_vec))
        src_ang = math.atan2(src_vec[1], src_vec[0])
        d = float(p["eye_distance"])
        theta = -math.radians(float(p.get("angle", 0.0)))  # screen counter-clockwise
        mirror = bool(p.get("mirror", 0))
        k = src_d / d
        # Output pixel -> source pixel: undo rotation/scale about the destination eye midpoint.
        flip = np.diag([-1.0, 1.0]) if mirror else np.eye(2)
        a = k * _rot(src_ang) @ flip @ _rot(-theta)
        dst_mid = np.array([float(p["x"]), float(p["y"])])
        t = src_mid - a @ dst_mid
        affine = np.hstack([a, t[:, None]])
        layer = warp(img, affine, h, w, shrink=max(k, 1.0), padding_mode="border")
        # Disc centred a little below the eyes (the face centre), in destination coordinates.
        down = np.array([-math.sin(theta), math.cos(theta)])
        centre = dst_mid + down * 0.55 * d
        mask = _soft_disc(h, w, float(centre[0]), float(centre[1]), radius * d, max(2.0, 0.25 * d))
        photo = blend(photo, layer, mask)
        right = np.array([math.cos(theta), math.sin(theta)])
        # Mirroring swaps which source eye lands on the image-left side, not the positions.
        e_left = dst_mid - right * d / 2
        e_right = dst_mid + right * d / 2
        truth.append(GroupFace((float(e_left[0]), float(e_left[1])), (float(e_right[0]), float(e_right[1])),
                               d, float(p.get("angle", 0.0)), mirror))
    return photo.clamp(0, 1), truth
