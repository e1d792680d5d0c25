"""The server's own temporary folder, and the only way a request reaches a file in it.

Every file the page shows or offers for download is written here (atomically: temp + rename)
under a name the server makes (``<group>/<n>.<ext>``) and is addressed by an opaque random id
(``secrets.token_urlsafe``) held in memory. A request names an id, never a path: an id that is
not in the table — whatever it spells, ``..`` included — is simply not found. The folder is
removed when the server stops, after any write in progress; nothing is written after that.

A write that fails (the disk full) is answered by :class:`StorageError`: one line for the page
that names no path (the server's folders are the operator's business), with the full error on the
server's stderr. The folder holds ``serve.pid`` (this process and host): a server killed before it
could delete its folder leaves it behind, and the next server started by the same user in the same
parent removes it (:func:`remove_stale_folders`) once that process no longer runs.
"""

from __future__ import annotations

import errno
import os
import re
import secrets
import shutil
import socket
import stat
import sys
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

from ..errors import RestorekitError
from ..images import atomic_write_bytes
from ..weights.cache import pid_alive  # (portable: never os.kill on Windows)

#: The prefix of a server's temporary folder, and the file in it naming the process that made it.
PREFIX = "restorekit-serve-"
PID_FILE = "serve.pid"

#: What an id looks like (token_urlsafe(18): 24 characters of [A-Za-z0-9_-]).
TOKEN_RE = re.compile(r"[A-Za-z0-9_-]{24}")

MEDIA_TYPES = {"png": "image/png", "json": "application/json"}


@dataclass(frozen=True)
class StoredFile:
    """A file the server wrote: where, its media type, and the name a download is offered under."""

    path: Path
    media_type: str
    download_name: str
    group: str


def safe_download_name(name: str) -> str:
    """A file name for a ``Content-Disposition`` header and a ``download`` attribute: ASCII letters,
    digits, ``._-`` only (others become ``_``), no leading dot, at most 120 characters."""
    cleaned = re.sub(r"[^A-Za-z0-9._-]", "_", name).lstrip(".") or "file"
    return cleaned[-120:]


class StorageError(RestorekitError):
    """A file of the server could not be written; the message names no path. ``status``: the HTTP
    status an upload that hit it is answered with (507 when the disk or quota is full)."""

    def __init__(self, message: str, status: int = 500) -> None:
        super().__init__(message)
        self.status = status


#: The errnos of a full disk or quota.
FULL = frozenset(getattr(errno, name) for name in ("ENOSPC", "EDQUOT") if hasattr(errno, name))


def os_errno(exc: BaseException) -> int | None:
    """The errno of an ``OSError``, or of the ``OSError`` it was raised from (restorekit's one-line
    :class:`~restorekit.errors.FileSystemError` carries its cause's)."""
    for e in (exc, exc.__cause__, exc.__context__):
        if isinstance(e, OSError) and e.errno is not None:
            return e.errno
    return None


def storage_error(exc: BaseException) -> StorageError:
    """What a user is told of a failed write on the server (no path: the server's stderr has it)."""
    code = os_errno(exc)
    if code in FULL:
        return StorageError("the server's disk is full; try again later", 507)
    reason = os.strerror(code) if code is not None else type(exc).__name__
    return StorageError(f"the server could not write a file ({reason}); try again later", 500)


def log_error(message: str) -> None:
    """One line on the server's stderr, for its operator (not for the page)."""
    print(f"restorekit serve: {message}", file=sys.stderr, flush=True)


def folder_owner(path: Path) -> tuple[int, str] | None:
    """``(pid, host)`` from a server folder's ``serve.pid``; None when it has none or it does not parse."""
    try:
        with open(path / PID_FILE, "rb") as f:
            text = f.read(200).decode("utf-8", "replace")
    except OSError:
        return None
    pid, _, host = text.strip().partition(" ")
    if not (pid.isascii() and pid.isdigit() and len(pid) <= 20 and host.strip()):
        return None
    return int(pid), host.strip()


