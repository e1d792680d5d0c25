"""Exclusive locks on open files, the same on every platform restorekit runs on.

POSIX systems lock with ``flock``; Windows, which has no ``fcntl``, with ``msvcrt.locking`` on one
byte far past a lock file's text (:data:`MSVCRT_BYTE`): Windows' locks are mandatory, and one on the
text would keep other processes from reading the holder's note. A platform with neither gets
``None`` from :func:`lock_api`, and its callers refuse to write rather than write unlocked.
Used by :mod:`restorekit.folder_lock` (one command per folder) and the weights cache; it imports
no restorekit module, so the weights layers may use it.
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


@dataclass(frozen=True)
class LockApi:
    """This platform's file locks: ``kind`` ``"flock"`` (``module`` is fcntl) or ``"msvcrt"``."""

    kind: Literal["flock", "msvcrt"]
    module: ModuleType

    def try_lock(self, fd: int) -> bool:
        """Lock ``fd`` exclusively without waiting: False when another holds it; ``OSError`` when
        the file system has no locks (NFS without its lock service, say)."""
        mod = self.module
        if self.kind == "flock":
            try:
                mod.flock(fd, mod.LOCK_EX | mod.LOCK_NB)
            except BlockingIOError:
                return False
            return True
        return _msvcrt_locking(mod, fd, mod.LK_NBLCK)

    def wait_lock(self, fd: int) -> Callable[[], None]:
        """Lock ``fd`` exclusively, waiting while another process or thread holds it; returns the
        call that unlocks it (closing the file unlocks it too). ``msvcrt`` is tried again every few
        hundredths of a second: its own blocking mode gives up after ten seconds."""
        mod = self.module
        if self.kind == "flock":
            mod.flock(fd, mod.LOCK_EX)
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


__all__ = ["MSVCRT_BYTE", "LockApi", "lock_api"]
