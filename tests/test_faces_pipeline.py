"""Faces in whole photos: detectors, the detect → align → restore → paste pipeline, `run --faces detect`.

The multi-face photo is composed from ``skimage.data.astronaut()`` (public domain) copies —
scaled, rotated and mirrored — on ``skimage.data.coffee()``; nothing here needs /work/shared.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import math
import sys
import types
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner

from restorekit.degradations import bicubic_resize, upscale
from restorekit.errors import RestorekitError
from restorekit.faces.align import AlignedFace, face_mask
from restorekit.faces.compose import make_group_photo
from restorekit.faces.detectors import DlibHogDetector, MtcnnDetector, named_points
from restorekit.faces.pipeline import (DEFAULT_PASTE_MASK, FacePipeline, face_input_size, photo_outputs,
                                       restore_photo)
from restorekit.images import read_image, save_image
from restorekit.interfaces import Face, FaceDetector, Method, MethodInfo

skimage_data = pytest.importorskip("skimage.data")
needs_mtcnn = pytest.mark.skipif(importlib.util.find_spec("facenet_pytorch") is None,
                                 reason="MTCNN weights need facenet-pytorch==2.6.0 (--no-deps)")
needs_dlib = pytest.mark.skipif(importlib.util.find_spec("dlib") is None
                                or importlib.util.find_spec("face_recognition_models") is None,
                                reason="needs the faces extra (dlib-bin, face-recognition-models)")

# Eye centres of the astronaut photo (512×512), continuous pixel coordinates.
ASTRONAUT_EYES = ((205.5, 102.2), (247.3, 104.2))
PLACEMENTS = [
    dict(face=0, x=80, y=80, eye_distance=20, angle=0, mirror=0),
    dict(face=0, x=210, y=95, eye_distance=28, angle=14, mirror=1),
    dict(face=0, x=330, y=80, eye_distance=17, angle=-9, mirror=0),
    dict(face=0, x=130, y=215, eye_distance=24, angle=-18, mirror=1),
    dict(face=0, x=300, y=220, eye_distance=32, angle=6, mirror=0),
]
SCALE = 2


def as_tensor(arr: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(arr)).permute(2, 0, 1)[None].float() / 255


class SharpenFace(Method):
    """Test face restorer: bicubic ×scale plus an unsharp mask (visibly different from bicubic)."""

    info: ClassVar[MethodInfo] = MethodInfo(name="sharpen_face", summary="test", input_kind="aligned_face")
    face_input_size = 64
    amount = 1.0
    shift = (0.0, 0.0, 0.0)

    def restore(self, lr, scale, *, seed=None, n_samples=1):
        up = upscale(lr, scale)
        blur = F.avg_pool2d(F.pad(up, (2, 2, 2, 2), mode="replicate"), 5, 1)
        out = up + self.amount * (up - blur) + torch.tensor(self.shift).view(1, 3, 1, 1)
        return out.clamp(0, 1).repeat_interleave(n_samples, 0)


class IdentityFace(SharpenFace):
    amount = 0.0


class RedderFace(SharpenFace):
    amount = 0.0
    shift = (0.12, 0.0, -0.05)


@pytest.fixture(scope="module")
def group():
    ast = as_tensor(skimage_data.astronaut())
    bg = bicubic_resize(as_tensor(skimage_data.coffee()), (300, 400)).clamp(0, 1)
    photo, truth = make_group_photo([(ast, *ASTRONAUT_EYES)], bg, PLACEMENTS)
    return photo, truth


@pytest.fixture(scope="module")
def mtcnn():
    if importlib.util.find_spec("facenet_pytorch") is None:
        pytest.skip("MTCNN weights need facenet-pytorch==2.6.0 (--no-deps)")
    det = MtcnnDetector()
    det.load()
    return det


@pytest.fixture(scope="module")
def group_faces(group, mtcnn):
    return mtcnn.detect(group[0][0])


def match(faces, truth, layout="eyes_nose_mouth5"):
    """For each true face, the detected face whose eyes lie within 25 % of its eye distance."""
    found, used = [], set()
    for t in truth:
        best = None
        for k, f in enumerate(faces):
            p = named_points(f, layout)
            err = max(math.dist(p["eye_left"], t.eye_left), math.dist(p["eye_right"], t.eye_right))
            if k not in used and err < 0.25 * t.eye_distance and (best is None or err < best[1]):
                best = (k, err)
        if best is not None:
            used.add(best[0])
        found.append(best)
    return found, len(faces) - len(used)


def load_facenet_reference():
    """facenet-pytorch's own MTCNN module, imported without the package ``__init__`` (needs requests)."""
    spec = importlib.util.find_spec("facenet_pytorch")
    saved = {k: v for k, v in sys.modules.items() if k.startswith("facenet_pytorch")}
    pkg = types.ModuleType("facenet_pytorch")
    pkg.__path__ = list(spec.submodule_search_locations)
    pkg.__spec__ = spec
    sys.modules["facenet_pytorch"] = pkg
    try:
        return importlib.import_module("facenet_pytorch.models.mtcnn")
    finally:
        for k in [k for k in sys.modules if k.startswith("facenet_pytorch")]:
            del sys.modules[k]
        sys.modules.update(saved)


# ---------------------------------------------------------------------------------------------
# detectors


