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
from collections.abc import Callable
from pathlib import Path
from typing import Any

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


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EROFS])
def test_a_full_scratch_disk_elsewhere_is_not_blamed_on_the_output_folder(tmp_path, monkeypatch, code):
    """A method whose own scratch write fails on another disk (/dev/shm, /tmp, a cache) stopped the
    batch with a line blaming the output folder's disk and advising another --output."""
    items = _items(tmp_path, 3)
    out = tmp_path / "out"
    scratch = tmp_path / "scratch" / "buf.bin"

    def fn(image, item):  # type: ignore[no-untyped-def]
        try:
            raise OSError(code, os.strerror(code), str(scratch))
        except OSError as exc:  # (as a method that words its own error does, the path kept on it)
            raise images.fs_error(exc) from exc

    said: list[str] = []
    r = process_files(items, out, fn, max_pixels=10**6, quiet=True, on_error=said.append)
    assert len(said) == 2 and len(r.failed) == 3
    assert str(images.fs_error(OSError(code, "x", str(scratch)))).count("\n") == 0  # (one line: no filename added)
    what = f"the disk holding {scratch} is full" if code == errno.ENOSPC else f"{scratch} is on a read-only file system"
    assert said[1] == (f"stopped: 2 inputs not processed, as {what} (written while restoring, not an output), so "
                       "every input would fail the same way; " + ("free some disk space" if code == errno.ENOSPC
                                                                  else "make it writable")
                       + " there, then run the same command again: it goes on from there")
    assert str(out) not in said[1] and "--output" not in said[1]
    # a raw system error naming the path, as a plugin raises it, is read the same way
    said.clear()
    bare = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), "/dev/shm/scratch.bin")
    process_files(items, tmp_path / "out2", lambda image, item: (_ for _ in ()).throw(bare), max_pixels=10**6,
                  quiet=True, on_error=said.append)
    assert "the disk holding /dev/shm/scratch.bin is full" in said[1] and "--output" not in said[1]


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
    monkeypatch.delenv(images.SYNC_WRITES_VARIABLE, raising=False)
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


@pytest.mark.parametrize("value, synced", [("0", False), ("off", False), (" False ", False), ("1", True),
                                           ("junk", True), ("", True)])
def test_syncing_outputs_is_switched_off_from_the_environment_but_never_for_checkpoints(tmp_path, monkeypatch,
                                                                                        value, synced):
    """RESTOREKIT_SYNC_WRITES=0 (read at each write: a test session or a scratch run turns it off for
    the processes it starts too); any other value leaves it on; a checkpoint's write is synced anyway."""
    events = _record_syncs(monkeypatch)
    monkeypatch.setenv(images.SYNC_WRITES_VARIABLE, value)
    images.atomic_write_bytes(tmp_path / "a.png", b"data")
    assert events == (["sync file"] if synced else []) + ["rename a.png"]
    events.clear()
    write_via_temp(tmp_path / "ckpt.pt", lambda f: f.write(b"state"), fsync=True)
    assert events == ["sync file", "rename ckpt.pt", "sync dir"]
    monkeypatch.delenv(images.SYNC_WRITES_VARIABLE)
    monkeypatch.setattr(images, "SYNC_WRITES", False)  # (in-process, as before)
    events.clear()
    images.atomic_write_bytes(tmp_path / "b.png", b"data")
    assert events == ["rename b.png"]


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


def _dead_pid() -> int:
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True,
                          check=True)
    return int(done.stdout)


def _marker_of(pid: int, *, start: str | None = "same", boot: str | None = "same", host: str | None = None,
               note: str = "run") -> bytes:
    """A marker's text as a process ``pid`` of this host (or of ``host``) writes it; ``start``/``boot``:
    ``"same"`` its real start time and this boot, None an earlier version's marker (two lines)."""
    import socket

    from restorekit.folder_lock import _boot_id, _start_time

    tag = "0123abcd" if host is not None else images._host_tag()
    text = f"{pid} {note}\n{host or socket.gethostname()} {tag}\n"
    if start is None and boot is None:
        return text.encode()
    start = _start_time(pid) if start == "same" else start
    boot = _boot_id() if boot == "same" else boot
    return (text + f"{boot or '-'} {start or '-'}\n").encode()


