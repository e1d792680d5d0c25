"""The installed distributions' entry points, each distribution read on its own.

``importlib.metadata.entry_points(group=…)`` parses every installed distribution at once, so one
with a malformed ``entry_points.txt`` (another tool's, even) failed every restorekit command.
Torch-free and importing only the error helpers: the plugin registry and the weights package
(converter packages) both read entry points through it, and the command finds here the
distribution to name when a library that reads them all at once (torch and pydantic, when they are
imported) fails on one (:func:`scan_entry_points`).
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from importlib.metadata import EntryPoint, distributions
from typing import Any

from . import ENTRY_POINT_GROUP
from .errors import exception_line

__all__ = ["FIRST_PARTY", "EntryPointsScan", "MalformedEntryPoints", "dist_field", "dist_label",
           "installed_entry_points", "normalised_name", "scan_entry_points"]

#: This repository's plugin distributions (normalised names): the plugin registry loads and merges
#: them before any other, and messages name them as what to install.
FIRST_PARTY = frozenset({"restorekit-baselines", "restorekit-psp-sr"})


def normalised_name(name: str) -> str:
    """A distribution name as packaging compares them (``Foo_bar`` → ``foo-bar``)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def dist_field(dist: Any, field: str) -> str | None:
    """A core-metadata field of ``dist`` (``Name``, ``Version``), or None when it is missing or unreadable.

    Read with ``metadata.get``, not ``dist.name``/``dist.version``: those index the metadata, which
    for a missing field warns (``DeprecationWarning: Implicit None on return values``, Python 3.12–3.13)
    and raises ``KeyError`` in later ``importlib.metadata`` releases. An object without ``metadata`` (a
    stand-in distribution) is asked for the attribute of that name."""
    if dist is None:
        return None
    try:
        meta = getattr(dist, "metadata", None)
        value = meta.get(field) if meta is not None else getattr(dist, field.lower(), None)
    except Exception:  # no METADATA file, an unreadable one, or a stand-in that raises
        return None
    return value if isinstance(value, str) and value else None


def dist_label(dist: Any) -> str:
    """How a distribution is named in messages: its ``Name``, else its metadata folder, else '?'."""
    name = dist_field(dist, "Name")
    if name:
        return name
    folder = getattr(dist, "_path", None)
    return f"the distribution at {folder}" if folder is not None else "?"


def installed_entry_points(group: str = ENTRY_POINT_GROUP, warn: Callable[[str], None] | None = None) -> list[EntryPoint]:
    """Every entry point of ``group`` that the installed distributions declare, each distribution read
    on its own: one whose entry points cannot be parsed (a line without ``=``) is skipped, with one
    line to ``warn`` when it has a ``[group]`` section (another tool's broken metadata is not ours
    to mention), instead of failing every command. A distribution found twice on the path counts
    once, the first (as :func:`importlib.metadata.entry_points` does)."""
    found: list[EntryPoint] = []
    for dist in _unique_distributions():
        try:
            found.extend(ep for ep in dist.entry_points if ep.group == group)
        except Exception as exc:
            if warn is not None and group in _sections(dist):
                bad = _malformed(dist, exc)
                warn(f"skipped the installed distribution {dist_label(dist)}: its entry_points.txt cannot be "
                     f"read ({bad.problem_at()}); {bad.fix()}")
    return found


def _unique_distributions() -> Iterator[Any]:
    """The installed distributions, one found twice on the path counted once, the first (as
    :func:`importlib.metadata.entry_points` counts them)."""
    seen: set[str] = set()
    for dist in distributions():
        key = _dist_key(dist)
        if key:
            if key in seen:
                continue
            seen.add(key)
        yield dist


def _dist_key(dist: Any) -> str:
    """The name ``importlib.metadata`` tells distributions apart by: its metadata folder's
    (``name-1.0.dist-info``), else its ``Name`` (read without ``dist.name``: :func:`dist_field`); '' if none."""
    folder = getattr(dist, "_path", None)
    if folder is not None:
        base, ext = os.path.splitext(os.path.basename(str(folder)))
        if ext in (".dist-info", ".egg-info") and base.partition("-")[0]:
            return normalised_name(base.partition("-")[0])
    return normalised_name(dist_field(dist, "Name") or "")