@needs_mtcnn
def test_mtcnn_matches_facenet_reference(mtcnn):
    """The cascade here reproduces facenet-pytorch's MTCNN on the same weights."""
    ref = load_facenet_reference().MTCNN(keep_all=True)
    img = skimage_data.astronaut()
    boxes, probs, points = ref.detect(img, landmarks=True)
    mine_boxes, mine_points = mtcnn.detect_raw(as_tensor(img)[0])
    assert len(mine_boxes) == len(boxes) == 1
    np.testing.assert_allclose(mine_boxes[:, :4].numpy(), np.asarray(boxes, np.float32), atol=1e-2)
    np.testing.assert_allclose(mine_boxes[:, 4].numpy(), np.asarray(probs, np.float32), atol=1e-5)
    np.testing.assert_allclose(mine_points.numpy(), np.asarray(points[0], np.float32)[None], atol=1e-2)


@needs_mtcnn
def test_mtcnn_landmarks_are_unbiased_under_mirroring(mtcnn):
    """Landmarks in continuous coordinates: a photo and its mirror image give the same points once
    mapped back (x → W − x), so any offset shows twice. MTCNN's own formula puts them half a pixel
    past the points; converted with +0.5 they were +1.0 px off (3.7 dB of alignment at 48-px faces)."""
    from restorekit.degradations import bicubic_resize

    img = as_tensor(skimage_data.astronaut())
    offsets = []
    for size in (513, 401, 333, 257, 211, 171):  # odd and even widths, several face sizes
        x = bicubic_resize(img, (size, size)).clamp(0, 1)[0]
        a, b = mtcnn.detect(x), mtcnn.detect(x.flip(-1))
        la = np.array(a[0].landmarks)
        lb = np.array(b[0].landmarks)[[1, 0, 2, 4, 3]]  # the mirror swaps left and right points
        lb[:, 0] = size - lb[:, 0]
        offsets.append((la - lb)[:, 0].mean() / 2)
    assert abs(float(np.mean(offsets))) < 0.35, offsets


@needs_mtcnn
def test_mtcnn_finds_every_face_of_the_group_photo(group, group_faces):
    _, truth = group
    found, false_pos = match(group_faces, truth)
    assert all(f is not None for f in found), found
    assert false_pos == 0
    # Eye centres within 12 % of the eye distance, mouth corners below the eyes.
    assert max(err / t.eye_distance for (_, err), t in zip(found, truth)) < 0.12
    for f in group_faces:
        p = named_points(f, "eyes_nose_mouth5")
        assert p["mouth_left"][1] > p["eye_left"][1] and p["mouth_right"][1] > p["eye_right"][1]


@needs_mtcnn
@pytest.mark.parametrize("name", ["coffee", "chelsea", "rocket"])
def test_mtcnn_no_false_positive_on_photos_without_people(mtcnn, name):
    img = as_tensor(getattr(skimage_data, name)())
    assert mtcnn.detect(img[0]) == []


@needs_dlib
def test_dlib_hog_finds_the_larger_faces(group):
    photo, truth = group
    faces = DlibHogDetector().detect(photo[0])
    found, false_pos = match(faces, truth, "dlib5")
    assert false_pos == 0
    # HOG with one doubling finds faces of ~40 px and up: every copy here with eye distance ≥ 20.
    assert all(f is not None for f, t in zip(found, truth) if t.eye_distance >= 20)


def test_unknown_detector_is_a_clear_error():
    with pytest.raises(RestorekitError, match="unknown face detector 'mtcn'.*did you mean 'mtcnn'"):
        FacePipeline(SharpenFace(), 2, detector="mtcn")


def test_face_input_size_rules():
    assert face_input_size(SharpenFace(), 4) == 64

    class Plain(IdentityFace):
        face_input_size = None

    assert face_input_size(Plain(), 1) == 256 and face_input_size(Plain(), 4) == 64
    assert face_input_size(Plain(), 32) == 16

    class ByScale(IdentityFace):
        def face_input_size(self, scale):  # type: ignore[override]
            return 1024 // (4 * scale)

    assert face_input_size(ByScale(), 8) == 32


# ---------------------------------------------------------------------------------------------
# pipeline


def union_mask(result, h, w, feather, shape=DEFAULT_PASTE_MASK):
    """Where the restored faces were pasted (the pipeline's default mask unless told)."""
    m = torch.zeros(1, 1, h * SCALE, w * SCALE)
    for r in result.records:
        if r.action == "restored":
            g = AlignedFace(np.asarray(r.quad), r.crop_size)
            m = torch.maximum(m, face_mask(g, h * SCALE, w * SCALE, SCALE, feather, shape))
    return m


