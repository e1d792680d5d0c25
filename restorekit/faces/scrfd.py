"""``scrfd``: insightface's SCRFD face detector (boxes, scores, 5 landmarks) as a FaceDetector.

The ONNX model comes from an insightface pack in the restorekit weights cache (``det_10g.onnx``
of ``buffalo_l`` by default; see :mod:`restorekit.faces.insightface_models`) and runs through
insightface's own ``SCRFD`` class: letterbox resize to ``det_size``, per-stride anchor decoding
of the score/box/landmark heads (strides 8, 16, 32, two anchors per cell), NMS.

Coordinates. insightface reports boxes and landmarks in pixel-index coordinates (pixel centres
at integers, the convention of OpenCV's ``warpAffine`` that ``norm_crop`` consumes). ``detect``
converts them to restorekit's convention (``(0, 0)`` = top-left corner of the top-left pixel,
centres at ``+0.5``) by adding 0.5; :meth:`ScrfdDetector.detect_raw` keeps insightface's.
Landmarks: image-left eye, image-right eye, nose tip, image-left and image-right mouth corner
(``eyes_nose_mouth5``, as MTCNN).

Models: non-commercial research only (``LicenseRef-InsightFace-NonCommercial``).
"""

from __future__ import annotations

import threading
from typing import Any, ClassVar

import numpy as np
import torch
from torch import Tensor

from ..interfaces import Face, FaceDetector
from .insightface_models import DEFAULT_PACK, INSIGHTFACE_LICENSE, PACKS, load_detector, load_model

__all__ = ["ScrfdDetector", "SUMMARY", "to_bgr_uint8"]

_DETECT_LOCK = threading.Lock()

SUMMARY = ("insightface SCRFD (det_10g of buffalo_l via insightface's model zoo + onnxruntime), boxes and 5 "
           f"landmarks incl. mouth corners; weights {INSIGHTFACE_LICENSE} (non-commercial research only)")


def to_bgr_uint8(image: Tensor) -> np.ndarray:
    """One ``3×H×W`` [0,1] RGB image to the ``H×W×3`` uint8 BGR array insightface takes (rounded)."""
    if image.dim() == 4 and image.shape[0] == 1:
        image = image[0]
    if image.dim() != 3 or image.shape[0] != 3:
        raise ValueError(f"expected one 3×H×W image, got {tuple(image.shape)}")
    arr = (image.detach().float().clamp(0, 1) * 255.0).round().to(torch.uint8)
    return np.ascontiguousarray(arr.permute(1, 2, 0).cpu().numpy()[:, :, ::-1])


class ScrfdDetector(FaceDetector):
    """SCRFD through insightface (``SCRFD.detect``) on the pack's detector ONNX file.

    ``det_size``: side of the square the image is letterboxed into (640, insightface's
    ``FaceAnalysis`` default; multiples of 32); ``threshold``: face-score cut-off (0.5);
    ``nms``: IoU threshold (0.4); ``pack``: the weights name of the insightface pack;
    ``model_path``: an SCRFD ONNX file to use instead of the cached pack.
    """

    name: ClassVar[str] = "scrfd"
    landmark_layout: ClassVar[str] = "eyes_nose_mouth5"
    license: ClassVar[str] = f"{INSIGHTFACE_LICENSE} (insightface SCRFD weights, non-commercial research only)"

    def __init__(self, det_size: int = 640, threshold: float = 0.5, nms: float = 0.4, pack: str = DEFAULT_PACK,
                 model_path: str | None = None, device: str | torch.device = "cpu") -> None:
        if det_size < 32 or det_size % 32:
            raise ValueError(f"scrfd: det_size must be a positive multiple of 32, got {det_size}")
        if not 0 < threshold < 1 or not 0 < nms < 1:
            raise ValueError(f"scrfd: threshold and nms must lie in (0, 1), got {threshold}, {nms}")
        if pack not in PACKS:
            raise ValueError(f"scrfd: unknown insightface pack '{pack}'; known: {', '.join(PACKS)}")
        self.det_size = int(det_size)
        self.threshold = float(threshold)
        self.nms = float(nms)
        self.pack = pack
        self.model_path = model_path
        self.device = torch.device(device)
        self._model: Any = None
        self._lock = threading.Lock()  # guards loading; _DETECT_LOCK guards the shared model object

    def load(self) -> None:
        """Open the SCRFD model (raises ``WeightsMissing`` naming the import command); idempotent."""
        with self._lock:
            if self._model is not None:
                return
            if self.model_path is not None:
                model = load_model(self.model_path, "detector", self.device)
            else:
                model = load_detector(self.pack, self.device)
            self._model = model

    def detect_raw(self, bgr: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """insightface's output on an ``H×W×3`` uint8 BGR array: ``K×5`` (x0, y0, x1, y1, score)
        and ``K×5×2`` landmarks, pixel-index coordinates, best score first."""
        self.load()
        model = self._model
        with _DETECT_LOCK:  # thresholds live on the model object, shared by every detector of the file
            model.det_thresh = self.threshold
            model.nms_thresh = self.nms
            det, kps = model.detect(bgr, input_size=(self.det_size, self.det_size))
        det = np.asarray(det, dtype=np.float64).reshape(-1, 5)
        kps = np.asarray(kps, dtype=np.float64).reshape(-1, 5, 2) if kps is not None else np.zeros((len(det), 0, 2))
        order = np.argsort(-det[:, 4], kind="stable")
        return det[order], kps[order]

    def detect(self, image: Tensor) -> list[Face]:
        det, kps = self.detect_raw(to_bgr_uint8(image))
        faces = []
        for b, p in zip(det, kps):
            faces.append(Face(box=(float(b[0]) + 0.5, float(b[1]) + 0.5, float(b[2]) + 0.5, float(b[3]) + 0.5),
                              score=float(b[4]), landmarks=[(float(x) + 0.5, float(y) + 0.5) for x, y in p]))
        return faces
