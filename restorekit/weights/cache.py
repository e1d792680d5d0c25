"""Where cached weights live and what the cache records about them.

``<cache>`` is ``$RESTOREKIT_HOME`` when set, else the platform cache directory. Each weight
spec has a folder ``<cache>/weights/<name>/`` holding its files beside a ``manifest.json``
that records each file's sha256, size, source, license and time (:class:`CachedFile`). Write
failures become one-line :class:`~restorekit.errors.CacheError` messages naming the path and
the fix. This layer knows names and folders only; it never looks a spec up.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import shutil
import stat
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import safe_open
from ..errors import CacheError, IntegrityError, UnknownNameError
from ..file_locks import LockApi, LocksUnavailable, lock_api
from .spec import MANIFEST, NAME_PATTERN, unportable

__all__ = ["CachedFile", "cache_dir", "cache_error", "cache_folder", "onnx_cache_dir", "weights_dir",
           "read_record", "write_text_atomic", "read_manifest", "write_manifest", "cached_files", "remove",
           "cleanup_empty", "now", "locked", "file_lock", "import_temp", "move_into_place", "stray_imports",
           "remove_stray_imports", "plain_cache_folder", "refuse_linked_folder"]


def cache_dir() -> Path:
    """``$RESTOREKIT_HOME`` when set, else the platform user cache dir for restorekit.

    A relative ``RESTOREKIT_HOME`` is taken from the current folder at its first use in this process
    (:func:`_absolute_home`), so a command that changes folder still finds the same cache and the paths
    it prints are absolute. A process without a home folder — ``HOME`` unset and a user id that
    ``/etc/passwd`` does not know, as in a container run as an arbitrary user (``docker run -u 1234``,
    OpenShift) — has no platform cache folder: a one-line :class:`CacheError` saying which variable
    to set (commands that need no cache never ask for it)."""
    env = os.environ.get("RESTOREKIT_HOME")
    if env:
        try:
            home = Path(env).expanduser()
        except RuntimeError:  # "~" and no home to put for it
            raise CacheError(f"RESTOREKIT_HOME is {env}, but this process has no home folder for '~' to stand for "
                             f"({_no_home()}): set RESTOREKIT_HOME to a folder's full path") from None
        return home if home.is_absolute() else _absolute_home(home)
    import platformdirs

    try:
        return Path(platformdirs.user_cache_dir("restorekit"))
    except (RuntimeError, KeyError, OSError):  # platformdirs found no home folder to put ~/.cache in
        raise CacheError(f"restorekit has no folder for its cache: {_no_home()}; set RESTOREKIT_HOME to a "
                         "writable folder (or HOME, or XDG_CACHE_HOME, to a full path)") from None


_relative_homes: dict[str, Path] = {}  # a relative RESTOREKIT_HOME -> the folder it meant at its first use


def _absolute_home(home: Path) -> Path:
    """The absolute folder a relative ``RESTOREKIT_HOME`` names: below the current folder the first
    time this process asks, the same folder from then on (after a ``chdir`` too). A current folder
    that is gone is a one-line :class:`CacheError`."""
    key = str(home)
    if key not in _relative_homes:
        try:
            _relative_homes[key] = Path(os.path.abspath(home))
        except OSError as exc:  # (os.getcwd: the current folder was removed)
            raise CacheError(f"RESTOREKIT_HOME is {home}, a relative path, but the current folder cannot be "
                             f"read ({exc.strerror or exc}): set RESTOREKIT_HOME to a folder's full path") from None
    return _relative_homes[key]


def _no_home() -> str:
    """Why this process has no home folder, in a few words."""
    uid = os.getuid() if hasattr(os, "getuid") else None
    if os.environ.get("HOME", "").strip():
        return f"HOME is {os.environ['HOME']}"
    if uid is None:
        return "HOME is not set"
    return f"HOME is not set and user id {uid} has no home folder in the password database"


def cache_error(exc: OSError, path: Path, *, detail: str = "", action: str = "written") -> CacheError:
    """A cache write failure as one line: the path, the reason and how to point the cache elsewhere.

    ``detail`` is added after the reason, in parentheses; ``action="read"`` for a file that cannot be read."""
    if isinstance(exc, CacheError):
        return exc
    env = os.environ.get("RESTOREKIT_HOME")
    where = f"RESTOREKIT_HOME is {env}" if env else f"the default cache is {cache_dir()}"
    reason = exc.strerror or str(exc) or type(exc).__name__
    if exc.errno in (errno.ENOTDIR, errno.EEXIST):
        reason += " (a file stands where a cache folder is needed)"
    if detail:
        reason += f" ({detail})"
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        fix = "free some disk space there, or set RESTOREKIT_HOME to a folder with room"
    elif isinstance(exc, LocksUnavailable):  # (NFS without its lock service: no fixing it from here)
        fix = "set RESTOREKIT_HOME to a folder on a local disk"
    else:
        usable = "a writable folder" if action == "written" else "a folder you can use"
        fix = f"set RESTOREKIT_HOME to {usable}, or fix that one"
    return CacheError(f"the restorekit cache cannot be {action} at {path}: {reason}; {where}: {fix}")


def read_record(path: Path) -> str | None:
    """The text of a cache record file (a manifest, the first-use record); None when there is none,
    also when it was removed this instant (``weights rm`` racing a reader). One that exists but
    cannot be read is a one-line :class:`CacheError` naming it."""
    try:
        return path.read_text(encoding="utf-8")
    except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
        return None
    except OSError as exc:
        raise cache_error(exc, path, action="read") from exc


def write_text_atomic(path: Path, text: str) -> None:
    """Replace the cache record file ``path`` with ``text`` atomically (temp file + rename).

    The temp file is created like any plain file (``0o666`` less the umask, as the cached weights
    files are), not 0600 as ``mkstemp`` would, so a cache shared by several users stays readable
    to them. An ``OSError`` becomes a one-line :class:`CacheError` naming ``path``. Temp files of
    ``path`` that a process killed midway left (its id is in their name, and it is gone) are removed
    first: nothing else would ever remove them."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        _remove_dead_temps(path)
        while True:
            tmp = path.with_name(f".{path.stem}-{os.getpid()}-{uuid.uuid4().hex[:12]}.tmp")
            try:
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
            except FileExistsError:
                continue
            break
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(text)
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
    except OSError as exc:
        raise cache_error(exc, path) from exc


