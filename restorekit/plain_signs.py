"""ASCII stand-ins for the signs restorekit writes (↑ ↓ Δ − → ≥ …), for a stdout or stderr that
cannot encode them (Windows' cp1252 when redirected, ``PYTHONIOENCODING=ascii``).

A stream set to :data:`ERRORS` writes ``psnr_rgb ^`` rather than ``psnr_rgb \\u2191``: readable in a
log, and the signs a table holds (arrows, minus, Δ, ×, ±, …) stand in with one character each, so
rich's columns, measured one cell per sign, stay aligned. Any other character the stream cannot
encode (a file name's) is written as its backslash escape, unambiguous.

Nothing here imports restorekit: every layer may use it.
"""

from __future__ import annotations

import codecs

#: The error-handler name to give ``TextIOWrapper.reconfigure(errors=...)``.
ERRORS = "restorekit-plain-signs"

#: One character each: these appear inside table cells and headers, where a longer stand-in would
#: push the columns after it out of line.
ONE_CELL = {"↑": "^", "↓": "v", "−": "-", "Δ": "d", "×": "x", "±": "~", "…": ".", "·": ".", "—": "-",
            "–": "-", "²": "2", "³": "3"}
#: Signs of notes and messages (never in a table's columns): as they are written in ASCII text.
IN_TEXT = {"→": "->", "←": "<-", "≥": ">=", "≤": "<=", "≠": "!=", "≈": "~=", "÷": "/", "½": "1/2"}
SIGNS = ONE_CELL | IN_TEXT


def plain(text: str) -> str:
    """``text`` with each sign of :data:`SIGNS` replaced by its ASCII stand-in."""
    return "".join(SIGNS.get(ch, ch) for ch in text)


def _stand_in(exc: UnicodeError) -> tuple[str, int]:
    if not isinstance(exc, UnicodeEncodeError):
        raise exc
    part = exc.object[exc.start:exc.end]
    return "".join(SIGNS.get(ch) or ch.encode("ascii", "backslashreplace").decode("ascii") for ch in part), exc.end


def register() -> str:
    """Register the error handler (once is enough; again is harmless) and return its name."""
    try:
        codecs.lookup_error(ERRORS)
    except LookupError:
        codecs.register_error(ERRORS, _stand_in)
    return ERRORS
