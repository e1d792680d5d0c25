"""The installed distributions' entry points, each distribution read on its own.

``importlib.metadata.entry_points(group=…)`` parses every installed distribution at once, so one
with a malformed ``entry_points.txt`` (another tool's, even) failed every restorekit command.
Torch-free and importing only the error helpers: the plugin registry and the weights package
(converter packages) both read entry points through it.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from importlib.metadata import EntryPoint, distributions
from typing import Any

from . import ENTRY_POINT_GROUP
from .errors import exception_line

__all__ = ["dist_label", "installed_entry_points", "normalised_name"]


def normalised_name(name: str) -> str:
    """A distribution name as packaging compares them (``Foo_bar`` → ``foo-bar``)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def dist_label(dist: Any) -> str:
    """How a distribution is named in messages: its ``Name``, else its metadata folder, else '?'."""
    name = getattr(dist, "name", None) if dist is not None else None
    if isinstance(name, str) and name:
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
    seen: set[str] = set()
    for dist in distributions():
        try:
            key = str(getattr(dist, "_normalized_name", None) or normalised_name(dist.name or ""))
        except Exception:
            key = ""
        if key:
            if key in seen:
                continue
            seen.add(key)
        try:
            found.extend(ep for ep in dist.entry_points if ep.group == group)
        except Exception as exc:
            if warn is not None and _declares_group(dist, group):
                warn(f"skipped the installed distribution {dist_label(dist)}: its entry_points.txt cannot be "
                     f"read ({exception_line(exc)}); reinstall or uninstall it")
    return found


def _declares_group(dist: Any, group: str) -> bool:
    try:
        text = dist.read_text("entry_points.txt") or ""
    except Exception:
        return False
    return any(line.strip() == f"[{group}]" for line in text.splitlines())