@needs_mtcnn
def test_every_face_restored_and_pasted_without_seam(group, group_faces, tmp_path):
    photo, truth = group
    pipe = FacePipeline(SharpenFace(), SCALE, detector="mtcnn")
    res = pipe.run(photo, faces=group_faces)
    assert res.n_restored == len(truth) == len(res.crops)
    bic = upscale(photo, SCALE)
    out = res.image
    assert out.shape == bic.shape
    m = union_mask(res, photo.shape[-2], photo.shape[-1], pipe.feather)
    # Outside every face mask the composite is the background upscale, bit for bit.
    outside = (m[0, 0] == 0)
    assert outside.float().mean() > 0.5
    assert torch.equal(out[0][:, outside], bic[0][:, outside])
    # Inside each face something was restored (the sharpened face differs from bicubic).
    inside = m[0, 0] > 0.99
    assert (out - bic)[0][:, inside].abs().mean() > 2 / 255
    # The mask ramps linearly: its steepest step is bounded by 1 / (ramp width in output px).
    for r in res.records:
        g = AlignedFace(np.asarray(r.quad), r.crop_size)
        mk = face_mask(g, photo.shape[-2] * SCALE, photo.shape[-1] * SCALE, SCALE, pipe.feather)[0, 0]
        ramp = pipe.feather * r.crop_size * r.source_px_per_crop_px * SCALE
        grad = max((mk[1:] - mk[:-1]).abs().max().item(), (mk[:, 1:] - mk[:, :-1]).abs().max().item())
        assert grad <= 1.05 * math.sqrt(2) / ramp, (grad, ramp)
        assert ramp >= 8  # at least 8 output px of feathering at this scale
    # The records are JSON-able and carry what was done.
    side = json.loads(json.dumps(res.sidecar()))
    assert side["faces_found"] == side["faces_restored"] == len(truth)
    f0 = side["faces"][0]
    assert {"box", "score", "landmarks", "quad", "action", "crop_size"} <= set(f0)
    assert "color_match" not in f0  # off by default: nothing measured, nothing recorded
    save_image(torch.cat([bic, out], -1), tmp_path / "before_after.png")


@needs_mtcnn
def test_identity_restorer_gives_back_the_bicubic_photo(group, group_faces):
    """Geometry check: align → ×scale → warp back lands every face where it was."""
    photo, _ = group
    res = FacePipeline(IdentityFace(), SCALE, crop_size=256).run(photo, faces=group_faces)
    bic = upscale(photo, SCALE)
    m = union_mask(res, photo.shape[-2], photo.shape[-1], 0.1)
    inside = m[0, 0] > 0.5
    mse = ((res.image - bic)[0][:, inside] ** 2).mean().item()
    print("identity PSNR inside faces", 10 * math.log10(1 / mse))
    assert 10 * math.log10(1 / mse) > 33
    assert all(r.color_match is None for r in res.records)  # off by default


@needs_mtcnn
def test_colour_shift_is_matched_to_the_surroundings(group, group_faces):
    photo, _ = group
    shifted_res = FacePipeline(RedderFace(), SCALE).run(photo, faces=group_faces)  # off by default
    assert all(r.color_match is None for r in shifted_res.records)
    shifted = shifted_res.image
    matched_res = FacePipeline(RedderFace(), SCALE, colour_match=True).run(photo, faces=group_faces)
    bic = upscale(photo, SCALE)
    assert all(r.color_match["applied"] for r in matched_res.records)
    m = union_mask(matched_res, photo.shape[-2], photo.shape[-1], 0.1)
    inside = m[0, 0] > 0.99
    err_shifted = (shifted - bic)[0][:, inside].mean(1).abs()
    err_matched = (matched_res.image - bic)[0][:, inside].mean(1).abs()
    assert err_shifted[0] > 0.1 and err_matched.max() < 0.01


@needs_mtcnn
def test_small_faces_skipped_with_reason_and_no_face_passes_through(group, group_faces):
    photo, truth = group
    res = FacePipeline(SharpenFace(), SCALE, min_face=45).run(photo, faces=group_faces)
    skipped = [r for r in res.records if r.action == "skipped"]
    assert skipped and all("< --min-face 45 px" in r.reason for r in skipped)
    assert all(r.face_px >= 45 for r in res.records if r.action == "restored")
    res = FacePipeline(SharpenFace(), SCALE, max_shrink=1.5).run(photo, faces=group_faces)
    big = [r for r in res.records if r.action == "skipped"]
    assert big and all("restoring would lose detail" in r.reason and r.source_px_per_crop_px > 1.5 for r in big)
    assert all(r.source_px_per_crop_px <= 1.5 for r in res.records if r.action == "restored")
    empty = as_tensor(skimage_data.coffee())[..., :96, :128]
    out, records = restore_photo(SharpenFace(), empty, SCALE, "mtcnn")
    assert records == [] and torch.equal(out, upscale(empty, SCALE))


@needs_mtcnn
def test_samples_and_only_faces_outputs(group, group_faces):
    photo, truth = group
    pipe = FacePipeline(SharpenFace(), SCALE)
    pipe.detector.detect = lambda image: group_faces  # type: ignore[method-assign]
    outs, side = photo_outputs(pipe, photo, "g", n_samples=2, only_faces=True)
    assert [s for s, _ in outs][:2] == ["g_face0_s0", "g_face0_s1"]
    assert len(outs) == 2 * len(truth)
    assert all(o.shape[-1] == 64 * SCALE for _, o in outs)
    outs, _ = photo_outputs(pipe, photo, "g")
    assert [s for s, _ in outs] == ["g"]


PLUGIN = '''
from typing import ClassVar
import torch, torch.nn.functional as F
from restorekit.hookspecs import hookimpl
from restorekit.interfaces import Face, FaceDetector, Method, MethodInfo
from restorekit.degradations import upscale


class SharpenFace(Method):
    info: ClassVar[MethodInfo] = MethodInfo(name="sharpen_face3p", summary="test face method",
                                            input_kind="aligned_face")
    face_input_size = 64

    def restore(self, lr, scale, *, seed=None, n_samples=1):
        up = upscale(lr, scale)
        blur = F.avg_pool2d(F.pad(up, (2, 2, 2, 2), mode="replicate"), 5, 1)
        return (2 * up - blur).clamp(0, 1).repeat_interleave(n_samples, 0)


@hookimpl
def register_methods(register):
    register(SharpenFace)
'''


