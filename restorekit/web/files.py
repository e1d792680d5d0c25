"""The server's own temporary folder, and the only way a request reaches a file in it.

Every file the page shows or offers for download is written here (atomically: temp + rename)
under a name the server makes (``<group>/<n>.<ext>``) and is addressed by an opaque random id
(``secrets.token_urlsafe``) held in memory. A request names an id, never a path: an id that is
not in the table — whatever it spells, ``..`` included — is simply not found. The folder is
removed when the server stops, after any write in progress; nothing is written after that.
"""

from __future__ import annotations

import re
import secrets
import shutil
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

from ..errors import RestorekitError
from ..images import atomic_write_bytes

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


class FileStore:
    """Files in one temporary folder, by opaque id; grouped (per upload or job) for deletion."""

    def __init__(self, parent: Path | None = None) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="restorekit-serve-", dir=parent)).resolve()
        self._files: dict[str, StoredFile] = {}
        self._count = 0
        self._lock = threading.Condition()
        self._writing = 0  # writes in progress: close() waits for them
        self._closed = False

    def add(self, data: bytes, ext: str, download_name: str, group: str) -> str:
        """Write ``data`` as a new file of ``group``; returns its id."""
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
