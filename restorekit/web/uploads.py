"""Uploads: checked for size, pixels and format, decoded in memory, kept for a few jobs.

An upload's bytes never touch the disk as sent: they are decoded by
:func:`restorekit.images.read_image_bytes` (the file convention: EXIF orientation, grayscale,
palette, alpha over white, 16-bit; pillow's decompression-bomb limit at ``max_pixels``; only the
common still-image formats), and only the decoded image is written, as an 8-bit PNG preview in the
server's folder. The name the browser sends is used for messages and download names only.

An upload is held as its decoded pixels (:func:`restorekit.images.read_pixels_bytes`): ``uint8``
for 8-bit data — a quarter of the float32 image, 48 MB rather than 192 MB at 16 megapixels — and
converted to the image convention (float32 in [0,1]) only while a job uses it,
bit for bit what :func:`~restorekit.images.read_image_bytes` gives. Data with more than 8 bits a
channel keeps them: 16-bit grayscale as ``uint16`` (exact, half the float32), 32-bit integer and
float data as the float32 image itself (its scale is not a fixed grid). So that a small file of
deep pixels (a compressed 32-bit TIFF is a few hundred KB for 16 MP, held as 192 MB) cannot
multiply the memory the limits promise, the store keeps at most the bytes of ``keep`` 8-bit
uploads of ``max_pixels`` each, forgetting the oldest first.
"""

from __future__ import annotations

import re
import secrets
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from ..errors import ImageError
from ..harness.inputs import png_bytes
from ..images import collected_notes, pixels_to_image, read_pixels_bytes, to_pil
from .files import FileStore


class UploadRefused(ImageError):
    """An upload the server will not take (too large, not an image); the message says why."""


@dataclass
class Upload:
    """A decoded upload and its preview file.

    ``pixels`` is 1×3×H×W as decoded: uint8 (8-bit data), uint16 (16-bit grayscale) or float32 in
    [0,1] (32-bit data); :meth:`image` is the image convention's float32 batch."""

    id: str
    name: str
    pixels: Tensor
    preview: str
    notes: list[str] = field(default_factory=list)  # what reading it warned about (a profile not applied…)

    def image(self) -> Tensor:
        """The upload as restorekit's image convention (1×3×H×W float32 in [0,1]), made on each call."""
        return pixels_to_image(self.pixels)

    @property
    def width(self) -> int:
        return int(self.pixels.shape[-1])

    @property
    def height(self) -> int:
        return int(self.pixels.shape[-2])

    @property
    def stem(self) -> str:
        """The name without its extension, reduced to safe characters (for download names)."""
        stem = self.name.rsplit(".", 1)[0] if "." in self.name else self.name
        return re.sub(r"[^A-Za-z0-9_-]", "_", stem)[:60] or "upload"

    def public(self) -> dict[str, Any]:
        return {"id": self.id, "name": self.name, "width": self.width, "height": self.height,
                "preview": f"files/{self.preview}", "notes": list(self.notes)}


def display_name(raw: str | None) -> str:
    """The base name the browser gave, for messages: no folders, no control characters, ≤ 100 chars."""
    name = (raw or "").replace("\\", "/").rsplit("/", 1)[-1]
    name = "".join(ch for ch in name if ch.isprintable()).strip()
    return name[:100] or "upload"


def _mb(n: float) -> str:
    return f"{n / 1e6:.2f} MB" if n < 10e6 else f"{n / 1e6:.0f} MB"


class UploadStore:
    """The last ``keep`` uploads, by random id; older ones (and their previews) are forgotten."""

    def __init__(self, files: FileStore, *, max_bytes: int, max_pixels: int, keep: int) -> None:
        self.files = files
        self.max_bytes = max_bytes
        self.max_pixels = max_pixels
        self.keep = keep
        self.max_held = keep * max_pixels * 3  # bytes: `keep` 8-bit RGB uploads of the largest size
        self._uploads: OrderedDict[str, Upload] = OrderedDict()
        self._lock = threading.Lock()

    def too_large(self, name: str, size: int | None) -> UploadRefused:
        """The refusal of an upload of ``size`` bytes (None: not declared, and more than the limit came)."""
        what = f"{_mb(size)} is over" if size is not None else "more than"
        return UploadRefused(f"{name}: {what} the upload limit of {_mb(self.max_bytes)} "
                             "(restorekit serve --max-upload-mb raises it)")

    def accept(self, data: bytes, name: str) -> Upload:
        """Check and decode ``data``; raises :class:`ImageError` (one line naming ``name``) when refused,
        also when the decoder fails with an exception of its own (a TIFF with odd tags can raise a TypeError)."""
        if len(data) > self.max_bytes:
            raise self.too_large(name, len(data))
        try:
            with collected_notes() as notes:  # for the page, not the server's stderr
                pixels = read_pixels_bytes(data, name, max_pixels=self.max_pixels)
        except ImageError:
            raise
        except Exception as exc:  # a decoder failing on crafted bytes in a way pillow does not name
            detail = (str(exc).strip().splitlines() or [""])[0][:200]
            raise UploadRefused(f"{name}: corrupt or truncated image ({type(exc).__name__}"
                                f"{': ' + detail if detail else ''})") from None
        upload = self.add(pixels, name)
        upload.notes = notes
        return upload

    def add(self, pixels: Tensor, name: str) -> Upload:
        """Keep decoded pixels (1×3×H×W uint8, uint16 or float32 in [0,1]) as an upload (and write its preview)."""
        if pixels.dtype not in (torch.uint8, torch.uint16, torch.float32) or pixels.dim() != 4 or \
                tuple(pixels.shape[:2]) != (1, 3):
            raise ValueError(f"an upload is 1×3×H×W uint8, uint16 or float32, "
                             f"not {tuple(pixels.shape)} {pixels.dtype}")
        uid = secrets.token_hex(8)
        if pixels.dtype == torch.uint8:  # the 8-bit preview is the pixels themselves (what to_pil would round to)
            pil = Image.fromarray(np.ascontiguousarray(pixels[0].permute(1, 2, 0).numpy()), "RGB")
        else:
            pil = to_pil(pixels_to_image(pixels))
        preview = self.files.add(png_bytes(pil), "png", name.rsplit(".", 1)[0] + ".png", f"u{uid}")
        upload = Upload(uid, name, pixels, preview)
        with self._lock:
            self._uploads[uid] = upload
            while len(self._uploads) > 1 and (len(self._uploads) > self.keep or self.held_bytes() > self.max_held):
                old, _ = self._uploads.popitem(last=False)
                self.files.drop_group(f"u{old}")
        return upload

    def held_bytes(self) -> int:
        """The decoded pixels held, in bytes (call with the lock held)."""
        return sum(u.pixels.numel() * u.pixels.element_size() for u in self._uploads.values())

    def get(self, uid: str) -> Upload | None:
        with self._lock:
            return self._uploads.get(uid)
