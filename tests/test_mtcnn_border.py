"""MTCNN on faces cut by the frame: R-Net/O-Net crops are zero-padded outside the image.

The networks' landmarks are fractions of the whole box, so a box crossing the border must be
cropped whole with black outside (the original MTCNN's ``pad()``), not clipped and stretched
(facenet-pytorch's shortcut, which put the eyes 0.5–0.9 eye distances off). Faces well inside
the image see the same crops either way. Photos are composed from ``skimage.data.astronaut()``.
"""

from __future__ import annotations

import importlib.util
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

import restorekit.faces.detectors as detectors
from restorekit.degradations import bicubic_resize
from restorekit.faces.compose import make_group_photo
from restorekit.faces.detectors import MtcnnDetector

skimage_data = pytest.importorskip("skimage.data")
needs_mtcnn = pytest.mark.skipif(importlib.util.find_spec("facenet_pytorch") is None,
                                 reason="MTCNN weights need facenet-pytorch==2.6.0 (--no-deps)")

ASTRONAUT_EYES = ((205.5, 102.2), (247.3, 104.2))  # continuous pixel coordinates, 512×512


def as_tensor(arr: np.ndarray) -> Tensor:
    return torch.from_numpy(np.ascontiguousarray(arr)).permute(2, 0, 1)[None].float() / 255


def clipped_crops(img: Tensor, boxes: Tensor, size: int, table: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """facenet-pytorch's crops: the part of each box inside the image, area-resized to ``size``."""
    h, w = img.shape[-2:]
    out, ok = [], []
    for k, b in enumerate(boxes[:, :4].trunc().long().tolist()):
        x0, y0, x1, y1 = max(b[0], 1) - 1, max(b[1], 1) - 1, min(b[2], w), min(b[3], h)
        if x1 > x0 and y1 > y0:
            out.append(F.interpolate(img[:, :, y0:y1, x0:x1], size=(size, size), mode="area"))
            ok.append(k)
    crops = torch.cat(out) if out else img.new_zeros(0, 3, size, size)
    return crops, torch.tensor(ok, dtype=torch.long)


@pytest.fixture(scope="module")
def mtcnn() -> MtcnnDetector:
    if importlib.util.find_spec("facenet_pytorch") is None:
        pytest.skip("MTCNN weights need facenet-pytorch==2.6.0 (--no-deps)")
    det = MtcnnDetector()
    det.load()
    return det


def test_crops_are_zero_padded_outside_the_image() -> None:
    """Each crop equals area resizing of the whole box cut from a zero-padded image; boxes that
    miss the image are dropped; boxes inside it give exactly the clipped (facenet-pytorch) crops."""
    torch.manual_seed(0)
    img = (torch.rand(1, 3, 37, 53) * 255).round()
    boxes = torch.tensor([
        [5.7, 3.2, 30.9, 28.4],      # inside
        [1.0, 1.0, 53.0, 37.0],      # the whole image, exactly
        [-10.3, -4.0, 20.2, 26.5],   # crosses left and top
        [40.0, 20.0, 70.0, 50.0],    # crosses right and bottom
        [-30.0, -30.0, -1.0, -1.0],  # outside (top-left)
        [60.0, 2.0, 80.0, 22.0],     # outside (right)
        [-20.0, -20.0, 80.0, 60.0],  # contains the image
    ], dtype=torch.float64)
    pad = 40
    padded = F.pad(img, (pad, pad, pad, pad))
    for size in (24, 48):
        crops, ok = detectors._crops(img, boxes, size)
        assert ok.tolist() == [0, 1, 2, 3, 6]
        for crop, k in zip(crops, ok.tolist()):
            x0, y0, x1, y1 = boxes[k].trunc().long().tolist()
            region = padded[:, :, y0 - 1 + pad:y1 + pad, x0 - 1 + pad:x1 + pad].double()
            want = F.interpolate(region, size=(size, size), mode="area")[0].float()
            torch.testing.assert_close(crop, want, atol=1e-4, rtol=0)
        inside, _ = clipped_crops(img, boxes[:2], size)
        torch.testing.assert_close(crops[:2], inside, atol=1e-4, rtol=0)
        # A border crop is darker than the stretched visible part: the outside is black.
        assert float(crops[2].mean()) < 0.8 * float(clipped_crops(img, boxes[2:3], size)[0].mean())


# Eye midpoint positions (on a 320×240 grey photo, eye distance 30) where the clipped crops put
# the eyes 0.27–0.88 eye distances off; zero-padded crops measured 0.05–0.16.
BORDER_CASES = [(290, 110), (295, 110), (300, 110), (305, 110),   # right edge
                (30, 110), (25, 110), (20, 110), (15, 110),       # left edge
                (160, 205), (160, 215),                           # bottom edge
                (160, 20), (160, 15), (160, 10)]                  # top edge


@needs_mtcnn
@pytest.mark.parametrize(("x", "y"), BORDER_CASES)
def test_mtcnn_eyes_of_a_face_cut_by_the_frame(mtcnn: MtcnnDetector, x: int, y: int) -> None:
    ast = as_tensor(skimage_data.astronaut())
    bg = torch.full((1, 3, 240, 320), 0.5)
    photo, truth = make_group_photo([(ast, *ASTRONAUT_EYES)], bg,
                                    [dict(face=0, x=x, y=y, eye_distance=30, angle=0, mirror=0)])
    faces = mtcnn.detect(photo[0])
    assert len(faces) == 1
    g, f = truth[0], faces[0]
    err = max(math.dist(f.landmarks[0], g.eye_left), math.dist(f.landmarks[1], g.eye_right))
    assert err < 0.2 * g.eye_distance, (err / g.eye_distance, f.landmarks)


@needs_mtcnn
def test_mtcnn_interior_faces_are_unchanged(mtcnn: MtcnnDetector, monkeypatch: pytest.MonkeyPatch) -> None:
    """Faces away from the border: the same boxes, scores and landmarks as the clipped crops."""
    ast = as_tensor(skimage_data.astronaut())
    bg = bicubic_resize(as_tensor(skimage_data.coffee()), (300, 400)).clamp(0, 1)
    placements = [dict(face=0, x=80, y=80, eye_distance=20, angle=0, mirror=0),
                  dict(face=0, x=210, y=95, eye_distance=28, angle=14, mirror=1),
                  dict(face=0, x=330, y=80, eye_distance=17, angle=-9, mirror=0),
                  dict(face=0, x=130, y=215, eye_distance=24, angle=-18, mirror=1),
                  dict(face=0, x=300, y=220, eye_distance=32, angle=6, mirror=0)]
    photo, _ = make_group_photo([(ast, *ASTRONAUT_EYES)], bg, placements)
    for img, n_faces in ((photo[0], 5), (ast[0], 1)):
        boxes, points = mtcnn.detect_raw(img)
        with monkeypatch.context() as m:
            m.setattr(detectors, "_crops", clipped_crops)
            ref_boxes, ref_points = mtcnn.detect_raw(img)
        assert len(boxes) == len(ref_boxes) == n_faces
        torch.testing.assert_close(boxes, ref_boxes, atol=1e-4, rtol=0)
        torch.testing.assert_close(points, ref_points, atol=1e-4, rtol=0)
