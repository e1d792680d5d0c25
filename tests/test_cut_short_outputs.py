"""An output cut short (a folder copy that stopped: ``cp``, ``rsync``, a full disk) still carries its
record, which comes before the pixels, and a rerun skipped it as finished ("0 written, 2 skipped",
exit 0), keeping a 300-byte PNG of 2,531. Now ``run``, ``degrade`` and ``generate`` tell it from its
first and last bytes and make it again, with one ``warning:`` line naming it; a whole output is
still skipped, its pixels never decoded."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from PIL import Image, ImageFile

from restorekit.cli import build_cli
from restorekit.images import read_image, save_image
from plugin_sources import one_face_plugin_source


def invoke(*args: object):  # type: ignore[no-untyped-def]
    return CliRunner().invoke(build_cli(), [str(a) for a in args], catch_exceptions=False)


def inputs(folder: Path, size: int = 32) -> Path:
    """Two noisy ``size``-px inputs, ``a.png`` and ``b.png``."""
    folder.mkdir()
    g = torch.Generator().manual_seed(0)
    for stem in ("a", "b"):
        save_image(torch.rand(1, 3, size, size, generator=g), folder / f"{stem}.png")
    return folder


def cut(path: Path, keep: float = 0.5) -> bytes:
    """Cut ``path`` to ``keep`` of its bytes, as a copy that stopped leaves it; its whole bytes."""
    whole = path.read_bytes()
    path.write_bytes(whole[:int(len(whole) * keep)])
    return whole


def warnings_about(text: str, path: Path) -> list[str]:
    return [ln for ln in text.splitlines() if ln.startswith("warning: ") and str(path) in ln]


def remade_warning(path: Path, why: str) -> str:
    return f"warning: {path}: cut short ({why}), not a finished output: made again"


WHY = {"png": "a PNG without its IEND chunk", "jpg": "a JPEG without its end marker (FFD9)"}


@pytest.fixture
def no_output_decoded(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, int]]:
    """Pillow's decoding refused for 8×8 images (the ×4 degrade outputs of 32-px inputs, which a
    skip must not read); the sizes of the images decoded are listed."""
    real = ImageFile.ImageFile.load
    decoded: list[tuple[int, int]] = []

    def load(self: ImageFile.ImageFile):  # type: ignore[no-untyped-def]
        decoded.append(self.size)
        if self.size == (8, 8):
            raise AssertionError("an output's pixels were decoded")
        return real(self)

    monkeypatch.setattr(ImageFile.ImageFile, "load", load)
    return decoded


# -- the check itself ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("ext", ["png", "jpg", "webp"])
def test_every_cut_of_an_output_is_told_and_a_whole_one_is_not(tmp_path: Path, ext: str) -> None:
    from restorekit.provenance import cut_short

    path = save_image(torch.rand(1, 3, 16, 12, generator=torch.Generator().manual_seed(1)), tmp_path / f"o.{ext}",
                      note={"command": "degrade"})
    whole = path.read_bytes()
    part = tmp_path / f"part.{ext}"
    missed = []
    for n in range(len(whole)):  # every length short of the whole file
        part.write_bytes(whole[:n])
        if cut_short(part) is None:
            missed.append(n)
    assert missed == []
    part.write_bytes(whole[:len(whole) // 2])
    half = {"png": WHY["png"], "jpg": WHY["jpg"],
            "webp": f"a WebP shorter than its RIFF header says ({len(whole) // 2} of {len(whole)} bytes)"}[ext]
    assert cut_short(part) == half
    part.write_bytes(b"")
    assert cut_short(part) == "an empty file"
    assert cut_short(path) is None
    part.write_bytes(whole + b"\0" * 7 + b"a trailer after the end")  # data after the end: whole
    assert cut_short(part) is None


def test_a_progressive_jpeg_cut_anywhere_is_told_and_other_formats_are_left_alone(tmp_path: Path) -> None:
    from restorekit.provenance import cut_short

    image = Image.fromarray((torch.rand(96, 128, 3, generator=torch.Generator().manual_seed(2)) * 255).byte().numpy())
    image.save(tmp_path / "p.jpg", quality=90, progressive=True)
    whole = (tmp_path / "p.jpg").read_bytes()
    for n in range(12, len(whole), 101):  # (shorter: within its first bytes, said so)
        (tmp_path / "c.jpg").write_bytes(whole[:n])
        assert cut_short(tmp_path / "c.jpg") == WHY["jpg"], n
    assert cut_short(tmp_path / "p.jpg") is None
    image.save(tmp_path / "b.bmp")  # not a format restorekit writes: not judged
    (tmp_path / "t.png").write_bytes(b"not an image at all")
    (tmp_path / "d.png").mkdir()
    assert [cut_short(tmp_path / n) for n in ("b.bmp", "t.png", "d.png", "missing.png")] == [None] * 4


# -- degrade ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("ext", ["png", "jpg", "webp"])
def test_degrade_remakes_an_output_cut_short_and_still_skips_a_whole_one(tmp_path: Path, ext: str,
                                                                        no_output_decoded: list) -> None:
    src, out = inputs(tmp_path / "hr"), tmp_path / "lr"
    args = ("degrade", "--spec", "bicubic:4", "--input", src, "--output", out, "--ext", ext)
    assert invoke(*args, "-q").exit_code == 0
    whole = cut(out / f"a.{ext}")
    b_before = (out / f"b.{ext}").read_bytes()
    r = invoke(*args, "-q")  # the audit's repro: -q too says it
    assert r.exit_code == 0, r.output
    why = WHY.get(ext, f"a WebP shorter than its RIFF header says ({len(whole) // 2} of {len(whole)} bytes)")
    assert warnings_about(r.output, out / f"a.{ext}") == [remade_warning(out / f"a.{ext}", why)]
    assert (out / f"a.{ext}").read_bytes() == whole  # made again, the same bytes
    assert (out / f"b.{ext}").read_bytes() == b_before
    assert (8, 8) not in no_output_decoded and (32, 32) in no_output_decoded  # a's input read; b's output not
    r = invoke(*args, "--json")
    assert r.exit_code == 0 and json.loads(r.stdout)["written"] == [] and "cut short" not in r.output, r.output


def test_degrade_counts_an_output_cut_short_as_written_not_kept(tmp_path: Path, no_output_decoded: list) -> None:
    src, out = inputs(tmp_path / "hr"), tmp_path / "lr"
    args = ("degrade", "--spec", "bicubic:4", "--input", src, "--output", out)
    assert invoke(*args, "-q").exit_code == 0
    (out / "a.png").write_bytes(b"")  # a full disk: the copy made the file, and wrote nothing
    (out / "b.png").write_bytes((out / "b.png").read_bytes() + b"\0" * 512)  # padded after its end: whole
    r = invoke(*args)
    assert r.exit_code == 0, r.output
    assert "1 written, 1 skipped (exist; --overwrite replaces), 0 failed" in r.output
    assert warnings_about(r.output, out / "a.png") == [remade_warning(out / "a.png", "an empty file")]
    assert "carry no record" not in r.output  # not kept as another program's file: made again
    with Image.open(out / "a.png") as im:  # (its header: the fixture refuses decoding it here too)
        assert im.size == (8, 8) and im.info["restorekit"]
    assert [ln for ln in r.output.splitlines() if ln.startswith("warning:")] == \
        [remade_warning(out / "a.png", "an empty file")]


# -- run ----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("ext", ["png", "jpg"])
def test_run_remakes_an_output_cut_short(tmp_path: Path, ext: str) -> None:
    src, out = inputs(tmp_path / "in", size=8), tmp_path / "out"
    args = ("run", "bicubic", "--scale", "2", "--input", src, "--output", out, "--ext", ext)
    assert invoke(*args, "-q").exit_code == 0
    whole = cut(out / f"a.{ext}", keep=0.9)  # the record and most pixels there
    r = invoke(*args, "--json")
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert doc["written"] == [str(out / f"a.{ext}")] and [s["path"] for s in doc["skipped"]] == [str(out / f"b.{ext}")]
    assert warnings_about(r.output, out / f"a.{ext}") == [remade_warning(out / f"a.{ext}", WHY[ext])]
    assert (out / f"a.{ext}").read_bytes() == whole


def test_run_with_every_output_there_but_one_cut_short_builds_the_method(tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """A rerun whose outputs all exist builds no method; one cut short is work to do."""
    import restorekit.commands.run as run_module

    built: list[str] = []
    real = run_module.build_method
    monkeypatch.setattr(run_module, "build_method", lambda *a, **k: built.append(a[0]) or real(*a, **k))
    src, out = inputs(tmp_path / "in", size=8), tmp_path / "out"
    args = ("run", "bicubic", "--scale", "2", "--input", src, "--output", out)
    assert invoke(*args, "-q").exit_code == 0
    cut(out / "b.png", keep=0.1)  # before its record too: not taken for another program's file
    r = invoke(*args)
    assert r.exit_code == 0, r.output
    assert "1 written, 1 skipped" in r.output and built == ["bicubic", "bicubic"]
    assert warnings_about(r.output, out / "b.png") == [remade_warning(out / "b.png", WHY["png"])]
    assert "carry no record" not in r.output
    assert read_image(out / "b.png").shape == (1, 3, 16, 16)


def test_run_faces_detect_remakes_a_photo_cut_short(plugin_site, tmp_path: Path) -> None:
    plugin_site("thirdparty-cutshort", "thirdparty_cutshort",
                one_face_plugin_source("3p", input_size=64, x=160, y=100, d=36, min_width=200))
    photos, out = tmp_path / "photos", tmp_path / "out"
    photos.mkdir()
    save_image(torch.rand(1, 3, 240, 320, generator=torch.Generator().manual_seed(0)), photos / "p.png")
    args = ("run", "bright_face_3p", "--scale", "2", "--input", photos, "--output", out, "--faces", "detect",
            "--detector", "one_3p")
    assert invoke(*args, "-q").exit_code == 0
    whole = cut(out / "p.png")
    r = invoke(*args, "--json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout[r.stdout.index("{"):])["written"] == [str(out / "p.png")]
    assert warnings_about(r.output, out / "p.png") == [remade_warning(out / "p.png", WHY["png"])]
    assert (out / "p.png").read_bytes() == whole and (out / "p.png.json").is_file()


# -- generate -----------------------------------------------------------------------------------------------

def test_generate_remakes_an_image_cut_short(tmp_path: Path) -> None:
    pytest.importorskip("restorekit_psp_sr")
    out = tmp_path / "gen"
    args = ("generate", "--generator", "stylegan2", "--seeds", "0-1", "--output", out, "--device", "cpu")
    assert invoke(*args, "-q").exit_code == 0
    whole = cut(out / "seed0001.png")
    r = invoke(*args, "--json")
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout[r.stdout.index("{"):])
    assert doc["written"] == [str(out / "seed0001.png")]
    assert doc["skipped"] == [{"path": str(out / "seed0000.png"), "reason": "exists (--overwrite replaces it)"}]
    assert warnings_about(r.output, out / "seed0001.png") == [
        f"warning: {out / 'seed0001.png'}: cut short ({WHY['png']}), not a finished image: made again"]
    assert (out / "seed0001.png").read_bytes() == whole
    assert json.loads((out / "generate.json").read_text())["images"] == ["seed0000.png", "seed0001.png"]
