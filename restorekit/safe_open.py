"""Opening files in folders that other users may write to, without following what they plant there.

A results folder, a training run folder or a weights cache can be shared (a lab's group folder, a
scratch disk). Whoever can write such a folder can put a symbolic link, a hard link or a FIFO
where restorekit is about to write: an ``open(path, "a")`` would then append to the file the link
points at (a shell start-up file, say), and a blocking open of a FIFO would hang. These openers
refuse all three, in one line naming the path. Torch-free, so the weights cache can use them.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path
from typing import BinaryIO

__all__ = ["open_append", "create_exclusive", "read_plain", "check_plain_file", "ends_line", "is_plain_folder",
           "NOFOLLOW", "NONBLOCK"]

NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
NONBLOCK = getattr(os, "O_NONBLOCK", 0)
_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_BINARY = getattr(os, "O_BINARY", 0)


def check_plain_file(fd: int, path: str | os.PathLike[str]) -> None:
    """Raise ``OSError`` (closing nothing) unless ``fd`` is a regular file with one name: a FIFO,
    a device, or a hard link's other name is not a file of this run's to write."""
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        raise OSError(errno.EINVAL, "not a regular file (something else stands where a file is written)",
                      str(path))
    if st.st_nlink > 1:
        raise OSError(errno.EMLINK, "a file with another name elsewhere (a hard link) stands where a file is "
                                    "written", str(path))


def _opened(path: str | os.PathLike[str], flags: int, mode: int) -> int:
    try:
        fd = os.open(path, flags | NOFOLLOW | NONBLOCK | _CLOEXEC | _BINARY, mode)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise OSError(errno.ELOOP, "a symbolic link stands where a file is written; it is not followed "
                                       "(it could point at any file)", str(path)) from None
        if exc.errno == errno.ENXIO:  # a FIFO (or socket) without a reader, opened without blocking
            raise OSError(errno.ENXIO, "not a regular file (something else stands where a file is written)",
                          str(path)) from None
        raise
    try:
        check_plain_file(fd, path)
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd


def open_append(path: str | os.PathLike[str], mode: int = 0o666) -> BinaryIO:
    """``path`` opened to append bytes (made when missing, ``mode`` less the umask), unbuffered;
    never through a symbolic link, onto a FIFO or into a hard-linked file (``OSError``)."""
    fd = _opened(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, mode)  # (read too: ends_line)
    return os.fdopen(fd, "ab", buffering=0)


def read_plain(path: str | os.PathLike[str]) -> bytes | None:
    """The bytes of the file at ``path`` (None when there is none), read without following a
    symbolic link or waiting on a FIFO planted there (``OSError`` saying so)."""
    try:
        fd = os.open(path, os.O_RDONLY | NOFOLLOW | NONBLOCK | _CLOEXEC | _BINARY)
    except FileNotFoundError:
        return None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise OSError(errno.ELOOP, "a symbolic link stands where a file is read; it is not followed "
                                       "(it could point at any file)", str(path)) from None
        raise
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(errno.EINVAL, "not a regular file (something else stands where a file is read)",
                          str(path))
        os.set_blocking(fd, True)
        with os.fdopen(os.dup(fd), "rb") as f:
            return f.read()
    finally:
        os.close(fd)


def create_exclusive(path: str | os.PathLike[str], mode: int = 0o666) -> BinaryIO:
    """A new file at ``path`` to write (``FileExistsError`` when anything, a link included, is
    there already), ``mode`` less the umask."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | NOFOLLOW | _CLOEXEC | _BINARY, mode)
    return os.fdopen(fd, "wb")


def ends_line(f: BinaryIO) -> bool:
    """Whether the open file ``f`` is empty or ends with a line break (read through ``f`` itself,
    not by its name again)."""
    size = os.fstat(f.fileno()).st_size
    return size == 0 or os.pread(f.fileno(), 1, size - 1) == b"\n"


def is_plain_folder(path: Path) -> bool:
    """Whether ``path`` is a folder and not a symbolic link to one."""
    return path.is_dir() and not path.is_symlink()
