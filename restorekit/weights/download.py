"""HTTP download into the weights cache: progress bar, resume, sha256 check, atomic move.

Bytes go to ``<dest>.part``. An interrupted transfer keeps the ``.part`` and the next attempt
asks for the rest with an HTTP ``Range`` header (a server that ignores it sends the whole file
again, which is handled); with no sha256 to check the result against, only attempts of the same
call resume, and a ``.part`` an earlier run left is started over. When the transfer ends, size and sha256 are checked; a mismatch
deletes the ``.part`` and nothing is left behind. Only a verified file is moved onto ``dest``
(``os.replace``, atomic within one folder, once its bytes are on the disk). A ``.part`` that cannot
be written (disk full, read-only) is this machine's problem, not the connection's: no retry, the ``.part`` is removed
(a full disk is not left full; the next pull starts over) and a one-line
:class:`~restorekit.errors.CacheError` names the path. Stopped (Ctrl-C, SIGTERM), a download keeps
its ``.part`` where a later pull resumes it (and says so on the exception), and removes it where none
would (no sha256: started over).

With no sha256 (an unpinned file, pulled with ``--trust``) nothing would notice bytes swapped on
the way, so such a file comes only over https: a plain-http URL, or a redirect to one, is refused
(but for a loopback host, which no one else is on the way to).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import http.client
import os
import re
import socket
import stat
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import BinaryIO

from .. import __version__, safe_open
from ..errors import CacheError, IntegrityError, RestorekitError, is_stop, note_kept
from ..hosts import is_loopback
from . import cache

__all__ = ["DownloadError", "download", "part_path"]

_CHUNK = 1 << 20
#: The most a download whose spec pins no size may bring, whatever length the server announces:
#: a server that never stops sending (or announces any length) must not fill the disk. Larger than
#: any weights file here. Archive imports of unsized files use it too.
MAX_UNSIZED = 8 << 30
_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+|\*)")


class DownloadError(RestorekitError):
    """Every mirror failed; the message lists why for each."""


def plain_http_problem(url: str) -> str | None:
    """Why ``url`` cannot bring a file that has no sha256 to check it by; None when it can."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme == "https" or (parts.scheme == "http" and is_loopback(parts.hostname or "")):
        return None
    return (f"{url} is plain {parts.scheme or 'http'}, and with no sha256 in the spec nothing would notice a file "
            "swapped on the way; refused (give the file's sha256, or an https URL)")


class _PinnedOrHttps(urllib.request.HTTPRedirectHandler):
    """Follows redirects, but not off https for a file with no sha256 to check it by."""

    def __init__(self, pinned: bool) -> None:
        self.pinned = pinned

    def redirect_request(self, req, fp, code, msg, headers, newurl):  # type: ignore[no-untyped-def]
        problem = None if self.pinned else plain_http_problem(newurl)
        if problem is not None:
            raise DownloadError(f"{req.full_url} redirected to {problem}")
        return super().redirect_request(req, fp, code, msg, headers, newurl)


def part_path(dest: Path) -> Path:
    """Where the partial download of ``dest`` is kept."""
    return dest.with_name(dest.name + ".part")


class _Interrupted(Exception):
    """The connection ended early; the .part keeps what arrived."""


def _write_failed(exc: OSError, part: Path, total: int | None) -> CacheError:
    """A write of ``part`` failed (disk full, read-only, removed): this machine's disk, not the
    network, so it is not retried. The ``.part`` is removed — a partial download must not keep a
    full disk full — and the next pull starts over. The one-line error names the path."""
    try:
        part.unlink(missing_ok=True)
        left = "the partial download was removed"
    except OSError:
        left = f"the partial download {part} could not be removed"
    full = exc.errno in (errno.ENOSPC, errno.EDQUOT)
    need = f"the file needs {total} bytes; " if full and total is not None else ""
    return cache.cache_error(exc, part, detail=need + left)