needs_proc = pytest.mark.skipif(not Path("/proc/self/stat").is_file(), reason="process start times are read from /proc")


def test_a_stale_marker_taken_over_twice_at_once_leaves_one_holder(tmp_path, monkeypatch):
    """Two processes judge one stale marker; one takes it over and makes its own, which ext4 gives the
    stale marker's inode number at once: the other's take-over, going on, removed it (both then held
    the folder). The marker removed must be the very one judged: its text and times too."""
    from restorekit.folder_lock import MARKER_SUFFIX, _read_marker, _stale, _take_over, held_alone

    _no_flock(monkeypatch)
    marker = tmp_path / (LOCK + MARKER_SUFFIX)
    marker.write_bytes(_marker_of(_dead_pid(), start="1"))
    found = _read_marker(tmp_path, marker.name)  # a second process judged it stale ...
    assert found is not None and _stale(*found)
    with held_alone(tmp_path, LOCK, lambda: Busy("busy"), note="run"):  # ... as this one took it over
        mine = marker.read_bytes()
        _take_over(tmp_path, marker.name, *found)  # ... then went on with it
        assert marker.read_bytes() == mine  # the live holder's marker is kept
        with pytest.raises(Busy):  # and a further command is still refused
            with held_alone(tmp_path, LOCK, lambda: Busy("busy")):
                pass
    assert sorted(p.name for p in tmp_path.iterdir()) == [LOCK]  # no guard, no marker left


@needs_proc
@pytest.mark.parametrize("link_error", [NotImplementedError("no links"), PermissionError(errno.EPERM, "EPERM")])
def test_a_take_over_keeps_a_marker_made_meanwhile_without_hard_links(tmp_path, monkeypatch, link_error):
    """A take-over put a marker made meanwhile back by os.link, which some platforms and FUSE file
    systems lack: the live holder's marker was lost (NotImplementedError raised, EPERM ignored)."""
    from restorekit.folder_lock import MARKER_SUFFIX, _read_marker, _take_over

    def no_link(*a, **kw):  # type: ignore[no-untyped-def]
        raise link_error

    monkeypatch.setattr(os, "link", no_link)
    marker = tmp_path / (LOCK + MARKER_SUFFIX)
    marker.write_bytes(_marker_of(_dead_pid(), start="1"))
    found = _read_marker(tmp_path, marker.name)
    live = _marker_of(os.getppid())  # another process of this host took it over and holds the folder now
    (tmp_path / "new").write_bytes(live)
    os.replace(tmp_path / "new", marker)  # (another inode number than the stale one's)
    _take_over(tmp_path, marker.name, *found)
    assert marker.read_bytes() == live
    assert sorted(p.name for p in tmp_path.iterdir()) == [marker.name]