@dataclass(frozen=True)
class MalformedEntryPoints:
    """An installed distribution whose ``entry_points.txt`` :mod:`importlib.metadata` cannot parse."""

    dist: str  #: the distribution's name (:func:`dist_label`)
    path: str | None  #: the file, where the distribution is a folder on disk
    line_no: int | None  #: the offending line, 1-based, when one is to blame
    line: str | None  #: that line as written (stripped)
    problem: str  #: what is wrong with it, or the parser's error
    sections: frozenset[str]  #: the ``[group]`` sections the file names, readable or not

    def problem_at(self) -> str:
        """``PATH line N: 'LINE' has no '='`` (the parts that are known)."""
        where = self.path or "entry_points.txt"
        if self.line_no is not None:
            return f"{where} line {self.line_no}: {self.line!r} {self.problem}"
        return f"{where}: {self.problem}"

    def fix(self) -> str:
        """What to do: ``fix that line or uninstall NAME`` (that file, where no line is to blame)."""
        return f"fix that {'line' if self.line_no is not None else 'file'} or uninstall {self.dist}"


@dataclass(frozen=True)
class EntryPointsScan:
    """Every installed distribution's entry points, each read on its own."""

    malformed: tuple[MalformedEntryPoints, ...]
    groups: frozenset[str]  #: the groups some distribution declares, the malformed files' sections included


def scan_entry_points() -> EntryPointsScan:
    """Parse each installed distribution's ``entry_points.txt`` on its own, as
    :func:`importlib.metadata.entry_points` parses them all at once (one failure there fails every
    caller): which cannot be parsed, and where, and which groups are declared. A few milliseconds."""
    malformed: list[MalformedEntryPoints] = []
    groups: set[str] = set()
    for dist in _unique_distributions():
        try:
            groups.update(ep.group for ep in dist.entry_points)
        except Exception as exc:
            bad = _malformed(dist, exc)
            malformed.append(bad)
            groups.update(bad.sections)
    return EntryPointsScan(tuple(malformed), frozenset(groups))


def _malformed(dist: Any, exc: BaseException) -> MalformedEntryPoints:
    """Where ``dist``'s ``entry_points.txt`` fails to parse with ``exc``: the first line in a section
    without ``=`` (what :mod:`importlib.metadata`'s parser cannot split), else the error itself (a
    file that is not UTF-8 text)."""
    folder = getattr(dist, "_path", None)
    path = str(folder / "entry_points.txt") if folder is not None else None
    text = _text(dist)
    if text is not None:
        section = None
        for no, raw in enumerate(text.splitlines(), 1):
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            if line.startswith("[") and line.endswith("]"):
                section = line.strip("[]")
            elif section is not None and "=" not in line:
                return MalformedEntryPoints(dist_label(dist), path, no, line, "has no '='", _sections(dist))
    return MalformedEntryPoints(dist_label(dist), path, None, None, exception_line(exc), _sections(dist))


def _text(dist: Any) -> str | None:
    try:
        text = dist.read_text('entry_points.txt')
    except Exception:
        return None
    return text if isinstance(text, str) else None


def _sections(dist: Any) -> frozenset[str]:
    """The ``[group]`` sections ``dist``'s ``entry_points.txt`` names (none when it cannot be read)."""
    text = _text(dist)
    if text is None:  # not UTF-8: its section names still count (a torch backend declared there)
        folder = getattr(dist, "_path", None)
        try:
            text = "" if folder is None else (folder / "entry_points.txt").read_bytes().decode("utf-8", "replace")
        except Exception:
            text = ""
    lines = (line.strip() for line in text.splitlines())
    return frozenset(line.strip("[]") for line in lines if line.startswith("[") and line.endswith("]"))