# The .part sits in the cache, a folder other users may write to (a shared RESTOREKIT_HOME): whoever
# can write it could plant a symbolic link (or a hard link, a FIFO) at the .part's name, and an
# open by name would then write the download into the file it points at, and move the link into
# the cache. So the .part is only ever written through a file this process opened without
# following links (:mod:`restorekit.safe_open`), its bytes are hashed through that same file, and
# only that file is moved into place.


def _resumed_part(part: Path) -> BinaryIO | None:
    """The ``.part`` an earlier attempt left, opened to append to (and read); None when there is
    none. Anything there but a regular file with one name (a symbolic or hard link, a FIFO) is
    not this download's: its name is removed, never followed, and the download starts over."""
    try:
        st = os.lstat(part)
    except FileNotFoundError:
        return None
    if not stat.S_ISREG(st.st_mode) or st.st_nlink > 1:
        part.unlink()
        return None
    return safe_open.open_append(part)


def _fresh_part(part: Path) -> BinaryIO:
    """A new, empty ``.part``, created exclusively (whatever stood at its name removed first, a
    link included, and never followed)."""
    part.unlink(missing_ok=True)
    return safe_open.create_exclusive(part)


def _hash_prefix(f: BinaryIO | None) -> tuple[hashlib._Hash, int]:
    """sha256 and length of what the open ``.part`` ``f`` holds (read through ``f``, not its name)."""
    h = hashlib.sha256()
    n = 0
    if f is not None:  # (opened to append: every write goes to its end, wherever reading left off)
        os.lseek(f.fileno(), 0, os.SEEK_SET)
        while block := os.read(f.fileno(), _CHUNK):
            h.update(block)
            n += len(block)
    return h, n


def _write_all(f: BinaryIO, block: bytes) -> None:
    """Write all of ``block`` to ``f`` (a resumed ``.part`` is unbuffered: one write may take less)."""
    view = memoryview(block)
    while view:
        view = view[f.write(view) or 0:]


def _close(f: BinaryIO) -> os.stat_result:
    """Close the ``.part`` ``f`` after writing it, its bytes on the disk (:func:`~restorekit.safe_open.sync_data`: where the
    disk reports a full disk only now, this raises); returns what it is (to move only that file)."""
    with f:
        f.flush()
        safe_open.sync_data(f.fileno())
        return os.fstat(f.fileno())


def _fetch(url: str, part: Path, *, size: int | None, timeout: float, progress: object | None,
           label: str, pinned: bool = True) -> tuple[str, os.stat_result]:
    """Bring ``part`` to the complete file from ``url``; return its sha256 and the file written
    (``fstat``). ``pinned=False``: the caller has no sha256 to check the result by (redirects off
    https are refused)."""
    try:
        f = _resumed_part(part)
    except OSError as exc:
        raise cache.cache_error(exc, part) from exc
    try:
        return _fetch_into(f, url, part, size=size, timeout=timeout, progress=progress, label=label, pinned=pinned)
    finally:
        if f is not None:
            f.close()  # (no-op when _fetch_into wrote and closed it)


