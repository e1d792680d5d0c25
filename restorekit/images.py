"""The one image convention, and reading/writing image files.

Inside restorekit an image batch is ``torch.float32``, ``N×3×H×W``, RGB, values in ``[0, 1]``.

Conversion rule for files (pillow):
- EXIF orientation is applied first.
- Grayscale (``L``, ``I;16``, ``I``, ``F``) is replicated to three channels; 16-bit and 32-bit
  integer data are scaled by their full range (``/65535``), float data is clipped to [0, 1].
- Palette (``P``) images are expanded through their palette.
- Alpha (``RGBA``, ``LA``, ``PA``) is composited over white: restoration models see opaque faces.
- CMYK and YCbCr are converted with pillow's own conversion.
Files are written as 8-bit images by rounding ``x·255`` to the nearest integer; writes are atomic.
"""

from __future__ import annotations

import glob as globmod
import os
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import ImageError

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff", ".gif")
SAVE_EXTS = ("png", "jpg", "webp")
DEFAULT_MAX_PIXELS = 64_000_000
MIN_SIDE = 2


@dataclass(frozen=True)
class ImageItem:
    """One input: where it came from and the stem to name its outputs by."""

    path: Path
    stem: str


def to_numpy_rgb(img: Image.Image) -> np.ndarray:
    """A pillow image to ``H×W×3`` float32 in [0,1], by the module's conversion rule."""
    mode = img.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N"):
        arr = np.asarray(img, dtype=np.float32) / 65535.0
        return np.repeat(arr[..., None], 3, axis=2)
    if mode == "I":
        arr = np.asarray(img, dtype=np.float64)
        scale = 65535.0 if arr.max(initial=0) > 255 else 255.0
        return np.repeat((np.clip(arr / scale, 0, 1)).astype(np.float32)[..., None], 3, axis=2)
    if mode == "F":
        arr = np.clip(np.asarray(img, dtype=np.float32), 0, 1)
        return np.repeat(arr[..., None], 3, axis=2)
    if mode == "P":
        img = img.convert("RGBA") if "transparency" in img.info else img.convert("RGB")
        mode = img.mode
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        bg = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(bg, rgba).convert("RGB")
    elif mode != "RGB":
        img = img.convert("RGB")
    return np.asarray(img, dtype=np.float32) / 255.0


def read_image(path: str | os.PathLike[str], *, max_pixels: int = DEFAULT_MAX_PIXELS) -> torch.Tensor:
    """Read one file as ``1×3×H×W`` float32 in [0,1]; raises ``ImageError`` naming the file."""
    p = Path(path)
    if not p.exists():
        raise ImageError(f"{p}: no such file")
    if p.is_dir():
        raise ImageError(f"{p}: is a folder, not an image")
    if p.stat().st_size == 0:
        raise ImageError(f"{p}: empty file (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(p) as im:
                w, h = im.size
                if w * h > max_pixels:
                    raise ImageError(f"{p}: {w}×{h} = {w * h / 1e6:.1f} MP exceeds the limit of "
                                     f"{max_pixels / 1e6:.1f} MP (raise it with --max-pixels)")
                if min(w, h) < MIN_SIDE:
                    raise ImageError(f"{p}: {w}×{h} is too small (each side must be ≥ {MIN_SIDE} px)")
                im = ImageOps.exif_transpose(im)
                im.load()
                arr = to_numpy_rgb(im)
    except ImageError:
        raise
    except (UnidentifiedImageError, Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageError(f"{p}: not a readable image ({exc.__class__.__name__})") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageError(f"{p}: corrupt or truncated image ({exc})") from None
    return torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1))).unsqueeze(0)


