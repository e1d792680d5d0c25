"""Assertions about what a command prints when it refuses: restorekit's promise of one line."""

from __future__ import annotations


def error_line(text: str) -> str:
    """The one non-empty line of ``text`` (a command's stderr); fails the test, showing ``text``,
    when there are more or none, or a traceback. A usage error in click's form (``Usage: …`` and
    ``Try '… --help'`` above its ``Error: …`` line) counts as its error line."""
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    if len(lines) == 3 and lines[0].startswith("Usage: ") and lines[1].startswith("Try ") \
            and lines[2].startswith("Error: "):
        lines = lines[2:]
    assert len(lines) == 1 and "Traceback" not in text, text
    return lines[0]
