"""The one image convention, and reading/writing image files.

Inside restorekit an image batch is ``torch.float32``, ``N×3×H×W``, RGB, values in ``[0, 1]``.

Conversion rule for files (pillow):
- Only the raster formats of :data:`FILE_FORMATS` are decoded, whatever a file's extension (never
  EPS, PDF or another format pillow hands to an external program); another format is a one-line
  error naming the file and the format its first bytes show (HEIC, AVIF: their ``ftyp`` box), and
  a file whose first bytes show no format is said to be one. A TIFF pillow cannot open is called
  damaged or of a sample layout pillow cannot decode, which the message gives (``3 samples a pixel
  of 32-bit float, RGB``). Uploads: :data:`UPLOAD_FORMATS`. A folder lists the files of
  :data:`IMAGE_EXTS`: every extension pillow registers for these formats.
- EXIF orientation is applied first. Of a multi-frame file (animated GIF/PNG/WebP, multi-page
  TIFF) the first frame is read.
- An embedded ICC profile (``icc_profile``) is applied next: the pixels are converted from it to
  sRGB with littlecms (``PIL.ImageCms``), relative colorimetric intent, no black-point
  compensation (RGB, grayscale and CMYK profiles, and Lab profiles on CIELab ``LAB`` pixels; alpha
  is kept for the compositing below). A profile that cannot be used (does not parse, does not fit
  the pixels, 16-bit/32-bit/float grayscale) leaves the pixels as they are, taken as sRGB, with one
  ``warning:`` line naming the file. Without a profile pixels are taken as sRGB.
- Grayscale (``L``, ``I;16``, ``I``, ``F``) is replicated to three channels. 16-bit integer data
  is scaled by its full range (``/65535``), and so is 16-bit Netpbm (PGM/PPM with a maxval over
  255), which pillow has already scaled from its maxval to 0..65535 (mode ``I``): a dark frame
  stays dark. Other 32-bit integer data (``I``: 32-bit TIFF, signed 16-bit TIFF; such files say
  nothing of the range used) is scaled by ``/255`` when no value exceeds 255 (8-bit values stored
  wide), else ``/65535`` when none exceeds 65535 (16-bit values stored wide), else by the
  smallest bit depth that holds its maximum (``/(2**k-1)``, 17 ≤ k ≤ 32: 18- or 24-bit data stored
  wide), with a ``warning:`` line naming it (pillow's negative reading of unsigned values above
  2**31 is undone): never clipped to white, never nearly black. Negative values are
  clipped to 0 with a ``warning:`` line while they are stray (at most :data:`STRAY_SHARE` of the
  pixels); more, and the file is refused (signed data has no scale to guess). Float data (``F``)
  is read as 0–1: values up to :data:`FLOAT_SLACK` outside it (overshoot of resampling or
  sharpening) are clipped quietly, a few beyond that (at most :data:`STRAY_SHARE` of the pixels)
  clipped with a ``warning:`` line, and an image with more is refused, naming its range ("float
  pixels range from 0 to 255; restorekit reads float images as 0–1"): it is on another scale
  (0–255, 0–65535, HDR radiance), which a float file does not state, and a guess that is wrong
  (dividing HDR by 255) would give a plausible but wrong picture, where the refusal names the fix;
  clipping it would whiten it whole. NaN or infinite values are refused. 16-bit *colour* (48/64-bit
  PNG, TIFF) is reduced to 8 bits a channel by pillow's decoder (the high byte); so is 16-bit
  grayscale with alpha (PNG colour type 4: pillow has no 16-bit grey + alpha mode and decodes it as
  8-bit RGBA), which, unlike 16-bit grayscale, loses its precision: one ``warning:`` line names it.
- Palette (``P``) images are expanded through their palette.
- Alpha (``RGBA``, ``LA``, ``PA``) is composited over white: restoration models see opaque faces;
  so are the pixels a transparency colour key (PNG ``tRNS``, GIF: ``info["transparency"]``) marks
  in palette, grayscale (8- and 16-bit) and RGB images. A key the decoded pixels cannot match
  exactly (on 16-bit colour, which pillow reduces to 8 bits but whose key it keeps in 16; or a
  key value above 255 on 8-bit pixels) is not applied: the pixels are read as opaque, with one
  ``warning:`` line naming the file.
- CMYK and YCbCr are converted with pillow's own conversion (CMYK with a profile: see above).
Files are written as 8-bit images by rounding ``x·255`` to the nearest integer, untagged (no ICC
profile: the values are sRGB), with what made them inside where the writer says
(:mod:`restorekit.provenance`); writes are atomic.

Every image restorekit reads or makes passes :func:`check_size` (at least ``MIN_SIDE`` px a side, at
most ``max_pixels``), whatever it comes from, so a result never depends on whether an image was
read from disk or kept in memory; :func:`save_image` refuses to write one with a smaller side,
which could not be read back (a result's upper bound is :func:`check_output_size`'s).
``max_pixels`` is also pillow's decompression-bomb limit while restorekit reads a file, so one
limit decides.

Output names (:func:`output_names`): an input is named by its stem (``photo.jpg`` → ``photo``).
Inputs whose stems are equal ignoring case and Unicode normalisation (``é`` written as one code
point or as ``e`` and an accent: macOS takes both for one file name) are each named by their path
relative to the folder all inputs share, extension included, with ``/`` written as ``__``
(``a.jpg`` → ``a.jpg``, ``x/a.png`` → ``x__a.png``); such a name longer than
:data:`MAX_QUALIFIED_BYTES` (UTF-8) keeps its end, after a short hash of the whole relative path
(``<10 hex>__…er__x__a.png``), so that it still fits a file system's 255-byte names. The rule
repeats until every name is unique ignoring case, and two inputs it cannot tell apart (``a.png``
and ``A.png`` in one folder) are refused up front, naming both. The same file given twice is used
once, under the name listed first: the same by its device and inode, so a symbolic link and its
target, two links to one file (hard links too) and two spellings of one path are one input.
"""

from __future__ import annotations

import contextvars
import errno
import functools
import glob as globmod
import hashlib
import io
import os
import re
import socket
import stat
import sys
import threading
import unicodedata
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from PIL import ExifTags, Image, ImageOps, UnidentifiedImageError

from .errors import FileSystemError, ImageError, describe_os_error
from .memory import process_id, status_fields
from .safe_open import NOFOLLOW, Folder, open_folder, refused_link, sync_data

if TYPE_CHECKING:
    from PIL import ImageCms

#: The file extensions a folder listing takes (:func:`list_inputs`), training sets too: every one
#: pillow registers for a format of :data:`FILE_FORMATS` (and MPO, pillow's name for many phones'
#: JPEGs), the common ones first. A fixed list, so that a listing does not change with pillow's
#: version; ``tests/test_image_zoo.py`` checks it against ``Image.registered_extensions()``.
IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff", ".gif",
              ".jpe", ".jfif", ".mpo", ".apng", ".pbm", ".pgm", ".ppm", ".pnm", ".pfm", ".tga", ".icb", ".vda",
              ".vst", ".jp2", ".j2k", ".j2c", ".jpc", ".jpf", ".jpx", ".ico")
SAVE_EXTS = ("png", "jpg", "webp")
DEFAULT_MAX_PIXELS = 64_000_000
# What one input may make (output pixels × samples): a float32 RGB image takes 12 bytes a pixel and
# a restore holds a few copies, so 256 MP stays within a 24 GB machine.
DEFAULT_MAX_OUTPUT_PIXELS = 256_000_000
MIN_SIDE = 2
# Separates folders in the output name of an input whose stem collides (x/a.png → x__a.png).
FOLDER_SEP = "__"
#: The most UTF-8 bytes of a qualified output name (:func:`output_names`): room, within a file
#: system's 255-byte names, for a sample suffix, an extension and a temporary file's affixes.
MAX_QUALIFIED_BYTES = 200


@dataclass(frozen=True)
class ImageItem:
    """One input: where it came from and its unique output name (``stem``; see :func:`output_names`)."""

    path: Path
    stem: str


def _mp(pixels: int | float) -> str:
    """A pixel count for a message: megapixels to one decimal, or the exact count (``10,000 px``)
    under 0.1 MP, where one decimal would round small sizes and limits to a meaningless ``0.0 MP``."""
    if pixels < 100_000:
        return f"{round(pixels):,} px"
    return f"{pixels / 1e6:.1f} MP"


def _mp_over(pixels: int, limit: int) -> tuple[str, str]:
    """``pixels`` and the ``limit`` it exceeds, for a message: as :func:`_mp` says them, or as exact
    counts where those read alike (``16.0 MP exceeds the limit of 16.0 MP``)."""
    shown = _mp(pixels), _mp(limit)
    return shown if shown[0] != shown[1] else (f"{pixels:,} px", f"{limit:,} px")


