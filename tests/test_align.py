"""FFHQ alignment: crop geometry, round trips (align then un-align) and eye placement on a real face.

Measured here (astronaut, MTCNN landmarks, FFHQ recipe): align→un-align PSNR over the face
region ≈ 34.4 dB with a crop at the face's own resolution and ≈ 39.6 dB with a 2× oversampled
crop; on a linear ramp image (which bilinear resampling preserves) the round trip is exact to
float precision. dlib's 5-point predictor run on the 256-px aligned crop puts the eye centres
within 3.5 px (MTCNN quad) and 0.7 px (dlib quad) of ``FFHQ_TEMPLATE_128`` × 2.
"""

from __future__ import annotations

import importlib.util
import math

import numpy as np
import pytest
import torch

from restorekit.faces.align import (
    FFHQ_TEMPLATE_128, AlignedFace, align_face, dlib5_points, face_mask, ffhq_quad, quad_from_points,
    similarity_fit, unalign,
)
from restorekit.faces.detectors import named_points
from restorekit.interfaces import Face

needs_mtcnn = pytest.mark.skipif(importlib.util.find_spec("facenet_pytorch") is None,
                                 reason="MTCNN weights need facenet-pytorch==2.6.0 (--no-deps)")
needs_dlib = pytest.mark.skipif(importlib.util.find_spec("dlib") is None
                                or importlib.util.find_spec("face_recognition_models") is None,
                                reason="needs the faces extra (dlib-bin, face-recognition-models)")


def similarity(angle_deg: float, scale: float, shift: tuple[float, float]) -> np.ndarray:
    a = math.radians(angle_deg)
    r = scale * np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
    return np.hstack([r, np.array(shift, float)[:, None]])


def apply(m: np.ndarray, p) -> np.ndarray:
    p = np.asarray(p, float)
    return p @ m[:, :2].T + m[:, 2]


def psnr(a: torch.Tensor, b: torch.Tensor, where: torch.Tensor) -> float:
    mse = ((a - b)[0][:, where].double() ** 2).mean().item()
    return 10 * math.log10(1 / mse) if mse > 0 else math.inf


def astronaut() -> torch.Tensor:
    data = pytest.importorskip("skimage.data")
    return torch.from_numpy(data.astronaut()).permute(2, 0, 1)[None].float() / 255


# ---------------------------------------------------------------------------------------------
# geometry


def test_similarity_fit_recovers_a_known_transform():
    rng = np.random.default_rng(0)
    src = rng.uniform(0, 100, (6, 2))
    m = similarity(23.0, 1.7, (12.0, -5.0))
    np.testing.assert_allclose(similarity_fit(src, apply(m, src)), m, atol=1e-10)


def test_crop_transforms_are_inverse_and_hit_the_corners():
    quad = ffhq_quad(np.array([100.0, 120]), np.array([140.0, 112]), np.array([104.0, 170]), np.array([138.0, 166]))
    g = AlignedFace(quad, 64)
    corners = np.array([[0, 0], [0, 64], [64, 64], [64, 0]], float)
    np.testing.assert_allclose(apply(g.to_source, corners), quad, atol=1e-9)
    pts = np.array([[3.0, 7.0], [50.0, 20.0]])
    np.testing.assert_allclose(apply(g.to_crop, apply(g.to_source, pts)), pts, atol=1e-9)
    assert g.scale == pytest.approx(np.hypot(*(quad[3] - quad[0])) / 64)


def test_template_points_give_the_unit_crop():
    quad = quad_from_points({k: FFHQ_TEMPLATE_128[k] for k in ("eye_left", "eye_right", "nose_base")})
    np.testing.assert_allclose(quad, [[0, 0], [0, 128], [128, 128], [128, 0]], atol=1e-9)


@pytest.mark.parametrize("angle,scale,shift", [(0, 1, (0, 0)), (30, 2.5, (40, 10)), (-75, 0.6, (300, 200))])
def test_ffhq_recipe_is_similarity_equivariant_and_matches_the_template(angle, scale, shift):
    """Eyes and mouth moved by any similarity land at the same crop positions, near the template."""
    m = similarity(angle, scale, shift)
    names = ("eye_left", "eye_right", "mouth_left", "mouth_right")
    pts = {k: apply(m, FFHQ_TEMPLATE_128[k]) for k in names}
    g = AlignedFace(quad_from_points(pts), 128)
    for k in names:
        in_crop = apply(g.to_crop, pts[k])
        assert np.linalg.norm(in_crop - np.asarray(FFHQ_TEMPLATE_128[k])) < 3.0, (k, in_crop)
    # Also through the dlib 5-point path (eye corners + nose base).
    el, er = np.asarray(FFHQ_TEMPLATE_128["eye_left"]), np.asarray(FFHQ_TEMPLATE_128["eye_right"])
    corners = [er + (4, 0), er - (4, 0), el - (4, 0), el + (4, 0), FFHQ_TEMPLATE_128["nose_base"]]
    p5 = dlib5_points([tuple(apply(m, c)) for c in corners])
    g5 = AlignedFace(quad_from_points(p5), 128)
    np.testing.assert_allclose(apply(g5.to_crop, p5["eye_left"]), el, atol=1e-6)


