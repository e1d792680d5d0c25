"""One process at a time in a folder: a non-blocking file lock held while a command writes there.

``compare`` (its ``--out``), ``train`` (its run folder), ``run``, ``degrade`` and ``generate``
(their ``--output``) hold one: a second process that starts meanwhile is refused at once with the
command's own message, instead of both checking the folder, then writing into it together. The
holder's process id is written into the lock file (:func:`holder` reads it back, for the refusal).
``run``, ``degrade``, ``generate`` and ``compare`` remove their lock file at the end (``remove``:
the folder is the user's), ``train`` keeps its own; the lock goes when its holder ends, however it
ends (a holder killed outright leaves its lock file, unlocked: the next command takes it).

The lock is ``flock`` on POSIX systems and, on Windows (no ``fcntl``), ``msvcrt.locking`` on one
byte far past the holder's note (Windows' locks are mandatory: a lock on the note would keep others
from reading it); there a lock file to remove is removed once closed (an open file cannot be removed),
and stays while another process has it open, waiting to take it. A platform with neither is
refused in one line rather than run unlocked. Where the file system refuses locks (NFS without its
lock service, some FUSE and network file systems: ``ENOLCK``, ``EOPNOTSUPP``), the folder is held
by a marker file instead, ``<lock name>.held``, made exclusively (``O_EXCL``, which those file
systems keep) and removed at the end (:func:`_take_marker`): a second command is refused as with a
lock. The marker says the holder's process id, host, boot (``/proc/sys/kernel/random/boot_id``) and
process start time (field 22 of ``/proc/<pid>/stat``), where readable. A marker of this host whose
holder no longer runs is taken over: its process has ended, or the host started again since (another
boot id), or its process id now names another process (another start time: a restarted container
reuses its ids), or it names this very process, which did not make it. One another host made, or an
empty one (its maker stopped, or found the disk full, before saying who it is: no age tells which),
cannot be judged, and the refusal names it, to be removed by hand once that process has ended. A take-over
removes the marker only while a short guard file, ``<marker>.takeover`` (``O_EXCL`` too), is held and
the marker is still the very one judged stale (its text, size and times, not only its inode number,
which a file system gives again at once to a marker made meanwhile): two processes taking over one
marker at once never remove the marker one of them made since. A guard left by a killed process is
taken over when its process has ended or it is older than :data:`_GUARD_S` on the folder's own clock.
Where no marker can be made either (a read-only folder, with ``read_only_ok``), the command goes on
unlocked, as it does with no lock file to lock. On a file system with locks, a marker left there (by a
client without locks, or before the folder moved) is removed once the lock is held when its holder no
longer runs, and a live one refuses the command naming it: its holder writes there without a lock.

A stop (Ctrl-C, SIGTERM) that ends the hold of a folder removed at the end (``remove``: the output
folder of ``run``, ``degrade``, ``generate`` or ``compare``, each of which a rerun of the same
command resumes) notes on the exception what was kept there (:func:`restorekit.errors.note_kept`), which the
command's last line says (:func:`restorekit.cli.stop_line`).
"""

from __future__ import annotations

import contextlib
import errno
import functools
import os
import stat
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import NamedTuple

from .errors import FileSystemError, RestorekitError, is_stop, note_kept
from .file_locks import lock_api
from .safe_open import NOFOLLOW, NONBLOCK

