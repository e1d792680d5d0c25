"""Fixes from an audit of `run --faces detect` on big photos: a --couple file too wide for its
format is refused before the work (it is twice as wide as the result), a --max-shrink reason reads
over its limit, an unknown --background is named as such and offered only what it takes, scrfd
without its weights is refused before the method is built, and the no-face warning names the input
path. Stub detectors and tiny methods and photos: no weights, nothing from /work/shared."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from restorekit.batch import check_inputs
from restorekit.errors import RestorekitError, WeightsMissing
from restorekit.faces.detectors import check_available
from restorekit.faces.pipeline import FacePipeline, background_methods, check_background
from restorekit.images import ImageItem, read_image, save_image
from test_faces_limits import CountingFace, GivenFaces, upright_face

AUDIT_PLUGIN = '''
from typing import ClassVar
from restorekit.hookspecs import hookimpl
from restorekit.interfaces import FaceDetector, Method, MethodInfo
from restorekit.degradations import upscale

DETECTED = []  # the sizes of the photos detect() was called on


class PlainFace(Method):
    info: ClassVar[MethodInfo] = MethodInfo(name="plain_audit3p", summary="test face method",
                                            input_kind="aligned_face")
    face_input_size = 32
    notes = ["plain_audit3p: built"]

    def restore(self, lr, scale, *, seed=None, n_samples=1):
        return upscale(lr, scale).clamp(0, 1).repeat_interleave(n_samples, 0)


class Whole(PlainFace):
    info: ClassVar[MethodInfo] = MethodInfo(name="whole_audit3p", summary="test whole-image method")


class NoFace(FaceDetector):
    name = "noface_audit3p"

    def detect(self, image):
        DETECTED.append(tuple(image.shape[-2:]))
        return []


@hookimpl
def register_methods(register):
    register(PlainFace)
    register(Whole)


@hookimpl
def register_face_detectors(register):
    register("noface_audit3p", NoFace, summary="test: finds no face")
'''


@pytest.fixture
def audit_plugin(plugin_site):  # type: ignore[no-untyped-def]
    """The plugin above, installed; returns its module (``DETECTED`` lists the photos detected on)."""
    plugin_site("thirdparty-auditfaces", "thirdparty_auditfaces", AUDIT_PLUGIN)
    yield lambda: sys.modules["thirdparty_auditfaces"]


def run(*args: str):  # type: ignore[no-untyped-def]
    from restorekit.cli import build_cli

    return CliRunner().invoke(build_cli(), ["run", *args])


def flat(h: int, w: int) -> torch.Tensor:
    return torch.full((1, 3, h, w), 0.5)


# 1. --couple: the file written is the input (resized to the result) beside the result, 2× as wide.

@pytest.mark.parametrize("w, h, scale, ext, plain, coupled", [
    # ×2 of 4100×8 = 8200×16 fits WebP's 16383 px; the --couple file, 16400×16, does not.
    (4100, 8, 2, "webp", None, "its 16400×16 --couple output is larger than webp holds (16383 px a side); "
                               "use --ext png or drop --couple"),
    # JPEG's 65500: 33600×32 fits, its 67200-wide --couple file does not.
    (4200, 4, 8, "jpg", None, "its 67200×32 --couple output is larger than jpg holds (65500 px a side); "
                              "use --ext png or drop --couple"),
    # Only the width doubles: 128×16000 fits WebP.
    (8, 2000, 8, "webp", None, None),
    # Too wide without --couple too: dropping --couple would not help, so it is not offered.
    (9000, 4, 2, "webp", "its 18000×8 output is larger than webp holds (16383 px a side); use --ext png",
     "its 36000×8 --couple output is larger than webp holds (16383 px a side); use --ext png"),
])
def test_the_side_limit_counts_the_couple_width(tmp_path: Path, w: int, h: int, scale: int, ext: str,
                                                plain: str | None, coupled: str | None) -> None:
    path = tmp_path / "wide.png"
    save_image(flat(h, w), path)
    items = [ImageItem(path, "wide")]
    for couple, want in ((False, plain), (True, coupled)):
        ok, failed = check_inputs(items, max_pixels=10**9, out_scale=scale, ext=ext, couple=couple)
        if want is None:
            assert ok == items and not failed
        else:
            assert not ok and failed == [{"path": str(path), "error": f"{path}: {want}"}]


def test_run_faces_detect_refuses_a_couple_too_wide_for_webp_before_any_work(audit_plugin, tmp_path: Path) -> None:
    """It was met at the save, after detection and restoration: pillow's own line ("encoding error 5:
    Image size exceeds WebP limit of 16383 pixels"). Now one line before the photo is read."""
    save_image(flat(8, 4100), tmp_path / "wide.png")
    args = ["plain_audit3p", "--scale", "2", "--input", str(tmp_path / "wide.png"), "--faces", "detect",
            "--detector", "noface_audit3p", "-q", "--couple"]
    r = run(*args, "--output", str(tmp_path / "webp"), "--ext", "webp")
    assert r.exit_code == 1, r.output
    assert (f"error: {tmp_path / 'wide.png'}: its 16400×16 --couple output is larger than webp holds "
            "(16383 px a side); use --ext png or drop --couple") in r.output
    assert audit_plugin().DETECTED == [] and not list((tmp_path / "webp").glob("wide*"))
    # That is the --couple file's size: in PNG it is written, the input (×2, nearest) beside the result.
    r = run(*args, "--output", str(tmp_path / "png"))
    assert r.exit_code == 0, r.output
    assert audit_plugin().DETECTED == [(8, 4100)]
    assert tuple(read_image(tmp_path / "png" / "wide.png").shape[-2:]) == (16, 16400)
    # Without --couple the ×2 photo, 8200×16, fits WebP.
    r = run(*args[:-1], "--output", str(tmp_path / "webp"), "--ext", "webp")
    assert r.exit_code == 0, r.output
    assert tuple(read_image(tmp_path / "webp" / "wide.webp").shape[-2:]) == (16, 8200)


