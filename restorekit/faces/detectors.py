"""Face detectors for photos from the wild: ``mtcnn`` and ``dlib_hog``.

Coordinates. Every detector here returns boxes and landmarks in continuous pixel coordinates
of the image it was given: ``(0, 0)`` is the top-left corner of the top-left pixel and pixel
centres sit at ``+0.5`` — the convention of :mod:`restorekit.faces.align`. Each detector says
which landmark layout it returns (``landmark_layout``); :func:`named_points` turns a face's
landmarks into the named points ``quad_from_points`` takes.

* ``mtcnn`` — the three-stage cascade of Zhang et al. 2016 (P-Net proposals over an image
  pyramid, R-Net refinement, O-Net boxes + 5 landmarks: both eye centres, nose tip, both mouth
  corners), with the weights that ship inside ``facenet-pytorch==2.6.0`` (MIT; converted from
  the authors' Caffe models). The cascade and its three networks are implemented here and
  only the three ``.pt`` state dicts are read from that package, with ``weights_only=True``:
  importing ``facenet_pytorch`` itself needs ``requests`` and pins ``numpy<2``/``torch<2.3``,
  so the package is installed with ``--no-deps`` and never imported. One departure from
  facenet-pytorch, back to the original: R-Net/O-Net crops of boxes that cross the image
  border are zero-padded, not clipped and stretched (see ``_crops``), so faces cut by the
  frame keep their landmarks; faces inside the image give the same results as facenet-pytorch.
* ``dlib_hog`` — dlib's HOG frontal detector + 5-point predictor (eye corners, nose base;
  public domain models from ``face-recognition-models``). No mouth corners: the crop comes from
  a similarity fit onto the FFHQ template (``quad_from_points``).

MediaPipe is not offered: its face models ship only up to ``mediapipe==0.10.21``, which needs
``numpy<2`` (this project runs on numpy 2).
"""

from __future__ import annotations

import importlib.util
import threading
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import DependencyMissing
from ..interfaces import Face, FaceDetector
from ..progress import report

__all__ = [
    "MTCNN_HINT", "LandmarkLayout", "named_points", "MtcnnDetector", "DlibHogDetector",
    "DETECTORS", "SUMMARIES", "DEFAULT_DETECTOR", "mtcnn_weights_dir", "layout_of", "check_available",
]

MTCNN_HINT = "pip install --no-deps facenet-pytorch==2.6.0"
LandmarkLayout = Literal["eyes_nose_mouth5", "dlib5"]
# Chosen by measurement (docs/faces.md): best recall on multi-face photos, no false positives
# on the non-face test images, faces down to 20 px, and it gives the mouth corners FFHQ needs.
DEFAULT_DETECTOR = "mtcnn"
#: The :mod:`restorekit.progress` label of MTCNN's steps (one per pyramid scale, R-Net, O-Net).
PROGRESS_LABEL = "mtcnn: finding faces"


def named_points(face: Face, layout: str) -> dict[str, tuple[float, float]]:
    """A face's landmarks as the named points of ``restorekit.faces.align``.

    ``eyes_nose_mouth5``: image-left eye, image-right eye, nose tip, image-left and image-right
    mouth corner (MTCNN, RetinaFace). ``dlib5``: dlib's order (image-right eye outer/inner
    corner, image-left eye outer/inner corner, nose base).
    """
    lm = np.asarray(face.landmarks, dtype=np.float64)
    if lm.shape != (5, 2):
        raise ValueError(f"expected 5 landmarks, got an array of shape {lm.shape}")
    if layout == "eyes_nose_mouth5":
        return {"eye_left": tuple(lm[0]), "eye_right": tuple(lm[1]),
                "mouth_left": tuple(lm[3]), "mouth_right": tuple(lm[4])}
    if layout == "dlib5":
        return {"eye_left": tuple(lm[2:4].mean(0)), "eye_right": tuple(lm[0:2].mean(0)),
                "nose_base": tuple(lm[4])}
    raise ValueError(f"unknown landmark layout '{layout}' (known: eyes_nose_mouth5, dlib5)")


