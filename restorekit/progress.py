"""Cooperative progress and cancellation for long restores (PULSE's search, a job of ``serve``).

A caller that wants to follow a restore — or stop it half-way — installs a reporter for the
current thread with :func:`reporting`; long-running code calls :func:`report` at its natural
steps (an optimisation step, a face, a sample). The reporter may raise :class:`Cancelled`, which
unwinds the restore like any other error: methods restore their own state in ``finally`` blocks
and callers write outputs atomically, so nothing is left half-done. Without a reporter,
:func:`report` costs one context-variable lookup, so methods call it unconditionally.

The reporter lives in a context variable: it is the installing thread's (or asyncio task's) alone.
Other threads see none, unless they run in a copy of that context (``contextvars.copy_context().run``,
``asyncio.to_thread``; a thread started inside the block on a free-threaded Python ≥ 3.14, which
starts threads in a copy of their starter's context), which is how a caller hands it on; and it is
gone when the block ends. So one job's reporter never hears, nor cancels, another job's restore.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar

from .errors import RestorekitError

__all__ = ["Cancelled", "Reporter", "draws_bars", "report", "reporting"]

#: ``reporter(label, done, total)``: ``done`` of ``total`` steps of the stage ``label`` are finished.
Reporter = Callable[[str, int, int], None]

_REPORTER: ContextVar[Reporter | None] = ContextVar("restorekit_progress_reporter", default=None)


class Cancelled(RestorekitError):
    """A restore stopped because its caller asked it to (raised by a reporter)."""


@contextmanager
def reporting(reporter: Reporter) -> Iterator[None]:
    """Send the :func:`report` calls made in this thread (context) to ``reporter`` while inside."""
    token = _REPORTER.set(reporter)
    try:
        yield
    finally:
        _REPORTER.reset(token)


def report(label: str, done: int, total: int) -> None:
    """Tell the current reporter, if any, that ``done`` of ``total`` steps of ``label`` are finished.

    May raise :class:`Cancelled` (from the reporter): call it where stopping is safe.
    """
    reporter = _REPORTER.get()
    if reporter is not None:
        reporter(label, done, total)


def draws_bars() -> bool:
    """Whether a method may draw a progress bar of its own on this process's terminal: not in the
    ranks of a ``torchrun`` job but the first (rank 0 draws the job's bar; every rank drawing its
    own garbles the terminal). Callers check ``-q`` and whether stderr is a terminal themselves."""
    from .process_layout import process_layout

    try:
        return process_layout().get("RANK", 0) == 0
    except RestorekitError:  # (malformed torchrun variables: the command refuses them itself)
        return True
