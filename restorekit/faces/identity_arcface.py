"""``identity_arcface``: identity similarity with insightface's ArcFace, aligned by SCRFD landmarks.

Per (pred, target) pair:

1. insightface's SCRFD (``det_10g`` of ``buffalo_l``) finds faces and 5 landmarks on the **HR
   target**; the largest face is used. The same landmarks are reused for the restored image
   (same size; a restored image of another size gets them scaled), so both crops come from
   the same geometry and the metric measures the restoration, not the detector's jitter on
   a degraded face.
2. Both images are aligned to the ArcFace 112×112 template (``ARCFACE_TEMPLATE``, insightface's
   ``arcface_dst``) by a least-squares similarity transform of the 5 points (Umeyama), warped
   bilinearly with zero border: insightface's ``face_align.norm_crop`` when importable, else
   :func:`norm_crop` here (same template, same estimate, same warp).
3. insightface's ``ArcFaceONNX`` (``w600k_r50``, ResNet-50 trained on WebFace600K) embeds both
   crops (BGR uint8 → RGB, ``(x − 127.5) / 127.5``) on ONNX Runtime; the value is the cosine
   similarity of the two 512-D embeddings (1 = same embedding).

No face on the target: NaN, counted in ``faces_not_found`` (reported with ``nan_label``), as
``identity_dlib`` does. Weights: ``restorekit weights import insightface-buffalo-l buffalo_l.zip``;
they are licensed for non-commercial research only (shown in the summary and once at set-up).
"""

from __future__ import annotations

import hashlib
import math
import warnings
from collections import OrderedDict
from typing import Any, ClassVar

import numpy as np
import torch
from torch import Tensor

from ..interfaces import Metric, check_image_batch
from .align import similarity_fit as similarity_transform
from .insightface_models import (
    DEFAULT_PACK,
    INSIGHTFACE_LICENSE,
    PACKS,
    import_insightface,
    load_recognizer,
    pack_file,
    require_packages,
)
from .scrfd import ScrfdDetector, to_bgr_uint8

__all__ = ["ARCFACE_TEMPLATE", "ARCFACE_SIZE", "similarity_transform", "arcface_affine", "norm_crop",
           "align_arcface", "largest_face", "IdentityArcface"]

ARCFACE_SIZE = 112
# The five ArcFace landmarks (image-left eye, image-right eye, nose tip, image-left and
# image-right mouth corner) in a 112×112 crop, pixel-index coordinates (insightface's arcface_dst).
ARCFACE_TEMPLATE = np.array([
    [38.2946, 51.6963],
    [73.5318, 51.5014],
    [56.0252, 71.7366],
    [41.5493, 92.3655],
    [70.7299, 92.2041],
], dtype=np.float64)


def arcface_affine(landmarks: np.ndarray, size: int = ARCFACE_SIZE) -> np.ndarray:
    """The 2×3 map from image pixels to the ``size``×``size`` ArcFace crop for 5 landmarks
    (pixel-index coordinates; insightface's ``estimate_norm`` for sizes that are multiples of 112)."""
    if size % 112:
        raise ValueError(f"ArcFace crops are multiples of 112 px, got {size}")
    return similarity_transform(np.asarray(landmarks, dtype=np.float64).reshape(5, 2), ARCFACE_TEMPLATE * (size / 112))


def _warp_bilinear(img: np.ndarray, m: np.ndarray, size: int) -> np.ndarray:
    """``cv2.warpAffine(img, m, (size, size), borderValue=0)`` without OpenCV (float64 bilinear,
    the 8-bit result rounded)."""
    full = np.vstack([m, [0.0, 0.0, 1.0]])
    inv = np.linalg.inv(full)[:2]
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float64)
    sx = inv[0, 0] * xs + inv[0, 1] * ys + inv[0, 2]
    sy = inv[1, 0] * xs + inv[1, 1] * ys + inv[1, 2]
    h, w = img.shape[:2]
    x0, y0 = np.floor(sx).astype(int), np.floor(sy).astype(int)
    fx, fy = (sx - x0)[..., None], (sy - y0)[..., None]
    src = img.astype(np.float64)

    def at(yy: np.ndarray, xx: np.ndarray) -> np.ndarray:
        ok = (xx >= 0) & (xx < w) & (yy >= 0) & (yy < h)
        v = src[np.clip(yy, 0, h - 1), np.clip(xx, 0, w - 1)]
        return v * ok[..., None]

    out = (at(y0, x0) * (1 - fx) * (1 - fy) + at(y0, x0 + 1) * fx * (1 - fy)
           + at(y0 + 1, x0) * (1 - fx) * fy + at(y0 + 1, x0 + 1) * fx * fy)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def norm_crop(img: np.ndarray, landmarks: np.ndarray, size: int = ARCFACE_SIZE) -> np.ndarray:
    """An ``H×W×3`` uint8 image aligned to the ArcFace template (``size``×``size``): restorekit's
    own version of insightface's ``face_align.norm_crop`` (OpenCV's warp when cv2 is importable)."""
    m = arcface_affine(landmarks, size)
    try:
        import cv2
    except ImportError:
        return _warp_bilinear(img, m, size)
    return cv2.warpAffine(img, m, (size, size), borderValue=0.0)


def align_arcface(img: np.ndarray, landmarks: np.ndarray, size: int = ARCFACE_SIZE) -> np.ndarray:
    """insightface's ``face_align.norm_crop`` when importable, else :func:`norm_crop`."""
    try:
        from insightface.utils import face_align
    except ImportError:
        return norm_crop(img, landmarks, size)
    with warnings.catch_warnings():  # scikit-image ≥ 0.26 deprecates the estimate() insightface calls
        warnings.simplefilter("ignore", FutureWarning)
        return face_align.norm_crop(img, np.asarray(landmarks, dtype=np.float32).reshape(5, 2), image_size=size)


