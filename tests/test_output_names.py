"""Unique output names for colliding stems (extensions, sub-folders, case) and one size validation
for every image read or made, across `run`, `compare` and `degrade`."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from restorekit.cli import build_cli
from restorekit.errors import ImageError
from restorekit.harness.metrics import PsnrRgb
from restorekit.images import list_inputs, output_names, read_image
from restorekit.methods import build_method
from restorekit.testing.data import smooth_image


def invoke(*args: str):
    return CliRunner().invoke(build_cli(), [str(a) for a in args], catch_exceptions=False)


def _save(path: Path, seed: int, size: int = 32) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(smooth_image(size, size, seed)).save(path, quality=95)
    return path


@pytest.fixture
def clash(tmp_path: Path) -> Path:
    """``a.jpg``, ``a.png`` and ``a_png.jpg`` (the old rule renamed ``a.png`` to ``a_png``), all different."""
    d = tmp_path / "clash"
    for i, name in enumerate(("a.jpg", "a.png", "a_png.jpg")):
        _save(d / name, seed=10 + i)
    return d


@pytest.fixture
def nested(tmp_path: Path) -> Path:
    """The same stem in sub-folders and across extensions: ``x/a.png``, ``y/a.png``, ``y/a.webp``, ``z/b.png``."""
    d = tmp_path / "nested"
    for i, rel in enumerate(("x/a.png", "y/a.png", "y/a.webp", "z/b.png")):
        _save(d / rel, seed=20 + i)
    return d


def _pixels(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"), dtype=np.int16)


def _bicubic(path: Path, scale: int) -> np.ndarray:
    out = build_method("bicubic").restore(read_image(path), scale)
    return (out[0].clamp(0, 1).numpy().transpose(1, 2, 0) * 255).round().astype(np.int16)


def test_naming_rule_examples(tmp_path):
    p = [tmp_path / n for n in ("a.jpg", "a.png", "a_png.jpg")]
    assert output_names(p) == ["a.jpg", "a.png", "a_png"]
    # Stable: the order of the inputs does not change anyone's name.
    assert output_names(p[::-1]) == ["a_png", "a.png", "a.jpg"]
    sub = [tmp_path / r for r in ("x/a.png", "y/a.png", "y/a.webp", "z/b.png")]
    assert output_names(sub) == ["x__a.png", "y__a.png", "y__a.webp", "b"]
    # A qualified name that meets another file's stem is qualified again.
    q = [tmp_path / n for n in ("a.jpg", "a.png", "a.jpg.png")]
    assert output_names(q) == ["a.jpg", "a.png", "a.jpg.png"]
    # Case: the outputs would collide on a case-insensitive disk.
    assert output_names([tmp_path / "x/Face.png", tmp_path / "y/face.jpg"]) == ["x__Face.png", "y__face.jpg"]
    with pytest.raises(ImageError, match=r"inputs .*A\.png and .*a\.png would both be written as"):
        output_names([tmp_path / "a.png", tmp_path / "A.png"])


def test_same_file_twice_is_one_input(tmp_path):
    _save(tmp_path / "in" / "a.png", 1)
    lst = tmp_path / "list.txt"
    lst.write_text("in/a.png\nin/../in/a.png\n")
    items = list_inputs(f"@{lst}")
    assert [(i.path.name, i.stem) for i in items] == [("a.png", "a")]


def test_run_writes_one_output_per_input_even_with_overwrite(clash, tmp_path):
    out = tmp_path / "out"
    for extra in ([], ["--overwrite"]):
        r = invoke("run", "bicubic", "--scale", "2", "--input", clash, "--output", out, "-q", *extra)
        assert r.exit_code == 0, r.output
    assert sorted(p.name for p in out.iterdir()) == ["a.jpg.png", "a.png.png", "a_png.png"]
    for src, name in (("a.jpg", "a.jpg"), ("a.png", "a.png"), ("a_png.jpg", "a_png")):
        # Each output is its own input's restoration (not another input's).
        assert np.abs(_pixels(out / f"{name}.png") - _bicubic(clash / src, 2)).max() <= 1


def test_run_sub_folders_and_samples(nested, tmp_path):
    out = tmp_path / "out"
    r = invoke("run", "bicubic", "--scale", "2", "--input", f"{nested}/*/*", "--output", out, "-q", "--json")
    assert r.exit_code == 0, r.output
    assert sorted(p.name for p in out.iterdir()) == ["b.png", "x__a.png.png", "y__a.png.png", "y__a.webp.png"]
    for rel, name in (("x/a.png", "x__a.png"), ("y/a.png", "y__a.png"), ("y/a.webp", "y__a.webp")):
        assert np.abs(_pixels(out / f"{name}.png") - _bicubic(nested / rel, 2)).max() <= 1
    # A list file naming the same stems: the same names.
    lst = tmp_path / "l.txt"
    lst.write_text("\n".join(str(nested / r) for r in ("y/a.png", "x/a.png")))
    assert [i.stem for i in list_inputs(f"@{lst}")] == ["y__a.png", "x__a.png"]


def test_run_refuses_inputs_it_cannot_tell_apart(tmp_path):
    d = tmp_path / "case"
    _save(d / "a.png", 1)
    _save(d / "A.png", 2)
    r = invoke("run", "bicubic", "--scale", "2", "--input", d, "--output", tmp_path / "o")
    assert r.exit_code == 2
    assert "A.png and" in r.stderr and "a.png would both be written" in r.stderr.replace("\n", " ")
    assert not (tmp_path / "o").exists()


def test_degrade_names_and_lr_dir_pairs_back(clash, nested, tmp_path):
    lr = tmp_path / "lr"
    r = invoke("degrade", "--spec", "bicubic:2", "--input", clash, "--output", lr, "-q")
    assert r.exit_code == 0, r.output
    assert sorted(p.name for p in lr.iterdir()) == ["a.jpg.png", "a.png.png", "a_png.png"]
    for src, name in (("a.jpg", "a.jpg"), ("a.png", "a.png"), ("a_png.jpg", "a_png")):
        want = torch.nn.functional.interpolate(read_image(clash / src), scale_factor=0.5, mode="bicubic",
                                               antialias=True).clamp(0, 1)
        got = read_image(lr / f"{name}.png")
        assert (got - want).abs().max().item() <= 1.5 / 255
    lr2 = tmp_path / "lr2"
    r = invoke("degrade", "--spec", "bicubic:2", "--input", f"{nested}/*/*", "--output", lr2, "-q")
    assert r.exit_code == 0, r.output
    assert sorted(p.name for p in lr2.iterdir()) == ["b.png", "x__a.png.png", "y__a.png.png", "y__a.webp.png"]

    # The LR names follow the same rule as the HR names, so compare --lr-dir pairs every image.
    out = tmp_path / "cmp"
    r = invoke("compare", "--methods", "bicubic", "--scale", "2", "--data", clash, "--lr-dir", lr, "--out", out,
               "--metrics", "psnr_rgb", "--device", "cpu", "-q")
    assert r.exit_code == 0, r.output
    doc = json.loads((out / "results.json").read_text())
    assert sorted(i["image"] for i in doc["images"]) == ["a.jpg", "a.png", "a_png"]
    assert doc["inputs"]["unmatched"] == []


def _check_scores(out: Path, data: Path, names: dict[str, str]) -> None:
    doc = json.loads((out / "results.json").read_text())
    recs = {i["image"]: i for i in doc["images"]}
    assert sorted(recs) == sorted(names.values())  # every input scored exactly once
    manifest = json.loads(next((out / "inputs").glob("*/manifest.json")).read_text())["images"]
    for rel, name in names.items():
        assert Path(manifest[name]["hr"]) == data / rel
        hr = read_image(data / rel)
        pred = read_image(out / recs[name]["output"])
        want = PsnrRgb()(pred, hr, lr=hr, scale=2).item()
        assert recs[name]["metrics"]["psnr_rgb"] == pytest.approx(want, abs=1e-9)


def test_compare_scores_each_colliding_input_once(clash, nested, tmp_path):
    out = tmp_path / "cmp"
    r = invoke("compare", "--methods", "bicubic", "--scale", "2", "--data", clash, "--out", out,
               "--metrics", "psnr_rgb", "--device", "cpu", "-q")
    assert r.exit_code == 0, r.output
    _check_scores(out, clash, {"a.jpg": "a.jpg", "a.png": "a.png", "a_png.jpg": "a_png"})
    out2 = tmp_path / "cmp2"
    r = invoke("compare", "--methods", "bicubic", "--scale", "2", "--data", f"{nested}/*/*", "--out", out2,
               "--metrics", "psnr_rgb", "--device", "cpu", "-q")
    assert r.exit_code == 0, r.output
    _check_scores(out2, nested, {"x/a.png": "x__a.png", "y/a.png": "y__a.png", "y/a.webp": "y__a.webp",
                                 "z/b.png": "b"})


def test_tiny_input_gets_the_same_verdict_on_every_run(tmp_path):
    d = tmp_path / "hr"
    _save(d / "ok.png", 1)
    _save(d / "tiny.png", 2, size=5)  # ×4: a 1×1 LR, below the 2-px minimum of every image
    out = tmp_path / "cmp"
    args = ["compare", "--methods", "bicubic", "--scale", "4", "--data", d, "--out", out, "--metrics", "psnr_rgb",
            "--device", "cpu", "-q"]
    docs = []
    for _ in range(2):
        r = invoke(*args)
        assert r.exit_code == 1
        assert "tiny.png: its ×4 LR: 1×1 is too small" in r.stderr.replace("\n", " ")
        docs.append(json.loads((out / "results.json").read_text()))
    for doc in docs:
        assert [i["image"] for i in doc["images"]] == ["ok"]
        assert [f["image"] for f in doc["inputs"]["failures"]] == ["tiny"]
    # degrade applies the same rule to what it makes: no 1×1 file that nothing could read back.
    r = invoke("degrade", "--spec", "bicubic:4", "--input", d, "--output", tmp_path / "lr", "-q")
    assert r.exit_code == 1 and "1×1 is too small" in r.stderr
    assert sorted(p.name for p in (tmp_path / "lr").iterdir()) == ["ok.png"]


def test_names_equal_after_unicode_normalisation_are_told_apart(tmp_path):
    """'é' as one code point (NFC) or 'e' and an accent (NFD) is one file name on macOS."""
    nfc, nfd = "caf\u00e9", "cafe\u0301"
    names = output_names([tmp_path / "x" / f"{nfc}.png", tmp_path / "y" / f"{nfd}.jpg"])
    assert names == [f"x__{nfc}.png", f"y__{nfd}.jpg"]
    with pytest.raises(ImageError, match="would both be written as"):
        output_names([tmp_path / f"{nfc}.png", tmp_path / f"{nfd}.png"])  # one folder: cannot be told apart


def test_long_qualified_names_fit_a_file_name(tmp_path):
    """Clashing stems in long (but legal) folders: the qualified name keeps its end after a hash of
    the whole relative path, within 200 bytes, unique and the same every time."""
    long_b, long_c = "B" * 250, "\u00e9" * 120  # 250 bytes each, 'é' two in UTF-8
    paths = [tmp_path / long_b / "face.png", tmp_path / long_c / "face.png", tmp_path / "s" / "face.png"]
    names = output_names(paths)
    assert names[2] == "s__face.png"  # a short one is as before
    for name in names[:2]:
        assert len(name.encode("utf-8")) <= 200 and name.endswith("__face.png")
        head, sep, _ = name.partition("__")
        assert sep and len(head) == 10 and int(head, 16) >= 0
    assert len({n.casefold() for n in names}) == 3
    assert output_names(paths[::-1]) == names[::-1]  # stable
    assert set(names[1][12:-len("__face.png")]) == {"\u00e9"}  # the end of the path, no character cut in two
    # Two long paths that differ only in letter case are still refused, as short ones are.
    with pytest.raises(ImageError, match="would both be written as"):
        output_names([tmp_path / long_b / "face.png", tmp_path / long_b.lower() / "face.png"])


def test_run_writes_inputs_from_long_folders(tmp_path):
    src = tmp_path / "in"
    for i, d in enumerate(("B" * 250, "C" * 250)):
        _save(src / d / "face.png", seed=40 + i)
    out = tmp_path / "out"
    r = invoke("run", "bicubic", "--scale", "2", "--input", f"{src}/*/face.png", "--output", out, "-q")
    assert r.exit_code == 0, r.output
    written = sorted(p.name for p in out.iterdir())
    assert len(written) == 2 and all(len(n.encode()) <= 255 for n in written)
