"""Size limits: outputs bounded before any work (run, compare, the face paste-back), one pixel limit
for restorekit and pillow, and non-positive limits refused as usage errors."""

from __future__ import annotations

import json
import struct
import zlib
from pathlib import Path
from typing import ClassVar

import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from restorekit.cli import build_cli
from restorekit.errors import ImageError
from restorekit.faces.pipeline import FacePipeline
from restorekit.images import check_size, probe_size, read_image
from restorekit.interfaces import Face, FaceDetector, Method, MethodInfo
from restorekit.testing.data import smooth_image

# A method that records every build and restore, to prove refused inputs cost no work.
COUNTING_PLUGIN = '''
import os
from typing import ClassVar
import torch
from restorekit.hookspecs import hookimpl
from restorekit.interfaces import Method, MethodInfo


def _log(what):
    with open(os.environ["RK_TEST_LOG"], "a") as f:
        f.write(what + "\\n")


class Counting(Method):
    info: ClassVar[MethodInfo] = MethodInfo(name="counting3p", summary="nearest, logging its work")

    def load(self):
        _log("load")

    def restore(self, lr, scale, *, seed=None, n_samples=1):
        _log("restore")
        up = torch.nn.functional.interpolate(lr, scale_factor=scale, mode="nearest")
        return up.repeat_interleave(n_samples, 0)


@hookimpl
def register_methods(register):
    register(Counting)
'''


def invoke(*args: object):
    return CliRunner().invoke(build_cli(), [str(a) for a in args], catch_exceptions=False)


@pytest.fixture
def counting(plugin_site, tmp_path, monkeypatch) -> Path:
    log = tmp_path / "work.log"
    monkeypatch.setenv("RK_TEST_LOG", str(log))
    plugin_site("thirdparty-counting", "thirdparty_counting", COUNTING_PLUGIN)
    return log


def _work(log: Path) -> list[str]:
    return log.read_text().split() if log.exists() else []


