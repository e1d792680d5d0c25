"""Whether output goes to a terminal: what sets a table's width and lets a progress bar redraw itself.

rich answers ``Console.is_terminal`` yes under ``FORCE_COLOR`` (https://force-color.org), which CI
services and users set to get colour in their logs: a progress bar then redraws into the log file
(cursor codes, a line per refresh) and tables take an 80-column terminal's layout. Here colour and
terminal are kept apart, and so are two questions, as rich's own switches keep them:

- *is it a terminal* (a table's width): where the stream says so (``isatty``; not IDLE's shell), or
  ``TTY_COMPATIBLE`` says so (``1`` yes, ``0`` no);
- *may it animate* (a progress bar that redraws itself, instead of a line now and then): a terminal
  that is not ``TERM=dumb`` (an editor's shell buffer), unless ``TTY_INTERACTIVE`` says (``1``/``0``).

Nothing here imports restorekit: every layer may use it.
"""

from __future__ import annotations

import os
import stat
import sys
from typing import Any


def _switch(name: str) -> bool | None:
    """rich's switch ``name``: True for ``1``, False for ``0``, None when it says neither."""
    value = os.environ.get(name, "").strip()
    return {"1": True, "0": False}.get(value)


def stream_is_terminal(stream: Any) -> bool:
    """Whether ``stream`` is a terminal (or ``TTY_COMPATIBLE`` says to take it for one)."""
    said = _switch("TTY_COMPATIBLE")
    if said is not None:
        return said
    if type(sys.stdin).__module__.startswith("idlelib"):  # IDLE's shell says isatty() but shows no escape codes
        return False
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError, OSError):  # no isatty, a closed file
        return False


def stream_animates(stream: Any) -> bool:
    """Whether a progress bar may redraw itself on ``stream``: ``TTY_INTERACTIVE`` where it says, else
    a terminal (:func:`stream_is_terminal`) that is not ``TERM=dumb``."""
    said = _switch("TTY_INTERACTIVE")
    if said is not None:
        return said
    return stream_is_terminal(stream) and os.environ.get("TERM", "").lower() not in ("dumb", "unknown")


def console_animates(console: Any) -> bool:
    """:func:`stream_animates` for a rich ``console``: one made a terminal on purpose
    (``force_terminal=True``, a test's or a caller's choice) animates unless ``TTY_INTERACTIVE=0``,
    one made no terminal never does."""
    forced = getattr(console, "_force_terminal", None)  # (set only from the constructor in rich >= 14)
    if forced is not None:
        return bool(forced) and _switch("TTY_INTERACTIVE") is not False
    return stream_animates(console.file)


def leave_hung_up_terminal() -> None:
    """On SIGHUP, point stdout and stderr at /dev/null where they are a terminal that has gone (a
    character device that no longer answers as a terminal): a write to it (a progress bar closing,
    a last note) fails with EIO, which replaced the stop's exit 129 with 1. A terminal still there
    (``kill -HUP`` from elsewhere), files and pipes are kept."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
    except OSError:
        return
    try:
        for fd in (1, 2):
            try:
                if stat.S_ISCHR(os.fstat(fd).st_mode) and not os.isatty(fd):
                    os.dup2(devnull, fd)
            except OSError:
                pass
    finally:
        os.close(devnull)