def test_named_points_layouts():
    face = Face((0, 0, 10, 10), 1.0, [(1, 2), (5, 2), (3, 4), (1.5, 7), (4.5, 7)])
    p = named_points(face, "eyes_nose_mouth5")
    assert p["eye_left"] == (1, 2) and p["mouth_right"] == (4.5, 7) and "nose_base" not in p
    d = named_points(Face((0, 0, 10, 10), 1.0, [(9, 3), (7, 3), (1, 3), (3, 3), (5, 6)]), "dlib5")
    assert d == {"eye_left": (2, 3), "eye_right": (8, 3), "nose_base": (5, 6)}
    with pytest.raises(ValueError, match="unknown landmark layout"):
        named_points(face, "sixty-eight")


# ---------------------------------------------------------------------------------------------
# round trips


@pytest.mark.parametrize("crop,scale", [(24, 1.0), (48, 1.0), (128, 1.0), (96, 2.0)])
def test_round_trip_exact_on_a_linear_ramp(crop, scale):
    """Bilinear sampling and area prefiltering keep linear images linear: the round trip is exact."""
    h, w = 120, 159  # multiples of the area prefilter's factor (3 for the 24-px crop)
    ys, xs = torch.meshgrid(torch.arange(h * scale) + 0.5, torch.arange(w * scale) + 0.5, indexing="ij")
    ys, xs = ys / scale, xs / scale
    ramp = lambda y, x: torch.stack([0.2 + 0.003 * x, 0.1 + 0.004 * y, 0.5 + 0.001 * (x - y)])[None]  # noqa: E731
    yy, xx = torch.meshgrid(torch.arange(h) + 0.5, torch.arange(w) + 0.5, indexing="ij")
    image = ramp(yy, xx).float()
    quad = ffhq_quad(np.array([70.0, 55]), np.array([92.0, 50]), np.array([73.0, 80]), np.array([93.0, 77]))
    cropped, g = align_face(image, quad, crop)
    back = unalign(cropped, g, int(h * scale), int(w * scale), scale)
    m = face_mask(g, int(h * scale), int(w * scale), scale)[0, 0] > 0.999
    assert m.sum() > 500
    expect = ramp(ys, xs).float()
    assert (back - expect)[0][:, m].abs().max().item() < 2e-5


@needs_mtcnn
def test_round_trip_on_the_astronaut():
    from restorekit.faces.detectors import MtcnnDetector

    img = astronaut()
    face = MtcnnDetector().detect(img[0])[0]
    quad = quad_from_points(named_points(face, "eyes_nose_mouth5"))
    side = float(np.hypot(*(quad[3] - quad[0])))
    results = {}
    for label, crop in (("1x", round(side)), ("2x", round(2 * side))):
        c, g = align_face(img, quad, crop)
        back = unalign(c, g, 512, 512)
        inside = face_mask(g, 512, 512)[0, 0] > 0.999
        results[label] = psnr(back, img, inside)
    assert results["1x"] > 33.0 and results["2x"] > 38.0, results


def test_face_mask_is_feathered_linearly():
    quad = ffhq_quad(np.array([70.0, 55]), np.array([92.0, 50]), np.array([73.0, 80]), np.array([93.0, 77]))
    g = AlignedFace(quad, 64)
    for scale in (1.0, 3.0):
        m = face_mask(g, int(120 * scale), int(160 * scale), scale, feather=0.1)[0, 0]
        assert m.min() >= 0 and m.max() <= 1 + 1e-6 and (m > 0.999).any() and m[0, 0] == 0
        ramp = 0.1 * 64 * g.scale * scale
        step = max((m[1:] - m[:-1]).abs().max().item(), (m[:, 1:] - m[:, :-1]).abs().max().item())
        assert 0.5 / ramp < step <= 1.05 * math.sqrt(2) / ramp


# ---------------------------------------------------------------------------------------------
# eye placement measured by dlib on the aligned crop


@needs_dlib
@pytest.mark.parametrize("detector", ["mtcnn", "dlib_hog"])
def test_aligned_astronaut_eyes_land_on_the_template(detector):
    from restorekit.faces.detectors import DETECTORS, layout_of
    from restorekit.faces.dlib_tools import DlibFaceTools, to_uint8

    if detector == "mtcnn" and importlib.util.find_spec("facenet_pytorch") is None:
        pytest.skip("MTCNN weights need facenet-pytorch==2.6.0 (--no-deps)")
    img = astronaut()
    det = DETECTORS[detector]()
    face = det.detect(img[0])[0]
    quad = quad_from_points(named_points(face, layout_of(det)))
    crop, _ = align_face(img, quad, 256)
    arr = to_uint8(crop[0])
    tools = DlibFaceTools(upsample=0)
    found = tools.detect(arr)
    assert len(found) == 1
    lm = tools.landmarks(arr, found[0][0]) + 0.5  # dlib pixel indices -> pixel-centre coordinates
    k = 256 / 128
    for name, got in (("eye_left", lm[2:4].mean(0)), ("eye_right", lm[0:2].mean(0))):
        want = np.asarray(FFHQ_TEMPLATE_128[name]) * k
        assert np.linalg.norm(got - want) < 4.0, (name, got, want)
