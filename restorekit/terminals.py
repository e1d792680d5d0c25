"""Whether output goes to a terminal: what sets a table's width and lets a progress bar redraw itself.

rich answers ``Console.is_terminal`` yes under ``FORCE_COLOR`` (https://force-color.org), which CI
services and users set to get colour in their logs: a progress bar then redraws into the log file
(cursor codes, a line per refresh) and tables take an 80-column terminal's layout. Here colour and
terminal are kept apart: a stream is a terminal where it says so (``isatty``), where a console was made
one on purpose (``force_terminal``), or where rich's own switches say so (``TTY_INTERACTIVE``,
``TTY_COMPATIBLE``: ``1`` yes, ``0`` no). Nothing here imports restorekit: every layer may use it.
"""

from __future__ import annotations

import os
from typing import Any

#: rich's switches, the first set to 0 or 1 deciding: animations allowed, output terminal-like.
SWITCHES = ("TTY_INTERACTIVE", "TTY_COMPATIBLE")


def stream_is_terminal(stream: Any) -> bool:
    """Whether ``stream`` is a terminal (or rich's switches say to take it for one)."""
    for name in SWITCHES:
        value = os.environ.get(name, "").strip()
        if value in ("0", "1"):
            return value == "1"
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError, OSError):  # no isatty, a closed file
        return False


def console_is_terminal(console: Any) -> bool:
    """Whether a rich ``console`` writes to a terminal: as made (``force_terminal=True``/``False``,
    a test's or a caller's choice), else as its file is (:func:`stream_is_terminal`)."""
    forced = getattr(console, "_force_terminal", None)
    if forced is not None:
        return bool(forced)
    return stream_is_terminal(console.file)
