"""Exceptions with messages meant for users: one line, naming the thing and the problem."""

from __future__ import annotations


class RestorekitError(Exception):
    """Base for errors restorekit reports to users without a traceback."""


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


class IntegrityError(RestorekitError):
    """A file's sha256 or size does not match its spec."""


class UnsafeFileError(RestorekitError):
    """A file would run code when loaded (a pickle with arbitrary globals)."""
