"""macOS and Windows, simulated on Linux: worker processes started by ``spawn`` (their default),
file locks without ``fcntl`` (Windows' ``msvcrt.locking``, or no lock at all), no
``os.set_blocking``, ``os.sched_getaffinity`` or ``resource``, split files written on Windows or
read through a case-insensitive file system, and the plugins' text files in UTF-8."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
import textwrap
import threading
import types
from pathlib import Path

import pytest

from restorekit.file_locks import MSVCRT_BYTE

fcntl = pytest.importorskip("fcntl")  # (the simulated msvcrt locks with it)

# An ``msvcrt`` for Linux: ``locking`` takes an exclusive POSIX record lock on ``nbytes`` at the
# file position, as Windows' LockFile does on a byte range, and fails as msvcrt does (EACCES) while
# another process holds it. With ``fcntl`` hidden, restorekit then takes its Windows path. Its
# calls are logged (mode, position) in ``msvcrt.calls``.
FAKE_MSVCRT = """
import errno as _errno, fcntl as _fcntl, os as _os, sys as _sys, types as _types

def _locking(fd, mode, nbytes):
    pos = _os.lseek(fd, 0, _os.SEEK_CUR)
    msvcrt.calls.append((mode, pos))
    if mode == msvcrt.LK_UNLCK:
        _fcntl.lockf(fd, _fcntl.LOCK_UN, nbytes, pos, 0)
        return
    try:
        _fcntl.lockf(fd, _fcntl.LOCK_EX | _fcntl.LOCK_NB, nbytes, pos, 0)
    except OSError:
        raise PermissionError(_errno.EACCES, "Permission denied") from None