def _img(path: Path, h: int, w: int, seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(smooth_image(h, w, seed)).save(path)
    return path


def test_run_refuses_a_huge_output_before_building_the_method(counting, tmp_path):
    face = _img(tmp_path / "in" / "face.png", 32, 32)
    out = tmp_path / "out"
    # ×600 of 32 px is 19200² = 369 MP: over the default limit (256 MP), refused from the header alone.
    r = invoke("run", "counting3p", "--scale", "600", "--input", face, "--output", out)
    assert r.exit_code == 1
    err = r.stderr.replace("\n", " ")
    assert "face.png: its ×600 output would be 19200×19200 = 368.6 MP, over the output limit of 256.0 MP" in err
    assert _work(counting) == [] and list(out.iterdir()) == []


def test_run_output_limit_counts_samples_and_spares_the_rest(counting, tmp_path):
    d = tmp_path / "in"
    _img(d / "small.png", 50, 50)
    _img(d / "big.png", 100, 100, 1)
    out = tmp_path / "out"
    # ×2 with 3 samples: big gives 3 × 200² = 120 000 px (refused), small 3 × 100² = 30 000 (kept).
    r = invoke("run", "counting3p", "--scale", "2", "--n-samples", "3", "--input", d, "--output", out,
               "--max-output-pixels", "100000", "--json", "-q")
    assert r.exit_code == 1
    doc = json.loads(r.stdout)
    assert [Path(f["path"]).name for f in doc["failed"]] == ["big.png"]
    assert "200×200 × 3 samples = 120,000 px, over the output limit of 100,000 px" in doc["failed"][0]["error"]
    assert sorted(Path(p).name for p in doc["written"]) == ["small_s0.png", "small_s1.png", "small_s2.png"]
    assert _work(counting) == ["load", "restore"]  # only the small input was restored


def test_compare_refuses_oversized_outputs_before_any_method_runs(counting, tmp_path):
    hr = tmp_path / "hr"
    _img(hr / "a.png", 64, 64)
    _img(hr / "b.png", 32, 32, 1)
    out = tmp_path / "cmp"
    r = invoke("compare", "--methods", "counting3p", "--scale", "2", "--data", hr, "--out", out,
               "--metrics", "psnr_rgb", "--device", "cpu", "-q", "--max-output-pixels", "2000")
    assert r.exit_code == 1
    doc = json.loads((out / "results.json").read_text())
    assert [f["image"] for f in doc["inputs"]["failures"]] == ["a"]
    assert "64×64 = 4,096 px, over the output limit of 2,000 px" in doc["inputs"]["failures"][0]["error"]
    assert [i["image"] for i in doc["images"]] == ["b"]
    assert _work(counting).count("restore") == 1
    # Given LR files: the output is LR × scale.
    lr = tmp_path / "lr"
    _img(lr / "a.png", 32, 32)
    _img(lr / "b.png", 16, 16, 1)
    r = invoke("compare", "--methods", "counting3p", "--scale", "2", "--data", hr, "--lr-dir", lr, "--out",
               tmp_path / "cmp2", "--metrics", "psnr_rgb", "--device", "cpu", "-q", "--max-output-pixels", "2000")
    assert r.exit_code == 1
    doc = json.loads((tmp_path / "cmp2" / "results.json").read_text())
    assert [f["image"] for f in doc["inputs"]["failures"]] == ["a"]


class _CountingDetector(FaceDetector):
    name: ClassVar[str] = "counting_detector"

    def __init__(self) -> None:
        self.calls = 0

    def detect(self, image: torch.Tensor) -> list[Face]:
        self.calls += 1
        return []


class _Up(Method):
    info: ClassVar[MethodInfo] = MethodInfo(name="up_test", summary="test", input_kind="aligned_face")

    def restore(self, lr, scale, *, seed=None, n_samples=1):
        return torch.nn.functional.interpolate(lr, scale_factor=scale, mode="nearest").repeat_interleave(n_samples, 0)


def test_face_paste_back_is_bounded_before_detection():
    det = _CountingDetector()
    pipe = FacePipeline(_Up(), 4, detector=det, max_output_pixels=100_000)
    photo = torch.rand(1, 3, 60, 80)
    with pytest.raises(ImageError, match=r"photo: its ×4 output would be 320×240 × 2 samples = 0.2 MP, over"):
        pipe.run(photo, n_samples=2)
    assert det.calls == 0
    result = pipe.run(photo, n_samples=1)  # 76 800 px: within the limit
    assert det.calls == 1 and result.images[0].shape[-2:] == (240, 320)


def _png_header(path: Path, w: int, h: int) -> Path:
    """A grayscale PNG whose header says ``w×h`` but whose data is one short row (cheap to write)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
                     + chunk(b"IEND", b""))
    return path


def test_max_pixels_governs_pillows_limit(tmp_path):
    before = Image.MAX_IMAGE_PIXELS
    big = _png_header(tmp_path / "big.png", 10_000, 10_000)  # 100 MP: over pillow's own 89.5 MP
    huge = _png_header(tmp_path / "huge.png", 14_000, 14_000)  # 196 MP: over twice pillow's limit
    assert probe_size(big, max_pixels=150_000_000) == (10_000, 10_000)
    assert probe_size(huge, max_pixels=200_000_000) == (14_000, 14_000)
    with pytest.raises(ImageError, match=r"huge.png: 14000×14000 = 196.0 MP exceeds the limit of 150.0 MP "
                                         r"\(raise it with --max-pixels\)"):
        probe_size(huge, max_pixels=150_000_000)
    with pytest.raises(ImageError, match="exceeds the limit of 64.0 MP"):
        read_image(big)
    # Raised, pillow no longer refuses first: the file's own problem (truncated data) is what is reported.
    with pytest.raises(ImageError, match="big.png: corrupt or truncated image"):
        read_image(big, max_pixels=150_000_000)
    assert Image.MAX_IMAGE_PIXELS == before  # pillow's global is left as it was
    r = invoke("degrade", "--spec", "bicubic:2", "--input", huge, "--output", tmp_path / "o",
               "--max-pixels", "200000000")
    assert r.exit_code == 1
    assert "DecompressionBomb" not in r.stderr and "corrupt or truncated" in r.stderr


@pytest.mark.parametrize("value", ["0", "-5"])
@pytest.mark.parametrize("command", ["run", "degrade", "compare"])
def test_non_positive_limits_are_usage_errors(tmp_path, command, value):
    img = _img(tmp_path / "in" / "a.png", 16, 16)
    base = {"run": ["run", "bicubic", "--scale", "2", "--input", img, "--output", tmp_path / "o"],
            "degrade": ["degrade", "--spec", "bicubic:2", "--input", img, "--output", tmp_path / "o"],
            "compare": ["compare", "--methods", "bicubic", "--scale", "2", "--data", img.parent,
                        "--out", tmp_path / "o"]}[command]
    flags = ["--max-pixels"] + ([] if command == "degrade" else ["--max-output-pixels"])
    for flag in flags:
        r = invoke(*base, flag, value)
        assert r.exit_code == 2, (flag, r.output)
        assert f"{flag}': {value} is not in the range x>=1" in r.output
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("size", [(3, 5), (9, 3)])
def test_an_image_smaller_than_the_scale_is_named_by_its_own_size(tmp_path, size):
    """degrade and compare crop an HR to a multiple of the scale first; an image smaller than the
    scale is reported by the size the file has (3×5), not by what the crop left of it (0×4)."""
    w, h = size
    img = _img(tmp_path / "in" / "tiny.png", h, w)
    r = invoke("degrade", "--spec", "bicubic:4", "--input", img, "--output", tmp_path / "o", "--json")
    assert r.exit_code == 1
    [failure] = json.loads(r.stdout)["failed"]
    assert failure["error"] == f"{img}: {w}×{h} is smaller than the scale 4 (each side must be ≥ 4 px)"
    r = invoke("compare", "--methods", "bicubic", "--scale", "4", "--data", img.parent, "--metrics", "psnr_rgb",
               "--out", tmp_path / "report", "--json")
    assert r.exit_code == 1
    assert json.loads(r.stdout)["inputs"]["failures"][0]["error"] == failure["error"]


def test_small_sizes_and_limits_are_exact_pixel_counts_not_zero_megapixels(tmp_path):
    """Under 0.1 MP a size or limit is shown in pixels (one decimal of MP rounded both to "0.0 MP");
    from 0.1 MP up the messages stay in MP."""
    img = _img(tmp_path / "in" / "a.png", 100, 100)
    r = invoke("run", "bicubic", "--scale", "2", "--input", img, "--output", tmp_path / "o", "--max-pixels", "9999")
    assert r.exit_code == 1
    assert "a.png: 100×100 = 10,000 px exceeds the limit of 9,999 px (raise it with --max-pixels)" in r.stderr
    r = invoke("run", "bicubic", "--scale", "2", "--input", img, "--output", tmp_path / "o",
               "--max-output-pixels", "39999")
    assert r.exit_code == 1
    assert ("a.png: its ×2 output would be 200×200 = 40,000 px, over the output limit of 39,999 px "
            "(lower --scale or raise --max-output-pixels)") in r.stderr
    with pytest.raises(ImageError, match=r"^x: 400×250 = 0\.1 MP exceeds the limit of 99,999 px "):
        check_size(400, 250, "x", max_pixels=99_999)
    with pytest.raises(ImageError, match=r"^x: 1000×1000 = 1\.0 MP exceeds the limit of 0\.5 MP "):
        check_size(1000, 1000, "x", max_pixels=500_000)


def test_a_size_just_over_a_limit_does_not_read_as_the_limit() -> None:
    """serve answered a 4001×4000 upload '16.0 MP exceeds the limit of 16.0 MP'."""
    from restorekit.images import check_output_size, check_size

    with pytest.raises(ImageError, match=r"^big.png: 4001×4000 = 16,004,000 px exceeds the limit of 16,000,000 px "):
        check_size(4001, 4000, "big.png", max_pixels=16_000_000)
    with pytest.raises(ImageError, match=r"= 16,000,000 px, over the output limit of 15,999,999 px"):
        check_output_size(4000, 4000, 1, "one.png", max_output_pixels=15_999_999)
    with pytest.raises(ImageError, match=r"= 17.0 MP exceeds the limit of 16.0 MP"):  # one decimal where it tells
        check_size(4250, 4000, "big.png", max_pixels=16_000_000)
