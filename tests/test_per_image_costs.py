"""What `run`, `degrade` and `compare` ask of the file system per image stays what the work needs:
one stat per image read and per folder entry listed, no folder made again for every file written,
no /proc file opened again for every file or memory reading, decoded inputs let go once no later
method reads them, and temp files named by their writer, so that a killed writer's are swept at once."""

from __future__ import annotations

import os
import re
import sys
import time
import warnings
from pathlib import Path

import pytest
import torch
from PIL import Image

import restorekit.harness.inputs as inputs_mod
import restorekit.harness.report_html as report_html
from restorekit import images
from restorekit.errors import FileSystemError, ImageError
from restorekit.harness import runner
from restorekit.images import is_temp_name, list_inputs, read_image, save_image, sweep_temp_files, write_via_temp
from restorekit.memory import process_id, status_fields

linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc is Linux's")
needs_fork = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")


def tiny_png(path: Path, value: int = 90, side: int = 8) -> Path:
    Image.new("RGB", (side, side), (value, 40, 200)).save(path)
    return path


def fork_and_wait(child) -> int:  # type: ignore[no-untyped-def]
    """Run ``child()`` in a forked process (its return value the exit status); the child's pid."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # (fork with threads running)
        pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        code = 1
        try:
            code = child()
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    return pid


# --- temp files --------------------------------------------------------------------------------


@needs_fork
def test_a_killed_writers_temp_file_names_it_and_is_swept_at_once(tmp_path):
    """A temp file carried no process id, so a rerun within a minute of a killed run could not tell
    it from a live writer's and left it until a later sweep."""
    out = tmp_path / "out"
    out.mkdir()

    def killed_mid_write() -> int:
        def write(f):  # type: ignore[no-untyped-def]
            f.write(b"half an image")
            f.flush()
            os._exit(0)  # killed here: nothing cleans up

        write_via_temp(out / "face.png", write)
        return 1

    pid = fork_and_wait(killed_mid_write)
    (left,) = out.iterdir()
    assert is_temp_name(left.name) and f".{pid}-" in left.name, left.name
    assert sweep_temp_files([out]) == 1  # a second old: its writer is gone
    assert list(out.iterdir()) == []


def test_a_live_writers_temp_file_is_never_swept(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    tag = images._host_tag()
    live = [out / f".a.png.{os.getppid()}-{tag}-0123abcd.part",  # another process, running
            out / f".b.png.{process_id()}-{tag}-4567cdef.part"]  # this one (another thread's write)
    foreign = out / f".c.png.{os.getppid()}-{'0' * 8 if tag != '0' * 8 else '1' * 8}-89ab0123.part"
    old_style = out / ".d.png.a8b1k2z_.part"  # an earlier version's name: by age, as before
    for p in (*live, foreign, old_style):
        p.write_bytes(b"x")
        os.utime(p, (time.time() - 3600, time.time() - 3600))
    young_foreign = out / f".e.png.1-{'0' * 8 if tag != '0' * 8 else '1' * 8}-cdef4567.part"
    young_foreign.write_bytes(b"x")
    assert all(is_temp_name(p.name) for p in (*live, foreign, old_style, young_foreign))
    assert sweep_temp_files([out]) == 2  # another host's and the old-style one, both an hour old
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in (*live, young_foreign))


# --- reads and writes ----------------------------------------------------------------------------


def counting(monkeypatch, module, name: str, paths: set[str]) -> list[str]:  # type: ignore[no-untyped-def]
    """Count calls of ``module.name`` whose first argument is one of ``paths``."""
    calls: list[str] = []
    real = getattr(module, name)

    def wrapped(p, *a, **kw):  # type: ignore[no-untyped-def]
        if str(p) in paths:
            calls.append(str(p))
        return real(p, *a, **kw)

    monkeypatch.setattr(module, name, wrapped)
    return calls


def test_reading_an_image_stats_its_file_once(tmp_path, monkeypatch):
    """_check_file asked exists(), is_dir() and stat() of every file read: three stat calls."""
    src = tiny_png(tmp_path / "a.png")
    stats = counting(monkeypatch, os, "stat", {str(src)})
    lstats = counting(monkeypatch, os, "lstat", {str(src)})
    assert read_image(src).shape == (1, 3, 8, 8)
    images.probe_size(src)
    assert len(stats) + len(lstats) == 2, (stats, lstats)  # one each (was 6)


