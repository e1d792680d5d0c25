"""compare --faces detect with --paste-mask (recorded in compare.json, compared on reuse), the
compare lock file, and what counts as compare's outputs in ``outputs/<method>/``.

Tiny photos, a stub face method and a detector that reports one fixed face: nothing here needs
/work/shared or detector weights.
"""

from __future__ import annotations

import fcntl
import json
import os
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from restorekit.cli import build_cli
from restorekit.degradations import upscale
from restorekit.images import read_image, save_image
from plugin_sources import one_face_plugin_source

METHOD = "bright_face_cm3p"

PLUGIN = one_face_plugin_source("cm3p", input_size=32, x=64, y=40, d=16)


def _photo_folder(tmp_path: Path) -> Path:
    """One 192×256 HR photo: its LR (×2 bicubic) is 96×128, the face around (64, 43) of it."""
    g = torch.Generator().manual_seed(3)
    hr = torch.nn.functional.interpolate(torch.rand(1, 3, 12, 16, generator=g), size=(192, 256), mode="bilinear",
                                         align_corners=False)
    folder = tmp_path / "hr"
    folder.mkdir()
    save_image(hr, folder / "p.png")
    return folder


@pytest.fixture
def faces_site(plugin_site, tmp_path: Path) -> Path:
    plugin_site("thirdparty-cmpmask", "thirdparty_cmpmask", PLUGIN)
    return _photo_folder(tmp_path)


def _compare(data: Path, out: Path, *extra: str, methods: str = METHOD, faces: bool = True):
    args = ["compare", "--methods", methods, "--scale", "2", "--data", str(data), "--out", str(out),
            "--metrics", "psnr_rgb", "--device", "cpu", "-q",
            *(("--faces", "detect", "--detector", "one_cm3p") if faces else ()), *extra]
    return CliRunner().invoke(build_cli(), args)


def _faces_settings(out: Path) -> dict:
    return json.loads((out / "compare.json").read_text())["methods"][METHOD]["faces"]


def test_compare_paste_mask_is_plumbed_recorded_and_compared_on_reuse(faces_site: Path, tmp_path: Path):
    images = {}
    for mask, extra in (("square", ("--paste-mask", "square")), ("face", ())):  # face: the default
        out = tmp_path / mask
        r = _compare(faces_site, out, *extra)
        assert r.exit_code == 0, r.output
        assert _faces_settings(out) == {"mode": "detect", "detector": "one_cm3p", "paste_mask": mask}
        settings = json.loads((out / "results.json").read_text())["settings"]
        assert (settings["faces"], settings["detector"], settings["paste_mask"]) == ("detect", "one_cm3p", mask)
        assert not (out / ".compare.lock").exists()  # removed at the end, as run's .output.lock
        images[mask] = read_image(out / "outputs" / METHOD / "p.png")
    # The crop's top-left corner region is the background (bicubic of the LR) with the face mask and
    # the brightened crop with the square: the mask reached restore_photo.
    (lr_file,) = (tmp_path / "face" / "inputs").glob("*/p.png")
    bic = upscale(read_image(lr_file), 2)
    win = (Ellipsis, slice(2 * 16, 2 * 18), slice(2 * 36, 2 * 38))
    assert float((images["face"][win] - bic[win]).abs().max()) <= 1 / 255 + 1e-6
    assert float((images["square"][win] - bic[win]).mean()) > 0.05

    # Reused with the other mask: refused, naming it; --fresh clears and records the new one.
    r = _compare(faces_site, tmp_path / "square")
    assert r.exit_code == 2, r.output
    line = r.stderr.strip()
    assert "\n" not in line and f"({METHOD}.paste mask: square → face)" in line, line
    assert "--fresh" in line
    assert read_image(tmp_path / "square" / "outputs" / METHOD / "p.png").equal(images["square"])
    r = _compare(faces_site, tmp_path / "square", "--fresh")
    assert r.exit_code == 0, r.output
    assert _faces_settings(tmp_path / "square")["paste_mask"] == "face"
    assert read_image(tmp_path / "square" / "outputs" / METHOD / "p.png").equal(images["face"])


