"""Opening files in folders that other users may write to, without following what they plant there.

A results folder, a training run folder or a weights cache can be shared (a lab's group folder, a
scratch disk). Whoever can write such a folder can put a symbolic link, a hard link or a FIFO
where restorekit is about to write: an ``open(path, "a")`` would then append to the file the link
points at (a shell start-up file, say), and a blocking open of a FIFO would hang. These openers
refuse all three, in one line naming the path. Torch-free, so the weights cache can use them.

The same holds for the folders below an output root (``compare --out``): whoever can write there
can swap ``outputs/<method>/`` for a link to a folder of the user's, and files would be written
into it, or removed from it by ``--fresh``. :func:`open_folder` walks from the root one folder at a
time without following a link (:class:`LinkedFolderError`), and what is then written, listed or
removed is named relative to the open folder (``dir_fd``), so a swap midway is never followed.
"""

from __future__ import annotations

import errno
import os
import shutil
import stat
from pathlib import Path, PurePath
from typing import BinaryIO

__all__ = ["open_append", "create_exclusive", "read_plain", "check_plain_file", "ends_line", "is_plain_folder",
           "NOFOLLOW", "NONBLOCK", "Folder", "LinkedFolderError", "open_folder", "remove_made_folder"]

NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
NONBLOCK = getattr(os, "O_NONBLOCK", 0)
_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_BINARY = getattr(os, "O_BINARY", 0)
_DIRECTORY = getattr(os, "O_DIRECTORY", 0)
#: Whether folders can be walked and used by open descriptor (POSIX); elsewhere by name, each step
#: checked with ``lstat`` first (a swap between the check and the use is then not caught).
DIR_FDS = bool(_DIRECTORY and NOFOLLOW) and {os.open, os.mkdir, os.stat, os.unlink, os.rmdir, os.rename,
                                             os.chmod} <= os.supports_dir_fd and os.scandir in os.supports_fd


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


def _opened(path: str | os.PathLike[str], flags: int, mode: int, dir_fd: int | None = None) -> int:
    try:
        fd = os.open(path, flags | NOFOLLOW | NONBLOCK | _CLOEXEC | _BINARY, mode, dir_fd=dir_fd)
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


def open_append(path: str | os.PathLike[str], mode: int = 0o666, *, dir_fd: int | None = None) -> BinaryIO:
    """``path`` opened to append bytes (made when missing, ``mode`` less the umask), unbuffered;
    never through a symbolic link, onto a FIFO or into a hard-linked file (``OSError``).
    ``dir_fd``: ``path`` is a name in that open folder (:attr:`Folder.fd`)."""
    fd = _opened(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, mode, dir_fd)  # (read too: ends_line)
    return os.fdopen(fd, "ab", buffering=0)


def read_plain(path: str | os.PathLike[str], *, dir_fd: int | None = None) -> bytes | None:
    """The bytes of the file at ``path`` (None when there is none), read without following a
    symbolic link or waiting on a FIFO planted there (``OSError`` saying so). ``dir_fd``: as
    :func:`open_append`'s."""
    try:
        fd = os.open(path, os.O_RDONLY | NOFOLLOW | NONBLOCK | _CLOEXEC | _BINARY, dir_fd=dir_fd)
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


