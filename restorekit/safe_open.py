"""Opening files in folders that other users may write to, without following what they plant there.

A results folder, a training run folder or a weights cache can be shared (a lab's group folder, a
scratch disk). Whoever can write such a folder can put a symbolic link, a hard link or a FIFO
where restorekit is about to write: an ``open(path, "a")`` would then append to the file the link
points at (a shell start-up file, say), and a blocking open of a FIFO would hang. These openers
refuse all three, in one line naming the path. Torch-free (they import only the error types), so
the weights cache can use them.

The same holds for the folders below an output root (``compare --out``): whoever can write there
can swap ``outputs/<method>/`` for a link to a folder of the user's, and files would be written
into it, or removed from it by ``--fresh``. :func:`open_folder` walks from the root one folder at a
time without following such a link (:class:`LinkedFolderError`), and what is then written, listed or
removed is named relative to the open folder (``dir_fd``), so a swap midway is never followed.

A link the current user owns is the user's own setup (``outputs -> /bigdisk/outputs``,
``checkpoints -> /scratch/ckpts``) and is followed: its target is opened from the folder holding
it, as the link itself would be. One owned by anyone else is refused — the rule Linux's
``fs.protected_symlinks`` applies in shared sticky folders (:func:`own_link`, the one test every
check here uses). Where there are no user ids (Windows) every link there is refused. This is for
folders only: a link where a file is written or read is refused whoever owns it.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Iterable
from pathlib import Path, PurePath
from typing import BinaryIO

from .errors import FileSystemError

__all__ = ["open_append", "create_exclusive", "read_plain", "open_regular", "NotRegularFile", "check_plain_file", "ends_line", "is_plain_folder",
           "NOFOLLOW", "NONBLOCK", "Folder", "LinkedFolderError", "own_link", "refused_link", "open_folder",
           "check_folders", "remove_made_folder", "sync_data"]

NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
NONBLOCK = getattr(os, "O_NONBLOCK", 0)
_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_BINARY = getattr(os, "O_BINARY", 0)
_DIRECTORY = getattr(os, "O_DIRECTORY", 0)
#: Whether folders can be walked and used by open descriptor (POSIX); elsewhere by name, each step
#: checked with ``lstat`` first (a swap between the check and the use is then not caught).
DIR_FDS = bool(_DIRECTORY and NOFOLLOW) and {os.open, os.mkdir, os.stat, os.unlink, os.rmdir, os.rename,
                                             os.chmod, os.readlink} <= os.supports_dir_fd \
    and os.scandir in os.supports_fd


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
        if NONBLOCK:  # (Windows has no such flag, nor os.set_blocking for a file before 3.12)
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
        if NONBLOCK:
            os.set_blocking(fd, True)
        with os.fdopen(os.dup(fd), "rb") as f:
            return f.read()
    finally:
        os.close(fd)


class NotRegularFile(OSError):
    """What :func:`open_regular` raises for a path that is no regular file; ``mode`` is its ``st_mode``."""

    def __init__(self, path: str | os.PathLike[str], mode: int) -> None:
        super().__init__(errno.EINVAL, "not a regular file", str(path))
        self.mode = mode


def open_regular(path: str | os.PathLike[str]) -> int:
    """``path`` (links followed: an input may be one) opened to read, as a blocking descriptor, only
    where it is a regular file: a FIFO is opened without waiting for a writer and, like a device or
    a folder, refused (:class:`NotRegularFile`) before a byte is read — a FIFO's read would wait for
    a writer, a device's never end."""
    fd = os.open(path, os.O_RDONLY | NONBLOCK | _CLOEXEC | _BINARY)
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise NotRegularFile(path, mode)
        if NONBLOCK:
            os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd


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