@needs_proc
def test_a_guard_held_by_a_live_take_over_is_waited_for_and_one_a_dead_process_left_is_taken_over(tmp_path):
    from restorekit.folder_lock import GUARD_SUFFIX, MARKER_SUFFIX, _read_marker, _take_over

    marker = tmp_path / (LOCK + MARKER_SUFFIX)
    guard = tmp_path / (marker.name + GUARD_SUFFIX)
    marker.write_bytes(_marker_of(_dead_pid(), start="1"))
    found = _read_marker(tmp_path, marker.name)
    guard.write_bytes(_marker_of(os.getppid(), note="take-over"))  # another process is taking it over
    _take_over(tmp_path, marker.name, *found)
    assert marker.exists() and guard.exists()  # left to that process
    guard.write_bytes(_marker_of(_dead_pid(), note="take-over"))  # killed while holding it
    _take_over(tmp_path, marker.name, *found)
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_a_guard_nobody_can_be_named_for_is_aged_by_the_folders_clock(tmp_path, monkeypatch):
    """A guard whose text is missing (its maker killed at once, or a full disk) is taken over once older
    than _GUARD_S on the clock of the file system: an NFS client whose own clock runs an hour ahead
    does not take a guard a live process made a moment ago."""
    import time

    from restorekit.folder_lock import _GUARD_S, GUARD_SUFFIX, MARKER_SUFFIX, _read_marker, _take_over

    marker = tmp_path / (LOCK + MARKER_SUFFIX)
    guard = tmp_path / (marker.name + GUARD_SUFFIX)
    marker.write_bytes(_marker_of(_dead_pid(), start="1"))
    found = _read_marker(tmp_path, marker.name)
    guard.write_bytes(b"")
    real = time.time
    monkeypatch.setattr(time, "time", lambda: real() + 3600)
    _take_over(tmp_path, marker.name, *found)
    assert marker.exists() and guard.exists()
    monkeypatch.setattr(time, "time", real)
    os.utime(guard, (real() - _GUARD_S - 5,) * 2)
    _take_over(tmp_path, marker.name, *found)
    assert sorted(p.name for p in tmp_path.iterdir()) == []


@needs_proc
@pytest.mark.parametrize("case", ["reused-pid", "rebooted", "this-pid"])
def test_a_marker_whose_process_id_names_another_process_now_is_taken_over(tmp_path, monkeypatch, case):
    """After a reboot, or in a restarted container (same host name, the command often pid 1 again), a
    marker's process id names a live process that is not its holder: the folder stayed refused for good."""
    from restorekit.folder_lock import MARKER_SUFFIX, _boot_id, held_alone

    _no_flock(monkeypatch)
    if case == "rebooted" and not _boot_id():
        pytest.skip("no boot id here")
    text = {"reused-pid": _marker_of(os.getppid(), start="1"),
            "rebooted": _marker_of(os.getppid(), boot="00000000-0000-0000-0000-000000000000"),
            "this-pid": _marker_of(os.getpid())}[case]  # (a marker this process did not make)
    marker = tmp_path / (LOCK + MARKER_SUFFIX)
    marker.write_bytes(text)
    with held_alone(tmp_path, LOCK, lambda: Busy("busy"), note="degrade"):
        assert marker.read_bytes().split()[:2] == [str(os.getpid()).encode(), b"degrade"]
    assert not marker.exists()


@needs_proc
def test_start_times_are_read_past_a_command_name_with_spaces_and_parentheses(tmp_path, monkeypatch):
    from restorekit.folder_lock import _start_time

    fields = Path("/proc/self/stat").read_bytes().rpartition(b")")[2].split()
    assert _start_time(os.getpid()) == fields[19].decode() and fields[19].isdigit()
    assert _start_time(_dead_pid()) is None
    import builtins

    real_open = builtins.open

    def fake(path, *a, **kw):  # type: ignore[no-untyped-def]
        if str(path) == "/proc/77/stat":
            (tmp_path / "stat").write_bytes(b"77 (a) b (c) S 1 77 77 0 -1 4194560 1 0 0 0 0 0 0 0 20 0 1 0 4242 1 1\n")
            return real_open(tmp_path / "stat", *a, **kw)
        return real_open(path, *a, **kw)

    monkeypatch.setattr(builtins, "open", fake)
    assert _start_time(77) == "4242"


def test_a_live_marker_of_this_host_is_refused_naming_the_file_to_remove(tmp_path, monkeypatch):
    """An earlier version's marker (no start time) naming a live process: not judged stale, but the
    refusal names the marker to remove where that process is no restorekit command."""
    from restorekit.batch import output_held
    from restorekit.folder_lock import MARKER_SUFFIX

    _no_flock(monkeypatch)
    out = tmp_path / "out"
    out.mkdir()
    marker = out / (".output.lock" + MARKER_SUFFIX)
    marker.write_bytes(_marker_of(os.getppid(), start=None, boot=None))
    with pytest.raises(Exception) as info:
        with output_held(out, "run"):
            pass
    msg = str(info.value)
    assert f"another restorekit run (process {os.getppid()})" in msg and "\n" not in msg
    assert f"{marker} says process {os.getppid()} of this host holds the folder" in msg
    assert msg.endswith("remove that file)") and marker.exists()