def test_what_is_not_a_readable_file_is_still_said_as_before(tmp_path):
    (tmp_path / "folder.png").mkdir()
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "dangling.png").symlink_to(tmp_path / "nowhere.png")
    for name, said in (("folder.png", "is a folder, not an image"), ("empty.png", "empty file (0 bytes)"),
                       ("missing.png", "no such file"), ("dangling.png", "a broken symbolic link")):
        with pytest.raises(ImageError, match=re.escape(said)):
            read_image(tmp_path / name)


def test_a_folder_is_made_once_for_many_writes_and_again_when_removed(tmp_path, monkeypatch):
    """write_via_temp made its folder (mkdir, then a stat) before every file it wrote."""
    made: list[Path] = []
    real = Path.mkdir

    def mkdir(self, *a, **kw):  # type: ignore[no-untyped-def]
        made.append(self)
        return real(self, *a, **kw)

    monkeypatch.setattr(Path, "mkdir", mkdir)
    monkeypatch.setattr(images, "_KNOWN_FOLDERS", set(), raising=False)  # (none known yet)
    out = tmp_path / "a" / "out"
    out.parent.mkdir()
    made.clear()
    img = torch.rand(1, 3, 4, 4)
    for i in range(5):
        save_image(img, out / f"{i}.png")
    assert made == [out], made  # once (was 5)
    for p in out.iterdir():
        p.unlink()
    out.rmdir()  # removed meanwhile: the next write makes it again
    save_image(img, out / "again.png")
    assert (out / "again.png").is_file() and not [p for p in out.iterdir() if p.name.startswith(".")]
    for p in out.iterdir():
        p.unlink()
    out.rmdir()
    out.write_bytes(b"a file where the folder was")  # cannot be made: one line, nothing left behind
    with pytest.raises(FileSystemError, match=re.escape(str(out))):
        save_image(img, out / "x.png")
    assert sorted(p.name for p in out.parent.iterdir()) == ["out"]


@linux_only
def test_the_memory_column_and_file_modes_read_the_status_as_they_go(tmp_path):
    """The memory column's reset and peak, and a written file's mode, come from the process's
    status read at that moment (status_fields: one read of the file, its keys looked for)."""
    img = torch.rand(1, 3, 4, 4)
    for i in range(10):
        save_image(img, tmp_path / f"{i}.png")
        start = runner._cpu_peak_start()
        assert start is not None and start[0] == "hwm"
        peak = runner._cpu_peak_mib(start)
        assert peak is not None and peak >= 0
    old = os.umask(0o077)  # still read now, not remembered: the mode follows a new umask at once
    try:
        save_image(img, tmp_path / "private.png")
    finally:
        os.umask(old)
    assert (tmp_path / "private.png").stat().st_mode & 0o777 == 0o600


@linux_only
@needs_fork
def test_a_forked_child_reads_its_own_status(tmp_path):
    assert status_fields("Pid") == {"Pid": str(os.getpid())}  # (opened in the parent first)

    def child() -> int:
        return 0 if process_id() == os.getpid() and status_fields("Pid") == {"Pid": str(os.getpid())} else 1

    fork_and_wait(child)


# --- listings ----------------------------------------------------------------------------------