def check_size(width: int, height: int, where: object, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> None:
    """The one validation of an image's size, read or made: ``ImageError`` naming ``where``."""
    if width * height > max_pixels:
        said, limit = _mp_over(width * height, max_pixels)
        raise ImageError(f"{where}: {width}×{height} = {said} exceeds the limit of {limit} (raise it with --max-pixels)")
    if min(width, height) < MIN_SIDE:
        raise ImageError(f"{where}: {width}×{height} is too small (each side must be ≥ {MIN_SIDE} px)")


def check_output_size(width: int, height: int, scale: int, where: object, *,
                      max_output_pixels: int = DEFAULT_MAX_OUTPUT_PIXELS, n_outputs: int = 1) -> None:
    """Refuse an input whose ×``scale`` result (``n_outputs`` of them) would exceed ``max_output_pixels``."""
    w, h = width * scale, height * scale
    total = w * h * n_outputs
    if total > max_output_pixels:
        many = f" × {n_outputs} samples" if n_outputs > 1 else ""
        said, limit = _mp_over(total, max_output_pixels)
        raise ImageError(f"{where}: its ×{scale} output would be {w}×{h}{many} = {said}, over the output limit of "
                         f"{limit} (lower --scale or raise --max-output-pixels)")


_PIL_LIMIT = threading.Lock()


@contextmanager
def pillow_limit(max_pixels: int) -> Iterator[Callable[[], None]]:
    """Make ``max_pixels`` pillow's decompression-bomb limit, for the duration of one read.

    Yields ``arm()``: until it is called pillow checks nothing, so the header's size is judged by
    :func:`check_size` (with its message); after it, what pillow decodes (frames) is held to ``max_pixels``.
    """
    with _PIL_LIMIT:
        saved = Image.MAX_IMAGE_PIXELS
        Image.MAX_IMAGE_PIXELS = None
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                yield lambda: setattr(Image, "MAX_IMAGE_PIXELS", max_pixels)
        finally:
            Image.MAX_IMAGE_PIXELS = saved


#: The (file, note) pairs :func:`_note_once` has printed, oldest first; at most :data:`NOTED_MAX`
#: (a process reading millions of files would otherwise keep one entry per file that warned).
_NOTED: dict[tuple[str, str], None] = {}
NOTED_MAX = 10_000


@contextmanager
def _pillow_notes(p: Path) -> Iterator[None]:
    """Pillow's warnings while ``p`` is read (corrupt EXIF data, a truncated metadata block) as one
    ``warning:`` line on stderr naming the file, once per file and message in a process; any other
    warning is passed on unchanged. Only on success: a failed read raises its own one-line error."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", UserWarning)
        yield
    for w in caught:
        if issubclass(w.category, UserWarning) and w.filename.replace(os.sep, "/").find("/PIL/") >= 0:
            msg = " ".join(str(w.message).split())
            _note_once(p, f"damaged metadata, used as far as it reads ({msg})")
        else:
            warnings.showwarning(w.message, w.category, w.filename, w.lineno, w.file, w.line)


#: Where :func:`_note_once` hands its notes inside :func:`collected_notes` (None: to stderr).
_COLLECTOR: contextvars.ContextVar[list[str] | None] = contextvars.ContextVar("restorekit_image_notes", default=None)


@contextmanager
def collected_notes() -> Iterator[list[str]]:
    """Within the block, what reading an image would warn about (an ICC profile not applied, a
    transparency key dropped) is added to the yielded list as ``"NAME: note"`` lines instead of
    printed — for a caller that reports it itself (``serve`` shows it beside the upload)."""
    notes: list[str] = []
    token = _COLLECTOR.set(notes)
    try:
        yield notes
    finally:
        _COLLECTOR.reset(token)


def _note_once(p: object, msg: str) -> None:
    """One ``warning:`` line on stderr naming ``p``, once per file and message in a process (or,
    inside :func:`collected_notes`, the note added to its list, every time)."""
    collector = _COLLECTOR.get()
    if collector is not None:
        line = f"{shown_name(p)}: {msg}"
        if line not in collector:
            collector.append(line)
        return
    key = (str(p), msg)
    if key not in _NOTED:
        _NOTED[key] = None
        if len(_NOTED) > NOTED_MAX:
            del _NOTED[next(iter(_NOTED))]
        print(f"warning: {shown_name(p)}: {msg}", file=sys.stderr, flush=True)


def shown_name(p: object) -> str:
    """``p`` as text with its unprintable characters escaped (``\\xNN``/``\\uNNNN``, as ``ascii()``
    writes them; the rule of ``restorekit.cli.shown``), so a file name cannot move the cursor or
    forge lines on a terminal."""
    text = str(p)
    return "".join(c if c.isprintable() else ascii(c)[1:-1] for c in text)


#: The errors with which reading a file says what is (not) at its path, or that it may not be read:
#: any other that the system gives while reading is the disk's or the network's (:func:`_read_fault`).
_PATH_ERRNOS = frozenset({errno.ENOENT, errno.ENOTDIR, errno.ELOOP, errno.ENAMETOOLONG, errno.EACCES, errno.EPERM,
                          errno.EISDIR})


def _read_fault(p: Path, exc: OSError) -> ImageError:
    """The line for a read of ``p`` that the system failed (``exc`` has an errno: ``EIO``, an NFS
    server's ``ESTALE`` or ``ETIMEDOUT``…): the storage under it failed, which says nothing of
    the image's bytes, and the same read may well work again. (What pillow says of the bytes
    themselves has no errno: "corrupt or truncated".)"""
    reason = exc.strerror or os.strerror(exc.errno or 0)
    return ImageError(f"{p}: cannot be read ({reason}): the disk or network file system failed, not necessarily "
                      "the image; try again")


#: What a path that is neither a regular file nor a folder is, by its ``stat`` file type.
_SPECIAL_FILES = ((stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISCHR, "a character device"),
                  (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))


def special_file_kind(mode: int) -> str:
    """What a ``stat`` mode that is neither a regular file's nor a folder's is, in words."""
    return next((words for test, words in _SPECIAL_FILES if test(mode)),
                f"a special file (type {stat.S_IFMT(mode):o})")


def _not_regular(p: Path, mode: int) -> ImageError:
    """The line for ``p`` whose ``stat`` (links followed) shows no regular file and no folder: it is
    said as what it is, never read (a FIFO's read waits for a writer; a device's never ends), and a
    symbolic link to it is named as one (``x.jpg`` → ``/dev/urandom``)."""
    try:
        via = f"a symbolic link to {os.readlink(p)}, "
    except (OSError, ValueError):  # (not a link: EINVAL)
        via = ""
    return ImageError(f"{p}: is {via}{special_file_kind(mode)}, not a regular file")


#: Why a path holding a NUL byte names no file (the system's calls take none; Python refuses it).
NUL_IN_PATH = "not a usable path: it holds a NUL byte, which no file name can"
#: Why a path the system answers ``ENAMETOOLONG`` for names no file.
PATH_TOO_LONG = "not a usable path: longer than the file system takes (File name too long)"
#: The list-file lines that name no usable path (:func:`_list_entry`), by the path each is listed
#: as: the one line reading it fails with, naming the list file and line. At most
#: :data:`NOTED_MAX`, oldest dropped.
_UNUSABLE: dict[str, str] = {}


def _unusable(p: object, exc: BaseException) -> str | None:
    """Why ``p`` names no file at all, from the error asking the system about it gave (a NUL
    byte, a character the file system's encoding has not, a name or path over its length limit),
    or None when the error says nothing of the path itself."""
    if isinstance(exc, ValueError):
        return NUL_IN_PATH if "\0" in str(p) else f"not a usable path ({exc})"
    if isinstance(exc, OSError) and exc.errno == errno.ENAMETOOLONG:
        return PATH_TOO_LONG
    return None


def _check_file(p: Path) -> None:
    """A one-line ``ImageError`` unless ``p`` is a regular file with something in it; one ``stat``
    when it is (a missing file, a folder, a FIFO, device or socket, an empty file and a broken
    link are each said as such; a ``stat`` the disk or network fails, :func:`_read_fault`; a
    path that names no file, :func:`_unusable`, and a list file's line that does not, with the
    list file and line)."""
    listed = _UNUSABLE.get(str(p))
    if listed is not None:
        raise ImageError(listed)
    try:
        st = os.stat(p)
    except (OSError, ValueError) as exc:
        unusable = _unusable(p, exc)
        if unusable is not None:
            raise ImageError(f"{p}: {unusable}") from None
        if isinstance(exc, OSError) and exc.errno is not None and exc.errno not in _PATH_ERRNOS:
            raise _read_fault(p, exc) from None
        st = None  # asked again below, each case with its own answer or error
    if st is not None:
        if stat.S_ISDIR(st.st_mode):
            raise ImageError(f"{p}: is a folder, not an image")
        if not stat.S_ISREG(st.st_mode):  # (its size says nothing: 0 for a FIFO or a device)
            raise _not_regular(p, st.st_mode)
        if st.st_size == 0:
            raise ImageError(f"{p}: empty file (0 bytes)")
        return
    if not p.exists():
        if p.is_symlink():  # exists() follows the link: a dangling link or a loop
            try:
                os.stat(p)
            except OSError as exc:
                if exc.errno == errno.ELOOP:
                    raise ImageError(f"{p}: a symbolic link loop (following it never reaches a file)") from None
            try:
                target = os.readlink(p)
            except OSError:
                target = "?"
            raise ImageError(f"{p}: a broken symbolic link (its target {target} does not exist)")
        raise ImageError(f"{p}: no such file")
    if p.is_dir():
        raise ImageError(f"{p}: is a folder, not an image")
    st = p.stat()
    if not stat.S_ISREG(st.st_mode):
        raise _not_regular(p, st.st_mode)
    if st.st_size == 0:
        raise ImageError(f"{p}: empty file (0 bytes)")


def _bomb(p: Path, max_pixels: int) -> ImageError:
    return ImageError(f"{p}: the image (or a frame inside it) exceeds the limit of {_mp(max_pixels)} "
                      "(raise it with --max-pixels)")


#: The formats an image *file* may be decoded as (``read_image``, ``probe_size``), whatever its
#: extension: raster formats pillow decodes itself. Never EPS/PS/PDF (pillow runs Ghostscript for
#: them) or another format that hands the file to an external program. "JPEG" includes MPO, how
#: pillow names the JPEGs many cameras and phones write (a JPEG followed by more images): pillow's
#: JPEG decoder opens them (first image). "PPM" is the Netpbm family (PBM, PGM, PPM, PNM, PFM).
FILE_FORMATS = ("PNG", "JPEG", "WEBP", "TIFF", "BMP", "GIF", "PPM", "TGA", "JPEG2000", "ICO")


#: What a file whose first bytes show no format is called (after its name).
NO_FORMAT = "not a readable image (its first bytes match no image format restorekit reads)"


def sniff_format(prefix: bytes) -> str | None:
    """The pillow format whose signature ``prefix`` (a file's first 16 bytes) has, or None; for
    messages only: nothing is opened or decoded (formats without a signature are never named)."""
    Image.init()
    for fmt in Image.ID:
        factory_accept = Image.OPEN.get(fmt)
        accept = factory_accept[1] if factory_accept else None
        if accept is None:
            continue
        try:
            if accept(prefix):  # a string: pillow knows the format but cannot load this variant
                return fmt
        except Exception:  # a plugin's check of odd bytes: not this format
            continue
    return None


#: What the major brand of an ISO media file (``ftyp`` box at byte 4) says it holds; pillow knows
#: none of HEIC and takes any ``mif1`` file (HEIC's usual compatible brand) for AVIF.
_FTYP_BRANDS = {b"heic": "HEIC", b"heix": "HEIC", b"heim": "HEIC", b"heis": "HEIC", b"hevc": "HEIC",
                b"hevx": "HEIC", b"hevm": "HEIC", b"hevs": "HEIC", b"avif": "AVIF", b"avis": "AVIF",
                b"mif1": "HEIF", b"msf1": "HEIF"}


def _ftyp_format(prefix: bytes) -> str | None:
    """HEIC, AVIF or HEIF from an ISO media file's ``ftyp`` box (its major brand), or None."""
    return _FTYP_BRANDS.get(prefix[8:12]) if prefix[4:8] == b"ftyp" else None


_TIFF_SAMPLES = {1: "unsigned integer", 2: "signed integer", 3: "float", 4: "untyped", 5: "complex integer",
                 6: "complex float"}
_TIFF_PHOTOMETRIC = {0: "grey", 1: "grey", 2: "RGB", 3: "palette", 4: "mask", 5: "CMYK", 6: "YCbCr", 8: "CIELab",
                     9: "ICCLab", 10: "ITULab", 32844: "LogL", 32845: "LogLuv"}


def _tiff_tag(tags: Any, tag: int, default: int) -> int:
    """A TIFF tag's (first) value as an integer, ``default`` when the directory lacks it."""
    v = tags.get(tag, default)
    return int(v[0] if isinstance(v, tuple) and v else v)


def _tiff_layout(p: Path, data: bytes | None) -> str | None:
    """The sample layout a TIFF's first directory declares, in words (``3 samples a pixel of 32-bit
    float, RGB``), for the message of one pillow cannot open; None when that directory does not read
    whole or lacks the tags that declare an image (then the file is simply damaged)."""
    from PIL import TiffImagePlugin

    try:
        with (io.BytesIO(data) if data is not None else open(p, "rb")) as fp, \
                warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            head = fp.read(16)
            ifd = TiffImagePlugin.ImageFileDirectory_v2(head if head[2:4] in (b"\0+", b"+\0") else head[:8])
            fp.seek(ifd.next)
            ifd.load(fp)
        tags = dict(ifd)
        if caught or not {256, 257, 258, 262} <= tags.keys():  # a directory cut short (pillow warns), or no image's
            return None
        spp, bits = _tiff_tag(tags, 277, 1), _tiff_tag(tags, 258, 1)
        kind = _TIFF_SAMPLES.get(_tiff_tag(tags, 339, 1), "unknown")
        photometric = _TIFF_PHOTOMETRIC.get(_tiff_tag(tags, 262, -1), f"photometric {_tiff_tag(tags, 262, -1)}")
        extra = tags.get(338, ())
        n_extra = len(extra) if isinstance(extra, tuple) else 1
    except Exception:  # noqa: BLE001 - a header that does not parse: the plain message
        return None
    more = f" with {n_extra} extra sample{'s' if n_extra != 1 else ''}" if n_extra else ""
    return f"{spp} sample{'s' if spp != 1 else ''} a pixel of {bits}-bit {kind}, {photometric}{more}"


def _refused_format(p: Path, data: bytes | None, formats: Sequence[str], unknown: str | None = None) -> str:
    """The message for a file pillow cannot open as one of ``formats``: its detected format, if any
    (``unknown``: the message when no format is recognised, if not the default)."""
    try:
        if data is not None:
            prefix = data[:16]
        else:
            with open(p, "rb") as f:
                prefix = f.read(16)
    except OSError:
        prefix = b""
    fmt = None
    if set(formats) != set(FILE_FORMATS):  # a narrower list (uploads): the safe decoders name the format
        try:  # (headers only) better than signatures, which formats without one (TGA) are mistaken by
            with warnings.catch_warnings():  # a damaged header's pillow warnings: this read only names it
                warnings.simplefilter("ignore")
                with Image.open(p if data is None else io.BytesIO(data), formats=list(FILE_FORMATS)) as im:
                    fmt = im.format
        except Exception:
            fmt = None
    if fmt is None:
        # pillow only writes PDF; it knows no HEIC and takes a HEIF file (``mif1``) for AVIF: their ftyp box
        fmt = "PDF" if prefix.startswith(b"%PDF") else _ftyp_format(prefix) or sniff_format(prefix)
    if fmt is None:
        return unknown or f"{p}: {NO_FORMAT}"
    if fmt == "TIFF" and fmt in formats:
        layout = _tiff_layout(p, data)
        if layout:
            return f"{p}: a damaged TIFF, or one whose sample layout pillow cannot decode ({layout})"
    if fmt in formats or (fmt == "MPO" and "JPEG" in formats):
        return f"{p}: a damaged or unreadable {fmt} file (its first bytes are {fmt}'s, but it does not decode)"
    return f"{p}: its format is {fmt}, which is not read here (image files may be {', '.join(formats)})"


@contextmanager
def _opened(p: Path, max_pixels: int, data: bytes | None = None,
            formats: Sequence[str] | None = FILE_FORMATS) -> Iterator[Image.Image]:
    """``p`` opened with pillow after :func:`check_size` has judged its header; every failure
    inside (opening, decoding) becomes one ``ImageError`` naming the file and the problem: what
    pillow says of the bytes is "corrupt or truncated", a read the system failed (an ``OSError``
    with an errno: ``EIO``, a network file system's) is said as such (:func:`_read_fault`).

    With ``data`` the image is those bytes, named ``p`` in messages (nothing is read from disk);
    ``formats`` limits the decoders pillow may try (default :data:`FILE_FORMATS`; None: all)."""
    if data is None:
        _check_file(p)
    elif not data:
        raise ImageError(f"{p}: empty file (0 bytes)")
    try:
        # A file object, not the path: given a path, pillow maps uncompressed images (grey PGM/TIFF,
        # palette BMP, RGBA TIFF…) into memory, and a read the disk or a network file system fails
        # there, or a file cut short meanwhile, ends the process with SIGBUS instead of an error.
        with open(p, "rb") if data is None else io.BytesIO(data) as source, pillow_limit(max_pixels) as arm, \
                _pillow_notes(p), Image.open(source, formats=None if formats is None else list(formats)) as im:
            w, h = im.size
            check_size(w, h, p, max_pixels=max_pixels)
            arm()
            yield im
    except ImageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise _bomb(p, max_pixels) from None
    except UnidentifiedImageError:
        if formats is FILE_FORMATS:
            raise ImageError(_refused_format(p, data, formats)) from None
        if formats is not None:  # uploads: the same detection, their own list
            raise ImageError(_refused_format(p, data, formats, unknown=f"{p}: not an image in a format read "
                                                                       f"here ({', '.join(formats)})")) from None
        raise ImageError(f"{p}: {NO_FORMAT}") from None
    except PermissionError:
        raise ImageError(f"{p}: permission denied (the file cannot be read)") from None
    except PixelValueError as exc:
        raise ImageError(f"{p}: {exc}") from None
    except FileNotFoundError:  # (removed since it was listed, or while it was read)
        raise ImageError(f"{p}: no such file") from None
    except OSError as exc:
        if exc.errno is not None:  # the system's read failed, not pillow's decoding: the disk's or network's
            raise _read_fault(p, exc) from None
        raise ImageError(f"{p}: corrupt or truncated image ({exc})") from None
    except (SyntaxError, ValueError) as exc:
        raise ImageError(f"{p}: corrupt or truncated image ({exc})") from None


def probe_size(path: str | os.PathLike[str], *, max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[int, int]:
    """``(width, height)`` from a file's header after :func:`check_size`; nothing is decoded."""
    p = Path(path)
    with _opened(p, max_pixels) as im:
        return im.size


class PixelValueError(ValueError):
    """Decoded pixels that are not an image's (NaN or infinite floating-point data)."""


#: Float (``F``) pixel values at most this far outside [0, 1] are overshoot (of resampling or
#: sharpening), clipped quietly, as an 8-bit writer clips them.
FLOAT_SLACK = 0.25
#: The share of an image's pixels beyond that (float) or below 0 (integer grey) up to which they are
#: stray values, clipped with a ``warning:`` line; above it the image is on another scale (float
#: 0–255 or 0–65535, HDR, signed data) and is refused: clipping would whiten or blacken it whole.
STRAY_SHARE = 0.1


def _number(v: float) -> str:
    """A pixel value for a message: an integral value in full (``255``, ``65535``), else 4 digits."""
    return f"{v:.0f}" if float(v).is_integer() and abs(v) < 1e15 else f"{v:.4g}"


def _int_layout(img: Image.Image) -> str:
    """How the 32-bit integer (``I``) pixels of ``img``, as opened, were stored: ``"netpbm16"`` (a
    PGM/PPM with maxval above 255, which pillow has already scaled to 0..65535 whatever the
    maxval), ``"uint32"`` (a TIFF of unsigned 32-bit samples, which pillow holds as signed: values
    above 2**31 come out negative until reinterpreted), else ``"int32"`` (signed 32- or 16-bit TIFF
    samples, an image made in memory). A copy (``exif_transpose``) has lost what this reads."""
    if img.format == "PPM":
        return "netpbm16"
    if img.format == "TIFF":
        tags = getattr(img, "tag_v2", None) or {}
        if _tiff_tag(tags, 258, 0) == 32 and _tiff_tag(tags, 339, 1) == 1:  # SampleFormat 1 (the default): unsigned
            return "uint32"
    return "int32"


def to_numpy_pixels(img: Image.Image, where: object = "image", *, int_layout: str | None = None) -> np.ndarray:
    """A pillow image to ``H×W×3`` as decoded, before the scaling to [0,1] of :func:`to_numpy_rgb`:
    ``uint8`` for 8-bit data (every mode but those below, after palette, alpha and mode conversion),
    ``uint16`` for 16-bit grayscale (``I;16``), and already ``float32`` in [0,1] for 32-bit integer
    (``I``: its scale depends on how it was stored and on its values) and float (``F``) data, by the
    module's rule. ``where`` names the image in a ``warning:`` line (stray values clipped);
    ``int_layout`` (:func:`_int_layout`) is taken from ``img`` when not given: pass it for an image
    copied since it was opened. Raises :class:`PixelValueError` for values that are no image's (NaN,
    infinite; float or signed data on another scale)."""
    mode = img.mode
    key = _colour_key(img)
    if mode in ("I;16", "I;16B", "I;16L", "I;16N"):
        arr = np.asarray(img).astype(np.uint16)  # native byte order
        if key is not None:  # transparent: white, as alpha is composited
            arr = np.where(arr == key, np.uint16(65535), arr)
        return np.repeat(arr[..., None], 3, axis=2)
    if mode == "I":
        layout = int_layout or _int_layout(img)
        vals = np.asarray(img)
        if layout == "uint32":
            vals = vals.astype(np.int32, copy=False).view(np.uint32)
        raw = vals.astype(np.float64)
        if layout == "netpbm16":  # pillow scaled maxval to 65535: no guess, a dark frame stays dark
            scale = 65535.0
        else:
            negative = int((raw < 0).sum())
            if negative > STRAY_SHARE * raw.size:
                raise PixelValueError(f"integer pixels range from {_number(raw.min())} to {_number(raw.max())}; "
                                      "restorekit reads integer grey from 0 up (signed data, mostly negative "
                                      "here, has no scale it could take)")
            if negative:
                _note_once(where, f"{negative} negative integer pixel value(s) clipped to 0")
            top = raw.max(initial=0)
            if top <= 65535:
                scale = 255.0 if top <= 255 else 65535.0
            else:  # 17- to 32-bit data stored wide: the smallest bit depth that holds its maximum, said
                bits = int(top).bit_length()
                scale = float(2**bits - 1)
                _note_once(where, f"integer pixels up to {_number(top)}: read as {bits}-bit data (÷{2**bits - 1})")
        arr = np.clip(raw / scale, 0, 1)
        if key is not None:
            arr = np.where(raw == key, 1.0, arr)
        return np.repeat(arr.astype(np.float32)[..., None], 3, axis=2)
    if mode == "F":
        arr = np.asarray(img, dtype=np.float32)
        if not np.isfinite(arr).all():  # np.clip keeps NaN: it would reach every method and metric
            raise PixelValueError(f"holds {int((~np.isfinite(arr)).sum())} NaN or infinite pixel value(s)")
        far = int(((arr < -FLOAT_SLACK) | (arr > 1 + FLOAT_SLACK)).sum())
        if far:
            span = f"from {_number(arr.min())} to {_number(arr.max())}"
            if far > STRAY_SHARE * arr.size:
                raise PixelValueError(f"float pixels range {span}; restorekit reads float images as 0–1 "
                                      "(convert it to 8 or 16 bits, or scale it to 0–1)")
            outside = arr[(arr < -FLOAT_SLACK) | (arr > 1 + FLOAT_SLACK)]  # (the span of those clipped, not the image's)
            _note_once(where, f"{far} float pixel value(s) far outside 0–1 (from {_number(outside.min())} to "
                              f"{_number(outside.max())}) clipped")
        return np.repeat(np.clip(arr, 0, 1)[..., None], 3, axis=2)
    if mode == "P":
        img = img.convert("RGBA") if "transparency" in img.info else img.convert("RGB")
        mode = img.mode
    elif key is not None and mode in ("1", "L", "RGB"):  # a transparency colour key: an alpha channel
        img = img.convert("RGBA")
        mode = img.mode
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        bg = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(bg, rgba).convert("RGB")
    elif mode != "RGB":
        img = img.convert("RGB")
    return np.asarray(img, dtype=np.uint8)


def _colour_key(img: Image.Image) -> int | tuple[int, int, int] | None:
    """The transparency colour key of a non-palette image (PNG ``tRNS``, ``info["transparency"]``):
    a sample value for grayscale, an ``(r, g, b)`` triple for RGB; None when there is none or it
    does not fit the mode (then it is ignored)."""
    key = img.info.get("transparency")
    if img.mode == "RGB":
        ok = isinstance(key, tuple) and len(key) == 3 and all(isinstance(v, int) for v in key)
    elif img.mode in ("1", "L", "I", "I;16", "I;16B", "I;16L", "I;16N"):
        ok = isinstance(key, int) and not isinstance(key, bool)
    else:
        ok = False
    return key if ok else None


#: How an ICC profile's colour space (``xcolor_space``) is applied: the pillow modes whose pixels
#: it fits, and the mode they are converted to first (None: as they are).
_ICC_FITS: dict[str, dict[str, str | None]] = {
    "RGB": {"RGB": None, "RGBA": None, "RGBX": "RGB", "RGBa": "RGBA", "P": None, "PA": "RGBA",
            "YCbCr": "RGB"},
    "GRAY": {"L": None, "LA": None, "La": "LA", "1": "L"},
    "CMYK": {"CMYK": None},
    "Lab": {"LAB": None},  # CIELab TIFF: littlecms converts LAB pixels itself
}


def _srgb_profile() -> ImageCms.ImageCmsProfile:
    from PIL import ImageCms

    global _SRGB
    if _SRGB is None:
        _SRGB = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB"))
    return _SRGB


_SRGB: ImageCms.ImageCmsProfile | None = None


def to_srgb(img: Image.Image, where: object) -> Image.Image:
    """``img`` converted from its embedded ICC profile (``info["icc_profile"]``) to sRGB, as ``RGB``
    or ``RGBA`` (alpha kept), by the module's rule; ``img`` itself when it has no profile. A
    profile that cannot be used is reported once (``warning:`` naming ``where``) and ``img`` is
    returned: its pixels are then taken as sRGB."""
    icc = img.info.get("icc_profile")
    if not icc:
        return img
    try:
        from PIL import ImageCms
    except ImportError:  # pillow built without littlecms
        _note_once(where, "its ICC profile is not applied (this pillow has no littlecms); colours taken as sRGB")
        return img
    try:
        src = ImageCms.ImageCmsProfile(io.BytesIO(icc))
        space = str(src.profile.xcolor_space).strip()
    except (OSError, ValueError, TypeError, ImageCms.PyCMSError):
        _note_once(where, "its ICC profile is damaged and not applied; colours taken as sRGB")
        return img
    fits = _ICC_FITS.get(space, {})
    if img.mode not in fits:
        if img.mode in ("I", "F") or img.mode.startswith("I;16"):
            why = f"is not applied to {img.mode} (high bit depth) grayscale"
        else:
            why = f"({space or '?'}) does not fit its {img.mode} pixels and is not applied"
        _note_once(where, f"its ICC profile {why}; colours taken as sRGB")
        return img
    first = fits[img.mode]
    if img.mode == "P":
        first = "RGBA" if "transparency" in img.info else "RGB"
    elif _colour_key(img) is not None:  # the key names encoded values: make it alpha before converting
        first = "LA" if space == "GRAY" else "RGBA"
    if first is not None:
        img = img.convert(first)
    alpha = img.getchannel("A") if img.mode in ("RGBA", "LA") else None
    base = img.convert("L") if img.mode == "LA" else img
    out_mode = "RGBA" if base.mode == "RGBA" else "RGB"
    try:
        transform = ImageCms.buildTransform(src, _srgb_profile(), base.mode, out_mode,
                                            renderingIntent=ImageCms.Intent.RELATIVE_COLORIMETRIC)
        out = ImageCms.applyTransform(base, transform)
    except (OSError, ValueError, TypeError, ImageCms.PyCMSError):
        _note_once(where, f"its ICC profile ({space}) cannot convert its pixels to sRGB and is not applied; "
                          "colours taken as sRGB")
        return img
    assert out is not None
    if alpha is not None and out.mode != "RGBA":
        out.putalpha(alpha)
    return out


def pixels_to_float(arr: np.ndarray) -> np.ndarray:
    """Decoded pixels (:func:`to_numpy_pixels`, any layout) to float32 in [0,1]: 8-bit data ``/255``,
    16-bit ``/65535``; float32 data is returned as it is."""
    if arr.dtype == np.uint8:
        return arr.astype(np.float32) / 255.0
    if arr.dtype == np.uint16:
        return arr.astype(np.float32) / 65535.0
    if arr.dtype == np.float32:
        return arr
    raise ValueError(f"pixels are uint8, uint16 or float32, not {arr.dtype}")


def to_numpy_rgb(img: Image.Image) -> np.ndarray:
    """A pillow image to ``H×W×3`` float32 in [0,1], by the module's conversion rule: EXIF orientation
    and ICC profile included, so an opened file gives what :func:`read_image` gives. ``img`` is left
    as it is; one made in memory (no orientation, no profile) is converted as it stands."""
    where = getattr(img, "filename", None) or "image"
    try:
        return pixels_to_float(_rule_pixels(img, where))
    except PixelValueError as exc:
        raise PixelValueError(f"{shown_name(where)}: {exc}") from None


def pixels_to_image(pixels: torch.Tensor) -> torch.Tensor:
    """Pixels held as decoded (``1×3×H×W`` uint8, uint16 or float32, as :func:`read_pixels_bytes`
    gives) to the image convention, float32 in [0,1] — exactly what :func:`read_image_bytes` gives."""
    return torch.from_numpy(pixels_to_float(pixels.cpu().numpy()))


def _key_unmatchable(im: Image.Image) -> bool:
    """Whether ``im`` (opened, not yet loaded) has a transparency colour key its decoded pixels
    cannot be matched against exactly: pillow reduces 16-bit *colour* (48-bit PNG) to 8 bits a
    channel but keeps the key in 16 bits, and a key value above 255 never names an 8-bit pixel."""
    key = _colour_key(im)
    if key is None or im.mode not in ("1", "L", "RGB"):
        return False  # 16-bit/32-bit grayscale keeps its values: its key matches exactly
    values = key if isinstance(key, tuple) else (key,)
    if any(v > 255 or v < 0 for v in values):
        return True
    return any(";16" in str(getattr(t, "args", "")) for t in (getattr(im, "tile", None) or ()))


def _grey_alpha_16(im: Image.Image) -> bool:
    """Whether ``im`` (opened, not yet loaded) is a PNG of 16-bit grey + alpha (IHDR bit depth 16,
    colour type 4), which pillow decodes as 8-bit RGBA (the high byte of each sample): its tile's raw
    mode, which pillow takes from that header, is ``LA;16B``."""
    return im.format == "PNG" and any(getattr(t, "args", None) == "LA;16B" for t in (getattr(im, "tile", None) or ()))


def _upright(im: Image.Image) -> Image.Image:
    """``im`` loaded and turned by its EXIF orientation (pillow's ``exif_transpose``, whose copy has
    the tag removed: a second call turns nothing); ``im`` itself, not a copy, when it has none to
    apply (an image made in memory, as ``from_pil(to_pil(x))`` gives, costs no copy)."""
    im.load()
    if im.getexif().get(ExifTags.Base.Orientation, 1) not in range(2, 9):
        return im
    turned = ImageOps.exif_transpose(im)
    assert turned is not None
    return turned


def _rule_pixels(opened: Image.Image, where: object) -> np.ndarray:
    """``H×W×3`` pixels of ``opened`` by the module's rule, as decoded (:func:`to_numpy_pixels`):
    EXIF orientation, ICC profile to sRGB, transparency key. ``opened`` itself is not changed."""
    icc = opened.info.get("icc_profile")
    drop_key = _key_unmatchable(opened)
    if _grey_alpha_16(opened):
        _note_once(where, "16-bit grayscale with alpha is read at 8 bits (pillow decodes it as 8-bit RGBA, the "
                          "high byte of each sample); save it as 16-bit grayscale without alpha to keep its precision")
    layout = _int_layout(opened)  # before exif_transpose, whose copy has no format or TIFF tags
    im = _upright(opened)
    if icc and not im.info.get("icc_profile"):
        im.info["icc_profile"] = icc
    if drop_key:
        im = im.copy() if im is opened else im  # (a caller's image keeps its info)
        im.info.pop("transparency", None)
        _note_once(where, "its transparency colour key is not applied (16-bit colour is read as 8 bits a "
                          "channel, which the key cannot match exactly); pixels read as opaque")
    return to_numpy_pixels(to_srgb(im, where), where, int_layout=layout)


def _pixels(im: Image.Image, where: object) -> torch.Tensor:
    arr = _rule_pixels(im, where)
    return torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1))).unsqueeze(0)


def _decoded(im: Image.Image, where: object) -> torch.Tensor:
    return pixels_to_image(_pixels(im, where))


def read_image(path: str | os.PathLike[str], *, max_pixels: int = DEFAULT_MAX_PIXELS) -> torch.Tensor:
    """Read one file as ``1×3×H×W`` float32 in [0,1]; raises ``ImageError`` naming the file."""
    with _opened(Path(path), max_pixels) as im:
        return _decoded(im, path)


# The common still-image formats: what an image sent over a network may be decoded as.
UPLOAD_FORMATS = ("PNG", "JPEG", "WEBP", "BMP", "TIFF", "GIF")


def read_image_bytes(data: bytes, name: str, *, max_pixels: int = DEFAULT_MAX_PIXELS,
                     formats: Sequence[str] | None = UPLOAD_FORMATS) -> torch.Tensor:
    """Decode an image held in memory (an upload) as :func:`read_image` decodes a file.

    Same conversion rule, size check and one-line ``ImageError``, naming ``name``; pillow tries
    only ``formats`` (default: the common still-image formats, so no exotic decoder sees bytes
    from a network).
    """
    with _opened(Path(name), max_pixels, data=data, formats=formats) as im:
        return _decoded(im, name)


def read_pixels_bytes(data: bytes, name: str, *, max_pixels: int = DEFAULT_MAX_PIXELS,
                      formats: Sequence[str] | None = UPLOAD_FORMATS) -> torch.Tensor:
    """As :func:`read_image_bytes`, but the pixels as decoded (``1×3×H×W`` uint8 for 8-bit data,
    uint16 for 16-bit grayscale, float32 otherwise; see :func:`to_numpy_pixels`): a quarter of the
    memory for most images. :func:`pixels_to_image` makes the image, bit for bit."""
    with _opened(Path(name), max_pixels, data=data, formats=formats) as im:
        return _pixels(im, name)


def _one_image(image: object, what: str = "to_pil: image") -> torch.Tensor:
    """``image`` as ``1×3×H×W`` if it is one image by the convention (``3×H×W`` or ``1×3×H×W``, any
    floating dtype, finite, in [0, 1] up to ``INPUT_RANGE_SLACK``, which writing clips), else a
    one-line ``ValueError`` starting with ``what`` and naming the fix, as ``Method.restore`` refuses
    its input (:func:`~restorekit.interfaces.check_image_batch`, NaN included): 8-bit, 0–255, [-1, 1]
    or NaN data would be written white, clipped or black."""
    from .interfaces import check_image_batch, refuse_nan

    batch = image[None] if isinstance(image, torch.Tensor) and image.dim() == 3 and image.shape[0] == 3 else image
    check_image_batch(batch, what)
    assert isinstance(batch, torch.Tensor)
    refuse_nan(batch, what)
    if batch.shape[0] != 1:
        raise ValueError(f"{what} is a batch of {batch.shape[0]}: one image (3×H×W or 1×3×H×W) is converted at a "
                         "time, x[i]")
    return batch


def to_pil(image: torch.Tensor) -> Image.Image:
    """One ``3×H×W`` (or ``1×3×H×W``) tensor in [0,1] to an 8-bit RGB pillow image (checked first:
    :func:`_one_image`)."""
    return _rounded(_one_image(image))


def _rounded(one: torch.Tensor) -> Image.Image:
    """A checked ``1×3×H×W`` image to 8-bit RGB: ``x·255`` clipped and rounded to the nearest integer."""
    arr = (one[0].detach().float().clamp(0, 1).cpu().numpy().transpose(1, 2, 0) * 255.0).round()
    return Image.fromarray(arr.astype(np.uint8), "RGB")


def from_pil(img: Image.Image) -> torch.Tensor:
    """A pillow image to ``1×3×H×W`` float32 in [0,1] by the module's conversion rule (EXIF
    orientation, ICC profile, 16-bit, alpha): ``from_pil(Image.open(p))`` is ``read_image(p)``."""
    arr = to_numpy_rgb(img)
    return torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1))).unsqueeze(0)