@needs_mtcnn
def test_run_faces_detect_cli(group, plugin_site, tmp_path):
    from restorekit.cli import build_cli

    plugin_site("thirdparty-facesharp", "thirdparty_facesharp", PLUGIN)
    photos = tmp_path / "photos"
    photos.mkdir()
    save_image(group[0], photos / "group.png")
    save_image(as_tensor(skimage_data.coffee())[..., :96, :128], photos / "cup.png")
    out = tmp_path / "out"
    args = ["run", "sharpen_face3p", "--scale", "2", "--input", str(photos), "--output", str(out),
            "--faces", "detect", "--json"]
    r = CliRunner().invoke(build_cli(), args)
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout[r.stdout.index("{"):])["backend"] == "torch"  # as aligned mode says it
    side = json.loads((out / "group.png.json").read_text())
    assert side["faces_restored"] == len(PLACEMENTS) and side["detector"] == "mtcnn"
    assert read_image(out / "group.png").shape[-2:] == (600, 800)
    cup = json.loads((out / "cup.png.json").read_text())
    assert cup["faces_found"] == 0 and cup["warning"] == "no face found"
    cup_in = read_image(photos / "cup.png")
    expect = (upscale(cup_in, 2) * 255).round()
    assert torch.equal((read_image(out / "cup.png") * 255).round(), expect)

    # Into the same folder with other settings: refused before any work, not the old photos kept.
    r = CliRunner().invoke(build_cli(), args[:-1] + ["--colour-match"])
    assert r.exit_code == 2 and "group" in r.output and "colour match: off → on" in r.output, r.output
    assert "--overwrite to remake them" in r.output

    r = CliRunner().invoke(build_cli(), ["run", "sharpen_face3p", "--scale", "2", "--input", str(photos / "cup.png"),
                                         "--output", str(out), "--faces", "detect", "--require-face", "--overwrite"])
    assert r.exit_code == 1 and "no face found (--require-face)" in r.output
    # Under -q the photo passed through is still named: it changes what the output is.
    r = CliRunner().invoke(build_cli(), ["run", "sharpen_face3p", "--scale", "2", "--input", str(photos / "cup.png"),
                                         "--output", str(out), "--faces", "detect", "--overwrite", "-q"])
    assert r.exit_code == 0 and f"{photos / 'cup.png'}: no face found; passed through" in r.output, r.output

    r = CliRunner().invoke(build_cli(), ["run", "sharpen_face3p", "--scale", "2", "--input",
                                         str(photos / "group.png"), "--output", str(tmp_path / "crops"),
                                         "--faces", "detect", "--only-faces", "-q"])
    assert r.exit_code == 0, r.output
    crops = sorted(p.name for p in (tmp_path / "crops").glob("*.png"))
    assert crops == [f"group_face{i}.png" for i in range(len(PLACEMENTS))]
    # Re-running skips the photo only when every face its sidecar lists is there.
    rerun = ["run", "sharpen_face3p", "--scale", "2", "--input", str(photos / "group.png"), "--output",
             str(tmp_path / "crops"), "--faces", "detect", "--only-faces", "--json"]
    r = CliRunner().invoke(build_cli(), rerun)
    assert r.exit_code == 0 and len(json.loads(r.output)["skipped"]) == len(PLACEMENTS), r.output
    # The crops alone do not depend on colour matching: not a difference for --only-faces.
    r = CliRunner().invoke(build_cli(), rerun + ["--colour-match"])
    assert r.exit_code == 0 and len(json.loads(r.output)["skipped"]) == len(PLACEMENTS), r.output
    (tmp_path / "crops" / "group_face1.png").unlink()
    r = CliRunner().invoke(build_cli(), rerun)
    assert r.exit_code == 0 and (tmp_path / "crops" / "group_face1.png").is_file(), r.output

    r = CliRunner().invoke(build_cli(), args[:-1] + ["--detector", "mtcn"])
    assert r.exit_code == 2 and "did you mean 'mtcnn'" in r.output
    r = CliRunner().invoke(build_cli(), ["run", "sharpen_face3p", "--scale", "2", "--input", str(photos),
                                         "--output", str(out), "--only-faces"])
    assert r.exit_code == 2 and "only apply with --faces detect" in r.output


