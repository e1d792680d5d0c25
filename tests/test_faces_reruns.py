"""Reruns of ``run --faces detect``: its outputs record what made them (so an aligned run, or a
faces run with other settings, refuses them), a sidecar is never written for images the run did
not make, one sidecar per format and kind of output, and a finished folder builds no method.

A stub detector (one upright face in photos 200 px wide or more) and a tiny face method from a
plugin: no weights, no photos from /work/shared.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from restorekit.cli import build_cli
from restorekit.images import save_image
from restorekit.provenance import read_note
from plugin_sources import one_face_plugin_source

PLUGIN = one_face_plugin_source("3p", input_size=64, x=160, y=100, d=36, min_width=200)


@pytest.fixture
def photos(plugin_site, tmp_path: Path) -> Path:
    plugin_site("thirdparty-reruns", "thirdparty_reruns", PLUGIN)
    folder = tmp_path / "photos"
    folder.mkdir()
    save_image(torch.rand(1, 3, 240, 320, generator=torch.Generator().manual_seed(0)), folder / "p.png")
    return folder


def run(photos: Path, out: Path, *args: str, method: str = "bright_face_3p", faces: bool = True):  # type: ignore[no-untyped-def]
    cmd = ["run", method, "--scale", "2", "--input", str(photos), "--output", str(out)]
    if faces:
        cmd += ["--faces", "detect", "--detector", "one_3p"]
    return CliRunner().invoke(build_cli(), [*cmd, *args])


def digest(path: Path) -> bytes:
    return path.read_bytes()


def test_faces_outputs_record_what_made_them_and_an_aligned_run_refuses_them(photos: Path, tmp_path: Path) -> None:
    """Finding 1: a `--faces detect` output had no record inside, so `run bicubic` (or the same
    method without --faces) into its folder skipped it as its own output."""
    out = tmp_path / "out"
    r = run(photos, out, "-q")
    assert r.exit_code == 0, r.output
    note = read_note(out / "p.png")
    assert note is not None and note["faces"] == "detect" and note["method"] == "bright_face_3p"
    assert {k: note[k] for k in ("detector", "background", "min_face", "max_shrink", "colour_match",
                                 "only_faces", "scale", "input")} == {
        "detector": "one_3p", "background": "bicubic", "min_face": 20.0, "max_shrink": 3.0, "colour_match": False,
        "only_faces": False, "scale": 2, "input": "p.png"}
    before = digest(out / "p.png")
    r = run(photos, out, method="bicubic", faces=False)
    assert r.exit_code == 2, r.output
    assert "(made by run --faces detect, not --faces aligned; method: bright_face_3p → bicubic)" in r.output
    r = run(photos, out, faces=False)  # the same method on the photo as if it were a face crop
    assert r.exit_code == 2 and "(made by run --faces detect, not --faces aligned)" in r.output, r.output
    assert digest(out / "p.png") == before

    crops = tmp_path / "crops"
    assert run(photos, crops, "--only-faces", "-q").exit_code == 0
    note = read_note(crops / "p_face0.png")
    assert note is not None and note["only_faces"] is True and "background" not in note and "colour_match" not in note


def test_a_faces_run_into_another_runs_outputs_is_refused_before_any_work(photos: Path, tmp_path: Path) -> None:
    """Finding 2: `--faces detect` into a folder of `run bicubic` outputs kept them and wrote a
    sidecar claiming its own faces; now refused (exit 2, one line), nothing written."""
    out = tmp_path / "out"
    assert run(photos, out, method="bicubic", faces=False).exit_code == 0
    before = digest(out / "p.png")
    r = run(photos, out, "--json")
    assert r.exit_code == 2, r.output
    line = r.output.strip().splitlines()[-1]
    assert "1 of these photos (p) were made with other settings (made by run --faces aligned, not --faces detect; " \
           "method: bicubic → bright_face_3p)" in line and "--overwrite to remake them" in line
    assert sorted(p.name for p in out.iterdir()) == ["p.png"] and digest(out / "p.png") == before
    r = run(photos, out, "--overwrite", "-q")  # remade
    assert r.exit_code == 0 and read_note(out / "p.png")["faces"] == "detect", r.output
    assert (out / "p.png.json").is_file()


def test_an_output_made_with_other_faces_settings_is_refused_without_its_sidecar(photos: Path, tmp_path: Path) -> None:
    """The record inside the image says what made it even where the sidecar is gone (an
    interrupted run of other settings leaves images and no sidecar)."""
    out = tmp_path / "out"
    assert run(photos, out, "--min-face", "30", "-q").exit_code == 0
    (out / "p.png.json").unlink()
    before = digest(out / "p.png")
    r = run(photos, out)
    assert r.exit_code == 2 and "(min_face: 30.0 → 20.0)" in r.output, r.output
    r = run(photos, out, "--min-face", "30", "--colour-match")
    assert r.exit_code == 2 and "(colour match: off → on)" in r.output, r.output
    assert not (out / "p.png.json").exists() and digest(out / "p.png") == before
    r = run(photos, out, "--min-face", "30", "--json")  # the same settings: the photo is done again
    assert r.exit_code == 0 and json.loads(r.stdout)["skipped"] != [], r.output
    assert (out / "p.png.json").is_file() and digest(out / "p.png") == before


def test_images_of_another_program_are_kept_and_never_described_by_a_sidecar(photos: Path, tmp_path: Path,
                                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """An output without a record (another program's) is taken as finished, as `run` takes it, and
    no sidecar claims it; where the photo is done for its other outputs, the one kept is named."""
    import restorekit.commands.run as run_module

    built: list[str] = []
    real = run_module.build_method
    monkeypatch.setattr(run_module, "build_method", lambda *a, **k: built.append(a[0]) or real(*a, **k))
    out = tmp_path / "out"
    out.mkdir()
    Image.new("RGB", (640, 480), "red").save(out / "p.png")
    r = run(photos, out, "--json")
    assert r.exit_code == 0 and json.loads(r.stdout)["written"] == [], r.output
    assert sorted(p.name for p in out.iterdir()) == ["p.png"] and built == []
    # Two samples, one of them another program's: the other is written, no sidecar.
    out2 = tmp_path / "out2"
    out2.mkdir()
    Image.new("RGB", (640, 480), "red").save(out2 / "p_s0.png")
    r = run(photos, out2, "--n-samples", "2", "--json")
    assert r.exit_code == 0, r.output
    assert [Path(w).name for w in json.loads(r.stdout[r.stdout.index("{"):])["written"]] == ["p_s1.png"]
    assert "p_s0.png kept (not made by restorekit: no record inside); no sidecar written" in r.output
    assert sorted(p.name for p in out2.iterdir()) == ["p_s0.png", "p_s1.png"]


def test_one_sidecar_per_format_and_kind_of_output(photos: Path, tmp_path: Path) -> None:
    """Finding 3: one `<stem>.json` served --ext png, --ext jpg and --only-faces: a jpg run with
    --overwrite relabelled the png's photo, which a rerun then skipped as made by the new settings."""
    out = tmp_path / "out"
    assert run(photos, out, "-q").exit_code == 0
    png_side = digest(out / "p.png.json")
    r = run(photos, out, "--ext", "jpg", "--overwrite", "--min-face", "8", "-q")
    assert r.exit_code == 0, r.output
    assert digest(out / "p.png.json") == png_side and json.loads((out / "p.jpg.json").read_text())["min_face"] == 8.0
    r = run(photos, out, "--min-face", "8")
    assert r.exit_code == 2 and "(min_face: 20.0 → 8.0)" in r.output, r.output
    r = run(photos, out, "--only-faces", "--min-face", "8", "-q")  # its own sidecar beside its crops
    assert r.exit_code == 0, r.output
    assert sorted(p.name for p in out.iterdir()) == ["p.jpg", "p.jpg.json", "p.png", "p.png.json", "p_face0.png",
                                                     "p_faces.png.json"]
    assert digest(out / "p.png.json") == png_side
    for args in ([], ["--ext", "jpg", "--min-face", "8"], ["--only-faces", "--min-face", "8"]):
        r = run(photos, out, *args, "--json")  # each finished, and told apart
        assert r.exit_code == 0 and json.loads(r.stdout)["written"] == [], (args, r.output)


def test_an_older_versions_sidecar_is_still_read_for_its_own_images(photos: Path, tmp_path: Path) -> None:
    """A folder of an older restorekit (images without a record, one `<stem>.json`): a rerun with
    its settings skips the photo, one with other settings is refused naming them; a run in another
    format is not judged by it."""
    out = tmp_path / "out"
    assert run(photos, out, "-q").exit_code == 0
    side = json.loads((out / "p.png.json").read_text())
    (out / "p.png.json").rename(out / "p.json")
    with Image.open(out / "p.png") as im:
        im.load()
        im.copy().save(out / "p.png")  # without its record, as older versions wrote it
    assert read_note(out / "p.png") is None
    r = run(photos, out, "--json")
    assert r.exit_code == 0 and json.loads(r.stdout)["written"] == [], r.output
    r = run(photos, out, "--min-face", "8")
    assert r.exit_code == 2 and "(min_face: 20.0 → 8.0)" in r.output, r.output
    r = run(photos, out, "--ext", "jpg", "--min-face", "8", "-q")  # no jpg there: nothing of that version kept
    assert r.exit_code == 0 and (out / "p.jpg.json").is_file(), r.output
    assert json.loads((out / "p.json").read_text()) == side
    # --only-faces reads which crops an older sidecar lists (none restored: skipped, as it says).
    crops = tmp_path / "crops"
    crops.mkdir()
    (crops / "p.json").write_text(json.dumps({**side, "faces": [], "faces_restored": 0, "min_face": 20.0}))
    r = run(photos, crops, "--only-faces", "--json")
    assert r.exit_code == 0 and json.loads(r.stdout)["skipped"][0]["reason"].startswith("no face restored"), r.output
    r = run(photos, crops, "--only-faces", "--min-face", "8")
    assert r.exit_code == 2 and "(min_face: 20.0 → 8.0)" in r.output, r.output


def test_a_rerun_of_a_finished_folder_builds_no_method(photos: Path, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """Finding 4: the method was built (weights loaded, notes printed) before every photo was skipped."""
    import restorekit.commands.run as run_module

    built: list[str] = []
    real = run_module.build_method
    monkeypatch.setattr(run_module, "build_method", lambda *a, **k: built.append(a[0]) or real(*a, **k))
    out = tmp_path / "out"
    for folder, args in ((out, []), (tmp_path / "crops", ["--only-faces"])):
        built.clear()
        assert run(photos, folder, *args, "-q").exit_code == 0 and built == ["bright_face_3p"]
        r = run(photos, folder, *args, "--json")
        assert r.exit_code == 0 and built == ["bright_face_3p"], r.output
        doc = json.loads(r.stdout)
        assert doc["written"] == [] and len(doc["skipped"]) == 1 and doc["device"] is None
        assert (doc["faces"], doc["detector"], doc["background"]) == ("detect", "one_3p", "bicubic")
        r = run(photos, folder, *args)
        assert r.output.strip().splitlines()[-1].startswith("0 written (0 faces restored), 1 skipped"), r.output
    # A photo whose sidecar is missing (interrupted before it) is done again: the method is built.
    (out / "p.png.json").unlink()
    built.clear()
    assert run(photos, out, "-q").exit_code == 0 and built == ["bright_face_3p"] and (out / "p.png.json").is_file()


def test_no_sidecar_is_written_for_a_photo_whose_kept_output_was_made_otherwise(photos: Path, tmp_path: Path) -> None:
    """Outputs a photo makes that the rerun could not foresee (crops of faces its missing sidecar
    would have listed) are checked when the photo is done: one made with other settings fails the
    photo, one without a record leaves it without a sidecar."""
    from types import SimpleNamespace

    from restorekit.faces.pipeline import detect_plan
    from restorekit.methods import method_class
    from restorekit.run_record import run_settings

    cls = method_class("bright_face_3p")
    options = cls.Options()
    settings = run_settings(cls, options, scale=2, seed=None, n_samples=1, couple=False, backend="torch")
    out = tmp_path / "out"
    out.mkdir()
    plan = detect_plan(cls, options, settings, out, scale=2, detector="one_3p", background=None, min_face=None,
                       max_shrink=None, colour_match=False, only_faces=True, n_samples=1, ext="png")
    item = SimpleNamespace(path=photos / "p.png", stem="p")
    ours, other, foreign = out / "p_face0.png", out / "p_face1.png", out / "p_face2.png"
    save_image(torch.zeros(1, 3, 8, 8), ours, note=plan.note_for(item, True))
    save_image(torch.zeros(1, 3, 8, 8), other, note={**plan.note_for(item, True), "min_face": 8.0})
    save_image(torch.zeros(1, 3, 8, 8), foreign)
    assert plan.kept_problem(item, [ours], True) is None
    msg, fails = plan.kept_problem(item, [ours, foreign, other], True)
    assert fails and msg == f"{other}: made with other settings (min_face: 8.0 → 20.0), kept; no sidecar written " \
                            "(--overwrite remakes it)"
    msg, fails = plan.kept_problem(item, [ours, foreign], True)
    assert not fails and msg.endswith("p_face2.png kept (not made by restorekit: no record inside); no sidecar written")


def test_the_paste_mask_is_compared_and_a_record_without_one_was_pasted_square(photos: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert run(photos, out, "--paste-mask", "square", "-q").exit_code == 0
    r = run(photos, out)  # the default mask is another
    assert r.exit_code == 2 and "(paste mask: square → face)" in r.output, r.output
    (out / "p.png.json").unlink()  # the record inside the image says it too
    r = run(photos, out)
    assert r.exit_code == 2 and "paste mask: square → face" in r.output, r.output
    # An older restorekit's photo (no record inside, a sidecar naming no mask) was pasted square.
    old = tmp_path / "old"
    assert run(photos, old, "-q").exit_code == 0
    side = json.loads((old / "p.png.json").read_text())
    del side["paste_mask"]
    (old / "p.png.json").unlink()
    (old / "p.json").write_text(json.dumps(side))
    with Image.open(old / "p.png") as im:
        im.load()
        im.copy().save(old / "p.png")
    r = run(photos, old)
    assert r.exit_code == 2 and "(paste mask: square → face)" in r.output, r.output
    r = run(photos, old, "--paste-mask", "square", "--json")
    assert r.exit_code == 0 and json.loads(r.stdout)["written"] == [], r.output
