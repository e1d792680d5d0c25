"""``compare --fresh`` removes only the files compare wrote in its folders, never the user's beside them.

A folder compare writes in (``outputs/<method>/``, ``inputs/<key>/``, ``results/parts/<method>/``)
may be a symbolic link of the user's own (``outputs/bicubic -> ~/photos/restored``), followed and
kept. ``--fresh`` had emptied the folder such a link points at, whatever else it held: the user's
pictures went with compare's outputs. Now it removes the outputs the method's result store records,
the LR files an LR folder's manifest lists (and the manifest), the store's part files and compare's
temp files; anything else stays, with one line on stderr per folder, and the run goes on.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from click.testing import CliRunner
from PIL import Image

from restorekit.cli import build_cli
from restorekit.testing.data import smooth_image

if not hasattr(os, "symlink") or not hasattr(os, "geteuid"):
    pytest.skip("needs symbolic links and user ids (POSIX)", allow_module_level=True)

TEMP = ".img0.png.abcd1234.part"  # the shape of compare's temp files (restorekit.images.is_temp_name)


def images(folder: Path, n: int, seed: int = 0) -> Path:
    """``n`` tiny 16×16 PNGs, ``img0.png``…"""
    folder.mkdir(parents=True)
    for i in range(n):
        Image.fromarray(smooth_image(16, 16, seed + i)).save(folder / f"img{i}.png")
    return folder


def compare(data: Path, out: Path, *extra: object):
    r = CliRunner().invoke(build_cli(), [str(a) for a in (
        "compare", "--methods", "bicubic", "--scale", 4, "--data", data, "--out", out, "--metrics", "psnr_rgb",
        "--device", "cpu", "-q", *extra)], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    return r


def move_behind_link(folder: Path, target: Path) -> Path:
    """``folder`` moved to ``target`` and replaced by a link to it (the user's own: made by this process)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    folder.rename(target)
    folder.symlink_to(target, target_is_directory=True)
    return target


def user_files(folder: Path) -> dict[str, bytes]:
    """The user's files put in ``folder`` (a file, files named as compare names its, a subfolder)."""
    mine = {"notes.txt": b"my notes\n", "holiday.png": b"not compare's\x00", "img7_s3.png": b"mine too",
            "album/img0.png": b"a picture of mine"}
    for rel, data in mine.items():
        (folder / rel).parent.mkdir(exist_ok=True)
        (folder / rel).write_bytes(data)
    return mine


def files_below(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def kept_lines(stderr: str) -> list[str]:
    return [ln for ln in stderr.splitlines() if "--fresh kept" in ln]


def test_fresh_keeps_the_users_files_in_a_linked_outputs_folder(tmp_path):
    out = tmp_path / "out"
    compare(images(tmp_path / "hr", 3), out)
    link = out / "outputs" / "bicubic"
    target = move_behind_link(link, tmp_path / "photos" / "restored")
    old = {p.name: p.read_bytes() for p in target.iterdir()}
    assert sorted(old) == ["img0.png", "img1.png", "img2.png"]
    mine = user_files(target)
    (target / TEMP).write_bytes(b"cut short")
    # Another configuration (other images, two of them): compare's three outputs go, the user's stay.
    r = compare(images(tmp_path / "other", 2, seed=50), out, "--fresh")
    assert link.is_symlink() and link.resolve() == target.resolve()
    assert {k: v for k, v in files_below(target).items() if k in mine} == mine
    assert sorted(files_below(target)) == sorted([*mine, "img0.png", "img1.png"])  # img2 and the temp file gone
    assert all((target / n).read_bytes() != old[n] for n in ("img0.png", "img1.png"))  # made again
    doc = json.loads((out / "results.json").read_text())
    assert len(doc["images"]) == 2 and not any(i["reused"] for i in doc["images"])
    assert kept_lines(r.stderr) == [f"warning: --fresh kept 3 files and 1 folder in {link} (-> {target.resolve()}) "
                                    "that compare did not write"]


def test_fresh_without_a_store_keeps_every_output_it_cannot_tell_from_the_users(tmp_path):
    """No result store (removed by hand): every PNG is named as compare names an output, so none
    can be told from a picture of the user's; all are kept, said, and the new run's replace theirs."""
    out = tmp_path / "out"
    hr = images(tmp_path / "hr", 3)
    compare(hr, out)
    link = out / "outputs" / "bicubic"
    target = move_behind_link(link, tmp_path / "photos")
    (out / "results" / "bicubic.jsonl").unlink()
    old2 = (target / "img2.png").read_bytes()
    r = compare(hr, out, "--scale", 2, "--fresh")
    assert link.is_symlink() and sorted(p.name for p in target.iterdir()) == ["img0.png", "img1.png", "img2.png"]
    assert (target / "img2.png").read_bytes() != old2  # the ×2 output replaced the ×4 one
    assert kept_lines(r.stderr) == [f"warning: --fresh kept 3 files in {link} (-> {target.resolve()}) "
                                    "that compare did not write"]


def test_fresh_keeps_a_stray_file_in_a_linked_lr_folder(tmp_path):
    out = tmp_path / "out"
    hr = images(tmp_path / "hr", 3)
    compare(hr, out)
    [lr] = list((out / "inputs").iterdir())
    target = move_behind_link(lr, tmp_path / "bigdisk" / "lr")
    assert sorted(p.name for p in target.iterdir()) == ["img0.png", "img1.png", "img2.png", "manifest.json"]
    (target / "stray.png").write_bytes(b"the user's")
    (target / "sub").mkdir()
    (target / "sub" / "img0.png").write_bytes(b"also the user's")
    r = compare(hr, out, "--scale", 2, "--fresh")  # another LR folder: the ×4 one's files all go
    assert lr.is_symlink() and lr.resolve() == target.resolve()
    assert files_below(target) == {"stray.png": b"the user's", "sub/img0.png": b"also the user's"}
    [new] = [d for d in (out / "inputs").iterdir() if d.name != lr.name]
    assert len(json.loads((new / "manifest.json").read_text())["images"]) == 3
    assert kept_lines(r.stderr) == [f"warning: --fresh kept 1 file and 1 folder in {lr} (-> {target.resolve()}) "
                                    "that compare did not write"]


def test_fresh_keeps_the_users_file_beside_a_stores_parts(tmp_path):
    """``results/parts/<method>/`` (one part per rank of a ``torchrun`` job) linked: the part files go."""
    out = tmp_path / "out"
    hr = images(tmp_path / "hr", 2)
    compare(hr, out)
    parts = tmp_path / "scratch" / "parts"
    parts.mkdir(parents=True)
    line = (out / "results" / "bicubic.jsonl").read_text().splitlines()[0]
    (parts / "rank1.jsonl").write_text(line + "\n")
    (parts / "notes.txt").write_text("mine")
    (out / "results" / "parts").mkdir()
    (out / "results" / "parts" / "bicubic").symlink_to(parts, target_is_directory=True)
    r = compare(hr, out, "--scale", 2, "--fresh")
    assert (out / "results" / "parts" / "bicubic").is_symlink()
    assert files_below(parts) == {"notes.txt": b"mine"}
    assert len(kept_lines(r.stderr)) == 1 and "1 file in" in kept_lines(r.stderr)[0]


def test_fresh_in_real_folders_removes_compares_files_and_folders_left_empty_only(tmp_path):
    out = tmp_path / "out"
    hr = images(tmp_path / "hr", 2)
    compare(hr, out)
    [lr] = list((out / "inputs").iterdir())
    outputs = out / "outputs" / "bicubic"
    (outputs / "notes.txt").write_text("mine")
    r = compare(hr, out, "--scale", 2, "--fresh")
    assert not lr.exists()  # only compare's files: the folder went
    assert sorted(p.name for p in outputs.iterdir()) == ["img0.png", "img1.png", "notes.txt"]
    assert (outputs / "notes.txt").read_text() == "mine"
    assert kept_lines(r.stderr) == [f"warning: --fresh kept 1 file in {outputs} that compare did not write"]