# --------------------------------------------------------------------------------------------
# MTCNN


def mtcnn_weights_dir() -> Path:
    """The ``data/`` folder of the installed ``facenet-pytorch`` (found without importing it)."""
    try:
        spec = importlib.util.find_spec("facenet_pytorch")
    except (ImportError, ValueError):
        spec = None
    if spec is not None and spec.submodule_search_locations:
        for loc in spec.submodule_search_locations:
            folder = Path(loc) / "data"
            if all((folder / f"{n}.pt").is_file() for n in ("pnet", "rnet", "onet")):
                return folder
    raise DependencyMissing("detector 'mtcnn': its weights ship in facenet-pytorch, which is not "
                          f"installed; {MTCNN_HINT}")


class _CascadeNet(nn.Module):
    """One MTCNN stage: conv/PReLU/max-pool trunk, then (optionally) a dense layer and heads.

    Layer names follow the converted state dicts (``conv1``, ``prelu1``, ``dense5_1``…). The
    flatten before the dense layers runs over (width, height, channel), the order of the
    original Caffe→TensorFlow conversion the weights come from.
    """

    def __init__(self, convs: list[tuple[int, int, int, tuple[int, int] | None]],
                 dense: tuple[str, int, int] | None, heads: dict[str, int]) -> None:
        super().__init__()
        self.trunk: list[tuple[str, str, tuple[int, int] | None]] = []
        for i, (cin, cout, k, pool) in enumerate(convs, start=1):
            self.add_module(f"conv{i}", nn.Conv2d(cin, cout, k))
            self.add_module(f"prelu{i}", nn.PReLU(cout))
            self.trunk.append((f"conv{i}", f"prelu{i}", pool))
        self.dense = dense
        if dense is not None:
            name, fin, fout = dense
            self.add_module(name, nn.Linear(fin, fout))
            self.add_module(name.replace("dense", "prelu"), nn.PReLU(fout))
            head_in = fout
        else:
            head_in = convs[-1][1]
        self.head_names = list(heads)
        for name, n in heads.items():
            layer = nn.Conv2d(head_in, n, 1) if dense is None else nn.Linear(head_in, n)
            self.add_module(name, layer)

    def forward(self, x: Tensor) -> list[Tensor]:
        for conv, prelu, pool in self.trunk:
            x = getattr(self, prelu)(getattr(self, conv)(x))
            if pool is not None:
                x = _max_pool_ceil(x, pool[0], pool[1])
        if self.dense is not None:
            name = self.dense[0]
            x = x.permute(0, 3, 2, 1).reshape(x.shape[0], -1)
            x = getattr(self, name.replace("dense", "prelu"))(getattr(self, name)(x))
        return [getattr(self, h)(x) for h in self.head_names]