#: Why a lock file cannot be opened for writing in a folder this process cannot write to.
_UNWRITABLE = (errno.EACCES, errno.EPERM, errno.EROFS)
#: A lock file is never followed through a symbolic link: in a folder others can write to, one
#: pointing at a file of the user's would have that file truncated and written (the holder's note).
#: Nor waited on: opened without blocking, a FIFO planted there is refused below instead of hanging
#: the command until someone writes to it.
_NOT_FOLLOWED = NOFOLLOW | NONBLOCK
#: Windows opens a descriptor in text mode unless told (``\n`` written as ``\r\n``): the note is bytes.
_BINARY = getattr(os, "O_BINARY", 0)
#: What the marker file that holds a folder on a file system without locks is named after its lock file.
MARKER_SUFFIX = ".held"
#: What the guard file held while a stale marker is removed is named after the marker (:func:`_take_over`).
GUARD_SUFFIX = ".takeover"
#: A guard older than this (seconds, on the folder's own clock) was left by a process killed while
#: holding it (it holds one for a read and an unlink): taken over.
_GUARD_S = 10.0
#: The markers and guards this process made and still holds: ``(st_dev, st_ino)`` → the text written.
#: A marker naming this process that is not one of these was left by an earlier process of the same
#: id (a restarted container's command is often pid 1 again): stale.
_MADE: dict[tuple[int, int], bytes] = {}


def _no_locks(path: Path, what: str) -> FileSystemError:
    """The refusal on a platform without file locks (:func:`~restorekit.file_locks.lock_api` None)."""
    return FileSystemError(f"{path}: this platform has no file locks (neither fcntl nor msvcrt), so restorekit "
                           f"cannot keep two processes from writing {what} at once; it does not write there unlocked")


@contextlib.contextmanager
def held_alone(folder: Path, lock_name: str, refused: Callable[[], RestorekitError], *,
               read_only_ok: bool = False, note: str = "", remove: bool = False) -> Iterator[None]:
    """Hold ``folder/lock_name`` exclusively for the block (``folder`` is made if missing); when
    another process holds it, raise ``refused()``. Once held, the lock file says this process's
    id, then ``note`` (e.g. the command), for :func:`holder`.

    ``read_only_ok``: a folder this process cannot write to (nor the lock file in it) is no error
    here: the lock is taken through an existing lock file opened for reading, or not at all when
    there is none (the command then finds what it cannot write, if it writes anything).
    ``remove``: the lock file goes at the end of the block (a folder of the user's, not one the
    command owns); a lock taken on a file removed meanwhile is taken again on the new one."""
    path = folder / lock_name
    api = lock_api()
    if api is None:
        raise _no_locks(path, f"into {folder}")
    fd: int | None = None
    marker: os.stat_result | None = None  # held by a marker file (no locks on this file system)
    for _ in range(100):
        writable = True
        try:
            folder.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_RDWR | os.O_CREAT | _NOT_FOLLOWED | _BINARY, 0o644)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise _symlink(path) from None
            if not (read_only_ok and exc.errno in _UNWRITABLE and folder.is_dir()):
                raise
            writable = False
        if not writable:
            try:
                fd = os.open(path, os.O_RDONLY | _NOT_FOLLOWED | _BINARY)
            except OSError as exc:
                if exc.errno == errno.ELOOP:
                    raise _symlink(path) from None
                yield  # no lock file, and this process can make none: it goes on unlocked
                return
        assert fd is not None  # (opened above, for writing or for reading)
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):  # a FIFO, a device …: not a lock file of ours
            os.close(fd)
            raise OSError(errno.EINVAL, "not a regular file (a lock file is one)", str(path))
        if NONBLOCK:  # (opened without blocking: a regular file's writes are as ever; Windows has no such flag)
            os.set_blocking(fd, True)
        try:
            locked = api.try_lock(fd)
        except OSError:  # no locks on this file system (NFS without its lock service …): a marker file
            os.close(fd)
            fd = None
            marker = _take_marker(folder, lock_name, refused, note)  # (None: none can be made here either)
            break
        if not locked:
            os.close(fd)
            raise refused()
        if not remove or _same_file(fd, path):
            break
        os.close(fd)  # its holder removed it as this process opened it: lock the one there now
    else:
        raise refused()
    if fd is not None:  # locked: a marker there is a leftover (taken away) or a lock-less client's (refused)
        try:
            _marker_in_the_way(folder, lock_name, refused)
        except BaseException:
            if api.kind != "flock":
                with contextlib.suppress(OSError):
                    api.unlock(fd)
            os.close(fd)
            raise
    try:
        if fd is not None and writable and os.fstat(fd).st_nlink == 1:  # (a hard link's other name is not ours)
            with contextlib.suppress(OSError):  # a full disk: the lock holds all the same
                os.ftruncate(fd, 0)
                os.write(fd, f"{os.getpid()} {note}".strip().encode("utf-8", "replace") + b"\n")
        yield
    except BaseException as exc:
        if remove and is_stop(exc):
            note_kept(exc, f"what {note or 'the command'} finished in {folder} is kept, none of it half-written; "
                           "the same command again goes on from there")
        raise
    finally:
        if fd is None:  # held by a marker (or, where none could be made, not at all)
            if marker is not None:
                _drop_marker(folder / (lock_name + MARKER_SUFFIX), marker)
            if remove and writable:
                with contextlib.suppress(OSError):
                    os.unlink(path)
        elif api.kind == "flock":
            if remove and writable:  # while still held: nobody can take the file on its way out
                with contextlib.suppress(OSError):
                    os.unlink(path)
            os.close(fd)
        else:  # Windows: an open file cannot be removed; once closed, not while another has it open
            api.unlock(fd)
            os.close(fd)
            if remove and writable:
                with contextlib.suppress(OSError):
                    os.unlink(path)


