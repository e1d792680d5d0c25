"""The paste mask of ``--faces detect``: ``square`` (the whole aligned crop) and ``face`` (an ellipse
around face and hair that leaves the crop's corners to the background).

Tiny synthetic photos, a stub face method and given faces: nothing here needs /work/shared.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from restorekit.degradations import upscale
from restorekit.errors import RestorekitError
from restorekit.faces.align import (FACE_ELLIPSE_128, FFHQ_TEMPLATE_128, PASTE_MASKS, AlignedFace, crop_mask,
                                    face_mask, paste_mask_at, similarity_fit, unalign)
from restorekit.faces.pipeline import FacePipeline, restore_photo
from restorekit.interfaces import Face, FaceDetector, Method, MethodInfo
from plugin_sources import one_face_plugin_source

SCALE = 2


def old_face_mask(geom: AlignedFace, out_h: int, out_w: int, scale: float, feather: float) -> torch.Tensor:
    """``face_mask`` as it was before it had shapes (the square), kept as the golden reference."""
    n = geom.size
    ramp = max(1.0, feather * n)
    t = torch.arange(n, dtype=torch.float32) + 0.5
    edge = torch.clamp((torch.minimum(t, n - t) - 0.5) / ramp, 0, 1)
    m = (edge[None, :] * edge[:, None])[None, None]
    return unalign(m, geom, out_h, out_w, scale)


def template_points(n: int) -> dict[str, tuple[float, float]]:
    return {k: (x * n / 128, y * n / 128) for k, (x, y) in FFHQ_TEMPLATE_128.items()}


@pytest.mark.parametrize("n", [16, 32, 128, 256])
def test_the_face_mask_covers_the_face_not_the_crop_corners(n):
    m = crop_mask(n, 0.1, "face")
    assert m.shape == (n, n) and m.dtype == torch.float32
    assert float(m.min()) >= 0.0 and float(m.max()) <= 1.0
    # 0 on the crop's outermost pixels: warped back, nothing of it lies on or beyond the quad's border.
    assert float(torch.cat([m[0], m[-1], m[:, 0], m[:, -1]]).abs().max()) == 0.0
    # 1 at the face: the ellipse's centre, the eyes, the nose and the mouth corners.
    cx, cy = FACE_ELLIPSE_128[0] * n / 128, FACE_ELLIPSE_128[1] * n / 128
    for x, y in [(cx, cy), *template_points(n).values()]:
        assert float(paste_mask_at(torch.tensor(x), torch.tensor(y), n, 0.1, "face")) == 1.0, (x, y)
    # The crop's corners (a sixth of its side) are left out; the square pastes most of them.
    k = n // 6
    for corner in (m[:k, :k], m[:k, -k:], m[-k:, :k], m[-k:, -k:]):
        assert float(corner.max()) == 0.0
    square = crop_mask(n, 0.1, "square")
    assert float(square[:k, :k].max()) > 0.3
    assert bool((m <= square).all())  # never more than the square
    # Covers a good part of the crop, less than the square.
    assert 0.3 < float(m.mean()) < 0.8 * float(square.mean())


def test_the_face_mask_falls_monotonically_along_every_ray_from_the_centre():
    n = 64
    cx, cy = FACE_ELLIPSE_128[0] * n / 128, FACE_ELLIPSE_128[1] * n / 128
    t = torch.linspace(0, 1, 400, dtype=torch.float64)
    for angle in torch.arange(0, 360, 5, dtype=torch.float64):
        dx, dy = math.cos(math.radians(angle)), math.sin(math.radians(angle))
        # to the crop's border along the ray, and a little beyond
        reach = min(x for x in ((n - cx) / dx if dx > 0 else -cx / dx if dx < 0 else math.inf,
                                (n - cy) / dy if dy > 0 else -cy / dy if dy < 0 else math.inf)) + 2
        x, y = (cx + t * reach * dx).float(), (cy + t * reach * dy).float()
        v = paste_mask_at(x, y, n, 0.1, "face")
        assert float(v[0]) == 1.0 and float(v[-1]) == 0.0, angle
        assert float((v[1:] - v[:-1]).max()) <= 1e-6, angle
        # Each ramp falls by at most 1/ramp per crop px along a ray; where the ellipse's meets the
        # square's (the top of the hair, the chin) their product falls by at most twice that.
        step = reach / (len(t) - 1)
        assert float((v[:-1] - v[1:]).max()) / step <= 2.02 / (0.1 * n), angle
        ellipse = paste_mask_at(x, y, n, 0.1, "face") / paste_mask_at(x, y, n, 0.1, "square").clamp(min=1e-9)
        inside = paste_mask_at(x, y, n, 0.1, "square") > 0.999
        e = ellipse[inside]
        assert float((e[:-1] - e[1:]).max()) / step <= 1.01 / (0.1 * n), angle


def test_the_square_mask_is_unchanged():
    quad = np.array([[30.3, 12.7], [18.9, 61.4], [67.6, 72.8], [79.0, 24.1]])  # turned about 13°
    geom = AlignedFace(quad, 32)
    want = old_face_mask(geom, 170, 196, 2.0, 0.1)
    assert float(want.max()) == pytest.approx(1.0)
    assert torch.equal(face_mask(geom, 170, 196, 2.0, 0.1), want)
    assert torch.equal(face_mask(geom, 170, 196, 2.0, 0.1, "square"), want)
    assert not torch.equal(face_mask(geom, 170, 196, 2.0, 0.1, "face"), want)


@pytest.mark.parametrize("size,scale", [(16, 8), (32, 4), (64, 2)])
def test_the_face_mask_warped_back_is_zero_on_and_beyond_the_crop_border(size, scale):
    quad = np.array([[20.0, 20.0], [20.0, 36.0], [36.0, 36.0], [36.0, 20.0]])  # TL, BL, BR, TR: 16 px
    geom = AlignedFace(quad, size)
    h = w = 64 * scale
    m = face_mask(geom, h, w, float(scale), 0.1, "face")[0, 0]
    lo, hi = 20 * scale, 36 * scale
    outside = torch.ones_like(m, dtype=torch.bool)
    outside[lo:hi, lo:hi] = False
    assert float(m[outside].abs().max()) == 0.0
    assert float(m.min()) >= 0.0 and float(m.max()) <= 1.0 + 1e-6
    cx, cy = (20 + 16 * FACE_ELLIPSE_128[0] / 128) * scale, (20 + 16 * FACE_ELLIPSE_128[1] / 128) * scale
    assert float(m[int(cy), int(cx)]) == pytest.approx(1.0)
    assert float(m[lo:lo + scale * 2, lo:lo + scale * 2].max()) == 0.0  # the crop's top-left corner


def test_an_unknown_paste_mask_is_one_line_naming_the_known_ones():
    geom = AlignedFace(np.array([[0.0, 0.0], [0.0, 16.0], [16.0, 16.0], [16.0, 0.0]]), 16)
    for call in (lambda: face_mask(geom, 32, 32, 2.0, 0.1, "round"),
                 lambda: crop_mask(16, 0.1, "Face"),
                 lambda: FacePipeline(BrightFace(), SCALE, detector=GivenFaces([]), paste_mask="round"),
                 lambda: restore_photo(BrightFace(), torch.rand(1, 3, 16, 16), SCALE, GivenFaces([]),
                                       paste_mask="round")):
        with pytest.raises(RestorekitError) as info:
            call()
        assert str(info.value) in ("unknown paste mask 'round' (known: square, face)",
                                   "unknown paste mask 'Face' (known: square, face)")
    assert PASTE_MASKS == ("square", "face")


# ---------------------------------------------------------------------------------------------
# the pipeline


class BrightFace(Method):
    """A face method visibly unlike bicubic: ×scale, then brighter."""

    info: ClassVar[MethodInfo] = MethodInfo(name="bright_face_test", summary="test", input_kind="aligned_face")
    face_input_size = 32

    def restore(self, lr, scale, *, seed=None, n_samples=1):
        return (upscale(lr, scale) * 0.5 + 0.5).clamp(0, 1).repeat_interleave(n_samples, 0)


class GivenFaces(FaceDetector):
    name = "given_test"

    def __init__(self, faces: list[Face]) -> None:
        self.faces = faces

    def detect(self, image):
        return list(self.faces)


def face_at(x: float, y: float, d: float, angle: float = 0.0) -> Face:
    """A face with eyes ``d`` apart around (x, y), turned by ``angle`` degrees, and the template's
    nose and mouth (``eyes_nose_mouth5``)."""
    a = math.radians(angle)
    right = np.array([math.cos(a), math.sin(a)]) * d / 2
    t = FFHQ_TEMPLATE_128
    m = similarity_fit(np.array([t["eye_left"], t["eye_right"]]), np.array([[x, y] - right, [x, y] + right]))
    pts = np.array([t["eye_left"], t["eye_right"], t["nose_base"], t["mouth_left"], t["mouth_right"]])
    lm = [tuple(map(float, p)) for p in pts @ m[:, :2].T + m[:, 2]]
    return Face((x - d, y - d, x + d, y + 2 * d), 0.99, lm)


@pytest.fixture(scope="module")
def photo():
    g = torch.Generator().manual_seed(3)
    return torch.nn.functional.interpolate(torch.rand(1, 3, 12, 16, generator=g), size=(96, 128), mode="bilinear",
                                           align_corners=False)


FACES = [face_at(34.0, 44.0, 12.0, 8.0), face_at(94.0, 48.0, 14.0, -12.0)]  # crops apart


@pytest.mark.parametrize("mask", PASTE_MASKS)
def test_outside_the_paste_mask_the_photo_is_the_background_bit_for_bit(photo, mask):
    pipe = FacePipeline(BrightFace(), SCALE, detector=GivenFaces(FACES), min_face=0, max_shrink=None, paste_mask=mask)
    res = pipe.run(photo)
    assert res.n_restored == 2
    bic = upscale(photo, SCALE)
    h, w = bic.shape[-2:]
    union = torch.zeros(h, w)
    for r in res.records:
        geom = AlignedFace(np.asarray(r.quad), r.crop_size)
        union = torch.maximum(union, face_mask(geom, h, w, SCALE, pipe.feather, mask)[0, 0])
    outside = union == 0
    assert torch.equal(res.image[0][:, outside], bic[0][:, outside])
    inside = union > 0.99
    assert float((res.image - bic)[0][:, inside].mean()) > 0.1  # the brighter face was pasted there
    # restore_photo takes the option too, and gives the same photo.
    again, records = restore_photo(BrightFace(), photo, SCALE, GivenFaces(FACES), min_face=0, max_shrink=None,
                                   paste_mask=mask)
    assert len(records) == 2 and torch.equal(again, res.image)


def crop_corner_pixels(r, frac: float) -> list[tuple[int, int]]:
    """Output pixels at the four corners of a face's crop, ``frac`` of its side in from them."""
    geom = AlignedFace(np.asarray(r.quad), r.crop_size)
    n = geom.size
    out = []
    for cx, cy in ((frac, frac), (frac, 1 - frac), (1 - frac, frac), (1 - frac, 1 - frac)):
        sx, sy = geom.to_source @ np.array([cx * n, cy * n, 1.0])
        out.append((int(sy * SCALE), int(sx * SCALE)))
    return out


