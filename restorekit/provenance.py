"""Where an output image came from, recorded inside the file.

``restorekit run`` writes into each output the settings that made it (method, scale, options,
the sha256 of the weights it used…) as one JSON object: a PNG ``iTXt`` chunk named ``restorekit``,
or, in JPEG and WebP, EXIF ImageDescription (with EXIF Software ``restorekit <version>``). So
anyone can tell what made an output (pillow, ``exiftool``, :func:`read_note`), and a rerun into the
same folder can tell outputs made with other settings from finished ones. The object always has a
``"restorekit"`` key (the version that wrote it), which is how :func:`read_note` knows it.

The note comes before the pixels, so a file cut short (a copy or a write that stopped: ``cp``,
``rsync``, a full disk) still carries it: :func:`cut_short` tells such a file from a finished one
by how it ends, without decoding it.
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Mapping
from typing import Any, BinaryIO

from PIL import Image

#: The PNG text chunk's keyword, and the key every note carries.
NOTE_KEY = "restorekit"
_EXIF_DESCRIPTION = 0x010E
_EXIF_SOFTWARE = 0x0131
#: A JPEG's EXIF segment holds at most 64 KiB: a longer note is left out of JPEG and WebP files.
MAX_EXIF_NOTE = 60_000
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
#: The last 12 bytes of a whole PNG: its IEND chunk (length 0, type, CRC).
_PNG_END = b"\x00\x00\x00\x00IEND\xaeB`\x82"
_JPEG_START = b"\xff\xd8\xff"
_JPEG_END = b"\xff\xd9"
#: JPEG markers that stand alone, without a length: TEM, RST0–7, SOI.
_JPEG_BARE = frozenset({0x01, *range(0xD0, 0xD9)})


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


def cut_short(path: str | os.PathLike[str]) -> str | None:
    """What a PNG, JPEG or WebP file at ``path`` lacks when it ends before its format's end (cut
    short by a copy or a write that stopped), in words (``"a PNG without its IEND chunk"``); None
    for a whole file, one of another format, or one that cannot be read. An empty file, or one
    within the first bytes of these formats, is cut short too (a full disk leaves those).

    Cheap, for a rerun over thousands of outputs: the first and last bytes, and only where those
    are not the format's end its structure (PNG chunk headers, JPEG markers) — never a decode. Data
    after the end (padding, a trailer) leaves a file whole."""
    from .safe_open import open_regular

    try:  # only a regular file: a FIFO or a device is no output (and is said so elsewhere)
        fd = open_regular(path)
    except (OSError, ValueError):
        return None
    with os.fdopen(fd, "rb") as f:
        try:
            return _missing_end(f, os.fstat(f.fileno()).st_size)
        except OSError:
            return None


def _missing_end(f: BinaryIO, size: int) -> str | None:
    """:func:`cut_short` of the open file ``f`` of ``size`` bytes."""
    head = f.read(12)
    if not head:
        return "an empty file"
    kind = _kind(head)
    if kind is None:
        return None
    if len(head) < 12:
        return f"a {kind} that ends within its first bytes"
    if kind == "WebP":  # RIFF: the size of what follows its first 8 bytes
        declared = 8 + struct.unpack("<I", head[4:8])[0]
        return f"a WebP shorter than its RIFF header says ({size} of {declared} bytes)" if size < declared else None
    f.seek(max(size - 12, 0))
    tail = f.read(12)
    if kind == "PNG":
        return None if tail == _PNG_END or _png_ended(f, size) else "a PNG without its IEND chunk"
    f.seek(0)
    return None if tail.endswith(_JPEG_END) or _jpeg_ended(f.read()) else "a JPEG without its end marker (FFD9)"


def _kind(head: bytes) -> str | None:
    """PNG, JPEG or WebP by a file's first bytes (as many of them as it has, up to 12), else None."""
    for kind, start in (("PNG", _PNG_SIGNATURE), ("JPEG", _JPEG_START)):
        if head[:len(start)] == start[:len(head)]:
            return kind
    riff, webp = head[:4], head[8:12]
    return "WebP" if riff == b"RIFF"[:len(riff)] and webp == b"WEBP"[:len(webp)] else None


def _png_ended(f: BinaryIO, size: int) -> bool:
    """Whether the PNG ``f`` holds a whole IEND chunk, its chunks walked by their headers (a PNG
    ending in data after its IEND, which its last bytes do not show)."""
    pos = len(_PNG_SIGNATURE)
    while pos + 12 <= size:
        f.seek(pos)
        header = f.read(8)
        if len(header) < 8:  # (shortened meanwhile)
            return False
        length, kind = struct.unpack(">I4s", header)
        if kind == b"IEND":
            return True
        pos += 12 + length
    return False


def _jpeg_ended(data: bytes) -> bool:
    """Whether the JPEG ``data`` reaches the end marker of its image, its segments walked by their
    lengths and its entropy-coded data searched for the next marker (FF then neither 00, a stuffed
    FF, nor a restart marker). A structure that is no JPEG's counts as ended: damaged, not cut short."""
    pos, n = 2, len(data)
    while True:
        start = pos
        while pos < n and data[pos] == 0xFF:  # the marker's FF and any fill bytes
            pos += 1
        if pos >= n:
            return False
        if pos == start:  # no marker where one belongs
            return True
        code, pos = data[pos], pos + 1
        if code == 0xD9:
            return True
        if code in _JPEG_BARE:
            continue
        if pos + 2 > n:
            return False
        length = struct.unpack(">H", data[pos:pos + 2])[0]
        if length < 2:
            return True
        pos += length
        if pos > n:
            return False
        if code != 0xDA:  # (start of scan: entropy-coded data follows)
            continue
        while True:
            pos = data.find(b"\xff", pos)
            if pos < 0 or pos + 1 >= n:
                return False
            if data[pos + 1] == 0x00 or 0xD0 <= data[pos + 1] <= 0xD7:
                pos += 2
            elif data[pos + 1] == 0xFF:
                pos += 1
            else:
                break