def _marker_text(note: str) -> bytes:
    """What a marker says: ``<pid> <note>``, then ``<host name> <host tag>`` (where its process runs:
    :func:`~restorekit.images._host_tag`, host and process-id namespace), then ``<boot id> <start
    time>`` (:func:`_boot_id`, :func:`_start_time`; ``-`` where unknown). Earlier versions wrote the
    first two lines only, and read the third as nothing."""
    import socket

    from .images import _host_tag

    host = "".join(socket.gethostname().split()) or "?"
    note = " ".join(note.split())
    start = _start_time(os.getpid())
    return (f"{os.getpid()} {note}".strip() + f"\n{host} {_host_tag()}\n{_boot_id() or '-'} {start or '-'}\n").encode(
        "utf-8", "replace")


@functools.cache
def _boot_id() -> str:
    """This host's boot id (Linux: a new one each time it starts; a container sees its host's), ``""``
    where it cannot be read."""
    try:
        with open("/proc/sys/kernel/random/boot_id", "rb") as f:
            text = f.read(100).decode("ascii", "replace").strip()
    except OSError:
        return ""
    return text if text and len(text.split()) == 1 else ""


def _start_time(pid: int) -> str | None:
    """When process ``pid`` started (field 22 of ``/proc/<pid>/stat``: clock ticks since the host
    started), None where unknown (not Linux, no such process, ``/proc`` hidden). With its process id
    it names one process of one boot: an id that names another process since has another start time."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read(4096)
    except (OSError, ValueError):
        return None
    fields = data.rpartition(b")")[2].split()  # (after the command name, which may hold spaces and ')')
    return fields[19].decode("ascii") if len(fields) > 19 and fields[19].isdigit() else None


def _read_marker(folder: Path, name: str) -> tuple[os.stat_result, bytes] | None:
    """The marker ``folder/name`` (its ``fstat`` and bytes), read without following a link or
    waiting on a FIFO; None when it is not there (or not a regular file)."""
    try:
        fd = os.open(folder / name, os.O_RDONLY | _NOT_FOLLOWED | _BINARY)
    except OSError:
        return None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            return None
        return st, os.read(fd, 4096)
    except OSError:
        return None
    finally:
        os.close(fd)


class _Owner(NamedTuple):
    """Who a marker says holds the folder: process id, host name and tag, and (where its maker could
    read them) the host's boot id and the process's start time."""
    pid: int
    host: str
    tag: str
    boot: str | None = None
    start: str | None = None


def _marker_owner(data: bytes) -> _Owner | None:
    """Who a marker's text names (:class:`_Owner`); None when it does not say (empty, cut short)."""
    lines = data.decode("utf-8", "replace").split("\n")
    if len(lines) < 3:  # (both lines, each ended: a marker being written says less)
        return None
    pid = lines[0].partition(" ")[0]
    host, _, tag = lines[1].partition(" ")
    if not (pid.isascii() and pid.isdigit() and len(pid) <= 20) or not tag:
        return None
    boot = start = None
    if len(lines) >= 4:  # (the third line, ended: an earlier version's marker has none)
        said = lines[2].split()
        if len(said) == 2:
            boot = said[0] if said[0] != "-" else None
            start = said[1] if said[1].isascii() and said[1].isdigit() else None
    return _Owner(int(pid), host, tag, boot, start)