def to_pil(image: torch.Tensor) -> Image.Image:
    """One ``3×H×W`` (or ``1×3×H×W``) tensor in [0,1] to an 8-bit RGB pillow image."""
    if image.dim() == 4:
        if image.shape[0] != 1:
            raise ValueError(f"to_pil takes one image, got a batch of {image.shape[0]}")
        image = image[0]
    if image.dim() != 3 or image.shape[0] != 3:
        raise ValueError(f"expected 3×H×W, got {tuple(image.shape)}")
    arr = (image.detach().float().clamp(0, 1).cpu().numpy().transpose(1, 2, 0) * 255.0).round()
    return Image.fromarray(arr.astype(np.uint8), "RGB")


def from_pil(img: Image.Image) -> torch.Tensor:
    """A pillow image to ``1×3×H×W`` float32 in [0,1] by the module's conversion rule."""
    arr = to_numpy_rgb(img)
    return torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1))).unsqueeze(0)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temp file in the same folder and a rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; outputs get the usual permissions
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_image(image: torch.Tensor, path: str | os.PathLike[str], *, quality: int = 95) -> Path:
    """Write one image atomically; the format follows the suffix (png, jpg, webp)."""
    import io

    p = Path(path)
    fmt = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WEBP"}.get(p.suffix.lower())
    if fmt is None:
        raise ImageError(f"{p}: unsupported output format '{p.suffix}' (use png, jpg or webp)")
    buf = io.BytesIO()
    kwargs = {"quality": quality} if fmt in ("JPEG", "WEBP") else {}
    to_pil(image).save(buf, fmt, **kwargs)
    atomic_write_bytes(p, buf.getvalue())
    return p


def list_inputs(spec: str | os.PathLike[str]) -> list[ImageItem]:
    """Expand an input spec: a file, a folder (sorted, non-recursive), a glob, or ``@list.txt``.

    A ``.txt`` file (or ``@file``) lists one path per line; blank lines and ``#`` comments are
    skipped; relative paths are taken from the list file's folder.
    """
    s = str(spec)
    if s.startswith("@") or (s.endswith(".txt") and Path(s).is_file()):
        lst = Path(s[1:] if s.startswith("@") else s)
        if not lst.is_file():
            raise ImageError(f"{lst}: list file not found")
        paths = []
        for line in lst.read_text().splitlines():
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            q = Path(line)
            paths.append(q if q.is_absolute() else lst.parent / q)
    elif any(ch in s for ch in "*?["):
        paths = [Path(p) for p in sorted(globmod.glob(s)) if Path(p).is_file()]
        if not paths:
            raise ImageError(f"{s}: the pattern matches no file")
    else:
        p = Path(s)
        if p.is_dir():
            paths = sorted(q for q in p.iterdir() if q.is_file() and not q.name.startswith("."))
            # Folders hold other files too: only take image-like names (bad images still fail later).
            paths = [q for q in paths if q.suffix.lower() in IMAGE_EXTS] or paths
        elif p.exists():
            paths = [p]
        else:
            raise ImageError(f"{p}: no such file or folder")
    items = []
    seen: dict[str, int] = {}
    for q in paths:
        stem = q.stem
        if stem in seen:  # a.png and a.jpg both present: keep both outputs apart
            seen[stem] += 1
            stem = f"{stem}_{q.suffix.lstrip('.').lower()}"
        else:
            seen[stem] = 0
        items.append(ImageItem(q, stem))
    return items


def check_batch(images: torch.Tensor) -> None:
    """Raise ``ValueError`` unless ``images`` follows the image convention."""
    if not isinstance(images, torch.Tensor):
        raise ValueError(f"expected a tensor, got {type(images).__name__}")
    if images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(f"expected N×3×H×W, got {tuple(images.shape)}")
    if images.dtype != torch.float32:
        raise ValueError(f"expected float32, got {images.dtype}")


def to_signed(x: torch.Tensor) -> torch.Tensor:
    """[0,1] to [-1,1], for components defined on that range."""
    return x * 2.0 - 1.0


def from_signed(x: torch.Tensor) -> torch.Tensor:
    """[-1,1] back to [0,1]."""
    return (x + 1.0) * 0.5