@needs_mtcnn
def test_bench_faces_json():
    from restorekit.cli import build_cli

    r = CliRunner().invoke(build_cli(), ["bench", "faces", "--detector", "mtcnn", "--repeat", "1", "--json"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.output)
    (row,) = out["results"]
    assert row["detector"] == "mtcnn" and row["faces"] == 5 and row["images"] == 1
    assert row["detect_ms_per_image"] > 0 and row["align_ms_per_face"] > 0
    assert row["detect_ms_per_face"] == pytest.approx(row["detect_ms_per_image"] / 5, rel=0.05)


def test_missing_extras_name_what_to_install(monkeypatch):
    from restorekit.faces import detectors

    real = importlib.util.find_spec
    monkeypatch.setattr(detectors.importlib.util, "find_spec",
                        lambda name, *a: None if name in ("facenet_pytorch", "dlib") else real(name, *a))
    with pytest.raises(RestorekitError, match=r"pip install --no-deps facenet-pytorch==2\.6\.0"):
        MtcnnDetector().load()
    with pytest.raises(RestorekitError, match="needs dlib; pip install dlib-bin"):
        detectors.check_available("dlib_hog")


def test_builtin_detectors_registered():
    from restorekit.plugins import registry

    reg = registry()
    for name, layout in (("mtcnn", "eyes_nose_mouth5"), ("dlib_hog", "dlib5")):
        factory = reg.get("face_detectors", name)
        assert reg.owner["face_detectors"][name] == "restorekit" and factory.summary
        assert factory.build.landmark_layout == layout


@needs_mtcnn
def test_compare_faces_detect_runs_face_methods_through_the_pipeline(group, plugin_site, tmp_path):
    """`compare --faces detect`: a face method is scored on whole photos; backend is recorded."""
    from restorekit.cli import build_cli

    plugin_site("thirdparty-facesharp", "thirdparty_facesharp", PLUGIN)
    hr = tmp_path / "hr"
    hr.mkdir()
    save_image(group[0], hr / "group.png")
    out = tmp_path / "report"
    args = ["compare", "--methods", "bicubic,sharpen_face3p,pix2pixhd", "--scale", "2", "--data", str(hr), "--out", str(out),
            "--metrics", "psnr_rgb", "--faces", "detect", "--json", "-q"]
    r = CliRunner().invoke(build_cli(), args)
    assert r.exit_code == 0, r.output
    doc = json.loads((out / "results.json").read_text())
    rows = {row["method"]: row for row in doc["images"]}
    assert rows["sharpen_face3p"]["report"]["faces"]  # one record per face restored in the photo
    assert len(rows["sharpen_face3p"]["report"]["faces"]) == len(PLACEMENTS)
    # pix2pixhd's models are aligned-face models: its faces go through the pipeline too (as in `run`),
    # and the per-face records are not replaced by the method's own report of its last face.
    assert len(rows["pix2pixhd"]["report"]["faces"]) == len(PLACEMENTS)
    assert "report" not in rows["bicubic"] or not rows["bicubic"].get("report")
    # Outside faces the composite is the bicubic upscale, so PSNR differs but stays close.
    assert rows["sharpen_face3p"]["metrics"]["psnr_rgb"] != rows["bicubic"]["metrics"]["psnr_rgb"]
    assert {m["name"]: m["backend"] for m in doc["methods"]} == {"bicubic": "torch", "sharpen_face3p": "torch",
                                                                 "pix2pixhd": "torch"}


# ---------------------------------------------------------------------------------------------
# the pipeline with given detections (no detector weights needed)


class GivenFaces(FaceDetector):
    """A detector that reports fixed faces (``eyes_nose_mouth5`` landmarks)."""

    name: ClassVar[str] = "given"

    def __init__(self, faces):
        self.faces = list(faces)

    def detect(self, image):
        return list(self.faces)


def upright_face(x: float, y: float, d: float) -> Face:
    """An upright face with its eye midpoint at (x, y) and eye distance d, in the FFHQ template's
    proportions (mouth corners 1.04·d below the eyes, 0.93·d apart)."""
    lm = [(x - d / 2, y), (x + d / 2, y), (x, y + 0.7 * d), (x - 0.464 * d, y + 1.04 * d), (x + 0.464 * d, y + 1.04 * d)]
    return Face((x - d, y - 0.6 * d, x + d, y + 1.5 * d), 0.99, lm)


class TagFace(SharpenFace):
    """Each crop of the batch comes back with its red channel set to 0.3 × its index in the batch."""

    def restore(self, lr, scale, *, seed=None, n_samples=1):
        out = upscale(lr, scale).clone()
        out[:, 0] = 0.3 * torch.arange(lr.shape[0], dtype=out.dtype).view(-1, 1, 1)
        return out.repeat_interleave(n_samples, 0)


def test_a_small_face_beside_a_large_one_keeps_its_own_restoration():
    """The large face's crop square (about four eye distances wide) covers the small face beside it:
    whichever is pasted last owns the pixels where both masks are 1. Each face must show its own
    restoration at its eyes, so the finer crop (the smaller face) goes on top."""
    ast = as_tensor(skimage_data.astronaut())
    bg = bicubic_resize(as_tensor(skimage_data.coffee()), (240, 320)).clamp(0, 1)
    small, big = (215, 120, 16), (150, 100, 40)
    photo, _ = make_group_photo([(ast, *ASTRONAUT_EYES)], bg, [
        dict(face=0, x=big[0], y=big[1], eye_distance=big[2], angle=0, mirror=0),
        dict(face=0, x=small[0], y=small[1], eye_distance=small[2], angle=0, mirror=0)])
    faces = [upright_face(*small), upright_face(*big)]  # batch index 0: small, 1: big
    res = FacePipeline(TagFace(), SCALE, detector=GivenFaces(faces), colour_match=False).run(photo)
    assert res.n_restored == 2
    big_mask = face_mask(AlignedFace(np.asarray(res.records[1].quad), 64), 480, 640, SCALE, 0.1)[0, 0]
    assert big_mask[small[1] * SCALE, small[0] * SCALE] > 0.8  # the small face lies inside the large crop
    for (x, y, _), tag in ((small, 0.0), (big, 0.3)):
        assert res.image[0, 0, y * SCALE, x * SCALE].item() == pytest.approx(tag, abs=1e-6)


class TintFace(SharpenFace):
    """Adds colour that varies across the crop (warmer to the right), as a colour model does to a
    grey face; a per-channel gain and offset cannot take it out."""

    def restore(self, lr, scale, *, seed=None, n_samples=1):
        out = upscale(lr, scale)
        ramp = torch.linspace(-0.08, 0.08, out.shape[-1]).view(1, 1, -1)
        out = torch.cat([out[:, :1] + ramp, out[:, 1:2], out[:, 2:] - ramp], 1).clamp(0, 1)
        return out.repeat_interleave(n_samples, 0)


def test_a_grey_photo_stays_grey():
    """A black-and-white photo (read as three equal channels) must not come back with coloured faces."""
    ast = as_tensor(skimage_data.astronaut())
    bg = bicubic_resize(as_tensor(skimage_data.coffee()), (240, 320)).clamp(0, 1)
    colour, _ = make_group_photo([(ast, *ASTRONAUT_EYES)], bg, [dict(face=0, x=160, y=100, eye_distance=36)])
    grey = (colour * torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)).sum(1, keepdim=True).expand(1, 3, -1, -1)
    pipe = FacePipeline(TintFace(), SCALE, detector=GivenFaces([upright_face(160, 100, 36)]))
    res = pipe.run(grey.contiguous())
    assert res.n_restored == 1
    for img in (res.image, res.crops[0][0]):
        assert torch.equal(img[:, 0], img[:, 1]) and torch.equal(img[:, 1], img[:, 2])
    # The face was still restored: it differs from the bicubic upscale.
    assert (res.image - upscale(grey, SCALE)).abs().max() > 0.05
    assert res.sidecar()["grey"] is True
    # A colour photo keeps the method's colours.
    res = pipe.run(colour)
    assert (res.image[:, 0] - res.image[:, 2]).abs().max() > 0.3 and "grey" not in res.sidecar()