def _stale(st: os.stat_result, data: bytes) -> bool:
    """Whether a marker is one its holder left when it ended, judged on this host only: its process
    no longer runs, or the host started again since it was made (another boot id), or its process id
    now names another process (another start time), or it names this process, which did not make it
    (:data:`_MADE`). Another host's marker, or one that names nobody (empty: its maker was stopped, or
    found the disk full, before writing it; no age tells the two apart), cannot be judged: not stale."""
    from .images import _host_tag
    from .weights.cache import pid_alive

    owner = _marker_owner(data)
    if owner is None or owner.tag != _host_tag():
        return False
    boot = _boot_id()
    if owner.boot is not None and boot and owner.boot != boot:
        return True
    if owner.pid == os.getpid():
        return _MADE.get((st.st_dev, st.st_ino)) != data
    if not pid_alive(owner.pid):
        return True
    if owner.start is None:
        return False
    now = _start_time(owner.pid)
    return now is not None and now != owner.start


def _same(found: tuple[os.stat_result, bytes], st: os.stat_result, data: bytes) -> bool:
    """Whether ``found`` (:func:`_read_marker`) is the very file judged as ``(st, data)``: its text,
    size and modification time too, not only its inode number, which a file system (ext4) gives again
    at once to a file made after this one was removed."""
    now, text = found
    return text == data and ((now.st_dev, now.st_ino, now.st_size, now.st_mtime_ns)
                             == (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns))


def _remove_if_same(folder: Path, name: str, st: os.stat_result, data: bytes) -> None:
    """Remove ``folder/name`` when it is still the file judged as ``(st, data)`` (:func:`_same`)."""
    found = _read_marker(folder, name)
    if found is not None and _same(found, st, data):
        with contextlib.suppress(OSError):
            os.unlink(folder / name)


def _made(fd: int, text: bytes) -> os.stat_result:
    """Write ``text`` into the marker (or guard) just made as ``fd`` and close it; returns its
    ``fstat``. It is known as this process's (:data:`_MADE`) before it says so, so that no other thread
    of this process takes it for a marker an earlier process of this id left."""
    try:
        if NONBLOCK:
            os.set_blocking(fd, True)
        st = os.fstat(fd)
        _MADE[(st.st_dev, st.st_ino)] = text
        try:
            os.write(fd, text)
        except OSError:  # a full disk: the marker holds all the same (empty: judged by nobody)
            _MADE[(st.st_dev, st.st_ino)] = b""
        return os.fstat(fd)
    finally:
        os.close(fd)


def _guard_stale(folder: Path, st: os.stat_result, data: bytes) -> bool:
    """Whether a take-over's guard was left by a process killed while holding it: its holder no
    longer runs (:func:`_stale`), or it is older than :data:`_GUARD_S` by the folder's own clock
    (:func:`~restorekit.images._folder_now`: on a network file system a file's times are the
    server's, which may be minutes off this machine's)."""
    if _stale(st, data):
        return True
    from .images import _folder_now
    from .safe_open import Folder

    return _folder_now(Folder(folder, None)) - st.st_mtime > _GUARD_S