# 2. --max-shrink: the ratio shown reads over the limit ("3.0× … (--max-shrink 3)" for 3.012).

def test_a_max_shrink_reason_shows_a_ratio_over_the_limit() -> None:
    """To one decimal where that reads over the limit (3.3, 3.06 as 3.1), else to as many as it takes."""
    method = CountingFace()  # 32-px crops
    base = FacePipeline(method, 2, detector=GivenFaces([]), max_shrink=None).records_for([upright_face(200, 200, 10)])
    pipe = FacePipeline(method, 2, detector=GivenFaces([]), max_shrink=3)
    for ratio, shown in ((3.012, "3.01"), (3.0004, "3.0004"), (3.3, "3.3"), (3.06, "3.1")):
        d = 10 * ratio / base[0].source_px_per_crop_px  # the crop's span grows with the eye distance
        (rec,) = pipe.records_for([upright_face(200, 200, d)])
        assert rec.action == "skipped" and rec.limit == "max_shrink"
        assert rec.source_px_per_crop_px == pytest.approx(ratio, abs=1e-9)
        assert f", {shown}× the method's 32-px input: restoring would lose detail (--max-shrink 3; " in rec.reason


# 3. An unknown --background: named as --background, offered only the methods it takes.

def test_an_unknown_background_names_the_option_and_only_what_it_takes(audit_plugin) -> None:
    takes = background_methods()
    assert "bicubic" in takes and "whole_audit3p" in takes and "plain_audit3p" not in takes
    with pytest.raises(RestorekitError) as err:
        check_background("whole_audit")
    assert str(err.value) == (f"--background whole_audit: unknown method (did you mean 'whole_audit3p'?); it takes "
                              f"a whole-image method: {', '.join(takes)}")
    with pytest.raises(RestorekitError, match="^--background plain_audit3p: it restores aligned faces"):
        check_background("plain_audit3p")


def test_run_refuses_an_unknown_background_in_one_line_naming_it(audit_plugin, tmp_path: Path) -> None:
    save_image(flat(16, 16), tmp_path / "a.png")
    r = run("plain_audit3p", "--scale", "2", "--input", str(tmp_path / "a.png"), "--output", str(tmp_path / "o"),
            "--faces", "detect", "--detector", "noface_audit3p", "--background", "nosuch")
    assert r.exit_code == 2, r.output
    line = r.output.strip().splitlines()[-1]
    assert line.startswith("Error: --background nosuch: unknown method; it takes a whole-image method: ")
    listed = line.split(": ")[-1].split(", ")
    assert listed == background_methods() and "whole_audit3p" in listed and "plain_audit3p" not in listed


def test_run_with_a_limited_plugin_set_keeps_the_registrys_note(audit_plugin, monkeypatch) -> None:
    monkeypatch.setenv("RESTOREKIT_LOAD_PLUGINS", "thirdparty_auditfaces")
    from restorekit import plugins

    plugins.reset()
    with pytest.raises(RestorekitError) as err:
        check_background("nosuch")
    assert str(err.value) == ("--background nosuch: unknown method; it takes a whole-image method: bicubic, "
                              "whole_audit3p (RESTOREKIT_LOAD_PLUGINS=thirdparty_auditfaces limits the plugins loaded)")


# 4. scrfd: what its load needs is checked with the detector's name, before the method is built.

def test_scrfd_without_its_weights_is_refused_before_the_method_is_built(audit_plugin, rk_home, tmp_path,
                                                                        monkeypatch) -> None:
    from restorekit.faces import insightface_models

    monkeypatch.setattr(insightface_models, "require_packages", lambda what: None)  # (as if installed)
    with pytest.raises(WeightsMissing, match="^weights 'insightface-buffalo-l' are not available: det_10g.onnx"):
        check_available("scrfd")
    save_image(flat(16, 16), tmp_path / "a.png")
    r = run("plain_audit3p", "--scale", "2", "--input", str(tmp_path / "a.png"), "--output", str(tmp_path / "o"),
            "--faces", "detect", "--detector", "scrfd")
    assert r.exit_code == 2, r.output
    assert "Error: weights 'insightface-buffalo-l' are not available: det_10g.onnx is not cached" in r.output
    assert "plain_audit3p: built" not in r.output  # the method's notes: it was built before, then refused
    assert not (tmp_path / "o").exists()