class ScaledFace(SharpenFace):
    """Breaks the image convention as plugins do: a [0, 255] output, or NaN."""

    nan = False

    def restore(self, lr, scale, *, seed=None, n_samples=1):
        out = super().restore(lr, scale, seed=seed, n_samples=n_samples)
        return out.index_fill(3, torch.tensor([0]), float("nan")) if self.nan else out * 255


@pytest.mark.parametrize("nan", [False, True])
def test_a_face_method_whose_output_breaks_the_convention_is_named_not_pasted(nan):
    """The crops a face method returns are checked as run and compare check whole images (only their
    size may differ: the pipeline resizes native-size crops), before anything is pasted."""
    photo = torch.rand(1, 3, 240, 320, generator=torch.Generator().manual_seed(0))
    method = ScaledFace()
    method.nan = nan
    pipe = FacePipeline(method, SCALE, detector=GivenFaces([upright_face(160, 100, 36)]))
    with pytest.raises(RestorekitError, match="NaN or inf" if nan else r"values from 0 to 2\d\d; images are in \[0, 1\]"):
        pipe.run(photo)
    # A background method is held to the same rule.
    pipe = FacePipeline(SharpenFace(), SCALE, detector=GivenFaces([upright_face(160, 100, 36)]), background=method)
    with pytest.raises(RestorekitError, match="--background sharpen_face: restore returned"):
        pipe.run(photo)


WIDE_DETECTOR = PLUGIN + '''

class OneFaceIfWide(FaceDetector):
    """Needs no weights: one upright face at (160, 100) in photos 200 px wide or more, none otherwise."""

    name = "wide3p"

    def detect(self, image):
        if image.shape[-1] < 200:
            return []
        x, y, d = 160.0, 100.0, 36.0
        lm = [(x - d / 2, y), (x + d / 2, y), (x, y + 0.7 * d), (x - 0.464 * d, y + 1.04 * d),
              (x + 0.464 * d, y + 1.04 * d)]
        return [Face((x - d, y - 0.6 * d, x + d, y + 1.5 * d), 0.99, lm)]


@hookimpl
def register_face_detectors(register):
    register("wide3p", OneFaceIfWide, summary="test: one face in photos 200 px wide or more")
'''


def summary_counts(line: str) -> dict[str, int]:
    """{"written": n, "skipped": n, "failed": n} from run's end-of-run line."""
    import re

    return {k: int(re.search(rf"(\d+) {k}", line).group(1)) for k in ("written", "skipped", "failed")}


@pytest.mark.parametrize("as_json", [False, True])
def test_only_faces_accounts_for_a_photo_without_a_face(plugin_site, tmp_path, as_json):
    """`run --faces detect --only-faces`: a photo with no face writes nothing; it is counted as skipped,
    with the reason, on the first run and on a re-run, so the counts add up to the inputs."""
    from restorekit.cli import build_cli

    plugin_site("thirdparty-facesharp", "thirdparty_facesharp", WIDE_DETECTOR)
    photos = tmp_path / "photos"
    photos.mkdir()
    gen = torch.Generator().manual_seed(0)
    save_image(torch.rand(1, 3, 240, 320, generator=gen), photos / "face.png")
    save_image(torch.rand(1, 3, 96, 128, generator=gen), photos / "empty.png")
    args = ["run", "sharpen_face3p", "--scale", "2", "--input", str(photos), "--output", str(tmp_path / "crops"),
            "--faces", "detect", "--detector", "wide3p", "--only-faces"] + (["--json"] if as_json else [])
    for expect in ({"written": 1, "skipped": 1, "failed": 0}, {"written": 0, "skipped": 2, "failed": 0}):
        r = CliRunner().invoke(build_cli(), args)
        assert r.exit_code == 0, r.output
        if as_json:
            doc = json.loads(r.stdout)
            assert {k: len(doc[k]) for k in expect} == expect, doc
            (no_face,) = [s for s in doc["skipped"] if not s["reason"].startswith("exists")]
            assert no_face["path"] == str(photos / "empty.png") and no_face["reason"].startswith("no face found")
            # every entry names its input (an existing crop's path is the output's)
            assert {s["input"] for s in doc["skipped"]} <= {str(p) for p in photos.iterdir()}, doc
        else:
            assert summary_counts(r.output.strip().splitlines()[-1]) == expect, r.output
            assert "no face" in r.output.strip().splitlines()[-1]
        assert sum(expect.values()) == 2
    assert sorted(p.name for p in (tmp_path / "crops").glob("*.png")) == ["face_face0.png"]