def test_with_the_face_mask_the_crop_corners_are_the_background(photo):
    bic = upscale(photo, SCALE)
    got = {}
    for mask in PASTE_MASKS:
        pipe = FacePipeline(BrightFace(), SCALE, detector=GivenFaces(FACES), min_face=0, max_shrink=None,
                            paste_mask=mask)
        got[mask] = pipe.run(photo)
    for r in got["face"].records:
        for y, x in crop_corner_pixels(r, 0.1):
            win = (Ellipsis, slice(y - 1, y + 2), slice(x - 1, x + 2))
            assert torch.equal(got["face"].image[win], bic[win]), (r.index, y, x)
            assert float((got["square"].image[win] - bic[win]).mean()) > 0.05  # the square pasted them
    # The face itself is pasted alike.
    r = got["face"].records[1]
    geom = AlignedFace(np.asarray(r.quad), r.crop_size)
    k = geom.size / 128
    sx, sy = geom.to_source @ np.array([FACE_ELLIPSE_128[0] * k, FACE_ELLIPSE_128[1] * k, 1.0])
    y, x = int(sy * SCALE), int(sx * SCALE)
    assert torch.equal(got["face"].image[..., y, x], got["square"].image[..., y, x])


# ---------------------------------------------------------------------------------------------
# run --paste-mask

