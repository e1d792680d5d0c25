"""Storage that fails under a command: a full disk, a read-only or lock-less file system, I/O errors.

Disks are made to fail by patching the lowest call the code makes (a file object's ``write``, a
``fdatasync``, ``flock``), so each case runs anywhere, without root or a mount.
"""

from __future__ import annotations

import errno
import json
import fcntl
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import restorekit.images as images
from restorekit.batch import process_files
from restorekit.errors import FileSystemError, ImageError
from restorekit.images import ImageItem, storage_errno, write_via_temp
from test_weights import home, server, specs  # noqa: F401 (fixtures)

LOCK = ".x.lock"


class Busy(FileSystemError):
    pass


def _disk_with(monkeypatch: pytest.MonkeyPatch, free: int, code: int = errno.ENOSPC) -> None:
    """Every file written through :func:`write_via_temp` from now on takes from ``free`` bytes; a write
    past them fails as the system's would (``code``), after the bytes that fitted went to the file."""
    real = images.write_via_temp
    left = [free]

    class Limited:
        def __init__(self, f):  # type: ignore[no-untyped-def]
            self.f = f

        def write(self, data) -> int:  # type: ignore[no-untyped-def]
            n = min(len(data), left[0])
            if n:
                self.f.write(bytes(data[:n]))
                left[0] -= n
            if n < len(data):
                raise OSError(code, os.strerror(code))
            return n

    def limited(path, write, **kw):  # type: ignore[no-untyped-def]
        return real(path, lambda f: write(Limited(f)), **kw)

    monkeypatch.setattr(images, "write_via_temp", limited)


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def _items(tmp_path: Path, n: int) -> list[ImageItem]:
    src = tmp_path / "in"
    src.mkdir()
    items = []
    for i in range(n):
        p = src / f"im{i}.png"
        images.save_image(torch.full((1, 3, 8, 8), i / 10), p)
        items.append(ImageItem(path=p, stem=p.stem))
    return items


# -- a full disk, a quota, a read-only file system mid-run ----------------------------------------