def test_an_empty_marker_is_never_taken_over_by_age_but_named(tmp_path, monkeypatch):
    """An empty marker is what a holder whose text write found the disk full leaves for its whole run
    (as well as one killed between making and writing it): taken over after 10 s by this machine's
    clock, a second command wrote beside a live one. It is refused, naming the file."""
    import time

    from restorekit.batch import output_held
    from restorekit.folder_lock import MARKER_SUFFIX, holder

    _no_flock(monkeypatch)
    out = tmp_path / "out"
    out.mkdir()
    marker = out / (".output.lock" + MARKER_SUFFIX)
    marker.write_bytes(b"")
    os.utime(marker, (time.time() - 3600,) * 2)
    (out / ".output.lock").write_bytes(b"4242 degrade\n")  # (a leftover lock file names nobody here)
    with pytest.raises(Exception) as info:
        with output_held(out, "run"):
            pass
    msg = str(info.value)
    assert "another restorekit command is writing" in msg and f"{marker} is empty" in msg and "remove that file" in msg
    assert marker.exists() and holder(out, ".output.lock") is None


def test_a_marker_left_on_a_file_system_with_locks_is_removed_and_names_nobody(tmp_path):
    """A marker a crash left (the folder once served without locks) named a dead process as the holder
    in refusals, and stayed for good."""
    from restorekit.batch import output_held
    from restorekit.folder_lock import MARKER_SUFFIX, holder

    out = tmp_path / "out"
    out.mkdir()
    marker = out / (".output.lock" + MARKER_SUFFIX)
    marker.write_bytes(_marker_of(_dead_pid(), note="degrade"))
    assert holder(out, ".output.lock") is None
    with output_held(out, "run"):
        assert holder(out, ".output.lock") == (os.getpid(), "run")
        assert not marker.exists()


def test_a_live_marker_of_a_client_without_locks_refuses_one_with_locks(tmp_path):
    """A client without locks (another host's NFS mount without lockd) holds the folder by its marker:
    a client whose lock works wrote beside it."""
    from restorekit.batch import output_held
    from restorekit.folder_lock import MARKER_SUFFIX

    out = tmp_path / "out"
    out.mkdir()
    marker = out / (".output.lock" + MARKER_SUFFIX)
    marker.write_bytes(_marker_of(4242, host="node7"))
    with pytest.raises(Exception) as info:
        with output_held(out, "run"):
            pass
    msg = str(info.value)
    assert "another restorekit run on node7 (process 4242)" in msg and "\n" not in msg
    assert f"a process without file locks holds this folder by a marker file: {marker} says process 4242 on node7" \
        in msg and msg.endswith("remove that file)")
    assert marker.exists()
    marker.unlink()  # removed by hand: the folder is free, and the lock taken again
    with output_held(out, "run"):
        pass


# -- compare on a full disk ------------------------------------------------------------------------

def _compare(data: Path, out: Path):  # type: ignore[no-untyped-def]
    from click.testing import CliRunner

    from restorekit.cli import build_cli

    return CliRunner().invoke(build_cli(), ["compare", "--methods", "bicubic", "--scale", "2", "--data", str(data),
                                            "--out", str(out), "--metrics", "psnr_rgb", "--device", "cpu", "-q"],
                              catch_exceptions=False)


def _three_faces(tmp_path: Path) -> Path:
    """An HR folder of three small images, img0…img2."""
    data = tmp_path / "hr"
    data.mkdir()
    for i in range(3):
        images.save_image(torch.full((1, 3, 16, 16), i / 4), data / f"img{i}.png")
    return data