msvcrt = _types.ModuleType("msvcrt")
msvcrt.LK_UNLCK, msvcrt.LK_LOCK, msvcrt.LK_NBLCK, msvcrt.LK_RLCK, msvcrt.LK_NBRLCK = 0, 1, 2, 3, 4
msvcrt.locking, msvcrt.calls = _locking, []
"""
# ... installed in a process of its own (a test's own process: :func:`windows`).
AS_WINDOWS = FAKE_MSVCRT + """
_sys.modules["msvcrt"] = msvcrt
_sys.modules["fcntl"] = None  # what `import fcntl` meets on Windows
"""


@pytest.fixture
def windows(monkeypatch: pytest.MonkeyPatch) -> types.ModuleType:
    """This process without ``fcntl``, with the simulated ``msvcrt``."""
    ns: dict[str, object] = {}
    exec(FAKE_MSVCRT, ns)
    fake = ns["msvcrt"]
    assert isinstance(fake, types.ModuleType)
    monkeypatch.setitem(sys.modules, "msvcrt", fake)
    monkeypatch.setitem(sys.modules, "fcntl", None)
    return fake


class Holder:
    """Another "Windows" process that holds a lock (``code`` prints ``held``, then waits for a line)."""

    def __init__(self, code: str) -> None:
        self.proc = subprocess.Popen([sys.executable, "-c", AS_WINDOWS + textwrap.dedent(code)], text=True,
                                     encoding="utf-8", stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE)
        line = self.proc.stdout.readline()  # type: ignore[union-attr]
        if line.strip() != "held":
            self.proc.kill()
            pytest.fail(f"the other process did not take the lock: {self.proc.communicate()[1]}")

    def release(self) -> str:
        out, err = self.proc.communicate("\n", timeout=30)
        assert self.proc.returncode == 0, err
        return out


# -- folder locks --------------------------------------------------------------------------------------
def test_without_fcntl_a_folder_is_still_held_by_one_process(tmp_path: Path, windows: types.ModuleType) -> None:
    from restorekit.errors import FileSystemError
    from restorekit.folder_lock import held_alone, holder

    folder = tmp_path / "out"
    other = Holder(f"""
        import sys
        from pathlib import Path
        from restorekit.folder_lock import held_alone
        with held_alone(Path({str(folder)!r}), ".run.lock", lambda: RuntimeError("busy"), note="run", remove=True):
            print("held", flush=True)
            sys.stdin.readline()
        """)
    try:
        with pytest.raises(FileSystemError, match="another run"):
            with held_alone(folder, ".run.lock", lambda: FileSystemError("another run"), note="run", remove=True):
                pass
        assert holder(folder, ".run.lock") == (other.proc.pid, "run")  # its note, readable beside the lock
        assert (folder / ".run.lock").stat().st_size < 64  # (no write at the locked byte, 1 GiB in)
        assert windows.calls == [(windows.LK_NBLCK, MSVCRT_BYTE)]
    finally:
        other.release()
    assert not (folder / ".run.lock").exists()  # removed by its holder
    with held_alone(folder, ".run.lock", lambda: FileSystemError("another run"), note="run", remove=True):
        assert holder(folder, ".run.lock") == (os.getpid(), "run")
    assert windows.calls[-2:] == [(windows.LK_NBLCK, MSVCRT_BYTE), (windows.LK_UNLCK, MSVCRT_BYTE)]
    assert not (folder / ".run.lock").exists()


def test_on_windows_the_lock_file_is_removed_once_closed(tmp_path: Path, windows: types.ModuleType,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """Windows cannot remove a file that is open: the lock file goes after its descriptor is closed."""
    from restorekit.folder_lock import held_alone

    folder, lock = tmp_path / "out", tmp_path / "out" / ".run.lock"
    real_open, real_close, real_unlink, open_fds = os.open, os.close, os.unlink, set()

    def opened(path, flags, *a, **kw):  # type: ignore[no-untyped-def]
        fd = real_open(path, flags, *a, **kw)
        if Path(path) == lock:
            open_fds.add(fd)
        return fd

    def closed(fd: int) -> None:
        open_fds.discard(fd)
        real_close(fd)

    def unlinked(path, *a, **kw):  # type: ignore[no-untyped-def]
        if Path(path) == lock and open_fds:
            raise PermissionError(errno.EACCES, "The process cannot access the file because it is being used "
                                                "by another process", str(path))
        real_unlink(path, *a, **kw)

    monkeypatch.setattr(os, "open", opened)
    monkeypatch.setattr(os, "close", closed)
    monkeypatch.setattr(os, "unlink", unlinked)
    with held_alone(folder, ".run.lock", lambda: RuntimeError("busy"), remove=True):
        assert lock.is_file() and open_fds
    assert not lock.exists() and not open_fds


def test_windows_python_without_set_blocking_takes_the_folder_lock(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """Windows has no ``O_NONBLOCK`` and (Python 3.11) no ``os.set_blocking``."""
    import restorekit.folder_lock as FL

    monkeypatch.setattr(FL, "NONBLOCK", 0)
    monkeypatch.setattr(FL, "_NOT_FOLLOWED", FL.NOFOLLOW)
    monkeypatch.delattr(os, "set_blocking")
    with FL.held_alone(tmp_path, ".x.lock", lambda: RuntimeError("busy"), note="degrade", remove=True):
        assert FL.holder(tmp_path, ".x.lock") == (os.getpid(), "degrade")
    assert not (tmp_path / ".x.lock").exists()


def test_windows_python_without_set_blocking_opens_plain_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The openers every log, cache lock and result store goes through: no ``os.set_blocking`` call
    where there is no ``O_NONBLOCK`` (Windows)."""
    from restorekit import safe_open

    monkeypatch.setattr(safe_open, "NONBLOCK", 0)
    monkeypatch.delattr(os, "set_blocking")
    with safe_open.open_append(tmp_path / "log.jsonl") as f:
        f.write(b"{}\n")
    with safe_open.create_exclusive(tmp_path / "new.json") as f:
        f.write(b"[]")
    assert safe_open.read_plain(tmp_path / "log.jsonl") == b"{}\n"
    assert (tmp_path / "new.json").read_bytes() == b"[]"


