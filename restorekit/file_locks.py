"""Exclusive locks on open files, the same on every platform restorekit runs on.

POSIX systems lock with ``flock``; Windows, which has no ``fcntl``, with ``msvcrt.locking`` on one
byte far past a lock file's text (:data:`MSVCRT_BYTE`): Windows' locks are mandatory, and one on the
text would keep other processes from reading the holder's note. A platform with neither gets
``None`` from :func:`lock_api`, and its callers refuse to write rather than write unlocked. A file
system that refuses locks (NFS without its lock service, some FUSE and network file systems) makes
them raise :class:`LocksUnavailable`, naming the file. Used by :mod:`restorekit.folder_lock` (one
command per folder) and the weights cache; it imports no restorekit module, so the weights layers
may use it.
"""

from __future__ import annotations

import contextlib
import errno
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType
from typing import Literal

#: The byte ``msvcrt.locking`` locks (Windows): far past any lock file's text, which stays readable.
MSVCRT_BYTE = 1 << 30
#: What ``msvcrt.locking`` fails with while another handle holds the byte (``EACCES`` without
#: waiting, ``EDEADLOCK`` after its own retries).
_MSVCRT_BUSY = {errno.EACCES, getattr(errno, "EDEADLOCK", errno.EDEADLK), errno.EDEADLK}


#: The errors with which a file system says it has no locks at all (not that another holds one):
#: NFS without its lock service (``ENOLCK``), file systems that do not implement them.
NO_LOCKS_ERRNOS = frozenset({errno.ENOLCK, errno.EOPNOTSUPP, getattr(errno, "ENOTSUP", errno.EOPNOTSUPP),
                             errno.ENOSYS})


class LocksUnavailable(OSError):
    """The file system of a lock file has no file locks: an ``OSError`` with the system's errno,
    the lock file as its ``filename`` and a ``strerror`` that says so (what
    :func:`restorekit.errors.describe_os_error` makes one line of)."""


def _fd_path(fd: int) -> str:
    """The path of the open file ``fd`` for a message (Linux's ``/proc``), else ``file descriptor N``."""
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return f"file descriptor {fd}"


def _no_locks(exc: OSError, fd: int, path: str | os.PathLike[str] | None) -> LocksUnavailable:
    where = os.fspath(path) if path is not None else _fd_path(fd)
    return LocksUnavailable(exc.errno, f"its file system has no file locks ({exc.strerror or exc}: NFS without its "
                                       "lock service, or a file system that does not implement them)", where)


@dataclass(frozen=True)
class LockApi:
    """This platform's file locks: ``kind`` ``"flock"`` (``module`` is fcntl) or ``"msvcrt"``."""

    kind: Literal["flock", "msvcrt"]
    module: ModuleType

    def try_lock(self, fd: int, path: str | os.PathLike[str] | None = None) -> bool:
        """Lock ``fd`` exclusively without waiting: False when another holds it;
        :class:`LocksUnavailable` when the file system has no locks (NFS without its lock service,
        say), another ``OSError`` for any other failure. ``path``: ``fd``'s, for that message."""
        mod = self.module
        if self.kind == "flock":
            try:
                mod.flock(fd, mod.LOCK_EX | mod.LOCK_NB)
            except BlockingIOError:
                return False
            except OSError as exc:
                if exc.errno in NO_LOCKS_ERRNOS:
                    raise _no_locks(exc, fd, path) from None
                raise
            return True
        return _msvcrt_locking(mod, fd, mod.LK_NBLCK)

    def wait_lock(self, fd: int, path: str | os.PathLike[str] | None = None) -> Callable[[], None]:
        """Lock ``fd`` exclusively, waiting while another process or thread holds it; returns the
        call that unlocks it (closing the file unlocks it too). ``msvcrt`` is tried again every few
        hundredths of a second: its own blocking mode gives up after ten seconds. A file system
        without locks: :class:`LocksUnavailable` (``path`` as :meth:`try_lock`'s)."""
        mod = self.module
        if self.kind == "flock":
            try:
                mod.flock(fd, mod.LOCK_EX)
            except OSError as exc:
                if exc.errno in NO_LOCKS_ERRNOS:
                    raise _no_locks(exc, fd, path) from None
                raise
            return lambda: None
        pause = 0.005
        while not _msvcrt_locking(mod, fd, mod.LK_NBLCK):
            time.sleep(pause)
            pause = min(0.1, pause * 2)
        return lambda: self.unlock(fd)

    def unlock(self, fd: int) -> None:
        """Release ``fd``'s lock before closing it (Windows; a no-op for ``flock``, which closing releases)."""
        if self.kind == "msvcrt":
            with contextlib.suppress(OSError):
                _msvcrt_locking(self.module, fd, self.module.LK_UNLCK)


def lock_api() -> LockApi | None:
    """How this platform locks a file: ``flock`` (POSIX), ``msvcrt`` (Windows), or None with neither."""
    try:
        import fcntl
    except ImportError:
        pass
    else:
        return LockApi("flock", fcntl)
    try:
        import msvcrt
    except ImportError:
        return None
    return LockApi("msvcrt", msvcrt)


def _msvcrt_locking(msvcrt: ModuleType, fd: int, mode: int) -> bool:
    """``msvcrt.locking(fd, mode, 1)`` on :data:`MSVCRT_BYTE`, the file position left as it was:
    False when another holds the byte; other failures raise ``OSError``."""
    pos = os.lseek(fd, 0, os.SEEK_CUR)
    os.lseek(fd, MSVCRT_BYTE, os.SEEK_SET)
    try:
        msvcrt.locking(fd, mode, 1)
    except OSError as exc:
        if exc.errno in _MSVCRT_BUSY:
            return False
        raise
    finally:
        os.lseek(fd, pos, os.SEEK_SET)
    return True


__all__ = ["MSVCRT_BYTE", "NO_LOCKS_ERRNOS", "LockApi", "LocksUnavailable", "lock_api"]