@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EDQUOT, errno.EROFS])
def test_a_batch_stops_at_the_first_output_the_file_system_refuses(tmp_path, monkeypatch, code):
    items = _items(tmp_path, 5)
    out = tmp_path / "out"
    probe = tmp_path / "probe.png"
    images.save_image(torch.zeros(1, 3, 16, 16), probe, note={"input": "im0.png"})
    one_png = probe.stat().st_size
    _disk_with(monkeypatch, free=2 * one_png + one_png // 2, code=code)  # two outputs and half a third
    restored, said = [], []

    def fn(image, item):  # type: ignore[no-untyped-def]
        restored.append(item.stem)
        return [(item.stem, torch.zeros(1, 3, 16, 16))]

    r = process_files(items, out, fn, max_pixels=10**6, quiet=True, on_error=said.append,
                      note=lambda item, name: {"input": item.path.name})
    # the third write failed; the last two inputs were never read nor restored
    assert restored == ["im0", "im1", "im2"]
    assert [Path(p).name for p in r.written] == ["im0.png", "im1.png"]
    assert [Path(f["path"]).name for f in r.failed] == ["im2.png", "im3.png", "im4.png"]
    assert os.strerror(code) in r.failed[0]["error"] and str(out / "im2.png") in r.failed[0]["error"]
    assert all("not processed" in f["error"] and str(out) in f["error"] for f in r.failed[1:])
    assert r.exit_code == 1
    # one line for the failure, one for the stop (not one per input left)
    assert len(said) == 2 and said[1].startswith("stopped: 2 inputs not processed") and str(out) in said[1]
    assert "run the same command again" in said[1]
    assert _leftovers(out) == []  # no temp file, no partial output
    assert sorted(p.name for p in out.iterdir()) == ["im0.png", "im1.png"]


def test_a_file_error_of_one_output_does_not_stop_the_batch(tmp_path, monkeypatch):
    items = _items(tmp_path, 3)
    out = tmp_path / "out"
    real = images.atomic_write_bytes

    def one_bad(path, data, **kw):  # type: ignore[no-untyped-def]
        if path.name == "im0.png":
            raise images.fs_error(OSError(errno.EACCES, "Permission denied"), path)
        return real(path, data, **kw)

    monkeypatch.setattr(images, "atomic_write_bytes", one_bad)
    r = process_files(items, out, lambda image, item: [(item.stem, image)], max_pixels=10**6, quiet=True)
    assert [Path(p).name for p in r.written] == ["im1.png", "im2.png"]
    assert len(r.failed) == 1 and "Permission denied" in r.failed[0]["error"]


def test_a_write_error_keeps_its_errno_in_its_one_line(tmp_path, monkeypatch):
    _disk_with(monkeypatch, free=10)
    dest = tmp_path / "o.bin"
    with pytest.raises(FileSystemError) as info:
        images.atomic_write_bytes(dest, b"x" * 100)
    assert info.value.errno == errno.ENOSPC and storage_errno(info.value) == errno.ENOSPC
    assert str(info.value) == (f"cannot write {dest}: No space left on device; free some disk space or choose "
                               "another location")
    assert list(tmp_path.iterdir()) == []
    assert storage_errno(ImageError("x: corrupt")) is None


# -- durability: fsync before the rename, the folder after it where asked -------------------------

def _record_syncs(monkeypatch: pytest.MonkeyPatch, fail: int | None = None) -> list[str]:
    monkeypatch.setattr(images, "SYNC_WRITES", True, raising=False)
    events: list[str] = []
    real_fsync, real_replace = os.fsync, os.replace

    def sync(fd: int) -> None:
        kind = "dir" if stat.S_ISDIR(os.fstat(fd).st_mode) else "file"
        if fail is not None and kind == "file":
            raise OSError(fail, os.strerror(fail))
        events.append(f"sync {kind}")
        real_fsync(fd)

    def replace(src, dst, **kw):  # type: ignore[no-untyped-def]
        events.append(f"rename {os.path.basename(dst)}")
        return real_replace(src, dst, **kw)

    monkeypatch.setattr(os, "fsync", sync)
    if hasattr(os, "fdatasync"):
        monkeypatch.setattr(os, "fdatasync", sync)
    monkeypatch.setattr(os, "replace", replace)
    return events


def test_the_bytes_reach_the_disk_before_the_name_does(tmp_path, monkeypatch):
    events = _record_syncs(monkeypatch)
    images.atomic_write_bytes(tmp_path / "a.png", b"data")
    assert events == ["sync file", "rename a.png"]
    assert (tmp_path / "a.png").read_bytes() == b"data"
    events.clear()
    write_via_temp(tmp_path / "ckpt.pt", lambda f: f.write(b"state"), fsync=True)  # checkpoints: the name too
    assert events == ["sync file", "rename ckpt.pt", "sync dir"]


def test_a_full_disk_said_only_by_fsync_leaves_nothing(tmp_path, monkeypatch):
    # (NFS and thinly provisioned disks report a full disk when the data is flushed, not on write)
    (tmp_path / "a.png").write_bytes(b"old")
    _record_syncs(monkeypatch, fail=errno.ENOSPC)
    with pytest.raises(FileSystemError, match="No space left on device") as info:
        images.atomic_write_bytes(tmp_path / "a.png", b"new data")
    assert info.value.errno == errno.ENOSPC
    assert (tmp_path / "a.png").read_bytes() == b"old"  # the old version, whole
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.png"]


def test_a_file_system_that_cannot_sync_is_still_written(tmp_path, monkeypatch):
    _record_syncs(monkeypatch, fail=errno.EINVAL)  # (what some FUSE and network file systems answer)
    images.atomic_write_bytes(tmp_path / "a.png", b"data")
    write_via_temp(tmp_path / "ckpt.pt", lambda f: f.write(b"state"), fsync=True)
    assert (tmp_path / "a.png").read_bytes() == b"data" and (tmp_path / "ckpt.pt").read_bytes() == b"state"


def test_weights_are_on_the_disk_before_their_name_is_in_the_cache(server, specs, tmp_path, monkeypatch):
    from restorekit import weights as W
    from test_weights import ckpt_bytes, spec_for

    base, files = server
    blob = ckpt_bytes(3, 100)
    files.content["/toy.pt"] = blob
    specs["toy"] = spec_for("toy", "toy.pt", data=blob, urls=(f"{base}/toy.pt",))
    src = tmp_path / "mine.pt"
    src.write_bytes(ckpt_bytes(4, 100))
    specs["mine"] = spec_for("mine", "mine.pt", data=src.read_bytes())
    folder = tmp_path / "pack"
    folder.mkdir()
    (folder / "p.pt").write_bytes(ckpt_bytes(5, 100))
    specs["pack"] = spec_for("pack", "p.pt", data=(folder / "p.pt").read_bytes())
    events = _record_syncs(monkeypatch)
    W.pull("toy", quiet=True)  # a download's .part
    W.import_file("mine", src)  # a copy of the user's file
    W.import_archive("pack", folder)  # a copy from a pack
    for name in ("toy.pt", "mine.pt", "p.pt"):
        assert events[events.index(f"rename {name}") - 1] == "sync file", (name, events)


def test_a_full_disk_said_by_fsync_during_a_pull_leaves_nothing(server, specs, monkeypatch):
    from restorekit import weights as W
    from restorekit.errors import CacheError
    from test_weights import ckpt_bytes, spec_for

    base, files = server
    blob = ckpt_bytes(3, 100)
    files.content["/toy.pt"] = blob
    specs["toy"] = spec_for("toy", "toy.pt", data=blob, urls=(f"{base}/toy.pt",))
    _record_syncs(monkeypatch, fail=errno.ENOSPC)
    with pytest.raises(CacheError, match="No space left on device"):
        W.pull("toy", quiet=True)
    assert len(files.log) == 1 and not W.weights_dir("toy").exists()  # not retried; no .part left


# -- file systems without locks (NFS without its lock service, some FUSE file systems) ------------

def _no_flock(monkeypatch: pytest.MonkeyPatch, code: int = errno.ENOLCK) -> None:
    def flock(fd, op):  # type: ignore[no-untyped-def]
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(fcntl, "flock", flock)


@pytest.mark.parametrize("code", [errno.ENOLCK, errno.EOPNOTSUPP])
def test_a_folder_on_a_file_system_without_locks_is_still_held_alone(tmp_path, monkeypatch, code):
    from restorekit.folder_lock import MARKER_SUFFIX, held_alone, holder

    _no_flock(monkeypatch, code)
    folder = tmp_path / "f"
    with held_alone(folder, LOCK, lambda: Busy("busy"), note="run", remove=True):
        assert (folder / (LOCK + MARKER_SUFFIX)).is_file()
        assert holder(folder, LOCK) == (os.getpid(), "run")
        with pytest.raises(Busy):  # a second command meanwhile is refused, as with a lock
            with held_alone(folder, LOCK, lambda: Busy("busy"), remove=True):
                pass
    assert _leftovers(folder) == []  # marker and lock file removed at the end
    with held_alone(folder, LOCK, lambda: Busy("busy")):  # and the folder is free again
        pass


def test_a_marker_its_holder_left_on_this_host_is_taken_over(tmp_path, monkeypatch):
    from restorekit.folder_lock import MARKER_SUFFIX, _marker_text, held_alone

    _no_flock(monkeypatch)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True,
                          check=True)
    pid = int(dead.stdout)
    marker = tmp_path / (LOCK + MARKER_SUFFIX)
    marker.write_bytes(_marker_text("run").replace(str(os.getpid()).encode(), str(pid).encode(), 1))
    ran = []
    with held_alone(tmp_path, LOCK, lambda: Busy("busy"), remove=True):
        ran.append(marker.read_bytes().split()[0])
    assert ran == [str(os.getpid()).encode()] and not marker.exists()