def remove_stale_folders(parent: Path | None = None, keep: Path | None = None) -> list[Path]:
    """Delete the temporary folders (``restorekit-serve-*`` in ``parent``, the system's temporary
    folder by default) that servers of this user on this host left when they were killed: those
    whose ``serve.pid`` names this host and a process that no longer runs. A folder of another
    user, of another host (a shared ``--temp`` parent), without a readable pid file (one being
    made this moment, or an older version's), a link, or ``keep``, is left alone. Returns those deleted."""
    base = Path(parent) if parent is not None else Path(tempfile.gettempdir())
    host = socket.gethostname()
    uid = os.getuid() if hasattr(os, "getuid") else None
    removed: list[Path] = []
    try:
        entries = [e for e in os.scandir(base) if e.name.startswith(PREFIX)]
    except OSError:
        return removed
    for entry in entries:
        path = Path(entry.path)
        try:
            st = entry.stat(follow_symlinks=False)
        except OSError:
            continue
        if not stat.S_ISDIR(st.st_mode) or (uid is not None and st.st_uid != uid):
            continue
        if keep is not None and path.resolve() == Path(keep).resolve():
            continue
        owner = folder_owner(path)
        if owner is None or owner[1] != host or owner[0] == os.getpid() or pid_alive(owner[0]):
            continue
        shutil.rmtree(path, ignore_errors=True)
        if not path.exists():
            removed.append(path)
    return removed


class FileStore:
    """Files in one temporary folder, by opaque id; grouped (per upload or job) for deletion."""

    def __init__(self, parent: Path | None = None) -> None:
        self.root = Path(tempfile.mkdtemp(prefix=PREFIX, dir=parent)).resolve()
        try:  # who made it: a later server removes it if this one is killed before it can. (In a folder
            # only this user can write to, made this moment: a half-written file reads as no owner.)
            fd = os.open(self.root / PID_FILE, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(f"{os.getpid()} {socket.gethostname()}\n".encode())
        except OSError as exc:
            shutil.rmtree(self.root, ignore_errors=True)
            log_error(str(exc))
            raise storage_error(exc) from None
        self._files: dict[str, StoredFile] = {}
        self._count = 0
        self._lock = threading.Condition()
        self._writing = 0  # writes in progress: close() waits for them
        self._closed = False

    def add(self, data: bytes, ext: str, download_name: str, group: str) -> str:
        """Write ``data`` as a new file of ``group``; returns its id. A failed write raises
        :class:`StorageError` (the full error goes to stderr) and leaves no empty group folder."""
        if ext not in MEDIA_TYPES:
            raise ValueError(f"unsupported file type {ext!r}")
        if not re.fullmatch(r"[a-z0-9]+", group):
            raise ValueError(f"bad group name {group!r}")
        with self._lock:
            if self._closed:  # a job that outlived the stop must not make the deleted folder again
                raise RestorekitError("the server is stopping: nothing more is written")
            self._count += 1
            path = self.root / group / f"{self._count}.{ext}"
            token = secrets.token_urlsafe(18)
            self._writing += 1
        written = False
        try:
            atomic_write_bytes(path, data)
            written = True
        except OSError as exc:
            log_error(str(exc))  # the path and the errno, for the operator
            with self._lock:
                if not any(f.group == group for f in self._files.values()):  # the group's first file
                    shutil.rmtree(self.root / group, ignore_errors=True)
            raise storage_error(exc) from None
        finally:
            with self._lock:
                self._writing -= 1
                if written and not self._closed:
                    self._files[token] = StoredFile(path, MEDIA_TYPES[ext], safe_download_name(download_name), group)
                self._lock.notify_all()
        return token

    def get(self, token: str) -> StoredFile | None:
        """The file an id stands for, or None (an unknown or malformed id)."""
        if not TOKEN_RE.fullmatch(token):
            return None
        with self._lock:
            return self._files.get(token)

    def drop_group(self, group: str) -> None:
        """Forget and delete every file of ``group``."""
        with self._lock:
            for token in [t for t, f in self._files.items() if f.group == group]:
                del self._files[token]
        shutil.rmtree(self.root / group, ignore_errors=True)

    def close(self, wait: float = 30.0) -> None:
        """Delete the whole folder (the server stops): no write starts after this, and one in
        progress is waited for (at most ``wait`` s), so that it cannot make the folder again."""
        try:
            with self._lock:
                self._closed = True
                self._lock.wait_for(lambda: self._writing == 0, timeout=wait)
                self._files.clear()
        finally:  # a second Ctrl-C during the wait still removes what the users sent
            shutil.rmtree(self.root, ignore_errors=True)
