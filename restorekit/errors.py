"""Exceptions with messages meant for users: one line, naming the thing and the problem."""

from __future__ import annotations

import errno


class RestorekitError(Exception):
    """Base for errors restorekit reports to users without a traceback."""


def exception_line(exc: BaseException, limit: int = 400) -> str:
    """``Type: text`` of an exception on one line: its lines joined with " | " (pluggy's and
    pydantic's say what is wrong on the second and later lines), cut to ``limit`` characters."""
    lines = [ln.strip() for ln in str(exc).strip().splitlines() if ln.strip()]
    text = f"{type(exc).__name__}: {' | '.join(lines)}" if lines else type(exc).__name__
    return text if len(text) <= limit else text[: limit - 1] + "…"


class ImageError(RestorekitError):
    """An input image cannot be read or used."""


class PluginError(RestorekitError):
    """A plugin failed to load or registered something inconsistent."""


class UnknownNameError(RestorekitError, KeyError):
    """A name (method, metric, weight…) that nothing registered."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class WeightsMissing(RestorekitError):
    """Weights a component needs are not in the cache; the message names the fix."""

    def __init__(self, name: str, detail: str = "", *, fix: str | None = None) -> None:
        self.name = name
        if fix is None:  # a registered weights name: the registry commands get it
            fix = (f"run `restorekit weights pull {name}` (needs network) or "
                   f"`restorekit weights import {name} FILE` (a file you already have)")
        super().__init__(f"weights '{name}' are not available{': ' + detail if detail else ''}; {fix}")


class DependencyMissing(RestorekitError):
    """A Python package a component needs is not installed; the message names the install command.
    Like :class:`WeightsMissing` it says the component cannot run here, not that it is broken: the
    plugin checks report it skipped."""


class InsufficientMemory(RestorekitError):
    """A job would need more memory than its device has left; refused before it starts."""


class IntegrityError(RestorekitError):
    """A file's sha256 or size does not match its spec."""


class UnsafeFileError(RestorekitError):
    """A file would run code when loaded (a pickle with arbitrary globals)."""


class FileSystemError(RestorekitError, OSError):
    """A file or folder restorekit must read or write cannot be; the message names the path and the fix.

    Also an ``OSError``, so code that treats I/O failures per item keeps doing so.
    """


class CacheError(FileSystemError):
    """The weights/export cache (``$RESTOREKIT_HOME`` or the platform cache folder) cannot be used."""


_FIXES = {
    errno.EACCES: "check its permissions or choose another location",
    errno.EPERM: "check its permissions or choose another location",
    errno.EROFS: "the file system is read-only: choose another location",
    errno.ENOSPC: "free some disk space or choose another location",
    errno.EDQUOT: "free some disk space (quota exceeded) or choose another location",
    errno.ENOTDIR: "a file stands where a folder is needed: move it or choose another location",
    errno.EEXIST: "a file stands where a folder is needed: move it or choose another location",
    errno.EISDIR: "a folder stands where a file is needed: move it or choose another location",
    errno.ENAMETOOLONG: "use a shorter path",
    errno.EFBIG: ("it would be larger than the file system or this process's file-size limit allows (`ulimit -f`): "
                  "raise the limit or choose another location"),
    errno.ENOENT: "check that the path exists",
}


def os_error_fix(exc: OSError) -> str:
    """What to do about an ``OSError``, by its errno (the tail of :func:`describe_os_error`)."""
    return _FIXES.get(exc.errno or -1, "check the path and its permissions")


def describe_os_error(exc: OSError, path: object = None, action: str = "write") -> str:
    """One line for an ``OSError``: ``cannot <action> <path>: <reason>; <fix>``."""
    if isinstance(exc, RestorekitError):
        return str(exc)
    where = path if path is not None else (exc.filename if exc.filename is not None else "a file")
    reason = exc.strerror or str(exc) or type(exc).__name__
    return f"cannot {action} {where}: {reason}; {os_error_fix(exc)}"


# -- stops (Ctrl-C, SIGTERM) and what a stopped command kept ----------------------------------

#: How a note that says what a stopped command kept begins (:func:`note_kept`).
KEPT = "kept: "


def is_stop(exc: BaseException) -> bool:
    """Whether ``exc`` is a stop from outside: Ctrl-C (``KeyboardInterrupt``) or a signal's exit
    (``SystemExit`` with a code of 128 + the signal, as ``restorekit.cli`` raises on SIGTERM)."""
    return isinstance(exc, KeyboardInterrupt) or (
        isinstance(exc, SystemExit) and isinstance(exc.code, int) and 128 < exc.code < 128 + 65)


def note_kept(exc: BaseException, what: str) -> None:
    """Note on the stop ``exc`` what the code it passes through kept (``what``: a sentence without
    the leading "kept: "); the innermost note is the one said (:func:`kept_note`)."""
    exc.add_note(KEPT + what)


def kept_note(exc: BaseException) -> str | None:
    """What the first :func:`note_kept` on ``exc`` said (without "kept: "), or None."""
    for note in getattr(exc, "__notes__", None) or ():
        if isinstance(note, str) and note.startswith(KEPT):
            return note[len(KEPT):]
    return None