def test_another_hosts_marker_is_refused_naming_it_and_its_host(tmp_path, monkeypatch):
    from restorekit.batch import output_held
    from restorekit.folder_lock import MARKER_SUFFIX

    _no_flock(monkeypatch)
    out = tmp_path / "out"
    out.mkdir()
    marker = out / (".output.lock" + MARKER_SUFFIX)
    marker.write_bytes(b"4242 run\nnode7 0123abcd\n")
    with pytest.raises(Exception) as info:
        with output_held(out, "run"):
            pass
    msg = str(info.value)
    assert "another restorekit run on node7 (process 4242)" in msg
    assert str(marker) in msg and "remove that file" in msg and "\n" not in msg
    assert marker.exists()  # not ours to remove


def test_a_read_only_folder_without_locks_goes_on_unlocked(tmp_path, monkeypatch):
    from restorekit.folder_lock import held_alone

    _no_flock(monkeypatch)
    (tmp_path / LOCK).write_bytes(b"")
    real_open = os.open

    def read_only(path, flags, *a, **kw):  # type: ignore[no-untyped-def]
        if flags & (os.O_CREAT | os.O_WRONLY | os.O_RDWR):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))
        return real_open(path, flags, *a, **kw)

    monkeypatch.setattr(os, "open", read_only)
    ran = []
    with held_alone(tmp_path, LOCK, lambda: Busy("busy"), read_only_ok=True, remove=True):
        ran.append(True)
    assert ran == [True]