_TEMP_NAME = re.compile(r"\.(?P<stem>.+)-(?P<pid>[0-9]{1,10})-[0-9a-f]{12}\.tmp")


def _remove_dead_temps(path: Path) -> None:
    """Remove the ``.<stem>-<pid>-<random>.tmp`` files of ``path`` (:func:`write_text_atomic`)
    whose process is gone: a kill between creating one and renaming it. Those of live processes
    (another writer's, under way) stay; a file that cannot be removed is left."""
    try:
        names = os.listdir(path.parent)
    except OSError:
        return
    for name in names:
        m = _TEMP_NAME.fullmatch(name)
        if m is None or m["stem"] != path.stem or int(m["pid"]) == os.getpid() or pid_alive(int(m["pid"])):
            continue
        with contextlib.suppress(OSError):
            (path.parent / name).unlink()


def cache_folder(folder: Path) -> Path:
    """Create ``folder`` inside the cache and prove a file can be written there (else :class:`CacheError`)."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".restorekit-write-test.", dir=folder)
        os.close(fd)
        os.unlink(tmp)
    except OSError as exc:
        raise cache_error(exc, folder) from exc
    return folder


def refuse_linked_folder(folder: Path) -> None:
    """A one-line :class:`CacheError` when ``folder`` is a symbolic link: in a cache other users
    may write to, whoever planted it would choose the folder restorekit writes files into."""
    if folder.is_symlink():
        raise cache_error(OSError(errno.ELOOP, "a symbolic link stands where a cache folder is needed; it is not "
                                               "followed (it could point at any folder)"), folder)


def plain_cache_folder(folder: Path) -> Path:
    """:func:`cache_folder` for a folder restorekit makes and writes files into (a weights spec's),
    refused when it is a symbolic link (:func:`refuse_linked_folder`), made or not."""
    refuse_linked_folder(folder)
    cache_folder(folder)
    refuse_linked_folder(folder)  # (planted while it was made)
    return folder


def onnx_cache_dir() -> Path:
    """Where ``--backend onnxruntime`` keeps the ONNX files it exports on first use."""
    return cache_dir() / "onnx"


def weights_dir(name: str) -> Path:
    """The cache folder of one weight spec."""
    if not re.match(NAME_PATTERN, name):
        raise UnknownNameError(f"'{name}' is not a valid weights name")
    problem = unportable(name)
    if problem:
        raise UnknownNameError(f"'{name}' is not a valid weights name: it {problem}")
    return cache_dir() / "weights" / name


_held = threading.local()  # lock files this thread holds (a nested request for one is already granted)


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``path`` (created if missing, never deleted) until the block ends.

    Other processes and other threads wait for it: ``flock`` on POSIX systems, ``msvcrt.locking``
    on Windows (:mod:`restorekit.file_locks`); a platform with neither is refused (:class:`CacheError`),
    never written unlocked, and so is a file system without locks (NFS without its lock service),
    told to move the cache to a local disk. Re-entering it in the thread that holds it does not wait.
    While held, the lock file says ``<pid> <command>`` (:func:`_process_note`), so that a process
    that has to wait says once on stderr whom for (:func:`_take_turn`); it is emptied on release.
    """
    held: set[str] = getattr(_held, "paths", None) or set()
    _held.paths = held
    key = str(path)
    if key in held:
        yield
        return
    api = lock_api()
    if api is None:
        raise CacheError(f"{path}: this platform has no file locks (neither fcntl nor msvcrt), so the restorekit "
                         "cache cannot keep two processes from writing the same weights at once; it is not "
                         "written unlocked")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        # Never through a symbolic link (it would make the file it names), never a FIFO (no hang):
        # a regular file with one name, or a one-line refusal naming the path.
        lock = safe_open.open_append(path, 0o644)
    except OSError as exc:
        raise cache_error(exc, path) from exc
    try:
        try:
            unlock = _take_turn(api, lock.fileno(), path)
        except LocksUnavailable as exc:
            raise cache_error(exc, path, action="used") from None
        held.add(key)
        _write_note(lock.fileno(), f"{os.getpid()} {_process_note()}".strip() + "\n")
        try:
            yield
        finally:
            held.discard(key)
            _write_note(lock.fileno(), "")  # (a waiter reads no note of a holder that has ended)
            unlock()
    finally:
        lock.close()  # closing the file releases the lock


#: How many times, a few hundredths of a second apart, a waiter looks again for the note of a holder
#: that has just taken the lock (it writes its note right after): before saying it waits for nobody known.
_NOTE_TRIES = 5


def _take_turn(api: LockApi, fd: int, path: Path) -> Callable[[], None]:
    """Lock ``fd`` (the lock file ``path``), waiting for as long as its holder keeps it, as
    :meth:`~restorekit.file_locks.LockApi.wait_lock` does; returns the call that unlocks it. When the
    lock is not free at once, one line on stderr first says whom this process waits for (a pull or
    import of a large file may hold it for minutes, a stopped one for ever): not when that is another
    thread of this process, whose own output says what it does. :class:`LocksUnavailable` where the
    file system has none."""
    who: tuple[int, str] | None = None
    for attempt in range(_NOTE_TRIES):
        if attempt:
            time.sleep(0.02)
        if api.try_lock(fd, path):
            return lambda: api.unlock(fd)
        who = _lock_note(fd)
        if who is not None:
            break
    if who is None or who[0] != os.getpid():
        whom = "another process" if who is None else f"process {who[0]}" + (f" ({who[1]})" if who[1] else "")
        with contextlib.suppress(OSError, ValueError):  # (stderr closed, or gone with its terminal)
            print(f"waiting for {whom} to finish with the restorekit cache's lock {path} ...", file=sys.stderr,
                  flush=True)
    return api.wait_lock(fd, path)


def _lock_note(fd: int) -> tuple[int, str] | None:
    """``(process id, command)`` that the holder of the open lock file ``fd`` wrote there
    (:func:`file_lock`); None when it names no process that still runs (not written yet, emptied,
    left by a process killed while holding it, unreadable)."""
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        line = os.read(fd, 4096).decode("utf-8", "replace").partition("\n")[0]
    except OSError:
        return None
    pid, _, note = line.strip().partition(" ")
    # (a process id has a few digits: a line of thousands is no holder's, and too long for int())
    if not (pid.isascii() and pid.isdigit() and len(pid) <= 20) or not pid_alive(int(pid)):
        return None
    return int(pid), "".join(ch if ch.isprintable() else "?" for ch in note.strip())  # (printed to a terminal)


def _write_note(fd: int, text: str) -> None:
    """Make ``text`` the whole of the lock file open as ``fd``, which this process has locked; a
    failure (a full disk) is passed over: the lock holds all the same, unnamed."""
    with contextlib.suppress(OSError):
        os.ftruncate(fd, 0)
        if text:
            os.write(fd, text.encode("utf-8", "replace"))


def _process_note() -> str:
    """What this process is, for the note its cache lock holds: the restorekit command and its first
    words (``weights import big-x``, ``run psp_sr``: up to the first option, three at most), else the
    program's name (a script's, ``pytest``); ``""`` when there is none (``python -c``)."""
    argv = sys.argv or [""]
    prog = Path(argv[0] or "-")
    name = prog.parent.name if prog.name == "__main__.py" else prog.name  # (python -m NAME)
    if name.lower().removesuffix(".exe") != "restorekit":
        return "" if name in ("-c", "-") else " ".join(name.split())[:100]
    words: list[str] = []
    for arg in argv[1:]:
        if arg.startswith("-"):
            if words:  # the command's first option: what follows is its settings
                break
            continue  # a global flag before the command (restorekit --debug weights ...)
        words.append(arg)
        if len(words) == 3:
            break
    return " ".join(" ".join(words).split())[:200] or "restorekit"


def locked(name: str) -> contextlib.AbstractContextManager[None]:
    """Hold the lock of weights ``name`` while putting files into or taking them out of its folder.

    Two pulls or imports of one spec at once (two terminals, the workers of one job) would
    otherwise write the same ``.part`` and manifest; the second waits and then finds the
    first one's file. The lock file ``<cache>/weights/.<name>.lock`` sits beside the folder
    (a name never starts with a dot), so removing the folder does not remove the lock.
    """
    folder = weights_dir(name)
    return file_lock(folder.with_name(f".{name}.lock"))


def import_temp(folder: Path, filename: str) -> Path:
    """A fresh name for the hidden file an import puts ``filename`` at before its atomic move into
    place: ``.<filename>.import-<pid>-<random>``. The random part makes the name one that no one
    else can plant a link at beforehand; the process id lets :func:`stray_imports` tell a killed
    import's leftover. Nothing is created: a copy is made there with
    :func:`restorekit.safe_open.create_exclusive` (``O_EXCL``, never through a link), a ``--link``
    import's symbolic link with ``symlink_to`` (which never follows one either)."""
    return folder / f".{filename}.import-{os.getpid()}-{uuid.uuid4().hex[:12]}"


def move_into_place(tmp: Path, dest: Path, written: os.stat_result) -> None:
    """``os.replace(tmp, dest)``, but only while ``tmp`` is still the regular file this process
    wrote (``written``: its ``fstat``). In a folder other users may write to, the file at ``tmp``
    could have been swapped (for a link to any file, or other bytes) since it was checked: then
    nothing is moved (one-line :class:`CacheError` naming ``tmp``), and a swap made in the instant
    between that check and the move is taken out of ``dest`` again."""
    def same(st: os.stat_result) -> bool:
        return stat.S_ISREG(st.st_mode) and (st.st_dev, st.st_ino) == (written.st_dev, written.st_ino)

    swapped = cache_error(OSError(errno.EBUSY, "something else was put in its place after it was written; not "
                                               "moved into the cache"), tmp)
    try:
        if not same(os.lstat(tmp)):
            raise swapped
        os.replace(tmp, dest)
        if not same(os.lstat(dest)):
            dest.unlink()
            raise swapped
    except OSError as exc:
        raise cache_error(exc, dest) from exc


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` may still run (when in doubt: yes, so its file is left alone). No
    pid at or below 0 names one process (to ``kill`` they are process groups): no owner, so False."""
    if pid <= 0:
        return False
    if os.name == "nt":  # never os.kill there: signal 0 is CTRL_C_EVENT, sent to a console's processes
        return _pid_alive_nt(pid)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError, OverflowError):  # another user's process, or no such check here
        return True
    return True


_PROCESS_QUERY_LIMITED_INFORMATION = 0x1000
_STILL_ACTIVE = 259
_ERROR_INVALID_PARAMETER = 87  # what OpenProcess fails with for a process id no process has


def _kernel32() -> tuple[Any, Any]:
    """Windows' kernel32 with the three calls :func:`_pid_alive_nt` makes typed, and the function that
    reads their last error."""
    import ctypes
    from ctypes import wintypes

    k32 = ctypes.WinDLL("kernel32", use_last_error=True)  # type: ignore[attr-defined]
    k32.OpenProcess.argtypes = (wintypes.DWORD, wintypes.BOOL, wintypes.DWORD)
    k32.OpenProcess.restype = wintypes.HANDLE
    k32.GetExitCodeProcess.argtypes = (wintypes.HANDLE, ctypes.POINTER(wintypes.DWORD))
    k32.GetExitCodeProcess.restype = wintypes.BOOL
    k32.CloseHandle.argtypes = (wintypes.HANDLE,)
    k32.CloseHandle.restype = wintypes.BOOL
    return k32, ctypes.get_last_error  # type: ignore[attr-defined]


def _pid_alive_nt(pid: int, api: tuple[Any, Any] | None = None) -> bool:
    """:func:`pid_alive` on Windows: OpenProcess and GetExitCodeProcess (``STILL_ACTIVE`` while it
    runs). Only "no such process" is dead; a query that fails otherwise (access denied, no ctypes)
    answers alive. ``api`` is ``(kernel32, get_last_error)``, :func:`_kernel32` when None."""
    if pid > 0xFFFFFFFF:  # not a DWORD: ctypes would cut it to another process's id
        return True
    try:
        k32, last_error = api if api is not None else _kernel32()
    except (ImportError, OSError, AttributeError):
        return True
    import ctypes

    handle = k32.OpenProcess(_PROCESS_QUERY_LIMITED_INFORMATION, False, pid)
    if not handle:
        return last_error() != _ERROR_INVALID_PARAMETER
    try:
        code = ctypes.c_ulong(0)  # a DWORD
        if not k32.GetExitCodeProcess(handle, ctypes.byref(code)):
            return True
        return code.value == _STILL_ACTIVE  # (a process that exited with 259 reads as running: kept)
    finally:
        k32.CloseHandle(handle)


def _import_temps(name: str) -> list[tuple[Path, int | None]]:
    """Every ``.<file>.import-<pid>-<random>`` (:func:`import_temp`; ``.<file>.import-<pid>`` as
    earlier versions named them) in ``name``'s folder with its process id (None if unreadable)."""
    folder = weights_dir(name)
    try:
        candidates = sorted(folder.glob(".*.import-*")) if safe_open.is_plain_folder(folder) else []
    except OSError:
        return []
    found = []
    for p in candidates:
        tail = p.name.rpartition(".import-")[2].partition("-")[0]
        found.append((p, int(tail) if tail.isascii() and tail.isdigit() else None))  # not '²': int() refuses it
    return found


def stray_imports(name: str) -> list[tuple[Path, int | None]]:
    """Temporary copies (``.<file>.import-<pid>``, :func:`import_temp`) in ``name``'s folder whose
    process is gone — an import killed before its move into place — with that process id."""
    return [(p, pid) for p, pid in _import_temps(name)
            if pid is None or (pid != os.getpid() and not pid_alive(pid))]


def remove_stray_imports(name: str) -> list[Path]:
    """Remove the temporary copies that imports of ``name`` killed midway left behind; returns them.

    Call it holding :func:`locked`: every import of ``name`` runs under that lock, so where file
    locks work every copy but this process's own is a leftover (even if its process id has been
    reused since); elsewhere only those of processes that are gone (:func:`stray_imports`) are
    removed. A file that cannot be removed is left, and the import goes on."""
    if lock_api() is not None:  # (file_lock locks wherever there is one: it refuses to go on without)
        stale = [(p, pid) for p, pid in _import_temps(name) if pid != os.getpid()]
    else:
        stale = stray_imports(name)
    removed = []
    for p, _ in stale:
        try:
            p.unlink()
        except OSError:  # gone already, or not ours to remove
            continue
        removed.append(p)
    return removed


@dataclass(frozen=True)
class CachedFile:
    """A manifest record of one cached file."""

    filename: str
    sha256: str
    size: int
    source: str
    license: str
    time: str
    trusted: bool = False  # True when the hash was recorded on the user's word (--trust)
    mtime_ns: int = 0

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def now() -> str:
    """The current UTC time as recorded in manifests."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def read_manifest(folder: Path) -> dict[str, CachedFile]:
    """The records of ``folder``'s manifest by file name (empty when there is none, also when
    ``weights rm`` removes it this instant); one that cannot be read is a one-line :class:`CacheError`,
    one that is not a manifest (damaged) an :class:`IntegrityError` naming the weights to remove."""
    path = folder / MANIFEST
    try:
        text = read_record(path)
        if text is None:
            return {}
        raw = json.loads(text)
        return {k: CachedFile(**v) for k, v in raw.get("files", {}).items()}
    except (ValueError, TypeError, AttributeError) as exc:
        raise IntegrityError(f"cache manifest {path} is unreadable ({exc}); run `restorekit weights rm "
                             f"{folder.name}` and pull or import it again") from exc


def write_manifest(folder: Path, name: str, files: Mapping[str, CachedFile]) -> None:
    """Replace ``folder``'s manifest atomically (:func:`write_text_atomic`); never into a folder
    that is a symbolic link (:func:`refuse_linked_folder`)."""
    refuse_linked_folder(folder)
    data = {"name": name, "files": {k: v.as_dict() for k, v in sorted(files.items())}}
    write_text_atomic(folder / MANIFEST, json.dumps(data, indent=2) + "\n")


def cached_files(name: str) -> dict[str, CachedFile]:
    """Manifest records of ``name``'s cached files (empty when nothing is cached)."""
    return read_manifest(weights_dir(name))


def remove(name: str) -> bool:
    """Delete ``name``'s cache folder; True when something was removed."""
    folder = weights_dir(name)
    if not folder.exists():
        return False
    with locked(name):  # not under a pull or import of the same weights
        try:
            shutil.rmtree(folder)
        except FileNotFoundError:
            return False
        except OSError as exc:
            raise cache_error(exc, folder) from exc
    return True


def cleanup_empty(folder: Path) -> None:
    """Remove ``folder`` if a failed pull or import left it empty."""
    try:
        if folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()
    except OSError:
        pass