def _take_guard(folder: Path, name: str) -> os.stat_result | None:
    """Make the guard ``folder/name`` (``O_EXCL``), taking over one a killed process left
    (:func:`_guard_stale`); its ``fstat``, or None while another process holds it (or where none can
    be made: the marker could not be removed there either)."""
    for _ in range(3):
        try:
            fd = os.open(folder / name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOT_FOLLOWED | _BINARY, 0o644)
        except FileExistsError:
            found = _read_marker(folder, name)
            if found is None:  # released meanwhile (or a link or FIFO planted there)
                if os.path.islink(folder / name):
                    raise _symlink(folder / name) from None
                continue
            if not _guard_stale(folder, *found):
                return None
            _remove_if_same(folder, name, *found)
            continue
        except OSError:
            return None
        return _made(fd, _marker_text("take-over"))
    return None


def _take_over(folder: Path, name: str, st: os.stat_result, data: bytes) -> None:
    """Remove the stale marker ``folder/name`` (``st``, ``data``: its ``fstat`` and text when judged),
    only if it is still that very file (:func:`_same`), and only while holding the guard
    ``<name>.takeover`` (:data:`GUARD_SUFFIX`): every process taking a marker over holds it for the
    look and the removal, so none removes a marker another made between the two, and the marker's
    name is never left empty while a live holder's marker is there (nor ``os.link`` needed to put it
    back, which some file systems lack). While another process holds the guard, this waits a moment
    and returns: the caller looks again."""
    guard_name = name + GUARD_SUFFIX
    guard = _take_guard(folder, guard_name)
    if guard is None:
        time.sleep(0.005)
        return
    try:
        _remove_if_same(folder, name, st, data)
    finally:
        _drop_marker(folder / guard_name, guard)


def _take_marker(folder: Path, lock_name: str, refused: Callable[[], RestorekitError],
                 note: str) -> os.stat_result | None:
    """Hold ``folder`` by the marker ``<lock_name>.held`` (:data:`MARKER_SUFFIX`), made exclusively
    (``O_EXCL``, kept by NFS and the file systems that refuse ``flock``) and saying who holds it.
    Returns its ``fstat`` (for :func:`_drop_marker`), or None where no file can be made there (a
    read-only folder: the caller's ``read_only_ok`` let the lock file be opened only for reading, and
    the command goes on unlocked). A live holder's marker (or one that cannot be judged) is
    ``refused()``, naming the marker to remove once that process has ended; a stale one is taken over
    (:func:`_take_over`)."""
    name = lock_name + MARKER_SUFFIX
    for _ in range(100):
        try:
            fd = os.open(folder / name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOT_FOLLOWED | _BINARY, 0o644)
        except FileExistsError:
            found = _read_marker(folder, name)
            if found is None:  # removed meanwhile (its holder ended), or a link or FIFO planted there
                if os.path.islink(folder / name):
                    raise _symlink(folder / name) from None
                continue
            if _stale(*found):
                _take_over(folder, name, *found)
                continue
            raise _refusal(refused(), folder / name, found[1]) from None
        except OSError as exc:
            if exc.errno in _UNWRITABLE:
                return None
            raise
        return _made(fd, _marker_text(note))
    raise refused()


def _marker_in_the_way(folder: Path, lock_name: str, refused: Callable[[], RestorekitError]) -> None:
    """On a file system with locks, once the lock is held: a marker (:data:`MARKER_SUFFIX`) left there
    by a holder that no longer runs (a client without locks, or the folder served without them then) is
    removed; one that is live, or cannot be judged, is ``refused()`` naming it: its holder, on a client
    without locks, writes there without taking the lock."""
    name = lock_name + MARKER_SUFFIX
    for _ in range(100):
        found = _read_marker(folder, name)
        if found is None:
            return
        if not _stale(*found):
            raise _refusal(refused(), folder / name, found[1], locks=True)
        _take_over(folder, name, *found)
        after = _read_marker(folder, name)
        if after is not None and _same(after, *found):  # not removable here (a read-only folder): left
            return