def largest_face(det: np.ndarray, kps: np.ndarray) -> np.ndarray | None:
    """Landmarks (5×2) of the detection with the largest box area, or None without one."""
    if len(det) == 0 or kps.shape[1:] != (5, 2):
        return None
    area = (det[:, 2] - det[:, 0]) * (det[:, 3] - det[:, 1])
    return kps[int(np.argmax(area))]


class IdentityArcface(Metric):
    """Cosine similarity of insightface ArcFace embeddings of pred and HR target, both aligned with
    the 5 SCRFD landmarks found on the target (reused for pred); NaN where the target has no face
    (counted in ``faces_not_found``)."""

    name: ClassVar[str] = "identity_arcface"
    higher_is_better: ClassVar[bool] = True
    requires_weights: ClassVar[tuple[str, ...]] = (DEFAULT_PACK,)
    nan_label: ClassVar[str] = "no face found on the HR image"
    pack: ClassVar[str] = DEFAULT_PACK
    embedder: ClassVar[str] = f"insightface {PACKS[DEFAULT_PACK].recognizer_label}"
    summary: ClassVar[str] = (
        "cosine similarity of insightface ArcFace R50 embeddings (w600k_r50 of buffalo_l, onnxruntime); "
        "SCRFD-10GF 5 landmarks found on the HR image and reused for the restored image, similarity-aligned "
        f"to the 112x112 ArcFace template (norm_crop); NaN: no face found; weights {INSIGHTFACE_LICENSE}: "
        "non-commercial research only")

    def __init__(self, device: str | torch.device | None = None, det_size: int = 640) -> None:
        self._device = torch.device(device) if device is not None else None
        self.det_size = det_size
        self._detector: ScrfdDetector | None = None
        self._recognizer: Any = None
        self._landmarks: OrderedDict[str, np.ndarray | None] = OrderedDict()
        self.faces_not_found = 0        # in the last call
        self.faces_not_found_total = 0  # since construction or reset()
        self.images_total = 0

    def reset(self) -> None:
        self.faces_not_found = self.faces_not_found_total = self.images_total = 0

    def setup(self, device: torch.device) -> None:
        # the packages first (DependencyMissing names the extra), then the weights (WeightsMissing
        # names the import command): nobody fetches the pack only to hear that nothing can run it
        require_packages(f"metric '{self.name}'")
        pack_file(self.pack, "detector")
        pack_file(self.pack, "recognizer")
        import_insightface()
        self._device = torch.device(device)
        det = ScrfdDetector(det_size=self.det_size, pack=self.pack, device=self._device)
        det.load()
        self._detector = det
        self._recognizer = load_recognizer(self.pack, self._device)

    def target_landmarks(self, bgr: np.ndarray) -> np.ndarray | None:
        """Landmarks (pixel-index coordinates) of the largest face on a target, cached by content."""
        assert self._detector is not None
        key = hashlib.blake2b(bgr.tobytes(), digest_size=16).hexdigest() + str(bgr.shape)
        if key in self._landmarks:
            self._landmarks.move_to_end(key)
            return self._landmarks[key]
        lm = largest_face(*self._detector.detect_raw(bgr))
        self._landmarks[key] = lm
        while len(self._landmarks) > 1024:
            self._landmarks.popitem(last=False)
        return lm

    def embed(self, crops: list[np.ndarray]) -> np.ndarray:
        """Unit 512-D ArcFace embeddings (float64) of aligned 112×112 BGR uint8 crops."""
        feats = np.asarray(self._recognizer.get_feat(crops), dtype=np.float64).reshape(len(crops), -1)
        norms = np.linalg.norm(feats, axis=1, keepdims=True)
        return feats / np.maximum(norms, 1e-12)

    def __call__(self, pred: Tensor, target: Tensor, *, lr: Tensor | None = None, scale: int = 1) -> Tensor:
        check_image_batch(pred, f"{self.name}: prediction")
        check_image_batch(target, f"{self.name}: target")
        if self._detector is None or self._recognizer is None:
            self.setup(self._device or pred.device)
        if pred.shape[0] != target.shape[0]:
            raise ValueError(f"{self.name}: {pred.shape[0]} predictions for {target.shape[0]} targets")
        out = torch.full((pred.shape[0],), math.nan, dtype=torch.float64)
        crops: list[np.ndarray] = []
        where: list[int] = []
        for i, (p, t) in enumerate(zip(pred, target)):
            t8 = to_bgr_uint8(t)
            lm = self.target_landmarks(t8)
            if lm is None:
                continue
            p8 = to_bgr_uint8(p)
            lm_p = lm
            if p8.shape != t8.shape:  # same geometry at the prediction's scale (pixel-index coords)
                sx, sy = p8.shape[1] / t8.shape[1], p8.shape[0] / t8.shape[0]
                lm_p = (lm + 0.5) * np.array([sx, sy]) - 0.5
            crops += [align_arcface(t8, lm), align_arcface(p8, lm_p)]
            where.append(i)
        self.faces_not_found = pred.shape[0] - len(where)
        self.faces_not_found_total += self.faces_not_found
        self.images_total += pred.shape[0]
        if where:
            emb = self.embed(crops)
            sims = (emb[0::2] * emb[1::2]).sum(1)
            out[where] = torch.from_numpy(np.clip(sims, -1.0, 1.0))
        return out