def test_a_platform_without_file_locks_is_refused_not_run_unlocked(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    from restorekit.errors import CacheError, FileSystemError
    from restorekit.folder_lock import held_alone
    from restorekit.weights.cache import file_lock

    monkeypatch.setitem(sys.modules, "fcntl", None)
    monkeypatch.setitem(sys.modules, "msvcrt", None)
    ran = []
    with pytest.raises(FileSystemError, match=r"out/\.run\.lock: this platform has no file locks"):
        with held_alone(tmp_path / "out", ".run.lock", lambda: RuntimeError("busy")):
            ran.append(1)
    with pytest.raises(CacheError, match=r"x\.lock: this platform has no file locks .* not written unlocked"):
        with file_lock(tmp_path / "x.lock"):
            ran.append(2)
    assert ran == []


# -- the weights cache's lock --------------------------------------------------------------------------
def test_without_fcntl_the_cache_lock_waits_for_another_process(tmp_path: Path, windows: types.ModuleType) -> None:
    from restorekit.weights.cache import file_lock

    path = tmp_path / "w" / ".face.lock"
    other = Holder(f"""
        import sys
        from pathlib import Path
        from restorekit.weights.cache import file_lock
        with file_lock(Path({str(path)!r})):
            print("held", flush=True)
            sys.stdin.readline()
            print("released", flush=True)
        """)
    entered = threading.Event()

    def take() -> None:
        with file_lock(path):
            entered.set()

    t = threading.Thread(target=take)
    t.start()
    try:
        assert not entered.wait(0.3)  # it waits for the other process ...
    finally:
        out = other.release()
        t.join(10)
    assert entered.is_set() and out.strip() == "released"  # ... until that one lets go
    byte = MSVCRT_BYTE
    assert (windows.LK_NBLCK, byte) in windows.calls and windows.calls[-1] == (windows.LK_UNLCK, byte)
    assert path.stat().st_size == 0


# -- other platform facilities -------------------------------------------------------------------------
def test_without_sched_getaffinity_or_resource_the_cpu_figures_fall_back(monkeypatch: pytest.MonkeyPatch) -> None:
    """macOS and Windows have no ``os.sched_getaffinity``; Windows no ``resource``."""
    import torch

    from restorekit import sharding
    from restorekit.harness import bench_scaleout

    monkeypatch.delattr(os, "sched_getaffinity", raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: 6)
    monkeypatch.setattr(sharding, "process_layout", lambda: {"LOCAL_WORLD_SIZE": 2})
    monkeypatch.setattr(torch, "get_num_threads", lambda: 8)
    assert sharding.cpu_share() == 3
    monkeypatch.setitem(sys.modules, "resource", None)
    assert bench_scaleout._children_cpu_s() == -1.0


def _faces(root: Path, names: list[str]) -> list[Path]:
    from restorekit.testing.data import smooth_image
    from PIL import Image

    paths = []
    for i, name in enumerate(names):
        p = root / name
        p.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(smooth_image(8, 8, i)).save(p)
        paths.append(p)
    return paths


# -- worker processes started by spawn (macOS and Windows) ---------------------------------------------
@pytest.mark.slow  # (the worker imports torch: a few seconds)
def test_training_samples_load_in_spawned_workers(tmp_path: Path) -> None:
    """The dataset and the workers' set-up pickle, and a spawned worker (no fork: macOS, Windows)
    makes the very samples of this process, an unreadable file left out with its line."""
    import torch
    from torch.utils.data import DataLoader

    from restorekit.training.data import SRPairDataset
    from restorekit.training.trainer import _worker_leaves_stopping_to_the_run

    files = _faces(tmp_path, ["f0.png", "f1.png", "f2.png"])
    (tmp_path / "f3.png").write_bytes(b"not a png")
    ds = SRPairDataset([*files, tmp_path / "f3.png"], 8, factors=(2, 4), seed=3)
    ds.set_epoch(2)
    loader = DataLoader(ds, batch_size=2, num_workers=1, multiprocessing_context="spawn",
                        worker_init_fn=_worker_leaves_stopping_to_the_run, generator=torch.Generator().manual_seed(0))
    got = list(loader)
    ref = SRPairDataset(ds.files, 8, factors=(2, 4), seed=3)  # (in this process)
    ref.set_epoch(2)
    want = [ref[i] for i in range(len(ref))]
    assert [int(i) for b in got for i in b["index"]] == [w["index"] for w in want] == [0, 1, 2, 0]
    for j, b in enumerate(got):
        for k, w in enumerate(want[2 * j:2 * j + 2]):
            assert torch.equal(b["lr_up"][k], w["lr_up"]) and torch.equal(b["hr"][k], w["hr"])
    said = [line for b in got for line in b["left_out"] if line]
    assert len(said) == 1 and "f3.png" in said[0] and "left out of training" in said[0]


# -- split files from other platforms ------------------------------------------------------------------
def test_a_split_file_written_on_windows_names_images_with_backslashes(tmp_path: Path) -> None:
    from restorekit.training.data import split_files

    root = tmp_path / "faces"
    files = _faces(root, ["a.png", "sub/b.png", "sub/c.png"])
    split = tmp_path / "split.txt"
    split.write_text("sub\\b.png\r\n.\\sub\\c.png\r\n", encoding="utf-8")
    train, val = split_files(files, root, split_file=split)
    assert train == [root / "a.png"] and val == [root / "sub" / "b.png", root / "sub" / "c.png"]


def test_a_split_entry_that_this_file_system_opens_by_another_case_is_that_image(tmp_path: Path) -> None:
    """On macOS or Windows ``Face.PNG`` opens ``face.png``, and a name typed with ``é`` as one code
    point opens the one listed with two: simulated by a second name of the same file, unlisted."""
    import unicodedata

    from restorekit.training.data import DataError, split_files

    root = tmp_path / "faces"
    nfd = unicodedata.normalize("NFD", "rené.png")
    files = _faces(root, ["face.png", nfd, "other.png"])
    os.link(root / "face.png", root / "Face.PNG")  # what the file system opens for the other spelling
    os.link(root / nfd, root / unicodedata.normalize("NFC", "rené.png"))
    split = tmp_path / "split.json"
    split.write_text('{"val": ["Face.PNG", "ren\\u00e9.png"]}', encoding="utf-8")
    train, val = split_files(files, root, split_file=split)
    assert val == [root / "face.png", root / nfd] and train == [root / "other.png"]
    # A name the file system does not open (a case-sensitive one: Linux's) is still not there.
    split.write_text('{"val": ["OTHER.png"]}', encoding="utf-8")
    with pytest.raises(DataError, match=r"1 listed images are not under .* \(first: OTHER\.png;"):
        split_files(files, root, split_file=split)
    # Nor is another name of a listed file that differs by more than case (a link elsewhere).
    os.link(root / "other.png", root / "alias.png")
    split.write_text('{"val": ["alias.png"]}', encoding="utf-8")
    with pytest.raises(DataError, match=r"\(first: alias\.png;"):
        split_files(files, root, split_file=split)


# -- text encodings ------------------------------------------------------------------------------------
def test_every_text_file_call_in_the_first_party_plugins_names_its_encoding() -> None:
    """As ``test_portability_encoding`` checks the core: the plugins' sources too."""
    from test_portability_encoding import REPO, _unencoded

    sources = sorted(p for pkg in (REPO / "plugins").glob("*/restorekit_*") for p in pkg.rglob("*.py"))
    assert len(sources) > 20
    found = [f"{rel}:{line}: {code}" for p in sources for rel, line, code in _unencoded(p)]
    assert not found, "text I/O in the platform's default encoding (add encoding=\"utf-8\"):\n" + "\n".join(found)


def test_a_deferred_stop_is_sent_again_in_process_on_windows(monkeypatch: pytest.MonkeyPatch) -> None:
    """``os.kill(own pid, SIGINT)`` on Windows is TerminateProcess: no handler, nothing kept."""
    import signal

    from restorekit import cli

    sent: list[tuple[str, int]] = []
    monkeypatch.setattr(os, "kill", lambda pid, sig: sent.append(("kill", sig)))
    monkeypatch.setattr(signal, "raise_signal", lambda sig: sent.append(("raise", sig)))
    monkeypatch.setattr(sys, "platform", "win32")
    cli._send_again(signal.SIGINT)
    monkeypatch.setattr(sys, "platform", "linux")
    cli._send_again(signal.SIGTERM)
    assert sent == [("raise", signal.SIGINT), ("kill", signal.SIGTERM)]


@pytest.mark.parametrize(("name", "filename", "said"), [
    ("ok", "D:evil.pt", "holds :"),            # a path on drive D, outside the cache, on Windows
    ("ok", "w.pt:stream", "holds :"),          # an NTFS alternate stream
    ("ok", "NUL.safetensors", "keeps for a device"),
    ("ok", "w.pt.", "ends in a dot"),
    ("con", "w.pt", "keeps for a device"),     # the cache folder of the spec
    ("w.", "w.pt", "ends in a dot"),
])
def test_weight_specs_name_only_files_every_platform_can_hold(name: str, filename: str, said: str) -> None:
    from pydantic import ValidationError

    from restorekit.weights.spec import WeightSpec

    with pytest.raises(ValidationError, match=said):
        WeightSpec(name=name, architecture="a", plugin="p", license="MIT", files=({"filename": filename},))
    WeightSpec(name="console", architecture="a", plugin="p", license="MIT", files=({"filename": "nul_free.pt"},))


def test_file_names_of_a_spec_differ_in_more_than_case() -> None:
    from pydantic import ValidationError

    from restorekit.weights.spec import WeightSpec

    with pytest.raises(ValidationError, match="in any case"):
        WeightSpec(name="w", architecture="a", plugin="p", license="MIT",
                   files=({"filename": "G.pt"}, {"filename": "g.pt"}))


def test_the_cache_folder_of_a_reserved_name_is_refused_naming_why() -> None:
    from restorekit.errors import UnknownNameError
    from restorekit.weights.cache import weights_dir

    with pytest.raises(UnknownNameError, match="'aux' is not a valid weights name: it is a name Windows keeps"):
        weights_dir("aux")