def test_a_compare_json_from_before_the_paste_mask_was_recorded_is_refused(faces_site: Path, tmp_path: Path):
    """Such a folder was pasted with the whole crop; today's default is the face mask."""
    out = tmp_path / "old"
    assert _compare(faces_site, out).exit_code == 0
    doc = json.loads((out / "compare.json").read_text())
    del doc["methods"][METHOD]["faces"]["paste_mask"]
    (out / "compare.json").write_text(json.dumps(doc))
    r = _compare(faces_site, out)
    assert r.exit_code == 2, r.output
    line = r.stderr.strip()
    assert f"holds the results of another configuration ({METHOD}.paste mask: square → face)" in line, line
    assert "—" not in line


def test_paste_mask_needs_faces_detect(hr_folder: Path, tmp_path: Path):
    r = _compare(hr_folder, tmp_path / "cmp", "--paste-mask", "face", methods="bicubic", faces=False)
    assert r.exit_code == 2, r.output
    assert r.stderr.strip().splitlines()[-1] == "Error: --paste-mask only applies with --faces detect", r.output
    assert not (tmp_path / "cmp").exists()
    r = _compare(hr_folder, tmp_path / "cmp", "--paste-mask", "round", methods="bicubic", faces=False)
    assert r.exit_code == 2 and "'round' is not one of 'square', 'face'" in r.output, r.output

    from restorekit.harness.runner import CompareConfig, CompareUsageError, plan

    with pytest.raises(CompareUsageError, match=r"^--paste-mask: unknown paste mask 'round' \(known: square, face\)$"):
        plan(CompareConfig(methods=["bicubic"], scale=2, data=str(hr_folder), out=tmp_path / "x", faces="detect",
                           paste_mask="round"))


def test_differences_read_a_missing_paste_mask_as_the_square():
    from restorekit.harness.outdir import differences

    inputs = {"data": "/d", "scale": 2, "source": "degradation:bicubic:2", "core_code": "c"}

    def cfg(faces):
        return {"inputs": inputs, "methods": {"m": {"options": {}, **({"faces": faces} if faces else {})}}}

    before = cfg({"mode": "detect", "detector": None})
    assert differences(before, cfg({"mode": "detect", "detector": None, "paste_mask": "face"})) == \
        ["m.paste mask: square → face"]
    assert differences(before, cfg({"mode": "detect", "detector": None, "paste_mask": "square"})) == []
    now = cfg({"mode": "detect", "detector": None, "paste_mask": "square"})
    assert differences(cfg({"mode": "detect", "detector": None, "paste_mask": "face"}), now) == \
        ["m.paste mask: face → square"]
    # A method run on aligned faces before: no mask at all (a missing key is a difference, as ever).
    assert differences(cfg(None), now) == ["m.faces.mode: — → detect", "m.paste mask: — → square"]
    assert differences(now, cfg(None)) == ["m.faces.mode: detect → —", "m.paste mask: square → —"]


def test_the_compare_lock_goes_at_the_end_and_a_late_opener_locks_the_new_file(tmp_path: Path, monkeypatch):
    from restorekit.folder_lock import holder
    from restorekit.harness.outdir import LOCK_FILE, exclusive
    from restorekit.harness.runner import CompareUsageError

    out = tmp_path / "cmp"
    with exclusive(out):
        assert holder(out, LOCK_FILE) == (os.getpid(), "compare")
        with pytest.raises(CompareUsageError, match="another compare is writing into this folder"):
            with exclusive(out):
                pass
    assert not (out / LOCK_FILE).exists()

    # A run that opened the lock file just as its holder removed it and ended: its lock on the
    # removed file would exclude nobody; it takes the lock again on the file there now.
    (out / LOCK_FILE).write_text("")
    real_flock, calls = fcntl.flock, []

    def flock(fd, op):
        if not calls:  # the holder removes the file between this open and this lock
            os.unlink(out / LOCK_FILE)
        calls.append(os.fstat(fd).st_nlink)  # (0: a removed file)
        return real_flock(fd, op)

    monkeypatch.setattr(fcntl, "flock", flock)
    with exclusive(out):
        assert calls == [0, 1]  # the removed file, then the one there now
        fd = os.open(out / LOCK_FILE, os.O_RDONLY)
        try:  # held: another process's lock on this very file is refused
            with pytest.raises(BlockingIOError):
                real_flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        finally:
            os.close(fd)
    assert not (out / LOCK_FILE).exists()