def _proc_umask() -> int | None:
    """The process's umask as Linux shows it (``Umask:`` in ``/proc/self/status``, Linux 4.7 on),
    read now without changing it (one system call: :func:`~restorekit.memory.status_fields`);
    None where there is no such line."""
    fields = status_fields("Umask")
    try:
        return int(fields["Umask"].split()[0], 8) & 0o777 if fields and "Umask" in fields else None
    except (ValueError, IndexError):
        return None


def _swap_umask() -> int:
    """The umask read the only portable way, by setting it: for that instant it is 0 in this process,
    so a file another thread creates meanwhile would be writable by everyone. Only called while no
    other thread runs (at import, or with :func:`threading.active_count` 1)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _read_umask_once() -> int:
    mask = _proc_umask()
    if mask is not None:
        return mask
    # Set-and-restore only while no other thread could create a file meanwhile (imported from a
    # worker thread of a program that runs others: take the usual 022 instead).
    return _swap_umask() if threading.active_count() == 1 else 0o022


# Read at import (on the main thread, before serve or anything else starts a thread), so that a
# umask the user set before that is the one used; where /proc is not there, a later read that
# must not change the umask (other threads running) falls back to this value.
_known_umask: int = _read_umask_once()


def new_file_mode() -> int:
    """The permissions a plainly created file gets here (``0o666`` less the umask), for files
    written through ``mkstemp`` (which makes them 0600) and renamed into place.

    The umask is read without changing it, so that a file another thread creates at the same time
    keeps its usual permissions: from ``/proc/self/status`` on Linux; elsewhere by setting it and
    back only while this is the only thread, or else as it was at the last such read (import)."""
    global _known_umask
    mask = _proc_umask()
    if mask is None:
        if threading.active_count() == 1:  # no other thread can create a file meanwhile
            mask = _known_umask = _swap_umask()
        else:
            mask = _known_umask
    return 0o666 & ~mask


def temp_prefix(name: str, limit: int = 200) -> str:
    """``.NAME.`` for a temporary file beside ``name``, NAME cut to ``limit`` bytes (UTF-8), so that
    the random part and a suffix still fit a file system's 255-byte names when ``name`` itself does.
    A name that is not UTF-8 (surrogate escapes) keeps its bytes where it fits."""
    raw = os.fsencode(name)
    cut = name if len(raw) <= limit else raw[:limit].decode("utf-8", "ignore")
    return f".{cut}."


# The name atomic_write_bytes' temp files have: temp_prefix(NAME), then the writer's process id, its
# host (:func:`_host_tag`) and 8 random hex digits, then .part: ``.x.png.4242-1a2b3c4d-5e6f7a8b.part``.
_TEMP_NAME = re.compile(r"\..+\.(?P<pid>[0-9]{1,10})-(?P<host>[0-9a-f]{8})-[0-9a-f]{8}\.part")
# The name earlier versions gave them (8 random characters, no process id): swept by age only.
_OLD_TEMP_NAME = re.compile(r"\..+\.[a-z0-9_]{8}\.part")


def is_temp_name(name: str) -> bool:
    """Whether ``name`` is that of a temp file :func:`atomic_write_bytes` writes
    (``.NAME.<pid>-<host>-<8>.part``, or an earlier version's ``.NAME.<8>.part``)."""
    return _TEMP_NAME.fullmatch(name) is not None or _OLD_TEMP_NAME.fullmatch(name) is not None


@functools.cache
def _host_tag() -> str:
    """8 hex digits naming where this process's ids mean something: its host and (Linux) its
    process-id namespace. A temp file of another tag (another machine writing to a shared folder,
    another container) is not judged by whether its process id runs here."""
    try:
        ns = str(os.stat("/proc/self/ns/pid").st_ino)
    except (OSError, ValueError):
        ns = ""
    return hashlib.sha256(f"{socket.gethostname()}\0{ns}".encode("utf-8", "replace")).hexdigest()[:8]


def _temp_writer(name: str) -> int | None:
    """The process id in a temp file's name when that process ran on this host (and process-id
    namespace), else None (another host's, or an earlier version's name without one)."""
    m = _TEMP_NAME.fullmatch(name)
    return int(m["pid"]) if m is not None and m["host"] == _host_tag() else None


def subfolders(folder: Path) -> list[Path]:
    """The folders directly in ``folder`` (not links to folders, but for the user's own:
    :func:`~restorekit.safe_open.own_link`); none when it is not there."""
    try:
        return [e for e in folder.iterdir() if e.is_dir() and not refused_link(e)]
    except OSError:
        return []


def sweep_temp_files(folders: Iterable[Path], *, older_than_s: float = 60.0, root: Path | None = None) -> int:
    """Remove, in each of ``folders`` (not below them), the temp files :func:`atomic_write_bytes`
    left when its process was killed mid-write: at once when its name says a process of this host
    that no longer runs (:func:`_temp_writer`), never while that process runs (this one included);
    otherwise (another host's, an earlier version's name) if last written over ``older_than_s``
    seconds ago (a write in progress, by another process of the same job, is younger), judged by
    the folder's own clock (:func:`_folder_now`: on a network file system a file's times are the
    server's, which may be minutes off this machine's). Only names
    of exactly that shape (:func:`is_temp_name`); for folders restorekit writes whose holder is
    known to be the only writer (a lock). ``root``: ``folders`` lie below this output folder, and
    one reached through a symbolic link another user owns is left alone
    (:func:`~restorekit.safe_open.open_folder`). Returns how many were removed."""
    from .weights.cache import pid_alive

    removed = 0
    alive: dict[int, bool] = {}
    for path in folders:
        try:
            folder = open_folder(root, path.relative_to(root), create=False) if root is not None \
                else Folder(Path(path), None)
        except OSError:  # not there (yet), or another user's link: nothing of this run's
            continue
        with folder:
            try:
                entries = folder.entries()
            except OSError:
                continue
            cutoff: float | None = None  # (the folder's clock read once, when a file is judged by age)
            for e in entries:
                if not is_temp_name(e.name):
                    continue
                pid = _temp_writer(e.name)
                if pid is not None:
                    if pid not in alive:  # (this process counts as running: another thread may be writing)
                        alive[pid] = pid == process_id() or pid_alive(pid)
                    if alive[pid]:
                        continue  # a write under way: never removed, however long it takes
                try:
                    if not e.is_file(follow_symlinks=False):
                        continue
                    if pid is None:
                        if cutoff is None:
                            cutoff = _folder_now(folder) - older_than_s
                        if e.stat(follow_symlinks=False).st_mtime >= cutoff:
                            continue
                    folder.unlink(e.name, missing_ok=False)
                    removed += 1
                except OSError:  # gone meanwhile, or not ours to remove: left
                    pass
    return removed


def _folder_now(folder: Folder) -> float:
    """Now on the clock that stamps the files of ``folder``: the modification time of an empty file
    made there (one of :func:`_new_temp`'s names, so a sweep removes it should this process die
    before it does), removed at once. On NFS and other network file systems a file's times are the
    server's clock, which may be minutes off this machine's (``time.time``): a temp file's age is
    its time against this one. This machine's clock where no file can be made there (read-only,
    not this user's folder) or its time cannot be read."""
    import time

    try:
        fd, name = _new_temp(folder, "clock", ".part")
    except OSError:
        return time.time()
    try:
        return os.fstat(fd).st_mtime
    except OSError:
        return time.time()
    finally:
        os.close(fd)
        with suppress(OSError):
            folder.unlink(name)


_TEMP_FLAGS = (os.O_WRONLY | os.O_CREAT | os.O_EXCL | NOFOLLOW | getattr(os, "O_CLOEXEC", 0)
               | getattr(os, "O_BINARY", 0))


def _new_temp(folder: Folder, name: str, suffix: str) -> tuple[int, str]:
    """A new file ``.NAME.<pid>-<host>-<8>SUFFIX`` in ``folder`` (:func:`is_temp_name`), made 0600,
    never through a link: the writer's process id and host (:func:`_host_tag`) in its name tell a
    sweep whether a live process is still writing it (:func:`sweep_temp_files`)."""
    import secrets

    for _ in range(100):
        tmp = f"{temp_prefix(name)}{process_id()}-{_host_tag()}-{secrets.token_hex(4)}{suffix}"
        try:
            return os.open(folder.at(tmp), _TEMP_FLAGS, 0o600, dir_fd=folder.fd), tmp
        except FileExistsError:
            continue
    raise FileExistsError(errno.EEXIST, "no free temporary file name", str(folder.path / name))


def fs_error(exc: OSError, path: Path | None = None, action: str = "write") -> FileSystemError:
    """``exc`` as one line naming ``path`` (else the file it names) and the fix (a
    :class:`FileSystemError` already, such as a folder refused as another user's link,
    :class:`~restorekit.safe_open.LinkedFolderError`, says its own line). Its ``errno`` is
    ``exc``'s, so that a caller can still tell a full disk from a bad file (:func:`storage_errno`),
    and its ``storage_path`` the path it failed at (:func:`storage_path`: which disk is full)."""
    err = FileSystemError(describe_os_error(exc, path, action=action))
    err.errno = exc.errno  # (its text stays the one line: not ``filename``, which str() would add)
    where = path if path is not None else exc.filename
    err.storage_path = os.fspath(where) if isinstance(where, (str, os.PathLike)) else None  # type: ignore[attr-defined]
    return err


#: The errors with which a file system refuses every write, not one file's: full (``ENOSPC``), over
#: the user's quota (``EDQUOT``), read-only (``EROFS``, also when it turned so after an I/O error).
STORAGE_ERRNOS = frozenset({errno.ENOSPC, errno.EROFS, getattr(errno, "EDQUOT", errno.ENOSPC)})
#: The errors with which a folder refuses new files (made unwritable: ``EACCES``; immutable, or the
#: process without the right to write there: ``EPERM``): every file written there after one fails the
#: same way, as on a full disk — but only where the folder refused (:func:`_folder_refusal`). The same
#: errno of one file (its rename onto an output another user owns in a sticky folder, an input the
#: user cannot read) is that file's.
FOLDER_ERRNOS = frozenset({errno.EACCES, errno.EPERM})
# The name of any temp file :func:`_new_temp` makes (``.NAME.<pid>-<host>-<8>SUFFIX``: ``.part``,
# a checkpoint's ``.tmp``…), as the system's error names it (alone, or at the end of its folder's path).
_NEW_TEMP_NAME = re.compile(r"\..+\.[0-9]{1,10}-[0-9a-f]{8}-[0-9a-f]{8}\.[A-Za-z0-9]+")


def error_chain(exc: BaseException) -> list[BaseException]:
    """``exc``, then what it was raised from (its cause, else its context unless suppressed), and so on."""
    seen: set[int] = set()
    out: list[BaseException] = []
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        out.append(cur)
        cur = cur.__cause__ if cur.__cause__ is not None else None if cur.__suppress_context__ else cur.__context__
    return out


def _folder_refusal(exc: BaseException) -> bool:
    """Whether ``exc`` is a folder's refusal of a new file (:data:`FOLDER_ERRNOS`): the system's error
    of making a temp file in it (:func:`write_via_temp`), which names that temp file and no second
    path. A rename that failed names two (the temp file, the output); a read names the file read."""
    if not isinstance(exc, OSError) or exc.errno not in FOLDER_ERRNOS or exc.filename2 is not None:
        return False
    name = exc.filename
    return isinstance(name, (str, os.PathLike)) and \
        _NEW_TEMP_NAME.fullmatch(os.path.basename(os.fspath(name))) is not None


def _storage_error(exc: BaseException) -> OSError | None:
    """The first error of ``exc``'s chain (itself, then what it was raised from) whose errno is one of
    :data:`STORAGE_ERRNOS`; else, where the chain holds a folder's refusal (:func:`_folder_refusal`),
    its first error of that errno (:func:`fs_error`'s, which notes the output written)."""
    errors = [c for c in error_chain(exc) if isinstance(c, OSError)]
    found = next((c for c in errors if c.errno in STORAGE_ERRNOS), None)
    if found is None and (refusal := next((c for c in errors if _folder_refusal(c)), None)) is not None:
        found = next(c for c in errors if c.errno == refusal.errno)
    return found


def storage_errno(exc: BaseException) -> int | None:
    """The errno of :data:`STORAGE_ERRNOS` that ``exc`` (or an error it was raised from) carries, or of
    :data:`FOLDER_ERRNOS` where a folder refused a new file (:func:`_folder_refusal`), else None: a
    write that failed so fails for every file written there after it, so a batch stops at the first
    instead of failing each of its remaining inputs the same way."""
    found = _storage_error(exc)
    return found.errno if found is not None else None


def storage_path(exc: BaseException) -> str | None:
    """The path at which the file system refused the write of ``exc`` (:func:`storage_errno`): the
    ``storage_path`` :func:`fs_error` noted, else the ``filename`` of the system's error; None where
    neither says (a write to an open file names none)."""
    found = _storage_error(exc)
    if found is None:
        return None
    where = getattr(found, "storage_path", None) or found.filename
    return os.fspath(where) if isinstance(where, (str, os.PathLike)) else None


#: Whether :func:`write_via_temp` puts a file's bytes on the disk before renaming it into place
#: (``fdatasync``), so that after a power cut a rerun, which skips the outputs that exist, never
#: takes a short file for a finished one. It costs about 2–4 ms a file on a local ext4 disk in use
#: (2.7 times the whole per-image cost of ``run bicubic`` on 32-px images; a few per cent at 512 px),
#: under 1 ms on an idle one, nothing on tmpfs. Turned off by this variable (in-process) or,
#: for a whole run and the processes it starts, by the environment: ``RESTOREKIT_SYNC_WRITES=0``
#: (:func:`sync_writes`, read at each write): for a scratch run or a test session. A write with
#: ``fsync`` (checkpoints) is synced all the same, as are weights put into the cache (their own path).
SYNC_WRITES = True
#: The environment variable that turns :data:`SYNC_WRITES` off (``0``, ``false``, ``no``, ``off``).
SYNC_WRITES_VARIABLE = "RESTOREKIT_SYNC_WRITES"
_OFF = frozenset({"0", "false", "no", "off"})


def sync_writes() -> bool:
    """Whether :func:`write_via_temp` syncs a file's bytes before its rename: :data:`SYNC_WRITES`,
    unless ``RESTOREKIT_SYNC_WRITES`` says off (``0``, ``false``, ``no``, ``off``; any other value,
    or none, leaves it on: the safe side)."""
    return SYNC_WRITES and os.environ.get(SYNC_WRITES_VARIABLE, "").strip().lower() not in _OFF


def sync_folder(folder: Folder) -> None:
    """The open ``folder``'s entries on the disk (``fsync`` of the folder), so that a name just
    renamed into it is still there after a crash of the machine. Where a folder cannot be synced
    (Windows, some network file systems: ``EINVAL``, ``EBADF``, ``EACCES``…) nothing is done; a
    full disk or an I/O error is raised."""
    try:
        fd = folder.fd if folder.fd is not None else os.open(folder.path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError as exc:
        if exc.errno in STORAGE_ERRNOS or exc.errno == errno.EIO:
            raise
        return
    try:
        os.fsync(fd)
    except OSError as exc:
        if exc.errno in STORAGE_ERRNOS or exc.errno == errno.EIO:
            raise
    finally:
        if fd != folder.fd:
            os.close(fd)


#: The folders :func:`write_via_temp` (without ``root``) made or found in this process, by their
#: path as given: a write into one asks for it no more (a ``mkdir`` and a ``stat`` per file). At
#: most :data:`KNOWN_FOLDERS_MAX` (then forgotten all at once: asked again).
_KNOWN_FOLDERS: set[str] = set()
KNOWN_FOLDERS_MAX = 1024


def _made_folder(path: Path) -> None:
    """``path``'s folder made when missing (with its parents), and known from now on."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if len(_KNOWN_FOLDERS) >= KNOWN_FOLDERS_MAX:
        _KNOWN_FOLDERS.clear()
    _KNOWN_FOLDERS.add(str(path.parent))


def write_via_temp(path: Path, write: Callable[[Any], None], *, root: Path | None = None, suffix: str = ".part",
                   fsync: bool = False, exclusive: bool = False) -> None:
    """Make ``path`` whole or not at all: ``write`` fills a new temp file (a binary file object) in
    the same folder, which is then renamed onto ``path``; on any failure the temp file is removed
    and the error raised as it came (a folder refused, or the temp file swapped meanwhile: a
    :class:`FileSystemError`). The bytes are on the disk before the rename (``fdatasync``), so
    that even a crash of the machine (a power cut) leaves at ``path`` the old file or the whole new
    one, never a name with fewer bytes: a rerun takes an output there for finished (unless turned
    off: :func:`sync_writes`). ``fsync``: the bytes are synced whatever that says, and the
    new name is on the disk too when this returns (the folder synced after the rename:
    checkpoints, which a resume must find).
    ``exclusive``: nothing at ``path`` is replaced, not even what appeared while writing
    (``FileExistsError``): the file is linked into place (:meth:`~restorekit.safe_open.Folder.link_new`).

    ``root``: ``path`` lies below this output folder (``compare --out``, a run folder), which
    others may write to: the folders from ``root`` down are opened without following a symbolic
    link another user owns (one there is refused in one line; the user's own is followed:
    :func:`~restorekit.safe_open.open_folder`) and made when missing, and the temp file is written
    and renamed in the folder so opened, so a folder swapped for such a link meanwhile is never
    written through. Without ``root`` the whole path is the caller's, taken as given: its folder is
    made when missing, asked for once per process (:data:`_KNOWN_FOLDERS`), and made again should
    it be gone at a later write."""
    known = root is None and str(path.parent) in _KNOWN_FOLDERS
    try:
        if root is None:
            if not known:
                _made_folder(path)
            folder = Folder(path.parent, None)
        else:
            folder = open_folder(root, path.parent.relative_to(root))
    except FileSystemError:  # (a folder refused as a link: its own line)
        raise
    except OSError as exc:
        raise fs_error(exc, path) from exc
    with folder:
        tmp: str | None = None
        try:
            try:
                fd, tmp = _new_temp(folder, path.name, suffix)
            except OSError:
                if not known:
                    raise
                # (removed, or replaced, since it was made: as on a first write, made again or said why not)
                _KNOWN_FOLDERS.discard(str(path.parent))
                try:
                    _made_folder(path)
                except OSError as exc:
                    raise fs_error(exc, path) from exc
                fd, tmp = _new_temp(folder, path.name, suffix)
            with os.fdopen(fd, "wb") as f:
                # 0600 at first; outputs get the usual permissions. Set on the open file, never by
                # name: in a folder others can write to, the name may meanwhile be a link to any file
                if hasattr(os, "fchmod"):
                    os.fchmod(f.fileno(), new_file_mode())
                else:  # (Windows before Python 3.13: a mode there is only the read-only flag)
                    os.chmod(folder.at(tmp), new_file_mode(), dir_fd=folder.fd)
                write(f)
                f.flush()
                if fsync or sync_writes():  # (where a disk reports a full disk only now, this raises)
                    sync_data(f.fileno())
                written = os.fstat(f.fileno())
            now = folder.lstat(tmp)
            if written.st_ino and (now.st_dev, now.st_ino) != (written.st_dev, written.st_ino):
                # renamed away and something else (a link to any file) put in its place meanwhile: not
                # to be moved to ``path``
                raise FileSystemError(f"{path}: its temporary file {folder.path / tmp} was replaced by something "
                                      "else while being written (does another user write into this folder?); "
                                      "nothing written")
            if exclusive:
                folder.link_new(tmp, path.name)
                folder.unlink(tmp)
            else:
                folder.replace(tmp, path.name)
            tmp = None  # (renamed: nothing of it to remove)
            if fsync:
                sync_folder(folder)
        except BaseException:
            if tmp is not None:
                with suppress(OSError):
                    folder.unlink(tmp)
            raise


def atomic_write_bytes(path: Path, data: bytes, *, root: Path | None = None) -> None:
    """Write ``data`` to ``path`` through a temp file in the same folder and a rename
    (:func:`write_via_temp`, ``root`` as there).

    A failure leaves nothing behind and raises :class:`FileSystemError` naming ``path`` and the fix.
    """
    try:
        write_via_temp(path, lambda f: f.write(data), root=root)
    except OSError as exc:
        if isinstance(exc, FileSystemError):
            raise
        raise fs_error(exc, path) from exc


def save_image(image: torch.Tensor, path: str | os.PathLike[str], *, quality: int = 95,
               note: Mapping[str, Any] | None = None, root: Path | None = None, lossless: bool = False) -> Path:
    """Write one image atomically; the format follows the suffix (png, jpg, webp). ``note``: what
    made it, recorded inside the file (:mod:`restorekit.provenance`); ``root``: as
    :func:`atomic_write_bytes`'; ``lossless``: WebP without loss (JPEG has none: ``quality``).

    ``image`` is checked as :func:`to_pil` checks it, and a side under ``MIN_SIDE`` px is refused:
    :func:`read_image` could not read the file back. Either is one ``ImageError`` naming ``path``."""
    from .provenance import save_args

    p = Path(path)
    fmt = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WEBP"}.get(p.suffix.lower())
    if fmt is None:
        raise ImageError(f"{p}: unsupported output format '{p.suffix}' (use png, jpg or webp)")
    try:
        one = _one_image(image, f"{p}: the image")
    except ValueError as exc:
        raise ImageError(str(exc)) from None
    height, width = one.shape[-2:]
    check_size(width, height, p, max_pixels=width * height)  # (the least size only: outputs have their own limit)
    buf = io.BytesIO()
    kwargs: dict[str, Any] = {"quality": quality} if fmt in ("JPEG", "WEBP") else {}
    if fmt == "WEBP" and lossless:
        kwargs["lossless"] = True
    _rounded(one).save(buf, fmt, **kwargs, **save_args(fmt, note))
    atomic_write_bytes(p, buf.getvalue(), root=root)
    return p


def _broken_image_link(q: Path) -> bool:
    """A symbolic link with an image extension (:data:`IMAGE_EXTS`) that leads nowhere (dangling,
    or a loop): listed as an input, so that it fails with its own line instead of vanishing."""
    return q.suffix.lower() in IMAGE_EXTS and q.is_symlink() and not q.exists()


def _is_list_spec(s: str) -> bool:
    return s.startswith("@") or (s.endswith(".txt") and Path(s).is_file())


def _is_glob_spec(s: str) -> bool:
    return any(ch in s for ch in "*?[") and not Path(s).exists()


def listing_folders(spec: str | os.PathLike[str]) -> list[Path]:
    """The folders whose contents decide what ``spec`` lists, each time it is expanded: the folder
    of a folder spec, the folders of a glob's matches; none for a file or a list file (their
    inputs are named). An output folder among them would feed each run's outputs to the next."""
    s = str(spec)
    if _is_list_spec(s) or "\0" in s:  # (a NUL byte: no path, which list_inputs refuses)
        return []
    if _is_glob_spec(s):
        return sorted({Path(q).parent for q in globmod.glob(s)})
    p = Path(s)
    return [p] if p.is_dir() else []


def list_inputs(spec: str | os.PathLike[str]) -> list[ImageItem]:
    """Expand an input spec: a file, a folder (sorted, non-recursive), a glob, or ``@list.txt``.

    A ``.txt`` file (or ``@file``) lists one path per line (UTF-8); blank lines and ``#`` comments
    are skipped; relative paths are taken from the list file's folder. A path that exists is taken
    as it is, even with glob characters in its name (``face[1].png``, ``set[2024]/``): only a spec
    that names nothing is a pattern.

    A folder lists its files (symbolic links to files included) whose extension is in
    :data:`IMAGE_EXTS` — or, when none has such an extension, all its files; hidden names (``.x``)
    and sub-folders (even one named ``x.png``) are left out. A glob takes the files it matches. In
    both, an entry with an image extension that is no file to read is listed, so that it fails with
    its own line instead of vanishing: a symbolic link that leads nowhere (dangling, or a loop), and
    a FIFO, device or socket (or a link to one: ``x.jpg`` → ``/dev/urandom``), which is never read.
    So is a list file's line that names no file at all (:func:`_list_entry`: a NUL byte, a name
    too long), its error naming the list file and line. A spec holding a NUL byte is refused.
    """
    s = str(spec)
    if "\0" in s:  # (the system's calls refuse it: said here, not as a ValueError of glob or stat)
        raise ImageError(f"{s}: {NUL_IN_PATH}")
    stats: dict[Path, os.stat_result] = {}  # what listing a path learnt of it (links followed)
    if _is_list_spec(s):
        lst = Path(s[1:] if s.startswith("@") else s)
        if not lst.is_file():
            raise ImageError(f"{lst}: list file not found")
        paths = []
        for n, line in enumerate(_list_lines(lst), 1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            q = Path(line)
            paths.append(_list_entry(q if q.is_absolute() else lst.parent / q, lst, n, stats))
    elif _is_glob_spec(s):
        found = [_listed(Path(p)) for p in sorted(globmod.glob(s))]
        paths = [q for q, is_file, fails, _ in found if is_file or fails]
        stats.update((q, st) for q, _, _, st in found if st is not None)
        if not paths:
            _check_glob_folder(s)  # a folder it cannot list is said as such, not as "no match"
            raise ImageError(f"{s}: the pattern matches no file")
    else:
        p = Path(s)
        if p.is_dir():
            try:  # (each entry's type from the listing; one stat of each, which the file key reuses)
                with os.scandir(p) as it:
                    listed = sorted(((p / e.name, e) for e in it if not e.name.startswith(".")), key=lambda qe: qe[0])
            except OSError as exc:
                raise ImageError(describe_os_error(exc, p, action="list")) from None
            found = [_listed(q, e) for q, e in listed]
            files = [q for q, is_file, _, _ in found if is_file]
            # Folders hold other files too: only take image-like names (bad images still fail later).
            images = [q for q, is_file, fails, _ in found if (is_file and q.suffix.lower() in IMAGE_EXTS) or fails]
            paths = images or files
            stats.update((q, st) for q, _, _, st in found if st is not None)
        elif p.exists():
            paths = [p]
        else:
            raise ImageError(f"{p}: no such file or folder")
    unique: dict[tuple[Any, ...], Path] = {}
    for q in paths:  # the same file twice (by any name) is one input, under the name listed first
        first = unique.setdefault(_file_key(q, stats.get(q)), q)
        if os.path.abspath(first) != os.path.abspath(q):  # a link, not a second spelling: said, not silent
            _note_once(q, f"the same file as {shown_name(first)} (a link); used once, under that name")
    kept = list(unique.values())
    return [ImageItem(q, name) for q, name in zip(kept, output_names(kept))]


def _check_glob_folder(pattern: str) -> None:
    """Raise :class:`ImageError` (``cannot list DIR: …``, as a folder spec says it) when the folder
    named before a glob's first wildcard exists but cannot be listed (no read permission): glob
    then finds nothing, which is not that the pattern matches no file."""
    parts = Path(pattern).parts
    first = next((i for i, part in enumerate(parts) if any(ch in part for ch in "*?[")), len(parts))
    folder = Path(*parts[:first]) if first else Path(".")
    try:
        with os.scandir(folder):
            pass
    except (FileNotFoundError, ValueError):  # not there (as before: no match), or no path at all
        return
    except OSError as exc:
        raise ImageError(describe_os_error(exc, folder, action="list")) from None


def _listed(q: Path, entry: os.DirEntry[str] | None = None
            ) -> tuple[Path, bool, bool, os.stat_result | None]:
    """``(q, is a file, is listed to fail, its stat)`` for a listed path, with one ``stat`` (links
    followed; ``entry``: its folder listing's, which may have it already): the answer of
    ``Path.is_file``, and whether ``q`` has an image extension but is no file to read: a broken
    link (:func:`_broken_image_link`), a FIFO, a device or a socket (not a folder: those are left
    out). Where that ``stat`` fails, those are asked as such, with their own answers and errors
    (the stat is then None)."""
    try:
        st = entry.stat() if entry is not None else os.stat(q)
    except (OSError, ValueError):
        is_file = q.is_file()
        return q, is_file, not is_file and _broken_image_link(q), None
    regular = stat.S_ISREG(st.st_mode)
    special = not regular and not stat.S_ISDIR(st.st_mode) and q.suffix.lower() in IMAGE_EXTS
    return q, regular, special, st


def _file_key(q: Path, st: os.stat_result | None = None) -> tuple[Any, ...]:
    """What makes two listed paths one file: its device and inode, which a symbolic link and its
    target, two links to one file (hard links too) and two spellings of one path share; the real
    path (links resolved) where the file cannot be examined (a broken link) or has no inode number.
    ``st``: its ``stat`` (links followed) when the listing has it (one without an inode number, as
    a Windows folder listing gives, is asked again)."""
    if st is None or not st.st_ino:
        try:
            st = os.stat(q)
        except (OSError, ValueError):
            st = None
    if st is not None and st.st_ino:
        return ("inode", st.st_dev, st.st_ino)
    return ("path", os.path.realpath(q))


def _list_entry(q: Path, lst: Path, line_no: int, stats: dict[Path, os.stat_result]) -> Path:
    """The input that line ``line_no`` of the list file ``lst`` names: ``q`` (its ``stat``, links
    followed, kept in ``stats`` for :func:`_file_key`). Where ``q`` names no file at all
    (:func:`_unusable`) it is listed as :func:`shown_name` writes it, and reading that fails with
    one line naming the list file and line (:data:`_UNUSABLE`): the line fails as its own input,
    as a missing file does, and the others are still done (a NUL byte would stop every later
    step that asks the system about the path, with a ValueError)."""
    try:
        stats[q] = os.stat(q)
        return q
    except (OSError, ValueError) as exc:
        problem = _unusable(q, exc)
    if problem is None:  # (missing, a broken link…: each said when it is read)
        return q
    shown = Path(shown_name(q))
    _UNUSABLE[str(shown)] = f"{shown}: line {line_no} of {lst}: {problem}"
    if len(_UNUSABLE) > NOTED_MAX:
        del _UNUSABLE[next(iter(_UNUSABLE))]
    return shown


def _list_lines(lst: Path) -> list[str]:
    """The lines of a list file: UTF-8 text (a leading byte-order mark is dropped), split where a
    text editor splits them (``\\n``, ``\\r\\n``, ``\\r``), so that a line's number is the
    editor's; the other breaks ``str.splitlines`` takes (``\\x0c``, ``\\x85``, ``\\u2028``…) may
    be part of a file name."""
    try:
        text = lst.read_bytes().decode("utf-8-sig")
        return text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    except UnicodeDecodeError:
        raise ImageError(f"{lst}: not UTF-8 text, so not a list of image paths (one per line); save it as "
                         "UTF-8, or give the images as a file, folder or glob") from None
    except OSError as exc:
        raise ImageError(describe_os_error(exc, lst, action="read")) from None


def name_key(name: str) -> str:
    """Two output names are one file on a case-insensitive, normalising file system (macOS,
    Windows) when their keys are equal: letter case and Unicode normalisation (NFC/NFD) ignored."""
    return unicodedata.normalize("NFC", name).casefold()


def _fitted(qualified: str, limit: int = MAX_QUALIFIED_BYTES) -> str:
    """``qualified`` itself when it is at most ``limit`` bytes (as the file system stores it: UTF-8,
    and a name's bytes that are not UTF-8 as they are); else a stable hash of it (first 10 hex
    digits of the sha256 of its :func:`name_key`, so that names equal ignoring case stay equal and
    are refused as such) and ``__`` and as much of its end as fits."""
    raw = os.fsencode(qualified)  # (a name that is not UTF-8 holds surrogate escapes: strict UTF-8 refused it)
    if len(raw) <= limit:
        return qualified
    digest = hashlib.sha256(os.fsencode(name_key(qualified))).hexdigest()[:10]
    room = limit - len(digest) - len(FOLDER_SEP)
    tail = raw[-room:].lstrip(bytes(range(0x80, 0xC0))).decode("utf-8", "surrogateescape")  # (a character cut
    return f"{digest}{FOLDER_SEP}{tail}"  # in two is dropped; bytes that are not UTF-8 are kept)


def output_names(paths: Sequence[Path]) -> list[str]:
    """A unique output name per input path, by the rule in the module docstring.

    Stable: a name depends only on the set of inputs, not on their order. Names are unique ignoring
    letter case and Unicode normalisation (``é`` as one code point or two), as a macOS or Windows
    disk sees them. A qualified name (a relative path) longer than :data:`MAX_QUALIFIED_BYTES`
    (UTF-8) becomes a 10-hex-digit hash of that whole path, ``__`` and the path's end, so that it
    still fits a 255-byte file name: unique and the same on every run. Raises ``ImageError`` naming
    both paths when two inputs cannot be told apart.
    """
    absolute = [Path(os.path.abspath(p)) for p in paths]
    try:
        root = Path(os.path.commonpath([str(a.parent) for a in absolute])) if absolute else Path(".")
        qualified = [FOLDER_SEP.join(a.relative_to(root).parts) for a in absolute]
    except ValueError:  # no common folder (Windows drives): the whole path
        qualified = [FOLDER_SEP.join(a.parts[1:]) for a in absolute]
    qualified = [_fitted(q) for q in qualified]
    names = [p.stem for p in paths]
    while True:
        groups: dict[str, list[int]] = {}
        for i, n in enumerate(names):
            groups.setdefault(name_key(n), []).append(i)
        clashing = [idx for idx in groups.values() if len(idx) > 1]
        if not clashing:
            return names
        changed = False
        for idx in clashing:
            for i in idx:
                if names[i] != qualified[i]:
                    names[i], changed = qualified[i], True
        if not changed:  # every clashing input already has its longest name
            a, b = sorted(paths[i] for i in clashing[0])[:2]
            raise ImageError(f"inputs {a} and {b} would both be written as '{names[clashing[0][0]]}' (output "
                             "names ignore letter case and Unicode normalisation); rename one of them")


def check_batch(images: torch.Tensor) -> None:
    """Raise ``ValueError`` unless ``images`` follows the image convention in float32 exactly
    (:func:`restorekit.interfaces.check_image_batch`, which lets any floating type pass)."""
    from .interfaces import check_image_batch

    check_image_batch(images, "images")
    if images.dtype != torch.float32:
        raise ValueError(f"expected float32, got {images.dtype}")


def to_signed(x: torch.Tensor) -> torch.Tensor:
    """[0,1] to [-1,1], for components defined on that range."""
    return x * 2.0 - 1.0


def from_signed(x: torch.Tensor) -> torch.Tensor:
    """[-1,1] back to [0,1]."""
    return (x + 1.0) * 0.5


def side_by_side(left: torch.Tensor, right: torch.Tensor) -> torch.Tensor:
    """``left | right`` (``--couple``), the left one resized (nearest) to the right one's height."""
    if left.shape[-2:] != right.shape[-2:]:
        left = torch.nn.functional.interpolate(left, size=right.shape[-2:], mode="nearest")
    return torch.cat([left, right], dim=-1)
