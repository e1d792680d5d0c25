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
lock. A marker whose holder no longer runs on this host is taken over; one another host made
cannot be judged, and the refusal names it and that host, to be removed by hand once that process
has ended. Where no marker can be made either (a read-only folder, with ``read_only_ok``), the
command goes on unlocked, as it does with no lock file to lock.

A stop (Ctrl-C, SIGTERM) that ends the hold of a folder removed at the end (``remove``: the output
folder of ``run``, ``degrade``, ``generate`` or ``compare``, each of which a rerun of the same
command resumes) notes on the exception what was kept there (:func:`restorekit.errors.note_kept`), which the
command's last line says (:func:`restorekit.cli.stop_line`).
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from collections.abc import Callable, Iterator
from pathlib import Path

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
#: An empty marker older than this (seconds) was left by a process killed between making it and
#: writing its first line (a few microseconds): taken over.
_EMPTY_MARKER_S = 10.0


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
    :func:`~restorekit.images._host_tag`, host and process-id namespace)."""
    import socket

    from .images import _host_tag

    host = "".join(socket.gethostname().split()) or "?"
    return f"{os.getpid()} {note}".strip().encode("utf-8", "replace") + f"\n{host} {_host_tag()}\n".encode(
        "utf-8", "replace")


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


def _marker_owner(data: bytes) -> tuple[int, str, str] | None:
    """``(pid, host name, host tag)`` of a marker's text; None when it does not say them (cut short)."""
    lines = data.decode("utf-8", "replace").split("\n")
    if len(lines) < 3:  # (both lines, each ended: a marker being written says less)
        return None
    pid = lines[0].partition(" ")[0]
    host, _, tag = lines[1].partition(" ")
    if not (pid.isascii() and pid.isdigit() and len(pid) <= 20) or not tag:
        return None
    return int(pid), host, tag


def _stale(st: os.stat_result, data: bytes) -> bool:
    """Whether a marker is one its holder left when it ended: that holder's process no longer runs
    on this host, or the marker was never written (empty, and older than :data:`_EMPTY_MARKER_S`)."""
    import time

    from .images import _host_tag
    from .weights.cache import pid_alive

    owner = _marker_owner(data)
    if owner is None:
        return not data and time.time() - st.st_mtime > _EMPTY_MARKER_S
    pid, _, tag = owner
    return tag == _host_tag() and pid != os.getpid() and not pid_alive(pid)


def _take_over(folder: Path, name: str, st: os.stat_result) -> None:
    """Remove the stale marker ``folder/name`` (``st``: its ``fstat`` when judged), only if it is still
    that file: it is first renamed to a name of this process's own, so two processes taking it over
    at once cannot remove the marker one of them made meanwhile (the other's is put back)."""
    import secrets

    aside = folder / f"{name}.stale-{os.getpid()}-{secrets.token_hex(4)}"
    try:
        os.rename(folder / name, aside)
    except OSError:  # taken over by another process meanwhile: the next try sees what is there now
        return
    try:
        now = os.lstat(aside)
        if (now.st_dev, now.st_ino) != (st.st_dev, st.st_ino):  # a fresh marker, not the stale one: put back
            with contextlib.suppress(OSError):  # (one made there since holds the folder instead)
                os.link(aside, folder / name, follow_symlinks=False)
    finally:
        with contextlib.suppress(OSError):
            os.unlink(aside)


def _take_marker(folder: Path, lock_name: str, refused: Callable[[], RestorekitError],
                 note: str) -> os.stat_result | None:
    """Hold ``folder`` by the marker ``<lock_name>.held`` (:data:`MARKER_SUFFIX`), made exclusively
    (``O_EXCL``, kept by NFS and the file systems that refuse ``flock``) and saying who holds it.
    Returns its ``fstat`` (for :func:`_drop_marker`), or None where no file can be made there (a
    read-only folder: the caller's ``read_only_ok`` let the lock file be opened only for reading, and
    the command goes on unlocked). A live holder's marker is ``refused()`` (naming the host, and the
    marker to remove once that process has ended, where it is another host's); a stale one is taken over."""
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
                _take_over(folder, name, found[0])
                continue
            raise _refusal(refused(), folder / name, found[1]) from None
        except OSError as exc:
            if exc.errno in _UNWRITABLE:
                return None
            raise
        try:
            if NONBLOCK:
                os.set_blocking(fd, True)
            with contextlib.suppress(OSError):  # a full disk: the marker holds all the same
                os.write(fd, _marker_text(note))
            return os.fstat(fd)
        finally:
            os.close(fd)
    raise refused()


def _refusal(exc: RestorekitError, marker: Path, data: bytes) -> RestorekitError:
    """``exc`` (the caller's refusal) told, where nothing here can judge the marker (another host's
    process, or a text that names none), which file to remove once its holder has ended."""
    from .images import _host_tag

    owner = _marker_owner(data)
    if owner is not None and owner[2] != _host_tag():
        said = f"{marker} says process {owner[0]} on {owner[1]} holds the folder; if that process has ended"
    elif owner is None and data:
        said = f"{marker} says the folder is held; if no restorekit command writes there"
    else:
        return exc
    if len(exc.args) == 1 and isinstance(exc.args[0], str) and type(exc).__str__ is Exception.__str__:
        exc.args = (f"{exc.args[0]} (this file system has no file locks: {said}, remove that file)",)
    return exc


def _drop_marker(marker: Path, made: os.stat_result) -> None:
    """Remove this process's marker, only while ``marker`` still names the file it made."""
    try:
        now = os.lstat(marker)
        if (now.st_dev, now.st_ino) == (made.st_dev, made.st_ino):
            os.unlink(marker)
    except OSError:
        pass


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
    where that is another host."""
    found = _read_marker(folder, lock_name + MARKER_SUFFIX)
    if found is not None and (owner := _marker_owner(found[1])) is not None:
        from .images import _host_tag

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