def test_pictures_of_the_users_in_a_linked_outputs_folder_are_not_an_earlier_compares(hr_folder: Path,
                                                                                      tmp_path: Path):
    """outputs/<m> -> ~/pictures (the user's own link and files): a new --out was refused as holding
    "outputs of an earlier restorekit"; outputs named after this run's images still are."""
    pictures = tmp_path / "pictures"
    pictures.mkdir()
    (pictures / "holiday.png").write_bytes(b"my picture")
    (pictures / "notes.txt").write_text("mine")
    out = tmp_path / "cmp"
    (out / "outputs").mkdir(parents=True)
    (out / "outputs" / "bicubic").symlink_to(pictures)
    r = _compare(hr_folder, out, methods="bicubic", faces=False)
    assert r.exit_code == 0, r.output
    assert (pictures / "holiday.png").read_bytes() == b"my picture" and (pictures / "img0.png").is_file()

    # An earlier restorekit's output of an image of this run (no record of it): still refused.
    out2 = tmp_path / "cmp2"
    (out2 / "outputs" / "bicubic").mkdir(parents=True)
    (out2 / "outputs" / "bicubic" / "img2.png").write_bytes(b"old output")
    r = _compare(hr_folder, out2, methods="bicubic", faces=False)
    assert r.exit_code == 2 and "earlier restorekit's compare wrote (outputs of bicubic)" in r.stderr, r.output


def test_has_outputs_counts_only_what_compare_writes(tmp_path: Path):
    from restorekit.harness.outdir import has_outputs
    from restorekit.harness.store import Record, ResultStore

    folder = tmp_path / "outputs" / "m"
    folder.mkdir(parents=True)
    stems = {"img0", "Photo"}
    for name in ("holiday.png", "img0.jpg", ".img0.png.abc123de.part", "img1_s3.png", "img0_sx.png"):
        (folder / name).write_bytes(b"x")
    (folder / "img0.png").mkdir()  # a folder is no output
    assert not has_outputs(tmp_path, "m", stems)
    assert has_outputs(tmp_path, "m")  # without the stems: any PNG (holiday.png)
    for name in ("img0_s12.png", "PHOTO.PNG"):  # a seed's output; the name a case-insensitive disk matches
        (folder / name).write_bytes(b"x")
        assert has_outputs(tmp_path, "m", stems), name
        (folder / name).unlink()
    # An output the method's result store records counts whatever the images of this run.
    store = ResultStore(tmp_path)
    store.append(Record("m", "img1", 3, "s" * 16, "i" * 16, "ok", output="outputs/m/img1_s3.png",
                        output_sha256="0" * 64))
    store.close()
    assert has_outputs(tmp_path, "m", stems)


def test_the_detector_is_recorded_resolved_and_refused_without_detect(faces_site: Path, tmp_path: Path) -> None:
    """Naming the default detector is no change of settings (it was recorded as null); --detector
    without --faces detect is a usage error, as in run."""
    from restorekit.faces.detectors import DEFAULT_DETECTOR
    from restorekit.harness.runner import CompareConfig, CompareUsageError, plan

    cfg = dict(methods=[METHOD], scale=2, data=str(faces_site), out=tmp_path / "o", device="cpu")
    with pytest.raises(CompareUsageError, match="--detector only applies with --faces detect"):
        plan(CompareConfig(**cfg, detector="one_cm3p"))
    default, named = (plan(CompareConfig(**cfg, faces="detect", detector=d)).methods[0] for d in (None, DEFAULT_DETECTOR))
    assert default.settings["faces"]["detector"] == DEFAULT_DETECTOR and default.settings_hash == named.settings_hash