class LinkedFolderError(OSError):
    """A folder below an output root is a symbolic link: nothing is written, listed or removed
    through it (it could point at any folder of the user's). One line naming it."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        super().__init__(errno.ELOOP, "a symbolic link; restorekit does not write through links in an output "
                                      "folder", str(path))

    def __str__(self) -> str:
        return (f"{self.filename} is a symbolic link; restorekit does not write through links in an output folder "
                "(it could point at any folder): remove it, or use another folder")


class Folder:
    """A folder open for work by name (:func:`open_folder`): ``fd`` its descriptor, or None where
    the platform has none to give (:data:`DIR_FDS`); :meth:`at` is then the whole path. Pass
    ``folder.at(name)`` and ``dir_fd=folder.fd`` to any ``os`` call; close it (or use ``with``)."""

    def __init__(self, path: Path, fd: int | None) -> None:
        self.path, self.fd = path, fd

    def at(self, name: str) -> str:
        """``name`` as the ``os`` calls given ``dir_fd=self.fd`` take it."""
        return name if self.fd is not None else str(self.path / name)

    def lstat(self, name: str) -> os.stat_result:
        return os.stat(self.at(name), dir_fd=self.fd, follow_symlinks=False)

    def entries(self) -> list[os.DirEntry[str]]:
        """The entries of this folder (their ``stat``/``is_file`` do not follow links when told not to)."""
        with os.scandir(self.fd if self.fd is not None else self.path) as it:  # type: ignore[type-var]
            return list(it)

    def unlink(self, name: str, missing_ok: bool = True) -> None:
        try:
            os.unlink(self.at(name), dir_fd=self.fd)
        except FileNotFoundError:
            if not missing_ok:
                raise

    def replace(self, src: str, dst: str) -> None:
        """``os.replace`` of one name in this folder by another."""
        if self.fd is None:
            os.replace(self.at(src), self.at(dst))
        else:
            os.replace(src, dst, src_dir_fd=self.fd, dst_dir_fd=self.fd)

    def rmdir(self, name: str) -> bool:
        """Remove the folder ``name`` when it is empty; False when it is not there or not empty."""
        try:
            os.rmdir(self.at(name), dir_fd=self.fd)
            return True
        except OSError:
            return False

    def remove(self, name: str) -> None:
        """Remove ``name``: a file, a link (the link itself, never what it points at), or a folder
        with all in it (``shutil.rmtree``, which follows no link inside)."""
        try:
            st = self.lstat(name)
        except FileNotFoundError:
            return
        if stat.S_ISDIR(st.st_mode):
            shutil.rmtree(self.at(name), dir_fd=self.fd)  # (refuses a folder swapped for a link meanwhile)
        else:
            self.unlink(name)

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

    def __enter__(self) -> Folder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _steps(rel: str | os.PathLike[str]) -> tuple[str, ...]:
    parts = PurePath(rel).parts
    if any(p in (".", "..") or PurePath(p).anchor for p in parts):
        raise ValueError(f"{rel}: not a folder below the output folder")
    return parts


def _is_link(parent: Folder, name: str) -> bool:
    try:
        return stat.S_ISLNK(parent.lstat(name).st_mode)
    except OSError:
        return False


def open_folder(root: str | os.PathLike[str], rel: str | os.PathLike[str] = "", *, create: bool = True) -> Folder:
    """``root/rel`` open as a :class:`Folder`. ``root`` is taken as given (made when missing and
    ``create``): it and its parents are the user's choice, links included. Each folder of ``rel``
    is opened from the one above it without following a symbolic link (:class:`LinkedFolderError`
    naming it) and made when missing and ``create`` (else ``FileNotFoundError``): a folder swapped
    for a link meanwhile is refused, not entered. ``rel`` may not climb (``..``)."""
    steps, where = _steps(rel), Path(root)
    if create:
        where.mkdir(parents=True, exist_ok=True)
    if not DIR_FDS:  # by name: each step checked with lstat
        for name in steps:
            where = where / name
            if where.is_symlink():
                raise LinkedFolderError(where)
            if create:
                where.mkdir(exist_ok=True)
            elif not where.is_dir():
                raise FileNotFoundError(errno.ENOENT, "no such folder", str(where))
        return Folder(where, None)
    folder = Folder(where, os.open(root, os.O_RDONLY | _DIRECTORY | _CLOEXEC))
    try:
        for name in steps:
            if create:
                try:
                    os.mkdir(name, 0o777, dir_fd=folder.fd)
                except FileExistsError:
                    pass
            try:
                fd = os.open(name, os.O_RDONLY | _DIRECTORY | NOFOLLOW | _CLOEXEC, dir_fd=folder.fd)
            except OSError as exc:  # (a link: ELOOP, or ENOTDIR on Linux, where O_DIRECTORY is checked first)
                if _is_link(folder, name):
                    raise LinkedFolderError(where / name) from None
                raise OSError(exc.errno, exc.strerror, str(where / name)) from None
            folder.close()
            where = where / name
            folder = Folder(where, fd)
    except BaseException:
        folder.close()
        raise
    return folder


def remove_made_folder(path: Path, made: os.stat_result) -> bool:
    """Remove the empty folder ``path`` that this process made (``made``: its ``lstat`` then),
    only while ``path`` still names that very folder: not one that a link put in its place, or in
    a parent's place, leads to. Whether it was removed."""
    try:
        with open_folder(path.parent, create=False) as parent:
            now = parent.lstat(path.name)
            if stat.S_ISLNK(now.st_mode) or (now.st_dev, now.st_ino) != (made.st_dev, made.st_ino):
                return False
            return parent.rmdir(path.name)
    except OSError:
        return False