@pytest.mark.parametrize("only_faces", [False, True])
def test_the_sidecar_is_written_after_the_images_so_a_failed_save_leaves_none(plugin_site, tmp_path, monkeypatch,
                                                                               only_faces):
    """`run --faces detect`: the sidecar marks a photo done, so it comes last. A save that fails (or
    Ctrl-C while a large PNG is encoded) leaves no `<stem>.json` without its images; an image saved
    before the interruption, without its sidecar, is not taken for a finished photo: the re-run
    writes the rest and the sidecar."""
    import errno

    import restorekit.batch as batch
    from restorekit.cli import build_cli

    plugin_site("thirdparty-facesharp", "thirdparty_facesharp", WIDE_DETECTOR)
    photos = tmp_path / "photos"
    photos.mkdir()
    save_image(torch.rand(1, 3, 240, 320, generator=torch.Generator().manual_seed(0)), photos / "b0.png")
    out = tmp_path / "out"
    args = ["run", "sharpen_face3p", "--scale", "2", "--input", str(photos), "--output", str(out), "--faces",
            "detect", "--detector", "wide3p", "--n-samples", "2", "--json"] + (["--only-faces"] if only_faces else [])
    first = "b0_face0_s0.png" if only_faces else "b0_s0.png"
    sidecar = "b0_faces.png.json" if only_faces else "b0.png.json"  # one per format and kind of output
    real_save = batch.save_image

    def disk_full(image, path, **kw):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(batch, "save_image", disk_full)
    r = CliRunner().invoke(build_cli(), args)
    assert r.exit_code == 1, r.output
    assert sorted(p.name for p in out.iterdir()) == []  # no sidecar without its images

    def first_only(image, path, **kw):  # the second sample's save is interrupted
        if Path(path).name != first:
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return real_save(image, path, **kw)

    monkeypatch.setattr(batch, "save_image", first_only)
    r = CliRunner().invoke(build_cli(), args)
    assert r.exit_code == 1, r.output
    assert sorted(p.name for p in out.iterdir()) == [first]

    monkeypatch.setattr(batch, "save_image", real_save)
    r = CliRunner().invoke(build_cli(), args)
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert [Path(w).name for w in doc["written"]] == [first.replace("_s0", "_s1")]
    assert sorted(p.name for p in out.iterdir()) == sorted([first, first.replace("_s0", "_s1"), sidecar])
    assert json.loads((out / sidecar).read_text())["faces_restored"] == 1
    r = CliRunner().invoke(build_cli(), args)  # now finished: skipped
    assert r.exit_code == 0 and json.loads(r.stdout)["written"] == [], r.output

    (out / sidecar).unlink()  # images there, sidecar not (interrupted just before it): done again
    r = CliRunner().invoke(build_cli(), args)
    assert r.exit_code == 0 and (out / sidecar).is_file(), r.output


