"""What is no regular file is said as what it is, never read: a FIFO or a device given as an input
(or a link to one) was called an empty file, and in a folder it vanished from the listing; a folder
where an output goes was called a finished output without a record before its write failed."""

from __future__ import annotations

import os
import re
import socket
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from restorekit import images
from restorekit.cli import build_cli
from restorekit.errors import ImageError
from restorekit.images import list_inputs, probe_size, read_image, save_image
from restorekit.run_record import reading_notes

posix_only = pytest.mark.skipif(not hasattr(os, "mkfifo") or not os.path.exists("/dev/zero"),
                                reason="needs FIFOs and /dev/zero")


def invoke(*args: str):  # type: ignore[no-untyped-def]
    return CliRunner().invoke(build_cli(), list(args), catch_exceptions=False)


def png(path: Path, seed: int = 0) -> Path:
    save_image(torch.rand(1, 3, 8, 8, generator=torch.Generator().manual_seed(seed)), path)
    return path


def special_folder(folder: Path) -> Path:
    """A folder of one image and what is no regular file: a FIFO and links to two devices, named
    like images, and a FIFO and a folder that are not."""
    folder.mkdir()
    png(folder / "ok.png")
    os.mkfifo(folder / "fifo.png")
    (folder / "zero.png").symlink_to("/dev/zero")
    (folder / "random.jpg").symlink_to("/dev/urandom")
    os.mkfifo(folder / "pipe")  # no image extension: not listed, as any other such entry
    (folder / "sub.png").mkdir()  # a folder named like an image: left out, as before
    return folder


# --- one input ---------------------------------------------------------------------------------


@posix_only
def test_a_fifo_or_device_input_is_said_as_such_and_never_opened(tmp_path, monkeypatch):
    os.mkfifo(tmp_path / "fifo.png")
    (tmp_path / "zero.png").symlink_to("/dev/zero")
    (tmp_path / "random.jpg").symlink_to("/dev/urandom")
    opened: list[str] = []
    real_open = open

    def spy(p, *a, **kw):  # type: ignore[no-untyped-def]
        opened.append(str(p))
        return real_open(p, *a, **kw)

    monkeypatch.setattr(images, "open", spy, raising=False)  # (the module's reads; a FIFO's open would wait)
    said = {"fifo.png": "is a FIFO (named pipe), not a regular file",
            "zero.png": "is a symbolic link to /dev/zero, a character device, not a regular file",
            "random.jpg": "is a symbolic link to /dev/urandom, a character device, not a regular file"}
    for name, problem in said.items():
        for read in (read_image, probe_size):
            with pytest.raises(ImageError) as info:
                read(tmp_path / name)
            assert str(info.value) == f"{tmp_path / name}: {problem}"  # (was "empty file (0 bytes)")
    assert opened == []


@pytest.mark.skipif(not hasattr(socket, "AF_UNIX"), reason="needs Unix sockets")
def test_a_socket_input_is_said_as_one(tmp_path):
    path = tmp_path / "s.png"
    if len(os.fsencode(path)) >= 100:  # (a socket's path has a short limit)
        pytest.skip("temporary folder too deep for a Unix socket")
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(path))
        with pytest.raises(ImageError, match=re.escape(f"{path}: is a socket, not a regular file")):
            read_image(path)


def test_an_empty_regular_file_is_still_an_empty_file(tmp_path):
    (tmp_path / "empty.png").write_bytes(b"")
    with pytest.raises(ImageError, match=re.escape("empty.png: empty file (0 bytes)")):
        read_image(tmp_path / "empty.png")


# --- listings ----------------------------------------------------------------------------------


@posix_only
def test_a_folder_lists_what_is_named_like_an_image_but_is_no_file_with_one_stat_each(tmp_path, monkeypatch):
    folder = special_folder(tmp_path / "in")
    asked: list[str] = []
    real_stat = os.stat

    def spy(p, *a, **kw):  # type: ignore[no-untyped-def]
        asked.append(os.fspath(p))
        return real_stat(p, *a, **kw)

    monkeypatch.setattr(os, "stat", spy)
    listed = [it.path.name for it in list_inputs(folder)]
    monkeypatch.undo()
    assert listed == ["fifo.png", "ok.png", "random.jpg", "zero.png"]  # then each fails with its own line
    for name in ("ok.png", "fifo.png", "zero.png", "random.jpg"):
        assert str(folder / name) not in asked, asked  # (its one stat is the folder listing's)
    globbed = [it.path.name for it in list_inputs(str(folder / "*"))]
    assert globbed == ["fifo.png", "ok.png", "random.jpg", "zero.png"]


@posix_only
def test_a_folder_of_only_special_files_named_like_images_lists_them(tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    os.mkfifo(folder / "a.png")
    (folder / "notes.txt").write_text("not an image")  # taken only where no name is an image's
    assert [it.path.name for it in list_inputs(folder)] == ["a.png"]


@posix_only
def test_run_over_such_a_folder_fails_each_in_one_line_and_writes_the_rest(tmp_path):
    folder = special_folder(tmp_path / "in")
    out = tmp_path / "out"
    r = invoke("run", "bicubic", "--scale", "2", "--input", str(folder), "--output", str(out))
    assert r.exit_code == 1, r.output
    errors = [ln for ln in r.output.splitlines() if ln.startswith("error: ")]
    assert errors == [f"error: {folder / 'fifo.png'}: is a FIFO (named pipe), not a regular file",
                      f"error: {folder / 'random.jpg'}: is a symbolic link to /dev/urandom, a character device, "
                      "not a regular file",
                      f"error: {folder / 'zero.png'}: is a symbolic link to /dev/zero, a character device, "
                      "not a regular file"]
    assert "1 written, 0 skipped" in r.output and "3 failed" in r.output
    assert sorted(p.name for p in out.iterdir()) == ["ok.png"]


# --- outputs -----------------------------------------------------------------------------------


def test_a_folder_where_an_output_goes_is_no_unrecorded_output(tmp_path):
    (tmp_path / "folder.png").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "plain.png")  # another program's: no record
    (tmp_path / "link.png").symlink_to(tmp_path / "plain.png")  # a link to a file is that file
    unrecorded: list[Path] = []
    read = reading_notes(unrecorded)
    for name in ("folder.png", "missing.png", "plain.png", "link.png"):
        assert read(tmp_path / name) is None
    assert unrecorded == [tmp_path / "plain.png", tmp_path / "link.png"]


def test_run_says_only_the_folder_where_an_output_goes(tmp_path):
    src = tmp_path / "sd"
    src.mkdir()
    png(src / "seed0000.png")
    out = tmp_path / "out"
    (out / "seed0000.png").mkdir(parents=True)
    r = invoke("run", "bicubic", "--scale", "2", "--input", str(src), "--output", str(out))
    assert r.exit_code == 1, r.output
    assert "carry no record" not in r.output and "warning:" not in r.output, r.output
    assert f"error: {out / 'seed0000.png'}: is a folder, where the output goes" in r.output.splitlines()
