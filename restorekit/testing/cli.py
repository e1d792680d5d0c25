"""Assertions about what a command prints when it refuses: restorekit's promise of one line."""

from __future__ import annotations


def error_line(text: str) -> str:
    """The one non-empty line of ``text`` (a command's stderr); fails the test, showing ``text``,
    when there are more or none, or a traceback."""
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and "Traceback" not in text, text
    return lines[0]