def test_scrfd_without_insightface_or_onnxruntime_is_refused(monkeypatch, tmp_path: Path) -> None:
    from restorekit.faces import insightface_models

    monkeypatch.setattr(insightface_models, "pack_file", lambda pack, role: tmp_path / "det_10g.onnx")
    real = importlib.util.find_spec
    for hidden, named in ((("insightface",), "insightface"), (("insightface", "onnxruntime"),
                                                              "insightface and onnxruntime")):
        monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name in hidden else real(name, *a))
        with pytest.raises(RestorekitError) as err:
            check_available("scrfd")
        assert str(err.value) == f"detector 'scrfd' needs {named}; {insightface_models.INSIGHTFACE_HINT}"


def test_scrfd_names_the_missing_packages_before_the_weights_pack(monkeypatch, rk_home) -> None:
    """Without the insightface extra and without the pack, the pack (191 MB of non-commercial weights)
    was asked for first; the missing packages only showed once it was fetched."""
    from restorekit.faces import insightface_models

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "insightface" else real(name, *a))
    for check in (lambda: check_available("scrfd"), insightface_models.load_detector):
        with pytest.raises(RestorekitError) as err:
            check()
        assert not isinstance(err.value, WeightsMissing)
        assert str(err.value) == f"detector 'scrfd' needs insightface; {insightface_models.INSIGHTFACE_HINT}"
    with pytest.raises(RestorekitError, match=r"^the insightface recogniser \(ArcFace\) needs insightface; "):
        insightface_models.load_recognizer()


# 5. The no-face warning names the input path, as error lines do (it named the output stem).

def test_the_no_face_warning_names_the_input_path(audit_plugin, tmp_path: Path) -> None:
    photo = tmp_path / "photos" / "a.png"
    photo.parent.mkdir()
    save_image(flat(24, 24), photo)
    r = run("plain_audit3p", "--scale", "2", "--input", str(photo), "--output", str(tmp_path / "o"),
            "--faces", "detect", "--detector", "noface_audit3p", "-q")
    assert r.exit_code == 0, r.output
    assert f"warning: {photo}: no face found; passed through (bicubic ×2)" in r.output
    assert json.loads((tmp_path / "o" / "a.png.json").read_text())["warning"] == "no face found"


def test_no_face_found_says_when_min_face_is_larger_than_the_photo(audit_plugin, tmp_path: Path) -> None:
    """A --min-face above the photo's short side can find nothing (MTCNN's pyramid is then empty):
    it was reported as a plain "no face found", as if the photo held none."""
    photo = tmp_path / "a.png"
    save_image(flat(40, 60), photo)
    why = ("no face found: a face of --min-face 48 px cannot fit in the 60×40 photo "
           "(a lower --min-face searches for smaller faces)")
    args = ("plain_audit3p", "--scale", "2", "--input", str(photo), "--faces", "detect", "--detector",
            "noface_audit3p", "--min-face", "48", "-q")
    r = run(*args, "--output", str(tmp_path / "o"))
    assert r.exit_code == 0 and f"warning: {photo}: {why}; passed through (bicubic ×2)" in r.output, r.output
    assert json.loads((tmp_path / "o" / "a.png.json").read_text())["warning"] == why
    r = run(*args, "--output", str(tmp_path / "o2"), "--require-face")
    assert r.exit_code == 1 and f"{why} (--require-face)" in r.output, r.output
    r = run(*args[:-3], "--min-face", "40", "-q", "--output", str(tmp_path / "o3"))  # (fits: 40 px side)
    assert r.exit_code == 0 and f"warning: {photo}: no face found; passed through" in r.output, r.output



def test_a_sidecar_keeps_strings_that_spell_a_list_of_numbers() -> None:
    """Number lists were put on one line by a pattern over the JSON text, which also rewrote text
    inside strings: an input named 'shot [ 1, 2 ].png' was recorded as 'shot [1, 2].png', an
    option's text likewise, and an identical rerun was refused as made with other settings."""
    from restorekit.faces.pipeline import sidecar_json

    data = {"input": "photos/shot [ 1, 2 ].png", "options": {"label": "[\\n  1,\\n  2\\n]"},
            "box": [1.5, 2, -3e-05, 4], "landmarks": [[1, 2], [3, 4.25]], "flags": [True, False], "none": []}
    text = sidecar_json(data)
    assert json.loads(text) == data
    assert '"box": [1.5, 2, -3e-05, 4]' in text and '\n    [3, 4.25]\n' in text