def test_waiting_for_a_lock_without_locks_names_the_lock_file(tmp_path, monkeypatch):
    from restorekit.errors import describe_os_error
    from restorekit.file_locks import LocksUnavailable, lock_api

    api = lock_api()
    assert api is not None
    path = tmp_path / ".w.lock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        _no_flock(monkeypatch)
        with pytest.raises(LocksUnavailable) as info:
            api.wait_lock(fd)  # (the weights cache's lock: its path found from the descriptor)
    finally:
        os.close(fd)
    assert info.value.errno == errno.ENOLCK and info.value.filename == str(path)
    line = describe_os_error(info.value, action="use")
    assert line.startswith(f"cannot use {path}: its file system has no file locks") and "NFS" in line


# -- compare on a full disk ------------------------------------------------------------------------

def _compare(data: Path, out: Path):  # type: ignore[no-untyped-def]
    from click.testing import CliRunner

    from restorekit.cli import build_cli

    return CliRunner().invoke(build_cli(), ["compare", "--methods", "bicubic", "--scale", "2", "--data", str(data),
                                            "--out", str(out), "--metrics", "psnr_rgb", "--device", "cpu", "-q"],
                              catch_exceptions=False)


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EROFS])
def test_compare_stops_at_the_first_output_the_file_system_refuses_and_a_rerun_goes_on(tmp_path, monkeypatch,
                                                                                       code):
    import restorekit.harness.runner as runner

    data = tmp_path / "hr"
    data.mkdir()
    for i in range(3):
        images.save_image(torch.full((1, 3, 16, 16), i / 4), data / f"img{i}.png")
    out = tmp_path / "cmp"
    real = runner.atomic_write_bytes
    tried = []

    def full_after_one(path, data, **kw):  # type: ignore[no-untyped-def]
        tried.append(path.name)
        if len(tried) > 1:
            raise images.fs_error(OSError(code, os.strerror(code)), path)
        return real(path, data, **kw)

    monkeypatch.setattr(runner, "atomic_write_bytes", full_after_one)
    r = _compare(data, out)
    assert r.exit_code == 2, r.output
    line = r.stderr
    assert line.count("\n") == 1, line  # one line, not one per image left
    failed = out / "outputs" / "bicubic" / "img1.png"
    assert line.startswith(f"error: cannot write {failed}: {os.strerror(code)}"), line
    assert "compare stopped there" in line and f"the same command run again once {out} can be written" in line
    assert tried == ["img0.png", "img1.png"]  # img2 never restored
    # No report written over a full disk; the output done and its record are kept, nothing half-written.
    assert not any((out / name).exists() for name in ("results.json", "results.csv", "report.html"))
    assert sorted(p.name for p in (out / "outputs" / "bicubic").iterdir()) == ["img0.png"]
    assert not [p for p in out.rglob(".*") if images.is_temp_name(p.name)]

    monkeypatch.setattr(runner, "atomic_write_bytes", real)  # room again: the rerun goes on from there
    tried.clear()
    r = _compare(data, out)
    assert r.exit_code == 0, r.output
    doc = json.loads((out / "results.json").read_text())
    assert {i["image"]: i["reused"] for i in doc["images"]} == {"img0": True, "img1": False, "img2": False}