def test_listing_a_folder_asks_once_per_entry(tmp_path, monkeypatch):
    """list_inputs asked is_file() twice of every entry and stat() once more for its file key."""
    folder = tmp_path / "in"
    folder.mkdir()
    for i in range(6):
        tiny_png(folder / f"img{i}.png", value=i)
    (folder / "notes.txt").write_text("not an image")
    (folder / "sub.png").mkdir()  # a folder named like an image: left out
    (folder / ".hidden.png").write_bytes(b"x")
    (folder / "dangling.png").symlink_to(folder / "gone.png")  # listed, to fail with its own line
    (folder / "same.png").symlink_to(folder / "img0.png")  # the same file: used once

    asked: list[str] = []
    for name in ("stat", "lstat"):
        real = getattr(os, name)

        def spy(p, *a, _real=real, **kw):  # type: ignore[no-untyped-def]
            asked.append(str(p))
            return _real(p, *a, **kw)

        monkeypatch.setattr(os, name, spy)
    real_scandir = os.scandir

    class Entry:
        def __init__(self, e: os.DirEntry[str]) -> None:
            self._e, self.name, self.path = e, e.name, e.path

        def __getattr__(self, attr: str):  # type: ignore[no-untyped-def]
            return getattr(self._e, attr)

        def stat(self, **kw):  # type: ignore[no-untyped-def]
            asked.append(self.path)
            return self._e.stat(**kw)

    class Listing:
        def __init__(self, p) -> None:  # type: ignore[no-untyped-def]
            self._it = real_scandir(p)

        def __enter__(self):  # type: ignore[no-untyped-def]
            return self

        def __exit__(self, *exc: object) -> None:
            self._it.close()

        def __iter__(self):  # type: ignore[no-untyped-def]
            return (Entry(e) for e in self._it)

    monkeypatch.setattr(os, "scandir", Listing)
    items = list_inputs(folder)
    monkeypatch.undo()
    assert [it.path.name for it in items] == ["dangling.png", *(f"img{i}.png" for i in range(6))]
    per_image = [a for a in asked if Path(a).name.startswith("img")]
    assert len(per_image) == 6, asked  # one each (was 18)


def test_a_glob_asks_once_per_match(tmp_path, monkeypatch):
    for i in range(4):
        tiny_png(tmp_path / f"img{i}.png", value=i)
    calls = counting(monkeypatch, os, "stat", {str(tmp_path / f"img{i}.png") for i in range(4)})
    items = list_inputs(str(tmp_path / "img*.png"))
    assert [it.stem for it in items] == [f"img{i}" for i in range(4)]
    assert len(calls) == 4, calls  # one each (was 8: is_file, then the file key)


# --- compare's decoded inputs ------------------------------------------------------------------


def test_compare_lets_go_of_decoded_inputs_no_later_method_reads(tmp_path, monkeypatch):
    """The cache of decoded (LR, HR) pairs (up to 1 GiB) was held until the run ended. Each pair now
    leaves after its last method; those the report's image grid shows stay, and no file is read
    more often than before (none during the run, none for the report)."""
    from restorekit.harness.reports import write_all
    from restorekit.harness.report_summary import summarize_result
    from restorekit.plugins import registry

    if "bicubic" not in registry().names("methods"):
        pytest.skip("bicubic comes with restorekit-baselines")
    hr = tmp_path / "hr"
    hr.mkdir()
    for i in range(5):
        tiny_png(hr / f"{i}.png", value=40 * i)
    monkeypatch.setattr(report_html, "HTML_MAX_IMAGES", 2)
    reads: list[str] = []
    real_read = inputs_mod.read_image

    def read(path, **kw):  # type: ignore[no-untyped-def]
        reads.append(Path(path).name)
        return real_read(path, **kw)

    monkeypatch.setattr(inputs_mod, "read_image", read)
    held: list[int] = []  # pairs cached when each unit of the second method begins
    real_run = runner._run

    def run(p, mp, pair, seed, inputs, *a, **kw):  # type: ignore[no-untyped-def]
        if mp.name == "bicubic@b":
            held.append(len(inputs._cache))
        return real_run(p, mp, pair, seed, inputs, *a, **kw)

    monkeypatch.setattr(runner, "_run", run)
    cfg = runner.CompareConfig(methods=["bicubic", "bicubic@b"], scale=2, data=str(hr), out=tmp_path / "out",
                               metrics=["psnr_rgb"], device="cpu")
    res = runner.execute(runner.plan(cfg))
    assert [r.status for r in res.records] == ["ok"] * 10
    assert held == [5, 5, 5, 4, 3]  # each pair let go after the second method; the first two kept
    assert sorted(res.inputs._cache) == ["0", "1"]
    assert res.inputs._cached_bytes == 2 * (4 * 4 + 8 * 8) * 3 * 4
    write_all(summarize_result(res), cfg.out)
    assert reads == []  # every read served from memory: the LR made, then the report's two