def _failing_writes(monkeypatch: pytest.MonkeyPatch, module: Any,
                    error_for: Callable[[Path, list[str]], OSError | None]) -> list[str]:
    """``module.atomic_write_bytes`` raising ``error_for(path, tried)`` where that is an error (``tried``:
    the names written or tried so far, this one last); returns ``tried``."""
    real = module.atomic_write_bytes
    tried: list[str] = []

    def write(path, data, **kw):  # type: ignore[no-untyped-def]
        tried.append(path.name)
        exc = error_for(path, tried)
        if exc is not None:
            raise exc
        return real(path, data, **kw)

    monkeypatch.setattr(module, "atomic_write_bytes", write)
    return tried


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EROFS])
def test_compare_stops_at_the_first_output_the_file_system_refuses_and_a_rerun_goes_on(tmp_path, monkeypatch,
                                                                                       code):
    import restorekit.harness.runner as runner

    data, out = _three_faces(tmp_path), tmp_path / "cmp"
    full = [True]
    tried = _failing_writes(monkeypatch, runner, lambda path, tried: images.fs_error(
        OSError(code, os.strerror(code)), path) if full[0] and len(tried) > 1 else None)
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

    full[0] = False  # room again: the rerun goes on from there
    tried.clear()
    r = _compare(data, out)
    assert r.exit_code == 0, r.output
    doc = json.loads((out / "results.json").read_text())
    assert {i["image"]: i["reused"] for i in doc["images"]} == {"img0": True, "img1": False, "img2": False}


def test_compare_stops_at_the_first_low_resolution_input_the_disk_refuses(tmp_path, monkeypatch):
    """The LR inputs compare makes from the HR images are writes too: a full disk there stops the
    comparison in one line (exit 2) instead of failing every image the same way."""
    import restorekit.harness.inputs as inputs_mod

    data, out = _three_faces(tmp_path), tmp_path / "cmp"
    tried = _failing_writes(monkeypatch, inputs_mod, lambda path, tried: OSError(
        errno.ENOSPC, os.strerror(errno.ENOSPC)) if len(tried) > 1 else None)
    r = _compare(data, out)
    assert r.exit_code == 2, r.output
    assert r.stderr.count("\n") == 1, r.stderr  # one line, not one failure per image
    assert r.stderr.startswith("error: ") and os.strerror(errno.ENOSPC) in r.stderr and "img1.png" in r.stderr
    # img2's LR never made; the manifest of img0's tried (a full disk refuses it too: that is not said)
    assert tried == ["img0.png", "img1.png", "manifest.json"]
    assert not (out / "results.json").exists()


def test_the_low_resolution_inputs_made_before_a_full_disk_are_reused_by_the_rerun(tmp_path, monkeypatch):
    """The LR files made before the disk filled up were not in the manifest (written every 15 s and
    at the end): a rerun made them all again. The manifest is written before the stop, where it fits."""
    import restorekit.harness.inputs as inputs_mod

    data, out = _three_faces(tmp_path), tmp_path / "cmp"
    full = [True]
    tried = _failing_writes(monkeypatch, inputs_mod, lambda path, tried: OSError(
        errno.ENOSPC, os.strerror(errno.ENOSPC)) if path.name == "img1.png" and full[0] else None)
    assert _compare(data, out).exit_code == 2
    manifest = next(out.glob("inputs/*/manifest.json"))
    assert list(json.loads(manifest.read_text())["images"]) == ["img0"]
    made = manifest.parent / "img0.png"
    before = made.stat().st_mtime_ns, made.stat().st_ino
    tried.clear()
    full[0] = False  # room again
    r = _compare(data, out)
    assert r.exit_code == 0, r.output
    assert [n for n in tried if n.endswith(".png")] == ["img1.png", "img2.png"]  # img0's LR reused
    assert (made.stat().st_mtime_ns, made.stat().st_ino) == before


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