def _fetch_into(f: BinaryIO | None, url: str, part: Path, *, size: int | None, timeout: float,
                progress: object | None, label: str, pinned: bool) -> tuple[str, os.stat_result]:
    """:func:`_fetch` with the ``.part`` an earlier attempt left open as ``f`` (None: none)."""
    try:
        h, have = _hash_prefix(f)
    except OSError as exc:
        raise cache.cache_error(exc, part, action="read") from exc
    if size is not None and have > size:  # stale partial from a different file
        assert f is not None
        f.close()
        f = None
        part.unlink()
        h, have = hashlib.sha256(), 0
    headers = {"User-Agent": f"restorekit/{__version__}", "Accept-Encoding": "identity"}
    if have:
        headers["Range"] = f"bytes={have}-"
    req = urllib.request.Request(url, headers=headers)
    try:
        resp = urllib.request.build_opener(_PinnedOrHttps(pinned)).open(req, timeout=timeout)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and have:
            # Nothing left after ``have`` bytes: complete only if the file is exactly that long (by
            # the spec's size, else by the server's "bytes */LENGTH"); a longer leftover .part (another
            # version of the file) is not the file.
            m = re.fullmatch(r"bytes \*/(\d+)", (exc.headers.get("Content-Range", "") if exc.headers else "").strip())
            served = int(m.group(1)) if m else None
            if (size if size is not None else served) == have and served in (None, have):
                assert f is not None  # (have > 0 bytes came from it)
                return h.hexdigest(), os.fstat(f.fileno())
        if exc.code == 416:
            part.unlink(missing_ok=True)
            raise _Interrupted(f"server refused to resume ({exc.code}); starting over") from exc
        raise
    with resp:
        ctype = resp.headers.get("Content-Type", "")
        if ctype.startswith("text/html"):
            raise DownloadError(f"{url} returned an HTML page, not a weights file (a login or confirmation "
                                "page?); download it in a browser and use `restorekit weights import`")
        status = resp.status
        total: int | None
        if status == 206:
            m = _CONTENT_RANGE.match(resp.headers.get("Content-Range", ""))
            if not m or int(m.group(1)) != have:
                raise _Interrupted("server answered a different range; starting over")
            total = int(m.group(3)) if m.group(3) != "*" else size
            fresh = f is None  # (a 206 for bytes 0- when nothing was asked for)
        else:
            h, have = hashlib.sha256(), 0
            length = resp.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else size
            fresh = True
        if size is not None and total is not None and total != size:
            raise IntegrityError(f"{url} serves {total} bytes, expected {size}; refused")
        # Never more than the file can be: its pinned size; with none, what the server announces but
        # at most MAX_UNSIZED (an announced length is the server's word, not the spec's).
        if size is None and total is not None and total > MAX_UNSIZED:
            raise IntegrityError(f"{url} announces {total} bytes, more than the {MAX_UNSIZED} bytes {label} can have "
                                 "with no size in its spec; refused")
        limit = size if size is not None else min(total, MAX_UNSIZED) if total is not None else MAX_UNSIZED
        task = None
        if progress is not None:
            task = progress.add_task(label, total=total, completed=have)  # type: ignore[attr-defined]
        interrupted: _Interrupted | None = None
        try:
            # Only reading is the network's doing (retried, the .part kept to resume from); an
            # OSError from open, write, flush or close is this machine's disk (full, read-only, gone).
            if fresh:
                if f is not None:
                    f.close()
                f = _fresh_part(part)
            assert f is not None
            with f:
                try:
                    while True:
                        try:
                            block = resp.read(_CHUNK)
                        except (http.client.IncompleteRead, ConnectionError, socket.timeout, TimeoutError,
                                OSError) as exc:
                            interrupted = _Interrupted(f"connection ended after {have} bytes ({type(exc).__name__})")
                            interrupted.__cause__ = exc
                            break
                        if not block:
                            break
                        if have + len(block) > limit:
                            raise IntegrityError(f"{url} sends more than the {limit} bytes {label} can have; refused")
                        _write_all(f, block)
                        h.update(block)
                        have += len(block)
                        if task is not None:
                            progress.update(task, completed=have)  # type: ignore[attr-defined]
                finally:
                    if task is not None:
                        progress.remove_task(task)  # type: ignore[attr-defined]
                written = _close(f)
        except OSError as exc:
            raise _write_failed(exc, part, total) from exc
        if interrupted is not None:
            raise interrupted
        if total is not None and have < total:
            raise _Interrupted(f"connection ended after {have} of {total} bytes")
    return h.hexdigest(), written


def _note_stopped(exc: BaseException, part: Path, *, resumable: bool) -> None:
    """A stop (Ctrl-C, SIGTERM) during :func:`download`: note on ``exc`` what is kept. A ``.part``
    with no sha256 to check it by is removed, since nothing would resume it (the next call starts
    over), and a partial download of gigabytes must not stay for nothing; so is an empty one."""
    try:
        have = os.lstat(part).st_size
    except OSError:
        return
    if not resumable or not have:
        with contextlib.suppress(OSError):
            part.unlink()
        return
    note_kept(exc, f"the partial download {part} ({have:,} bytes); pulling again resumes it")