def _refusal(exc: RestorekitError, marker: Path, data: bytes, *, locks: bool = False) -> RestorekitError:
    """``exc`` (the caller's refusal) told which marker file holds the folder and when to remove it:
    once its holder has ended (another host's), if it is no restorekit command (this host's: its
    process runs), if no restorekit command writes there (a text that names none). ``locks``: this
    file system has locks, and the marker is a client's without them."""
    from .images import _host_tag

    owner = _marker_owner(data)
    if owner is not None and owner.tag != _host_tag():
        said = f"{marker} says process {owner.pid} on {owner.host} holds the folder; if that process has ended"
    elif owner is not None:
        said = (f"{marker} says process {owner.pid} of this host holds the folder; if that process is no "
                "restorekit command (its id reused)")
    elif data:
        said = f"{marker} says the folder is held; if no restorekit command writes there"
    else:
        said = (f"{marker} is empty (its maker was stopped, or found the disk full, before saying who holds "
                "the folder); if no restorekit command writes there")
    why = "a process without file locks holds this folder by a marker file" if locks else \
        "this file system has no file locks"
    if len(exc.args) == 1 and isinstance(exc.args[0], str) and type(exc).__str__ is Exception.__str__:
        exc.args = (f"{exc.args[0]} ({why}: {said}, remove that file)",)
    return exc


def _drop_marker(marker: Path, made: os.stat_result) -> None:
    """Remove this process's marker (or guard), only while ``marker`` still names the file it made,
    with the text it wrote there (:data:`_MADE`): taken over meanwhile (judged stale), the name may be
    another process's marker on the same inode number."""
    key = (made.st_dev, made.st_ino)
    text = _MADE.pop(key, None)
    found = _read_marker(marker.parent, marker.name)
    if found is not None and text is not None and (found[0].st_dev, found[0].st_ino) == key and found[1] == text:
        with contextlib.suppress(OSError):
            os.unlink(marker)


def _symlink(path: Path) -> FileSystemError:
    return FileSystemError(f"{path}: a symbolic link stands where restorekit keeps its lock file; it is not "
                           "followed (it could point at any file): remove it, or use another folder")


def _same_file(fd: int, path: Path) -> bool:
    """Whether ``path`` still names the file open as ``fd``."""
    try:
        a, b = os.fstat(fd), os.stat(path)
    except OSError:
        return False
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


def holder(folder: Path, lock_name: str) -> tuple[int, str] | None:
    """``(process id, note)`` that the holder of ``folder/lock_name`` wrote there
    (:func:`held_alone`), or None when unknown (not written yet, unreadable). On a file system
    without locks, what its marker (:data:`MARKER_SUFFIX`) says, the note ending ``on <host>``
    where that is another host (None where it names nobody: empty, cut short); a marker whose holder
    no longer runs (:func:`_stale`: one a crash left, also on a file system that has locks) is passed
    over, and the lock file read."""
    found = _read_marker(folder, lock_name + MARKER_SUFFIX)
    if found is not None and not _stale(*found):
        from .images import _host_tag

        owner = _marker_owner(found[1])
        if owner is None:  # (a marker that names nobody holds the folder all the same: not the lock file's)
            return None
        note = found[1].decode("utf-8", "replace").partition("\n")[0].strip().partition(" ")[2].strip()
        elsewhere = owner[2] != _host_tag()
        return owner[0], (f"{note or 'command'} on {owner[1]}" if elsewhere else note)
    try:  # (as held_alone opens it: a link, a FIFO planted there since is not followed nor waited on)
        fd = os.open(folder / lock_name, os.O_RDONLY | _NOT_FOLLOWED | _BINARY)
    except OSError:
        return None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        line = os.read(fd, 4096).decode("utf-8", "replace").partition("\n")[0]
    except OSError:
        return None
    finally:
        os.close(fd)
    pid, _, note = line.strip().partition(" ")
    # (a process id has a few digits: a line of thousands is no holder's, and too long for int())
    return (int(pid), note.strip()) if pid.isascii() and pid.isdigit() and len(pid) <= 20 else None