def _max_pool_ceil(x: Tensor, k: int, stride: int) -> Tensor:
    """``max_pool2d(x, k, stride, ceil_mode=True)`` by reshapes and strided slices (CPU's is slow here)."""
    n, c, h, w = x.shape
    if k != stride:
        # Shifted strided slices of a -inf padded map (ceil mode: the last window starts inside).
        def out_len(size: int) -> int:
            o = -(-(size - k) // stride) + 1
            return o - 1 if (o - 1) * stride >= size else o

        oh, ow = out_len(h), out_len(w)
        x = F.pad(x, (0, (ow - 1) * stride + k - w, 0, (oh - 1) * stride + k - h), value=float("-inf"))
        out = None
        for dy in range(k):
            for dx in range(k):
                v = x[:, :, dy:dy + (oh - 1) * stride + 1:stride, dx:dx + (ow - 1) * stride + 1:stride]
                out = v if out is None else torch.maximum(out, v)
        assert out is not None
        return out
    ph, pw = -h % k, -w % k
    if ph or pw:
        x = F.pad(x, (0, pw, 0, ph), value=float("-inf"))
    return x.reshape(n, c, (h + ph) // k, k, (w + pw) // k, k).amax(dim=(3, 5))


def _pnet() -> _CascadeNet:
    return _CascadeNet([(3, 10, 3, (2, 2)), (10, 16, 3, None), (16, 32, 3, None)], None,
                       {"conv4_1": 2, "conv4_2": 4})


def _rnet() -> _CascadeNet:
    return _CascadeNet([(3, 28, 3, (3, 2)), (28, 48, 3, (3, 2)), (48, 64, 2, None)],
                       ("dense4", 576, 128), {"dense5_1": 2, "dense5_2": 4})


def _onet() -> _CascadeNet:
    return _CascadeNet([(3, 32, 3, (3, 2)), (32, 64, 3, (3, 2)), (64, 64, 3, (2, 2)), (64, 128, 2, None)],
                       ("dense5", 1152, 256), {"dense6_1": 2, "dense6_2": 4, "dense6_3": 10})


def _greedy_nms(boxes: Tensor, scores: Tensor, thresh: float, *, union: bool, inclusive: bool) -> Tensor:
    """Greedy non-maximum suppression; indices of the kept boxes, best first.

    ``union``: overlap = intersection over union, else over the smaller box. ``inclusive``:
    areas of integer pixel boxes count both ends (``+1``), as MTCNN's last stage does.
    """
    order = torch.argsort(scores, descending=True, stable=True)
    b = boxes.double()
    e = 1.0 if inclusive else 0.0
    area = (b[:, 2] - b[:, 0] + e) * (b[:, 3] - b[:, 1] + e)
    n = len(order)
    if n <= 2048:  # all pairwise overlaps at once, then one cheap pass in score order
        bs, a = b[order], area[order]
        w = (torch.minimum(bs[:, None, 2], bs[None, :, 2]) - torch.maximum(bs[:, None, 0], bs[None, :, 0]) + e).clamp(min=0)
        h = (torch.minimum(bs[:, None, 3], bs[None, :, 3]) - torch.maximum(bs[:, None, 1], bs[None, :, 1]) + e).clamp(min=0)
        inter = w * h
        denom = a[:, None] + a[None, :] - inter if union else torch.minimum(a[:, None], a[None, :])
        over = (inter / denom.clamp(min=1e-12) > thresh).cpu().numpy()  # boxes may be on a GPU
        suppressed = np.zeros(n, dtype=bool)
        kept: list[int] = []
        for i in range(n):
            if not suppressed[i]:
                kept.append(i)
                suppressed |= over[i]
        return order[torch.tensor(kept, dtype=torch.long, device=order.device)]
    keep: list[int] = []
    while order.numel():
        i = int(order[0])
        keep.append(i)
        rest = order[1:]
        w = (torch.minimum(b[i, 2], b[rest, 2]) - torch.maximum(b[i, 0], b[rest, 0]) + e).clamp(min=0)
        h = (torch.minimum(b[i, 3], b[rest, 3]) - torch.maximum(b[i, 1], b[rest, 1]) + e).clamp(min=0)
        inter = w * h
        denom = area[i] + area[rest] - inter if union else torch.minimum(area[i], area[rest])
        order = rest[inter / denom.clamp(min=1e-12) <= thresh]
    return torch.tensor(keep, dtype=torch.long)


def _nms(boxes: Tensor, scores: Tensor, iou: float) -> Tensor:
    """NMS by intersection over union (continuous areas; torchvision's ``nms`` definition)."""
    return _greedy_nms(boxes, scores, iou, union=True, inclusive=False)


def _nms_min(boxes: Tensor, scores: Tensor, thresh: float) -> Tensor:
    """NMS by intersection over the smaller box with inclusive areas (MTCNN's last stage)."""
    return _greedy_nms(boxes, scores, thresh, union=False, inclusive=True)


def _square(boxes: Tensor) -> Tensor:
    """Grow each box to a square about its centre (side = the longer side)."""
    out = boxes.clone()
    w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    side = torch.maximum(w, h)
    out[:, 0] = boxes[:, 0] + w / 2 - side / 2
    out[:, 1] = boxes[:, 1] + h / 2 - side / 2
    out[:, 2] = out[:, 0] + side
    out[:, 3] = out[:, 1] + side
    return out


def _regress(boxes: Tensor, reg: Tensor, inclusive: bool) -> Tensor:
    """Apply the networks' box offsets (fractions of the box size)."""
    extra = 1.0 if inclusive else 0.0
    w = boxes[:, 2] - boxes[:, 0] + extra
    h = boxes[:, 3] - boxes[:, 1] + extra
    out = boxes.clone()
    out[:, 0] += reg[:, 0] * w
    out[:, 1] += reg[:, 1] * h
    out[:, 2] += reg[:, 2] * w
    out[:, 3] += reg[:, 3] * h
    return out


def _summed_area(img: Tensor) -> Tensor:
    """``3×(H+1)×(W+1)`` float64 summed-area table of a 1×3×H×W image (zero first row/column)."""
    return F.pad(img[0].double().cumsum(2).cumsum(1), (1, 0, 1, 0))


def _crops(img: Tensor, boxes: Tensor, size: int, table: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Area-resized ``size×size`` crops of 1-based inclusive integer boxes, zero outside the image.

    A box that crosses the border is cropped whole, the part outside the image black (0 on the
    0–255 scale), as in the original MTCNN's ``pad()``: the networks' landmarks are fractions of
    the whole box, so stretching only the visible part (facenet-pytorch's shortcut) misplaces
    them. Equal to ``F.interpolate(region, size, mode="area")`` per box (adaptive average
    pooling: output cell ``i`` averages input rows ``floor(i·h/size)`` to ``ceil((i+1)·h/size)``),
    computed for all boxes at once from one summed-area table (``_summed_area(img)``, built when
    not given): cell corners outside the image are clamped to it, which adds the zeros for free.
    Returns the crops and the indices of the boxes that overlap the image.
    """
    h, w = img.shape[-2:]
    b = boxes[:, :4].trunc().long()
    x0, y0, x1, y1 = b[:, 0] - 1, b[:, 1] - 1, b[:, 2], b[:, 3]
    visible = (x1.clamp(max=w) > x0.clamp(min=0)) & (y1.clamp(max=h) > y0.clamp(min=0))
    ok = torch.nonzero(visible).flatten()
    if not len(ok):
        return img.new_zeros(0, 3, size, size), ok
    x0, y0, x1, y1 = x0[ok], y0[ok], x1[ok], y1[ok]
    if table is None:
        table = _summed_area(img)
    i = torch.arange(size, device=boxes.device)

    def cells(lo: Tensor, hi: Tensor) -> tuple[Tensor, Tensor]:
        n = (hi - lo)[:, None]
        return lo[:, None] + (i * n) // size, lo[:, None] - ((-(i + 1) * n) // size)

    rs, re = cells(y0, y1)
    cs, ce = cells(x0, x1)
    r0, r1, c0, c1 = rs[:, :, None], re[:, :, None], cs[:, None, :], ce[:, None, :]
    area = (r1 - r0) * (c1 - c0)  # of the whole cell, outside part included
    r0, r1, c0, c1 = r0.clamp(0, h), r1.clamp(0, h), c0.clamp(0, w), c1.clamp(0, w)
    total = table[:, r1, c1] - table[:, r0, c1] - table[:, r1, c0] + table[:, r0, c0]
    crops = (total / area).permute(1, 0, 2, 3)
    return crops.to(img.dtype).contiguous(), ok


class MtcnnDetector(FaceDetector):
    """MTCNN (Zhang et al. 2016) with the weights shipped in ``facenet-pytorch==2.6.0``.

    ``min_face``: smallest face (box side, pixels) searched for — the image pyramid starts
    at ``12/min_face``; ``thresholds``: the three stages' face-probability cut-offs;
    ``factor``: pyramid step. Defaults are the published ones (20, (0.6, 0.7, 0.7), 0.709).
    ``min_score``: faces below this final score are dropped by :meth:`detect` (not by
    :meth:`detect_raw`): chosen where two texture false positives (grass, gravel) scored 0.71 and
    0.81 and every true face ≥ 0.91; on the photo set ``scripts/detector_table.py`` builds MTCNN
    reports no false face at all, and the cut drops one true face of 72 (docs/faces.md).
    """

    name: ClassVar[str] = "mtcnn"
    landmark_layout: ClassVar[str] = "eyes_nose_mouth5"
    license: ClassVar[str] = "MIT (facenet-pytorch weights, converted from the MTCNN authors' models)"

    def __init__(self, min_face: float = 20.0, thresholds: tuple[float, float, float] = (0.6, 0.7, 0.7),
                 factor: float = 0.709, min_score: float = 0.9, device: str | torch.device = "cpu") -> None:
        if min_face < 12:
            raise ValueError(f"mtcnn: min_face must be at least 12 px (P-Net's window), got {min_face}")
        if not 0 < factor < 1:
            raise ValueError(f"mtcnn: the pyramid factor must be in (0, 1), got {factor}")
        self.min_face = float(min_face)
        self.thresholds = tuple(float(t) for t in thresholds)
        self.factor = float(factor)
        self.min_score = float(min_score)
        self.device = torch.device(device)
        self._nets: tuple[_CascadeNet, _CascadeNet, _CascadeNet] | None = None
        self._lock = threading.Lock()

    def load(self) -> None:
        """Read the three state dicts (``weights_only``) into the networks; idempotent."""
        with self._lock:
            if self._nets is not None:
                return
            folder = mtcnn_weights_dir()
            nets = []
            for name, build in (("pnet", _pnet), ("rnet", _rnet), ("onet", _onet)):
                net = build()
                state = torch.load(folder / f"{name}.pt", map_location="cpu", weights_only=True)
                net.load_state_dict(state)
                nets.append(net.to(self.device).eval())
            self._nets = (nets[0], nets[1], nets[2])

    def scales(self, h: int, w: int) -> list[float]:
        """The image pyramid: ``12/min_face`` times powers of ``factor`` down to a 12-px short side."""
        m = 12.0 / self.min_face
        minl = min(h, w) * m
        out = []
        s = m
        while minl >= 12:
            out.append(s)
            s *= self.factor
            minl *= self.factor
        return out

    @torch.inference_mode()
    def detect_raw(self, image: Tensor) -> tuple[Tensor, Tensor]:
        """The cascade on one ``3×H×W`` [0,1] image quantised to 8 bits.

        Returns ``K×5`` boxes (x0, y0, x1, y1 in MTCNN's 1-based inclusive pixel convention,
        score) and ``K×5×2`` landmarks (0-based pixel indices), best first.

        Each pyramid scale and each later stage is a :func:`restorekit.progress.report` step
        (``mtcnn: finding faces``, reported before the step), so a caller that follows progress
        (``serve``) can cancel a long detection on a large photo between scales.
        """
        self.load()
        assert self._nets is not None
        pnet, rnet, onet = self._nets
        t = self.thresholds
        img = (image.detach().float().clamp(0, 1) * 255).round()[None].to(self.device)
        h, w = img.shape[-2:]
        empty = (torch.zeros(0, 5), torch.zeros(0, 5, 2))
        scales = self.scales(h, w)
        steps = len(scales) + 2  # the pyramid's scales, R-Net, O-Net

        # Stage 1: P-Net over the pyramid; per-scale NMS 0.5, then NMS 0.7 over all scales.
        found = []
        for i, s in enumerate(scales):
            report(PROGRESS_LABEL, i, steps)
            x = F.interpolate(img, size=(int(h * s + 1), int(w * s + 1)), mode="area")
            logits, reg = pnet((x - 127.5) * 0.0078125)
            prob = torch.softmax(logits, dim=1)[0, 1]
            ys, xs = torch.nonzero(prob >= t[0], as_tuple=True)
            if ys.numel() == 0:
                continue
            cell = torch.stack([xs, ys], 1).to(img.dtype)
            q0 = torch.floor((2 * cell + 1) / s)
            q1 = torch.floor((2 * cell + 12) / s)
            cand = torch.cat([q0, q1, prob[ys, xs, None], reg[0][:, ys, xs].T], 1)
            found.append(cand[_nms(cand[:, :4], cand[:, 4], 0.5)])
        if not found:
            return empty
        cand = torch.cat(found)
        cand = cand[_nms(cand[:, :4], cand[:, 4], 0.7)]
        boxes = _square(_regress(cand[:, :4], cand[:, 5:9], inclusive=False))
        boxes = torch.cat([boxes, cand[:, 4:5]], 1)

        # Stage 2: R-Net on 24-px crops.
        report(PROGRESS_LABEL, len(scales), steps)
        table = _summed_area(img)
        crops, ok = _crops(img, boxes, 24, table)
        if not len(ok):
            return empty
        boxes = boxes[ok]
        logits, reg = rnet((crops - 127.5) * 0.0078125)
        score = torch.softmax(logits, dim=1)[:, 1]
        keep = score > t[1]
        boxes, reg, score = boxes[keep], reg[keep], score[keep]
        boxes = torch.cat([boxes[:, :4], score[:, None]], 1)
        pick = _nms(boxes[:, :4], boxes[:, 4], 0.7)
        boxes, reg = boxes[pick], reg[pick]
        if not len(boxes):
            return empty
        boxes = torch.cat([_square(_regress(boxes[:, :4], reg, inclusive=True)), boxes[:, 4:5]], 1)

        # Stage 3: O-Net on 48-px crops: final boxes, scores and landmarks.
        report(PROGRESS_LABEL, len(scales) + 1, steps)
        crops, ok = _crops(img, boxes, 48, table)
        if not len(ok):
            return empty
        boxes = boxes[ok]
        logits, reg, lm = onet((crops - 127.5) * 0.0078125)
        score = torch.softmax(logits, dim=1)[:, 1]
        keep = score > t[2]
        boxes, reg, lm, score = boxes[keep, :4], reg[keep], lm[keep], score[keep]
        bw = boxes[:, 2] - boxes[:, 0] + 1
        bh = boxes[:, 3] - boxes[:, 1] + 1
        pts = torch.stack([bw[:, None] * lm[:, :5] + boxes[:, 0:1] - 1,
                           bh[:, None] * lm[:, 5:] + boxes[:, 1:2] - 1], dim=2)
        boxes = torch.cat([_regress(boxes, reg, inclusive=True), score[:, None]], 1)
        pick = _nms_min(boxes[:, :4], boxes[:, 4], 0.7)
        return boxes[pick].cpu(), pts[pick].cpu()

    def detect(self, image: Tensor) -> list[Face]:
        if image.dim() == 4 and image.shape[0] == 1:
            image = image[0]
        if image.dim() != 3 or image.shape[0] != 3:
            raise ValueError(f"mtcnn: expected one 3×H×W image, got {tuple(image.shape)}")
        boxes, pts = self.detect_raw(image)
        faces = []
        for b, p in zip(boxes.tolist(), pts.tolist()):
            if b[4] < self.min_score:
                continue
            # 1-based inclusive box (x0..x1 pixels) -> continuous corners. The landmarks of MTCNN's
            # formula (w·lm + x0 − 1, as facenet-pytorch and the original) sit half a pixel past the
            # points in continuous coordinates: measured by detecting on a photo and on its mirror
            # image (60 faces, tests/test_faces_pipeline.py), +0.5 gave +1.04 px, −0.5 gives 0.
            faces.append(Face(box=(b[0] - 1, b[1] - 1, b[2], b[3]), score=float(b[4]),
                              landmarks=[(x - 0.5, y - 0.5) for x, y in p]))
        faces.sort(key=lambda f: -f.score)
        return faces


# --------------------------------------------------------------------------------------------
# dlib HOG


class DlibHogDetector(FaceDetector):
    """dlib's HOG frontal face detector + 5-point landmark predictor (public domain models).

    ``upsample``: how many times dlib doubles the image before scanning (HOG finds faces of
    about 80 px / 2**upsample and up); ``None`` picks 1 under 512 px short side, else 0, and
    retries with more doublings (up to 2) when nothing is found.
    """

    name: ClassVar[str] = "dlib_hog"
    landmark_layout: ClassVar[str] = "dlib5"
    license: ClassVar[str] = "CC0 (dlib HOG detector and 5-point predictor, face-recognition-models)"

    def __init__(self, upsample: int | None = None, device: str | torch.device = "cpu") -> None:
        from .dlib_tools import DlibFaceTools

        if upsample is not None and not 0 <= upsample <= 3:
            raise ValueError(f"dlib_hog: upsample must be 0-3, got {upsample}")
        self.tools = DlibFaceTools(upsample)

    def load(self) -> None:
        """Import dlib and read the predictor; raises a one-line error naming the extra."""
        self.tools._load()

    def detect(self, image: Tensor) -> list[Face]:
        from .dlib_tools import to_uint8

        if image.dim() == 4 and image.shape[0] == 1:
            image = image[0]
        arr = to_uint8(image)
        faces = []
        for rect, score in self.tools.detect(arr):
            lm = self.tools.landmarks(arr, rect)
            faces.append(Face(box=(float(rect.left()), float(rect.top()), float(rect.right() + 1),
                                   float(rect.bottom() + 1)), score=float(score),
                              landmarks=[(float(x) + 0.5, float(y) + 0.5) for x, y in lm]))
        return faces


DETECTORS: dict[str, type[FaceDetector]] = {"mtcnn": MtcnnDetector, "dlib_hog": DlibHogDetector}
SUMMARIES = {
    "mtcnn": "MTCNN cascade, 5 landmarks incl. mouth corners (weights: facenet-pytorch==2.6.0, MIT)",
    "dlib_hog": "dlib HOG frontal detector + 5-point predictor (face-recognition-models, CC0)",
}


def layout_of(detector: Any) -> str:
    """The landmark layout a detector declares (``eyes_nose_mouth5`` when it says nothing)."""
    return str(getattr(detector, "landmark_layout", "eyes_nose_mouth5"))


def check_available(name: str) -> None:
    """Raise a one-line ``DependencyMissing`` or ``WeightsMissing`` naming what to install or import
    when a built-in detector cannot run (mtcnn, dlib_hog, scrfd), before any work: what its ``load``
    would need, asked cheaply. Other detectors bring their own checks, so nothing happens for them."""
    if name == "mtcnn":
        mtcnn_weights_dir()
    elif name == "scrfd":
        _check_scrfd()
    elif name == "dlib_hog":
        from .dlib_models import dlib_model_path
        from .dlib_tools import DLIB_HINT

        if importlib.util.find_spec("dlib") is None:
            raise DependencyMissing(f"detector 'dlib_hog' needs dlib; {DLIB_HINT}")
        dlib_model_path("shape_predictor_5")


def _check_scrfd() -> None:
    """What ``scrfd``'s ``load`` needs, in the order it asks (:func:`.insightface_models.load_detector`):
    ``insightface`` and ``onnxruntime`` installed (found, not imported), then the default pack's
    detector file in the weights cache (``WeightsMissing`` naming the import command)."""
    from .insightface_models import DEFAULT_PACK, pack_file, require_packages

    require_packages("detector 'scrfd'")
    pack_file(DEFAULT_PACK, "detector")