def test_compare_stops_at_the_first_low_resolution_input_the_disk_refuses(tmp_path, monkeypatch):
    """The LR inputs compare makes from the HR images are writes too: a full disk there stops the
    comparison in one line (exit 2) instead of failing every image the same way."""
    import restorekit.harness.inputs as inputs_mod

    data = tmp_path / "hr"
    data.mkdir()
    for i in range(3):
        images.save_image(torch.full((1, 3, 16, 16), i / 4), data / f"img{i}.png")
    out = tmp_path / "cmp"
    real = inputs_mod.atomic_write_bytes
    tried = []

    def full_after_one(path, data, **kw):  # type: ignore[no-untyped-def]
        tried.append(path.name)
        if len(tried) > 1:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(path, data, **kw)

    monkeypatch.setattr(inputs_mod, "atomic_write_bytes", full_after_one)
    r = _compare(data, out)
    assert r.exit_code == 2, r.output
    assert r.stderr.count("\n") == 1, r.stderr  # one line, not one failure per image
    assert r.stderr.startswith("error: ") and os.strerror(errno.ENOSPC) in r.stderr and "img1.png" in r.stderr
    assert tried == ["img0.png", "img1.png"]  # img2's LR never made
    assert not (out / "results.json").exists()


# -- a disk or network file system that fails while an input is read -------------------------------

def _reads_fail(monkeypatch: pytest.MonkeyPatch, path: Path, after: int, code: int = errno.EIO) -> None:
    """Reading ``path`` fails with ``code`` once ``after`` bytes of it were read (a bad sector, an NFS
    server gone), as the system's ``read`` does; the bytes before it read as usual."""
    import builtins

    real_open = builtins.open

    class Failing:
        def __init__(self, f):  # type: ignore[no-untyped-def]
            self.f = f

        def read(self, n=-1):  # type: ignore[no-untyped-def]
            if self.f.tell() >= after:
                raise OSError(code, os.strerror(code))
            return self.f.read(n if n is not None and 0 <= n <= after - self.f.tell() else after - self.f.tell())

        def fileno(self):  # type: ignore[no-untyped-def]
            raise OSError(errno.EBADF, "no descriptor")  # (read it through read, never mapped)

        def __enter__(self):  # type: ignore[no-untyped-def]
            return self

        def __exit__(self, *exc):  # type: ignore[no-untyped-def]
            self.f.close()

        def __getattr__(self, name):  # type: ignore[no-untyped-def]
            return getattr(self.f, name)

    def failing_open(file, mode="r", *a, **kw):  # type: ignore[no-untyped-def]
        f = real_open(file, mode, *a, **kw)
        return Failing(f) if isinstance(file, (str, os.PathLike)) and Path(file) == path else f

    monkeypatch.setattr(builtins, "open", failing_open)


@pytest.mark.parametrize("after", [0, 60], ids=["at-its-first-bytes", "in-its-pixels"])
def test_an_input_the_disk_fails_to_read_is_not_called_corrupt(tmp_path, monkeypatch, after):
    p = tmp_path / "face.png"
    images.save_image(torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(0)), p)
    _reads_fail(monkeypatch, p, after)
    with pytest.raises(ImageError) as info:
        images.read_image(p)
    assert str(info.value) == (f"{p}: cannot be read (Input/output error): the disk or network file system failed, "
                               "not necessarily the image; try again")
    assert storage_errno(info.value) is None  # (one input's failure: a batch goes on)
    monkeypatch.undo()
    assert images.read_image(p).shape == (1, 3, 32, 32)  # the image itself is whole


def test_a_file_the_disk_fails_to_stat_is_not_called_corrupt(tmp_path, monkeypatch):
    p = tmp_path / "face.png"
    images.save_image(torch.zeros(1, 3, 8, 8), p)
    real_stat = os.stat

    def failing_stat(path, *a, **kw):  # type: ignore[no-untyped-def]
        if isinstance(path, (str, os.PathLike)) and Path(path) == p:
            raise OSError(errno.ESTALE, os.strerror(errno.ESTALE), str(path))  # (NFS: the server lost the file)
        return real_stat(path, *a, **kw)

    monkeypatch.setattr(os, "stat", failing_stat)
    with pytest.raises(ImageError) as info:
        images.probe_size(p)
    assert str(info.value) == (f"{p}: cannot be read ({os.strerror(errno.ESTALE)}): the disk or network file system "
                               "failed, not necessarily the image; try again")


def test_bytes_pillow_cannot_decode_are_still_corrupt_or_truncated(tmp_path):
    p = tmp_path / "cut.png"
    images.save_image(torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(0)), p)
    p.write_bytes(p.read_bytes()[:200])
    with pytest.raises(ImageError, match=r"cut\.png: corrupt or truncated image \(") as info:
        images.read_image(p)
    assert "try again" not in str(info.value)
