"""16-bit grey + alpha PNGs (colour type 4): pillow decodes them as 8-bit RGBA, so unlike 16-bit
grayscale they lose their precision; the reader says so in one ``warning:`` line naming the file.
The PNGs are written by hand (pillow cannot write this layout), small, in tmp_path."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

from restorekit.images import collected_notes, read_image, read_image_bytes

#: 16-bit samples whose low byte matters: a reader keeping 16 bits tells every one apart.
VALUES = np.array([[0x0000, 0x00FF, 0x0100, 0x80FF], [0x8000, 0xFEFF, 0xFF00, 0xFFFF]], dtype=np.uint16)


def _png16(path: Path, arr: np.ndarray, colour_type: int) -> Path:
    """A PNG of 16-bit samples (``arr`` H×W or H×W×C, uint16), filter 0, not interlaced."""
    h, w = arr.shape[:2]
    raw = b"".join(b"\x00" + arr[y].astype(">u2").tobytes() for y in range(h))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", w, h, 16, colour_type, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw))
                     + chunk(b"IEND", b""))
    return path


def _grey_levels(x, full: int) -> list[list[int]]:
    return (x[0, 0].double() * full).round().int().tolist()


def test_16_bit_grey_with_alpha_is_read_at_8_bits_with_a_warning_naming_it(tmp_path, capsys) -> None:
    opaque = np.stack([VALUES, np.full_like(VALUES, 0xFFFF)], -1)
    path = _png16(tmp_path / "grey_alpha16.png", opaque, colour_type=4)
    x = read_image(path)
    # What pillow gives: the high byte of each sample (0x00FF → 0, 0xFEFF → 254), nothing of the low one.
    assert _grey_levels(x, 255) == (VALUES >> 8).tolist()
    err = capsys.readouterr().err
    assert err.count("warning:") == 1, err
    assert (f"warning: {path}: 16-bit grayscale with alpha is read at 8 bits (pillow decodes it as 8-bit RGBA, "
            f"the high byte of each sample); save it as 16-bit grayscale without alpha to keep its precision") in err
    # An upload says it too (serve collects the notes beside the upload), naming the upload.
    with collected_notes() as notes:
        read_image_bytes(path.read_bytes(), "upload.png")
    assert len(notes) == 1 and notes[0].startswith("upload.png: 16-bit grayscale with alpha is read at 8 bits")


def test_16_bit_grey_and_8_bit_grey_with_alpha_read_without_a_warning(tmp_path, capsys) -> None:
    x = read_image(_png16(tmp_path / "grey16.png", VALUES, colour_type=0))
    assert _grey_levels(x, 65535) == VALUES.tolist()  # 16-bit grayscale keeps its precision
    la = np.stack([(VALUES >> 8).astype(np.uint8), np.full(VALUES.shape, 255, np.uint8)], -1)
    Image.fromarray(la, "LA").save(tmp_path / "grey_alpha8.png")
    assert _grey_levels(read_image(tmp_path / "grey_alpha8.png"), 255) == (VALUES >> 8).tolist()
    assert "warning" not in capsys.readouterr().err