def _progress(quiet: bool) -> object | None:
    if quiet:
        return None
    from rich.console import Console
    from rich.progress import (BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn,
                               TransferSpeedColumn)

    from ..terminals import stream_animates, stream_is_terminal

    return Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                    TimeRemainingColumn(), console=Console(stderr=True, force_terminal=stream_is_terminal(sys.stderr)),
                    transient=True, disable=not stream_animates(sys.stderr))


def download(urls: Sequence[str], dest: str | os.PathLike[str], *, sha256: str | None, size: int | None,
             quiet: bool = False, retries: int = 2, timeout: float = 60.0, label: str | None = None,
             backoff: float = 0.5) -> tuple[str, str]:
    """Download ``dest`` from the first mirror that yields a file with the right size and sha256.

    Each mirror gets ``1 + retries`` attempts that resume from the ``.part`` file. ``sha256``
    None accepts any content (the caller records the hash); a ``.part`` from an earlier call is
    then discarded, not resumed. Returns ``(sha256, url used)``.
    Raises :class:`IntegrityError` when content arrives but does not match (the ``.part`` is
    removed), :class:`DownloadError` when no mirror could be read (the ``.part`` is kept so a
    later call resumes), :class:`~restorekit.errors.CacheError` at once, with no retry, when the
    ``.part`` cannot be written (a full disk: the ``.part`` is removed, freeing the space).
    """
    dest = Path(dest)
    if not urls:
        raise DownloadError(f"no URL to download {dest.name} from")
    cache.refuse_linked_folder(dest.parent)  # (a weights spec's folder: never written through a link)
    dest.parent.mkdir(parents=True, exist_ok=True)
    cache.refuse_linked_folder(dest.parent)
    part = part_path(dest)
    if sha256 is None:
        # Nothing will check the result, so bytes an earlier run left (perhaps of another version
        # of the file) must not become part of it: start from zero. Retries below still resume.
        part.unlink(missing_ok=True)
    label = label or dest.name
    failures: list[str] = []
    mismatch: IntegrityError | None = None
    progress = _progress(quiet)
    if progress is not None:
        progress.start()  # type: ignore[attr-defined]
    try:
        for url in urls:
            problem = plain_http_problem(url) if sha256 is None else None
            if problem is not None:
                failures.append(problem)
                continue
            for attempt in range(1 + retries):
                try:
                    digest, written = _fetch(url, part, size=size, timeout=timeout, progress=progress,
                                             label=label, pinned=sha256 is not None)
                except _Interrupted as exc:
                    failures.append(f"{url}: {exc}")
                    if attempt < retries:
                        time.sleep(backoff * (attempt + 1))
                    continue
                except IntegrityError as exc:
                    part.unlink(missing_ok=True)
                    mismatch = exc
                    break
                except DownloadError as exc:
                    failures.append(str(exc))
                    break
                except CacheError:  # the cache's disk, not the mirror: another try or mirror cannot help
                    raise
                except (urllib.error.URLError, OSError, http.client.HTTPException, ValueError) as exc:
                    reason = getattr(exc, "reason", None) or exc
                    failures.append(f"{url}: {reason}")
                    break
                got = written.st_size  # (the file written, by its fd: not whatever its name holds now)
                if size is not None and got != size:
                    part.unlink(missing_ok=True)
                    mismatch = IntegrityError(f"{url} gave {got} bytes for {dest.name}, expected {size}; refused")
                    break
                if sha256 is not None and digest != sha256:
                    part.unlink(missing_ok=True)
                    mismatch = IntegrityError(f"{url} gave {dest.name} with sha256 {digest}, expected {sha256}; "
                                              "refused and deleted")
                    break
                cache.move_into_place(part, dest, written)  # only the file written and checked
                return digest, url
    except BaseException as exc:
        if is_stop(exc):
            _note_stopped(exc, part, resumable=sha256 is not None)
        raise
    finally:
        if progress is not None:
            progress.stop()  # type: ignore[attr-defined]
    if mismatch is not None:
        raise mismatch
    raise DownloadError(f"could not download {dest.name}: " + "; ".join(failures[-len(urls) * (1 + retries):]))