PLUGIN = one_face_plugin_source("pm3p", input_size=32, x=64, y=40, d=16)


def test_run_paste_mask_is_plumbed_and_recorded(plugin_site, tmp_path: Path, photo):
    from restorekit.cli import build_cli
    from restorekit.images import read_image, save_image
    from restorekit.provenance import read_note

    plugin_site("thirdparty-pastemask", "thirdparty_pastemask", PLUGIN)
    (tmp_path / "in").mkdir()
    save_image(photo, tmp_path / "in" / "p.png")
    src = read_image(tmp_path / "in" / "p.png")
    bic = upscale(src, SCALE)

    def run(out: str, *extra: str):
        return CliRunner().invoke(build_cli(), ["run", "bright_face_pm3p", "--scale", str(SCALE), "--input",
                                                str(tmp_path / "in"), "--output", str(tmp_path / out), "-q",
                                                "--faces", "detect", "--detector", "one_pm3p", *extra])

    images = {}
    for mask, extra in (("square", ("--paste-mask", "square")), ("face", ())):  # face: the default
        r = run(mask, *extra)
        assert r.exit_code == 0, r.output
        assert read_note(tmp_path / mask / "p.png")["paste_mask"] == mask
        assert json.loads((tmp_path / mask / "p.png.json").read_text())["paste_mask"] == mask
        images[mask] = read_image(tmp_path / mask / "p.png")
    # The crop spans about 64 input px around (64, 43): its top-left corner region is the background
    # with the face mask, the brightened crop with the square.
    win = (Ellipsis, slice(2 * 16, 2 * 18), slice(2 * 36, 2 * 38))
    assert float((images["face"][win] - bic[win]).abs().max()) <= 1 / 255 + 1e-6
    assert float((images["square"][win] - bic[win]).mean()) > 0.05

    r = run("bad", "--paste-mask", "round")
    assert r.exit_code == 2 and "'round' is not one of 'square', 'face'" in r.output, r.output
    r = CliRunner().invoke(build_cli(), ["run", "bright_face_pm3p", "--scale", "2", "--input", str(tmp_path / "in"),
                                         "--output", str(tmp_path / "aligned"), "--paste-mask", "face"])
    assert r.exit_code == 2 and "--paste-mask only apply with --faces detect" in r.output, r.output


def test_restore_photo_lets_a_dropped_method_go() -> None:
    """The pipelines restore_photo keeps for per-image callers live on the method: once the caller
    drops the method (a whole model), nothing of restorekit's holds it (a module-level cache had
    kept the last eight alive)."""
    import gc
    import weakref

    from restorekit.faces.pipeline import restore_photo

    refs = []
    for _ in range(3):
        method = BrightFace()
        for _ in range(2):
            restore_photo(method, torch.rand(1, 3, 96, 128), 2, detector=GivenFaces(FACES[:1]))
        assert len(vars(method)["_restorekit_face_pipelines"]) == 2  # (a detector object is keyed by its id)
        refs.append(weakref.ref(method))
        del method
    gc.collect()
    assert [r() for r in refs] == [None, None, None]
