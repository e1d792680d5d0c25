"""Batch I/O of `run` and `degrade`: a path the file system refuses, an output folder that is the
input folder, and folder listings with links that lead nowhere — each a one-line failure of its own
input (exit 1) or a usage error before any work (exit 2), never a stopped run."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from click.testing import CliRunner
from PIL import Image

from restorekit.cli import build_cli

RUN = ["run", "bicubic", "--scale", "2"]
DEGRADE = ["degrade", "--spec", "bicubic:2"]


def invoke(*args: str):
    return CliRunner().invoke(build_cli(), list(args), catch_exceptions=False)


def image(path: Path, colour=(90, 120, 150), size=(8, 8)) -> Path:
    Image.new("RGB", size, colour).save(path, "JPEG" if path.suffix == ".jpg" else "PNG")
    return path


def error_lines(stderr: str) -> list[str]:
    return [ln for ln in stderr.splitlines() if ln.startswith("error:")]


# -- 1. an output name longer than the file system takes: that input's failure --------------------------

@pytest.mark.parametrize("command", [RUN, DEGRADE])
def test_an_output_name_too_long_fails_that_input_only(tmp_path, command):
    """'A'*251 .png is a 255-byte name; as .webp it would be 256, over the 255 a name may have. It is
    one line naming it; ok.png is written; exit 1."""
    src = tmp_path / "longn"
    src.mkdir()
    long_png = image(src / ("A" * 251 + ".png"))
    image(src / "ok.png")
    r = invoke(*command, "--ext", "webp", "--input", str(src), "--output", str(tmp_path / "o"), "--json")
    assert r.exit_code == 1, r.output
    doc = json.loads(r.stdout)
    assert doc["written"] == [str(tmp_path / "o" / "ok.webp")]
    assert [f["path"] for f in doc["failed"]] == [str(long_png)]
    for f in doc["failed"]:
        assert f["error"].startswith(f["path"] + ": cannot write ") and "File name too long" in f["error"]
        assert "\n" not in f["error"]
    assert len(error_lines(r.stderr)) == 1
    assert sorted(p.name for p in (tmp_path / "o").iterdir()) == ["ok.webp"]  # nothing half-written


@pytest.mark.parametrize("command", [RUN, DEGRADE])
def test_long_names_that_collide_get_hashed_names_that_fit(tmp_path, command):
    """'A'*248 .png and .jpg collide ignoring the extension, so they are named with it: 252 + '.png'
    would be 256 bytes; the qualified name keeps its end after a hash of the whole name instead."""
    src = tmp_path / "longn"
    src.mkdir()
    image(src / ("A" * 248 + ".png")), image(src / ("A" * 248 + ".jpg"))
    image(src / "ok.png")
    r = invoke(*command, "--input", str(src), "--output", str(tmp_path / "o"), "--json")
    assert r.exit_code == 0, r.output
    names = sorted(Path(p).name for p in json.loads(r.stdout)["written"])
    assert len(names) == 3 and names[-1] == "ok.png"
    assert all(len(n.encode()) <= 255 for n in names)
    tails = sorted(n.split("__", 1)[1] for n in names[:2])  # the end of each qualified name, then .png
    assert [t.removesuffix(".png")[-8:] for t in tails] == ["AAAA.jpg", "AAAA.png"]
    assert all(("A" * 248 + t[-8:-4]).endswith(t[:-4]) for t in tails)


def test_sample_names_too_long_fail_that_input_only(tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    long = image(src / ("B" * 251 + ".png"))  # B…B.png fits; B…B_s0.png does not
    image(src / "ok.png")
    r = invoke(*RUN, "--n-samples", "2", "--input", str(src), "--output", str(tmp_path / "o"), "--json")
    assert r.exit_code == 1, r.output
    doc = json.loads(r.stdout)
    assert [f["path"] for f in doc["failed"]] == [str(long)]
    assert sorted(Path(p).name for p in doc["written"]) == ["ok_s0.png", "ok_s1.png"]


# -- 4. --output is the folder the inputs are listed from --------------------------------------------------

@pytest.mark.parametrize("command", [RUN, DEGRADE])
def test_the_input_folder_as_output_is_refused_before_any_work(tmp_path, command):
    """Otherwise each re-run takes the last outputs for inputs: face.jpg → face.png, then
    face.jpg.png and face.png.png, and so on."""
    src = tmp_path / "photos"
    src.mkdir()
    image(src / "face.jpg")
    for out in (str(src), str(src) + os.sep, str(src / ".." / "photos")):
        r = invoke(*command, "--input", str(src), "--output", out)
        assert r.exit_code == 2, r.output
        assert "the folder the inputs are listed from" in r.stderr and "write to another folder" in r.stderr
    assert sorted(p.name for p in src.iterdir()) == ["face.jpg"]


@pytest.mark.parametrize("command", [RUN, DEGRADE])
def test_a_glob_over_the_output_folder_that_could_match_an_output_and_a_link_to_it_are_refused(tmp_path, command):
    src = tmp_path / "photos"
    src.mkdir()
    image(src / "face.jpg")
    (tmp_path / "link").symlink_to(src, target_is_directory=True)
    for pattern, ext in (("*.jpg", "jpg"), ("*", "png"), ("*.[jp][pn]g", "png"), ("f*", "webp")):
        r = invoke(*command, "--input", str(src / pattern), "--output", str(src), "--ext", ext)
        assert r.exit_code == 2 and "listed from" in r.stderr, (pattern, ext, r.output)
    r = invoke(*command, "--input", str(src), "--output", str(tmp_path / "link"))
    assert r.exit_code == 2 and "listed from" in r.stderr, r.output
    assert sorted(p.name for p in src.iterdir()) == ["face.jpg"]


@pytest.mark.parametrize("command", [RUN, DEGRADE])
def test_a_glob_whose_pattern_no_output_can_match_may_write_into_its_folder(tmp_path, command):
    """``'photos/*.jpg' --output photos``: the .png outputs never match ``*.jpg``, so a re-run
    lists the same inputs."""
    src = tmp_path / "photos"
    src.mkdir()
    image(src / "face.jpg")
    for _ in range(2):
        r = invoke(*command, "--input", str(src / "*.jpg"), "--output", str(src))
        assert r.exit_code == 0, r.output
    assert sorted(p.name for p in src.iterdir()) == ["face.jpg", "face.png"]
    r = invoke(*command, "--input", str(src / "*.jpg"), "--output", str(src), "--ext", "webp")
    assert r.exit_code == 0, r.output
    assert sorted(p.name for p in src.iterdir()) == ["face.jpg", "face.png", "face.webp"]


def test_named_inputs_may_be_written_beside_themselves(tmp_path):
    """A single file or a list file names its inputs: a re-run does not pick up the outputs."""
    src = tmp_path / "photos"
    src.mkdir()
    image(src / "face.jpg")
    for _ in range(2):
        r = invoke(*RUN, "--input", str(src / "face.jpg"), "--output", str(src))
        assert r.exit_code == 0, r.output
    assert sorted(p.name for p in src.iterdir()) == ["face.jpg", "face.png"]


def test_an_input_is_never_overwritten_nor_taken_for_its_own_output(hr_folder):
    """An output name that is an input file (a list naming the output folder's files) is that
    input's failure, --overwrite or not; the other inputs are written."""
    Image.open(hr_folder / "img3.png").save(hr_folder / "photo.jpg")
    listing = hr_folder.parent / "list.txt"
    listing.write_text("\n".join(str(p) for p in sorted(hr_folder.iterdir())) + "\n")
    before = (hr_folder / "img0.png").read_bytes()
    for extra in ([], ["--overwrite"]):
        r = invoke(*RUN, "--input", f"@{listing}", "--output", str(hr_folder), "--json", *extra)
        assert r.exit_code == 1, r.output
        doc = json.loads(r.stdout)
        assert sorted(Path(f["path"]).name for f in doc["failed"]) == [f"img{i}.png" for i in range(4)]
        assert all("refusing to overwrite an input" in f["error"] for f in doc["failed"])
    assert (hr_folder / "img0.png").read_bytes() == before and (hr_folder / "photo.png").is_file()


# -- 9. links that lead nowhere, in a folder or a glob --------------------------------------------------

@pytest.mark.parametrize("command", [RUN, DEGRADE])
def test_dangling_links_and_loops_that_look_like_images_fail_with_their_own_line(tmp_path, command):
    src = tmp_path / "in"
    src.mkdir()
    image(src / "ok.png")
    (src / "gone.png").symlink_to(tmp_path / "nowhere.png")
    (src / "loop.jpg").symlink_to(src / "loop.jpg")
    (src / "sub.png").mkdir()  # a folder, whatever its name: not an input
    (src / ".hidden.png").symlink_to(tmp_path / "nowhere.png")  # hidden: not an input
    (src / "notes").symlink_to(tmp_path / "nowhere")  # no image extension: not an input
    r = invoke(*command, "--input", str(src), "--output", str(tmp_path / "o"), "--json")
    assert r.exit_code == 1, r.output
    doc = json.loads(r.stdout)
    errors = {Path(f["path"]).name: f["error"] for f in doc["failed"]}
    assert set(errors) == {"gone.png", "loop.jpg"}
    assert errors["gone.png"] == f"{src / 'gone.png'}: a broken symbolic link (its target {tmp_path / 'nowhere.png'} does not exist)"
    assert errors["loop.jpg"].startswith(f"{src / 'loop.jpg'}: a symbolic link loop")
    assert [Path(p).name for p in doc["written"]] == ["ok.png"]
    assert len(error_lines(r.stderr)) == 2

    r = invoke(*command, "--input", str(src / "*.png"), "--output", str(tmp_path / "g"), "--json")
    assert r.exit_code == 1 and [Path(f["path"]).name for f in json.loads(r.stdout)["failed"]] == ["gone.png"]