@pytest.mark.parametrize("size,scale", [(16, 8), (32, 4), (64, 2)])
def test_the_paste_mask_is_zero_on_and_beyond_the_crop_border(size, scale):
    """The mask warped back into the photo reaches 0 at the crop's border: nothing of it lies
    outside the quad, where the paste window (quad + 2 px) would cut it into a straight seam."""
    from restorekit.faces.pipeline import _window

    quad = np.array([[20.0, 20.0], [20.0, 36.0], [36.0, 36.0], [36.0, 20.0]])  # TL, BL, BR, TR: 16 px
    geom = AlignedFace(quad, size)
    h = w = 64 * scale
    m = face_mask(geom, h, w, float(scale), 0.08)[0, 0]
    y0, y1, x0, x1 = _window(geom, scale, h, w)
    inside = torch.zeros_like(m, dtype=torch.bool)
    inside[y0:y1, x0:x1] = True
    assert float(m[~inside].abs().max()) == 0.0  # all of the mask is inside the paste window
    lo, hi = 20 * scale, 36 * scale
    outside_quad = torch.ones_like(inside)
    outside_quad[lo:hi, lo:hi] = False
    assert float(m[outside_quad].abs().max()) == 0.0  # 0 from the crop's border outwards
    ramp = max(1.0, 0.08 * size)  # crop pixels; an output pixel on the border is size/16/scale/2 of them in
    assert float(m[lo, (lo + hi) // 2]) <= (size / 16 / scale / 2) / ramp + 1e-6
    assert float(m[(lo + hi) // 2, (lo + hi) // 2]) == pytest.approx(1.0)


def test_couple_with_only_faces_is_refused_not_dropped(tmp_path):
    from click.testing import CliRunner

    from restorekit.cli import build_cli

    (tmp_path / "in").mkdir()
    save_image(torch.rand(1, 3, 64, 64), tmp_path / "in" / "photo.png")
    r = CliRunner().invoke(build_cli(), ["run", "bicubic", "--faces", "detect", "--only-faces", "--couple", "--scale",
                                         "2", "--input", str(tmp_path / "in"), "--output", str(tmp_path / "out")])
    assert r.exit_code == 2 and "--couple" in r.output and "--only-faces" in r.output
    assert not (tmp_path / "out").exists()


def test_colour_match_is_a_faces_detect_option() -> None:
    from click.testing import CliRunner

    from restorekit.cli import build_cli

    r = CliRunner().invoke(build_cli(), ["run", "bicubic", "--scale", "2", "--input", "x.png", "--output", "o",
                                         "--colour-match"])
    assert r.exit_code == 2 and "--colour-match only apply with --faces detect" in r.output


def test_a_rerun_with_other_settings_does_not_keep_photos_made_otherwise(tmp_path) -> None:
    """run --faces detect skips photos whose outputs exist: with other settings than their sidecars
    record, that would leave old results under the new command, so it is refused before any work."""
    from restorekit.faces.pipeline import settings_changed

    out = tmp_path / "out"
    out.mkdir()
    face = {"index": 0, "action": "restored", "color_match": {"applied": True}}
    (out / "a.json").write_text(json.dumps({"method": "psp_sr", "scale": 4, "detector": "mtcnn",
                                            "background": "bicubic", "faces": [face]}), encoding="utf-8")
    (out / "b.json").write_text(json.dumps({"method": "psp_sr", "scale": 4, "detector": "mtcnn",
                                            "background": "bicubic", "faces": []}), encoding="utf-8")
    now = {"method": "psp_sr", "scale": 4, "detector": "mtcnn", "background": "bicubic", "colour match": "off"}
    assert settings_changed(out, ["a", "b", "c"], now) == (["a"], ["colour match: on → off"])
    assert settings_changed(out, ["b", "c"], now) is None  # no restored face: nothing says how it was matched
    now8 = {**now, "scale": 8, "colour match": "on"}
    assert settings_changed(out, ["a", "b"], now8) == (["a", "b"], ["scale: 4 → 8"])
    # Sidecars record the method's options, min_face, max_shrink and seed too (older ones do not).
    (out / "c.json").write_text(json.dumps({"method": "psp_sr", "scale": 4, "detector": "mtcnn",
                                            "background": "bicubic", "faces": [], "min_face": 20.0,
                                            "max_shrink": 3.0, "seed": None,
                                            "options": {"consistency_steps": 0, "weights": None}}),
                                encoding="utf-8")
    later = {**now, "min_face": 8.0, "max_shrink": 3.0, "seed": None,
             "options": {"consistency_steps": 3, "weights": None}}
    assert settings_changed(out, ["b", "c"], later) == (["c"], ["min_face: 20.0 → 8.0",
                                                               "--opt consistency_steps: 0 → 3"])
    # A sidecar of another shape is not a crash: that photo is made again.
    for garbage in ('{"method": "x", "faces": 5}', '{"faces": [1, "a"]}', '[1, 2]', '"s"'):
        (out / "g.json").write_text(garbage, encoding="utf-8")
        assert settings_changed(out, ["g"], {**now, "method": "x"}) is None


def test_the_end_line_counts_the_faces_left_to_the_background() -> None:
    from restorekit.faces.pipeline import faces_summary

    sides = [{"faces_found": 3, "faces_restored": 1, "faces": [
        {"action": "restored"}, {"action": "skipped", "reason": "face 12 px < --min-face 20 px", "limit": "min_face"},
        {"action": "skipped", "reason": "the face crop spans 52 input px, 3.3× (--max-shrink 3; …)",
         "limit": "max_shrink"}]},
        {"faces_found": 0, "faces_restored": 0, "faces": []}, None]
    assert faces_summary(sides) == ("1 of 3 faces restored; 1 under --min-face, 1 over --max-shrink: "
                                    "left to the background")
    assert faces_summary([{"faces_found": 2, "faces_restored": 2, "faces": []}]) == "2 faces restored"


def test_a_seed_the_outputs_do_not_depend_on_is_not_checked_on_a_rerun(group, mtcnn, tmp_path):
    """psp_sr ignores the seed for one sample (``one_sample_ignores_seed``), as ``run`` records it in
    aligned mode: a rerun with another --seed skips the photos; with --n-samples 2 it is refused."""
    from restorekit.cli import build_cli

    photos = tmp_path / "photos"
    photos.mkdir()
    save_image(group[0], photos / "group.png")
    base = ["run", "psp_sr", "--scale", "2", "--input", str(photos), "--faces", "detect", "-q"]
    one = base + ["--output", str(tmp_path / "one")]
    assert CliRunner().invoke(build_cli(), one + ["--seed", "1"]).exit_code == 0
    r = CliRunner().invoke(build_cli(), one + ["--seed", "2", "--json"])
    assert r.exit_code == 0 and json.loads(r.stdout[r.stdout.index("{"):])["written"] == [], r.output
    two = base + ["--output", str(tmp_path / "two"), "--n-samples", "2"]
    assert CliRunner().invoke(build_cli(), two + ["--seed", "1"]).exit_code == 0
    r = CliRunner().invoke(build_cli(), two + ["--seed", "2"])
    assert r.exit_code == 2 and "seed: 1 → 2" in r.output, r.output
