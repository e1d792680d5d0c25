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
refused in one line rather than run unlocked. Where the file system refuses locks (NFS
without its lock service), nothing is locked.

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
        except OSError:  # no locks on this file system (NFS without its lock service …): nothing is locked
            os.close(fd)
            yield
            return
        if not locked:
            os.close(fd)
            raise refused()
        if not remove or _same_file(fd, path):
            break
        os.close(fd)  # its holder removed it as this process opened it: lock the one there now
    else:
        raise refused()
    try:
        if writable and os.fstat(fd).st_nlink == 1:  # (a hard link's other name is not ours to write)
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
        if api.kind == "flock":
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
    (:func:`held_alone`), or None when unknown (not written yet, unreadable)."""
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
