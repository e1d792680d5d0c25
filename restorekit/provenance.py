"""Where an output image came from, recorded inside the file.

``restorekit run`` writes into each output the settings that made it (method, scale, options,
the sha256 of the weights it used…) as one JSON object: a PNG ``iTXt`` chunk named ``restorekit``,
or, in JPEG and WebP, EXIF ImageDescription (with EXIF Software ``restorekit <version>``). So
anyone can tell what made an output (pillow, ``exiftool``, :func:`read_note`), and a rerun into the
same folder can tell outputs made with other settings from finished ones. The object always has a
``"restorekit"`` key (the version that wrote it), which is how :func:`read_note` knows it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any

from PIL import Image

#: The PNG text chunk's keyword, and the key every note carries.
NOTE_KEY = "restorekit"
_EXIF_DESCRIPTION = 0x010E
_EXIF_SOFTWARE = 0x0131
#: A JPEG's EXIF segment holds at most 64 KiB: a longer note is left out of JPEG and WebP files.
MAX_EXIF_NOTE = 60_000


def _version() -> str:
    from . import __version__

    return __version__


def note_text(note: Mapping[str, Any]) -> str:
    """The note as stored: compact JSON, ASCII only (EXIF text is ASCII), with the writing version."""
    return json.dumps({NOTE_KEY: _version(), **note}, ensure_ascii=True, sort_keys=True, separators=(",", ":"))


def save_args(fmt: str, note: Mapping[str, Any] | None) -> dict[str, Any]:
    """Keyword arguments for pillow's ``save`` in ``fmt`` (PNG, JPEG, WEBP) that embed ``note``."""
    if note is None:
        return {}
    text = note_text(note)
    if fmt == "PNG":
        from PIL import PngImagePlugin

        info = PngImagePlugin.PngInfo()
        info.add_itxt(NOTE_KEY, text)
        return {"pnginfo": info}
    if len(text) > MAX_EXIF_NOTE:
        return {}
    exif = Image.Exif()
    exif[_EXIF_DESCRIPTION] = text
    exif[_EXIF_SOFTWARE] = f"restorekit {_version()}"
    return {"exif": exif.tobytes()}


def read_note(path: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The note in an image file restorekit wrote; None for a file without one (another program's,
    an older restorekit's) or one that cannot be read. Reads the header, not the pixels."""
    from .images import pillow_limit
    from .safe_open import open_regular

    try:  # only a regular file: a FIFO or a device at an output's path is no output restorekit wrote
        fd = open_regular(path)
    except (OSError, ValueError):
        return None
    with os.fdopen(fd, "rb") as source:
        try:
            with pillow_limit(0), Image.open(source, formats=("PNG", "JPEG", "WEBP")) as im:  # header only
                text = im.info.get(NOTE_KEY) if im.format == "PNG" else \
                    im.getexif().get(_EXIF_DESCRIPTION) if im.format in ("JPEG", "WEBP") else None
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError, Image.DecompressionBombWarning):
            return None
    if not isinstance(text, str):
        return None
    try:
        note = json.loads(text)
    except ValueError:
        return None
    return note if isinstance(note, dict) and NOTE_KEY in note else None