class LinkedFolderError(FileSystemError):
    """A folder below an output root is a symbolic link another user owns (:func:`own_link`):
    nothing is written, listed or removed through it (it could point at any folder of the user's).
    A :class:`~restorekit.errors.FileSystemError` (so an ``OSError`` too) whose text is one line
    naming it: callers let it through as it is."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        super().__init__(errno.ELOOP, "a symbolic link; restorekit does not write through links in an output "
                                      "folder", str(path))

    def __reduce__(self) -> tuple[type, tuple[str]]:  # (sent between processes: made again from its path)
        return type(self), (self.filename,)

    def __str__(self) -> str:
        whose = "that another user owns" if hasattr(os, "geteuid") else "on this platform"
        return (f"{self.filename} is a symbolic link; restorekit does not write through links in an output folder "
                f"{whose} (it could point at any folder): remove it, or use another folder")


def own_link(st: os.stat_result) -> bool:
    """Whether ``st`` (an ``lstat``) is a symbolic link the current user owns, and so is followed
    below an output root: the user's own setup, where one owned by anyone else may have been
    planted (Linux's ``fs.protected_symlinks`` rule). Never where there are no user ids (Windows)."""
    geteuid = getattr(os, "geteuid", None)
    return stat.S_ISLNK(st.st_mode) and geteuid is not None and st.st_uid == geteuid()


def refused_link(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is a symbolic link that is not followed below an output root (not
    :func:`own_link`): for checks by name, as a listing makes."""
    try:
        st = os.lstat(path)
    except OSError:
        return False
    return stat.S_ISLNK(st.st_mode) and not own_link(st)


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

    def link_new(self, src: str, dst: str) -> None:
        """Give the file ``src`` of this folder the name ``dst`` too, never over anything there
        (``FileExistsError``): a hard link, or where the file system has none, ``dst`` made
        exclusively, then replaced. ``src`` is left for the caller to remove."""
        try:
            if self.fd is None:
                os.link(self.at(src), self.at(dst), follow_symlinks=False)
            else:
                os.link(src, dst, src_dir_fd=self.fd, dst_dir_fd=self.fd, follow_symlinks=False)
            return
        except FileExistsError:
            raise
        except OSError:
            pass
        os.close(os.open(self.at(dst), os.O_WRONLY | os.O_CREAT | os.O_EXCL | NOFOLLOW | _CLOEXEC, 0o600,
                         dir_fd=self.fd))
        self.replace(src, dst)

    def open(self, name: str, *, create: bool = False) -> Folder:
        """The folder ``name`` in this one, open (:func:`open_folder`'s rule for one step)."""
        if self.fd is None:
            return Folder(_by_name_step(self.path / name, create), None)
        return Folder(self.path / name, _open_step(self, name, create))

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


_DIR_FLAGS = os.O_RDONLY | _DIRECTORY | _CLOEXEC


def _open_step(parent: Folder, name: str, create: bool) -> int:
    """The descriptor of the folder ``name`` in ``parent`` (made when missing and ``create``):
    opened without following a link, first; a link :func:`own_link` allows is then followed by
    its target, read from that very link and opened from ``parent`` (as the system resolves it);
    any other link is a :class:`LinkedFolderError`."""
    where = parent.path / name
    try:
        return os.open(name, _DIR_FLAGS | NOFOLLOW, dir_fd=parent.fd)
    except FileNotFoundError:
        if not create:
            raise FileNotFoundError(errno.ENOENT, "no such folder", str(where)) from None
        try:
            os.mkdir(name, 0o777, dir_fd=parent.fd)
        except FileExistsError:  # made meanwhile (by another process of the run, say)
            pass
        return _open_step(parent, name, False)
    except OSError as exc:  # a link: ELOOP, or ENOTDIR on Linux, where O_DIRECTORY is checked first
        try:
            st = parent.lstat(name)
        except OSError:
            st = None
        if st is None or not stat.S_ISLNK(st.st_mode):
            raise OSError(exc.errno, exc.strerror, str(where)) from None
    if not own_link(st):
        raise LinkedFolderError(where)
    try:
        target = os.readlink(name, dir_fd=parent.fd)
        again = parent.lstat(name)
    except OSError as exc:
        raise OSError(exc.errno, exc.strerror, str(where)) from None
    if (again.st_dev, again.st_ino, again.st_ctime_ns) != (st.st_dev, st.st_ino, st.st_ctime_ns) \
            or not own_link(again):  # swapped between the owner's check and the read: not this link's target
        raise LinkedFolderError(where)
    try:
        return os.open(target, _DIR_FLAGS, dir_fd=parent.fd)
    except OSError as exc:
        raise OSError(exc.errno, f"{exc.strerror} (the folder the symbolic link {where} points at, {target})",
                      str(where)) from None


def _by_name_step(where: Path, create: bool) -> Path:
    """:func:`_open_step` where folders have no descriptors: checked by name (``lstat``), so a
    swap between the check and the use is not caught there."""
    try:
        st = os.lstat(where)
    except FileNotFoundError:
        if not create:
            raise FileNotFoundError(errno.ENOENT, "no such folder", str(where)) from None
        where.mkdir(exist_ok=True)
        return _by_name_step(where, False)
    if stat.S_ISLNK(st.st_mode) and not own_link(st):
        raise LinkedFolderError(where)
    if not where.is_dir():
        if stat.S_ISLNK(st.st_mode) and not where.exists():
            raise FileNotFoundError(errno.ENOENT, f"{where} is a symbolic link to no folder", str(where))
        raise NotADirectoryError(errno.ENOTDIR, "not a folder", str(where))
    return where


def open_folder(root: str | os.PathLike[str], rel: str | os.PathLike[str] = "", *, create: bool = True) -> Folder:
    """``root/rel`` open as a :class:`Folder`. ``root`` is taken as given (made when missing and
    ``create``): it and its parents are the user's choice, links included. Each folder of ``rel``
    is opened from the one above it without following a symbolic link that another user owns
    (:class:`LinkedFolderError` naming it; one of the user's own is followed, :func:`own_link`) and
    made when missing and ``create`` (else ``FileNotFoundError``): a folder swapped for such a link
    meanwhile is refused, not entered. ``rel`` may not climb (``..``)."""
    steps, where = _steps(rel), Path(root)
    if not DIR_FDS:
        if create and not where.is_dir():
            where.mkdir(parents=True, exist_ok=True)
        for name in steps:
            where = _by_name_step(where / name, create)
        return Folder(where, None)
    try:  # opened first; made (with its parents) only when missing: a write walks no more than it must
        fd = os.open(root, _DIR_FLAGS)
    except FileNotFoundError:
        if not create:
            raise
        where.mkdir(parents=True, exist_ok=True)
        fd = os.open(root, _DIR_FLAGS)
    folder = Folder(where, fd)
    try:
        for name in steps:
            fd = _open_step(folder, name, create)
            folder.close()
            folder = Folder(folder.path / name, fd)
    except BaseException:
        folder.close()
        raise
    return folder


def check_folders(root: str | os.PathLike[str], rels: Iterable[str | os.PathLike[str]]) -> None:
    """Refuse, before anything is written or removed, a symbolic link another user owns standing
    for any of the folders ``rels`` below ``root`` or a folder on their way (:class:`LinkedFolderError`,
    the first met); those not there are skipped, nothing is made. The check :func:`open_folder`
    makes at each step, so the two never disagree."""
    for rel in rels:
        try:
            open_folder(root, rel, create=False).close()
        except (FileNotFoundError, NotADirectoryError):
            pass


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


#: What a file system that cannot sync a file answers (it is then written without: nothing better
#: can be done there); a full disk or an I/O error said at the sync is raised.
_NO_SYNC = frozenset({errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, getattr(errno, "ENOTSUP", errno.EOPNOTSUPP)})


def sync_data(fd: int) -> None:
    """The bytes of the open file ``fd`` on the disk (``fdatasync``, else ``fsync``), for a file about
    to be renamed into place: after a crash of the machine the name never shows fewer bytes than
    written. A file system that cannot sync a file (:data:`_NO_SYNC`) is written without; a full
    disk or an I/O error said at the sync is raised."""
    try:
        getattr(os, "fdatasync", os.fsync)(fd)
    except OSError as exc:
        if exc.errno not in _NO_SYNC:
            raise
