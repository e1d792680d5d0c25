"""``compare --lr-dir``: an LR file pairs with the HR image of its stem even where another file of
that stem made its output name a file name, and two files claiming one image are refused in one
line naming them (they used to unpair the image, said as the opposite of the truth)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from PIL import Image

from restorekit.cli import build_cli
from restorekit.errors import RestorekitError
from restorekit.harness.inputs import from_pairs
from restorekit.testing.data import smooth_image


def invoke(*args: object):
    return CliRunner().invoke(build_cli(), [str(a) for a in args], catch_exceptions=False, prog_name="restorekit")


def _save(path: Path, seed: int, size: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(smooth_image(size, size, seed)).save(path)
    return path


def _folders(tmp_path: Path, hr: list[str], lr: list[str]) -> tuple[Path, Path]:
    """HR files of 32×32 px and LR files of 8×8 px (×4), each with its own pixels."""
    for i, name in enumerate(hr):
        _save(tmp_path / "hr" / name, i, 32)
    for i, name in enumerate(lr):
        _save(tmp_path / "lr" / name, 100 + i, 8)
    return tmp_path / "hr", tmp_path / "lr"


def _pairs(hr: Path, lr: Path) -> tuple[dict[str, tuple[str, str]], list[str]]:
    inputs, unmatched = from_pairs(str(hr), str(lr), 4)
    assert inputs.failures == []
    return {p.stem: (p.hr_path.name, p.lr_path.name) for p in inputs.pairs}, unmatched


def test_every_lr_image_written_twice_is_named_as_ambiguous(tmp_path: Path) -> None:
    hr, lr = _folders(tmp_path, ["a.png", "b.png"], ["a.png", "a.webp", "b.png", "b.webp"])
    with pytest.raises(RestorekitError) as err:  # was: no HR image … has an LR image of the same stem
        from_pairs(str(hr), str(lr), 4)
    assert str(err.value) == f"{lr}: a.png and a.webp are both LR images of a: keep one (1 more image likewise: b)"


def test_a_stray_lr_file_of_one_stem_is_named_not_the_image_left_out(tmp_path: Path) -> None:
    hr, lr = _folders(tmp_path, ["a.png", "b.png"], ["a.png", "b.png", "b.jpg"])
    with pytest.raises(RestorekitError) as err:  # was: 1 of 2 images, "b, b.jpg, b.png" without a partner
        from_pairs(str(hr), str(lr), 4)
    assert str(err.value) == f"{lr}: b.jpg and b.png are both LR images of b: keep one"
    # Three of them: all named.
    _save(lr / "b.webp", 7, 8)
    with pytest.raises(RestorekitError, match="^.*: b.jpg, b.png and b.webp are all LR images of b: keep one$"):
        from_pairs(str(hr), str(lr), 4)


def test_lr_files_of_one_stem_no_hr_image_claims_are_only_left_out(tmp_path: Path) -> None:
    hr, lr = _folders(tmp_path, ["a.png"], ["a.png", "x.png", "x.webp"])
    assert _pairs(hr, lr) == ({"a": ("a.png", "a.png")}, ["x.png", "x.webp"])


def test_an_lr_file_named_by_its_path_still_pairs_by_its_stem(tmp_path: Path) -> None:
    hr, lr = _folders(tmp_path, ["a.png", "b.png"], ["x/a.png", "x/b.png", "y/B.png"])
    # x/b.png and y/B.png are named x__b.png and y__B.png (stems equal ignoring case): x/b.png is still b's.
    inputs, unmatched = from_pairs(str(hr), f"{lr}/*/*", 4)
    assert {p.stem: p.lr_path.relative_to(lr).as_posix() for p in inputs.pairs} == {"a": "x/a.png", "b": "x/b.png"}
    assert unmatched == ["y__B.png"]


def test_hr_files_of_one_stem_pair_by_their_own_names_and_one_lr_file_for_both_is_ambiguous(tmp_path: Path) -> None:
    hr, lr = _folders(tmp_path, ["a.png", "b.jpg", "b.png"], ["a.png", "b.jpg.png", "b.png.png"])
    # As degrade names their LR files: each HR image has its own (as before).
    assert _pairs(hr, lr) == ({"a": ("a.png", "a.png"), "b.jpg": ("b.jpg", "b.jpg.png"),
                               "b.png": ("b.png", "b.png.png")}, [])
    for name in ("b.jpg.png", "b.png.png"):
        (lr / name).unlink()
    _save(lr / "b.png", 9, 8)
    with pytest.raises(RestorekitError) as err:  # was: a scored alone, "b, b.jpg, b.png" without a partner
        from_pairs(str(hr), str(lr), 4)
    assert str(err.value) == (f"{hr}: b.jpg and b.png are both HR images of the LR image {lr / 'b.png'}: keep one, or "
                              "give each its own LR file (b.jpg.png and b.png.png, as restorekit degrade names them)")


@pytest.mark.parametrize("lr_files, said", [
    (["a.png", "b.png", "b.jpg"], "b.jpg and b.png are both LR images of b: keep one"),
    (["a.png", "a.webp", "b.png", "b.webp"], "a.png and a.webp are both LR images of a: keep one (1 more image "
                                             "likewise: b)"),
])
def test_compare_refuses_two_lr_files_of_one_image_in_one_line(tmp_path: Path, lr_files: list[str], said: str) -> None:
    hr, lr = _folders(tmp_path, ["a.png", "b.png"], lr_files)
    out = tmp_path / "rep"
    r = invoke("compare", "--methods", "bicubic", "--scale", "4", "--data", hr, "--lr-dir", lr, "--out", out,
               "--metrics", "psnr_rgb", "--device", "cpu", "-q")
    # was 0 with b left out, or 2 saying that no HR image has an LR image
    assert r.exit_code == 2, r.output
    assert "Usage: restorekit compare" in r.stderr and f"{lr}: {said}" in r.stderr.replace("\n", " ")
    assert not out.exists()  # a usage error, before any work
    # With one LR file of each image left, both images are scored.
    for name in lr_files[2 if len(lr_files) == 3 else 1::2]:
        (lr / name).unlink()
    r = invoke("compare", "--methods", "bicubic", "--scale", "4", "--data", hr, "--lr-dir", lr, "--out", out,
               "--metrics", "psnr_rgb", "--device", "cpu", "-q")
    assert r.exit_code == 0, r.output
    doc = json.loads((out / "results.json").read_text())
    assert sorted(i["image"] for i in doc["images"]) == ["a", "b"] and doc["inputs"]["unmatched"] == []


def test_a_stray_file_beside_pairs_made_by_output_name_is_no_claimant(tmp_path: Path) -> None:
    # HR face.jpg and face.png, their LR files as degrade names them, and a face.png left over from
    # a degrade run made before face.jpg was added: both images pair, the stray one is unmatched.
    hr, lr = _folders(tmp_path, ["face.jpg", "face.png"], ["face.jpg.png", "face.png.png", "face.png"])
    pairs, unmatched = _pairs(hr, lr)
    assert pairs == {"face.jpg": ("face.jpg", "face.jpg.png"), "face.png": ("face.png", "face.png.png")}
    assert unmatched == ["face"]
    # The LR side alike: b.png pairs with HR b.png.tif by its output name, b.webp with HR b.
    hr, lr = _folders(tmp_path / "2", ["b.jpg", "b.png.tif"], ["b.png", "b.webp"])
    assert _pairs(hr, lr)[0] == {"b": ("b.jpg", "b.webp"), "b.png": ("b.png.tif", "b.png")}


def test_an_hr_fifo_is_refused_in_its_line_not_read(tmp_path: Path) -> None:
    import os
    import signal

    if not hasattr(os, "mkfifo") or not hasattr(signal, "SIGALRM"):
        pytest.skip("needs FIFOs and SIGALRM")
    hr, lr = _folders(tmp_path, ["a.png"], ["a.png", "f.png"])
    os.mkfifo(hr / "f.png")

    class Hung(BaseException):
        pass

    def hung(signum, frame):  # type: ignore[no-untyped-def]
        raise Hung("blocked reading the HR FIFO")

    old = signal.signal(signal.SIGALRM, hung)
    signal.alarm(10)
    try:
        inputs, unmatched = from_pairs(str(hr), str(lr), 4)
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)
    assert [p.stem for p in inputs.pairs] == ["a"] and unmatched == []
    assert inputs.failures == [{"image": "f", "path": str(hr / "f.png"),
                                "error": f"{hr / 'f.png'}: is a FIFO (named pipe), not a regular file"}]
