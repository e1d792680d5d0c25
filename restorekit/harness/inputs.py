"""The (LR, HR) pairs every method of a ``compare`` run sees, made once and cached under ``--out``.

Two sources:
- HR images plus a degradation spec: each HR is cropped (bottom/right) to a multiple of the
  scale, degraded with a generator seeded from the image's pixels (so a noisy degradation gives
  the same LR whatever the image's name, the other images, their order or ``--limit``), rounded
  to 8 bits and written as PNG to ``OUT/inputs/<key>/``, the key a hash of the spec, the scale and
  what the plugins' steps of the spec are (their distribution, version and code fingerprint:
  ``step_code``). A later run reuses the PNG while its HR file is unchanged.
- Given LR/HR pairs, matched by output name (see :func:`restorekit.images.output_names`), else by
  the LR file's stem (:func:`pair_items`; two files claiming one image are refused): the HR
  is cropped to a multiple of the scale and must then be exactly ``scale`` times the LR.

Under ``torchrun`` each rank makes (or checks) its share of the images (``shard=(rank, world)``:
images ``rank, rank + world, …``); :func:`merge_shards` puts the shares back in image order on
every rank and rank 0 records the LR files made in the manifest (:func:`update_manifest`).

Images are keyed everywhere (LR cache, manifest, store, outputs) by their unique output name. Every
method is fed the 8-bit LR exactly as written, and is scored against the cropped HR. A made LR
passes the same size check as one read from disk (:func:`restorekit.images.check_size`), so a rerun
gives the same verdict; an image whose output (the cropped HR) would exceed ``max_output_pixels``
fails before any method runs.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import torch
from PIL import Image
from torch import Tensor

from ..degradations import Chain, crop_to_multiple
from ..errors import ImageError, RestorekitError
from ..images import (DEFAULT_MAX_OUTPUT_PIXELS, DEFAULT_MAX_PIXELS, FILE_FORMATS, ImageItem, atomic_write_bytes,
                      check_output_size, check_size, from_pil, fs_error, list_inputs, probe_size, read_image,
                      read_image_bytes, shown_name, storage_errno, to_pil)
from ..safe_open import open_folder, read_plain
from ..seeds import mix_seed

_T = TypeVar("_T")

# Decoded inputs kept in memory between methods (bytes of float32 tensors).
CACHE_BYTES = 1 << 30
# Seconds between writes of the LR manifest while LR files are made: a run stopped part-way keeps
# the LR files it made (one process; shards' entries are written by rank 0 at the end).
MANIFEST_EVERY_S = 15.0
# Each write holds every image made so far: at a fixed interval a set of 10^5-10^6 images spent a
# growing share of its time rewriting the manifest (the work grew with the square of the set). A
# write taking longer than this many seconds stretches the interval in proportion, so writing it
# takes at most MANIFEST_WRITE_S / MANIFEST_EVERY_S (5%) of the time, whatever the set's size.
MANIFEST_WRITE_S = 0.75


def degradation_seed(hr: Tensor, seed: int = 0) -> int:
    """The per-image seed of the degradation's randomness: the sha256 of the decoded image's pixels
    (its size and float32 values) mixed with ``seed`` (``restorekit degrade --seed``; 0 gives
    compare's and serve's). So an image gets the same noise whatever its file is called, whichever
    other files are in the set (which can change its output name) and in whatever order."""
    x = hr.detach().to("cpu", torch.float32).contiguous()
    digest = hashlib.sha256(repr(tuple(x.shape)).encode())
    digest.update(x.numpy().tobytes())
    return mix_seed(seed, int.from_bytes(digest.digest()[:8], "little"))


def png_bytes(x: Tensor | Image.Image, compress_level: int = 1) -> bytes:
    """An 8-bit PNG of one image (fast zlib level: these are caches and outputs, not archives)."""
    buf = io.BytesIO()
    (x if isinstance(x, Image.Image) else to_pil(x)).save(buf, "PNG", compress_level=compress_level)
    return buf.getvalue()


@dataclass
class Pair:
    """One evaluation image: its stem, HR file, the LR file methods read, and their content hash."""

    stem: str
    hr_path: Path
    lr_path: Path
    input_hash: str = ""


@dataclass
class InputSet:
    """The pairs of a run, with a bounded in-memory cache of decoded tensors."""

    pairs: list[Pair]
    scale: int
    source: str  # "degradation:<spec>" or "lr-dir:<path>"
    failures: list[dict[str, str]] = field(default_factory=list)
    max_pixels: int = DEFAULT_MAX_PIXELS
    # A shard's (see the module's docstring): each image's position in the whole set, the
    # manifest it belongs to, and the entries this shard made for it (not yet written).
    order: dict[str, int] = field(default_factory=dict)
    manifest: Path | None = None
    made: dict[str, dict[str, str]] = field(default_factory=dict)
    _cache: dict[str, tuple[Tensor, Tensor]] = field(default_factory=dict)
    _cached_bytes: int = 0

    def portable(self) -> InputSet:
        """This set without its decoded images: what travels between ranks."""
        return InputSet(list(self.pairs), self.scale, self.source, list(self.failures), self.max_pixels,
                        dict(self.order), self.manifest, dict(self.made))

    def load(self, pair: Pair) -> tuple[Tensor, Tensor]:
        """``(lr, hr)`` as ``1×3×h×w`` / ``1×3×H×W`` float32 in [0,1]; HR cropped to a multiple of the scale."""
        hit = self._cache.get(pair.stem)
        if hit is not None:
            return hit
        lr = read_image(pair.lr_path, max_pixels=self.max_pixels)
        full = read_image(pair.hr_path, max_pixels=self.max_pixels)
        hr = crop_to_multiple(full, self.scale)
        want = (lr.shape[-2] * self.scale, lr.shape[-1] * self.scale)
        if tuple(hr.shape[-2:]) != want:
            raise ImageError(f"{pair.hr_path}: {size_mismatch(full, lr, self.scale)}")
        self.remember(pair.stem, lr, hr)
        return lr, hr

    def remember(self, stem: str, lr: Tensor, hr: Tensor) -> None:
        """Keep ``(lr, hr)`` for the next :meth:`load` while the cache has room for it within
        ``CACHE_BYTES``; once full, pairs are read from their files again.

        Nothing is evicted to make room: every method reads the pairs in the same order, and a
        least-recently-used cache smaller than the set would miss on every read of such a scan,
        while keeping the first pairs that fit serves that share of each later method's reads from
        memory. A pair leaves once no later read needs it (:meth:`release`)."""
        size = (lr.numel() + hr.numel()) * 4
        if stem in self._cache or self._cached_bytes + size > CACHE_BYTES:
            return
        self._cache[stem] = (lr, hr)
        self._cached_bytes += size

    def release(self, stem: str) -> None:
        """Forget the decoded pair of ``stem``, which nothing later in the run reads (its last
        method and metrics are done): its memory is freed during the run, not at its end."""
        hit = self._cache.pop(stem, None)
        if hit is not None:
            self._cached_bytes -= (hit[0].numel() + hit[1].numel()) * 4


def _hash_bytes(*parts: bytes) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(hashlib.sha256(p).digest())
    return h.hexdigest()[:16]


def duplicate_lines(pairs: list[Pair]) -> list[str]:
    """A line per image whose HR file has the same bytes as an earlier image's (a copy under another
    name): both stay in the run — the user may mean it — but each counts as an image of its own in
    every mean and paired statistic, which should not pass unsaid. (The same file reached by two
    paths or a link is one image already: :func:`restorekit.images.list_inputs`.) The HR file alone
    is compared: LR files of ``--lr-dir`` record the name of the input they were made from. Only
    files of equal size are hashed."""
    sizes: dict[int, list[Pair]] = {}
    for pair in pairs:
        try:
            sizes.setdefault(os.stat(pair.hr_path).st_size, []).append(pair)
        except (OSError, ValueError):  # (said where it is read)
            continue
    copy_of: dict[int, Pair] = {}
    for group in (g for g in sizes.values() if len(g) > 1):
        first: dict[str, Pair] = {}
        for pair in group:
            try:
                with open(pair.hr_path, "rb") as f:
                    digest = hashlib.file_digest(f, "sha256").hexdigest()
            except OSError:
                continue
            seen = first.setdefault(digest, pair)
            if seen is not pair:
                copy_of[id(pair)] = seen
    return [f"{shown_name(pair.hr_path)}: the same content as {shown_name(copy_of[id(pair)].hr_path)} (a copy "
            "under another name); both are scored, so this image counts twice" for pair in pairs if id(pair) in copy_of]


def _select(items: list[_T], limit: int | None) -> list[_T]:
    return items[:limit] if limit is not None else items


def merge_shards(shards: list[InputSet], local: InputSet) -> InputSet:
    """The whole set from every rank's share (pairs and failures in image order), with ``local``'s cache."""
    order = {stem: i for s in shards for stem, i in s.order.items()}
    merged = InputSet(sorted((p for s in shards for p in s.pairs), key=lambda p: order[p.stem]), local.scale,
                      local.source, sorted((f for s in shards for f in s.failures), key=lambda f: order[f["image"]]),
                      local.max_pixels, order, local.manifest, {k: v for s in shards for k, v in s.made.items()})
    merged._cache, merged._cached_bytes = local._cache, local._cached_bytes
    return merged


def lr_folder_key(spec: str, scale: int, step_code: Mapping[str, Any] | None = None) -> str:
    """The name of the LR folder ``OUT/inputs/<key>/`` of a degradation: a hash of the spec, the
    scale and, when the spec has steps from plugins, what they are (``step_code``), so that LR
    files made by another version or edit of a plugin's step are not reused. Built-in steps only:
    the key of ``spec|scale`` (as before plugins' steps counted)."""
    text = f"{spec}|{scale}" + (f"|{json.dumps(step_code, sort_keys=True)}" if step_code else "")
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def _write_manifest(path: Path, spec: str, scale: int, images: dict[str, dict[str, str]],
                    step_code: Mapping[str, Any] | None = None, core_code: str = "") -> None:
    """Write ``OUT/inputs/<key>/manifest.json``, its folders reached from ``OUT`` without following a link."""
    doc: dict[str, Any] = {"degradation": spec, "scale": scale, "core_code": core_code}
    if step_code:
        doc["degradation_plugins"] = dict(step_code)
    doc["images"] = images
    atomic_write_bytes(path, json.dumps(doc, indent=1).encode(), root=path.parents[2])


def _read_manifest(path: Path, core_code: str = "") -> dict[str, dict[str, str]]:
    """The images of ``OUT/inputs/<key>/manifest.json`` (none when it is missing or unreadable, or
    was written by other core code than ``core_code``: its LR files were made by another version of
    the built-in degradations), read in its folder opened from ``OUT``
    (:func:`~restorekit.safe_open.open_folder`): neither through a link nor waiting on a FIFO planted there."""
    try:
        with open_folder(path.parents[2], path.parent.relative_to(path.parents[2]), create=False) as folder:
            data = read_plain(folder.at(path.name), dir_fd=folder.fd)
        doc = json.loads(data.decode("utf-8")) if data is not None else {}
        images = doc.get("images", {}) if doc.get("core_code", "") == core_code else {}
    except RestorekitError:  # (a folder refused as another user's link: said, not taken for no manifest)
        raise
    except (OSError, ValueError, AttributeError):
        return {}
    # Only well-formed entries (an object per image): any other is an LR file to make again.
    return {stem: entry for stem, entry in images.items() if isinstance(entry, dict)} \
        if isinstance(images, dict) else {}


def update_manifest(inputs: InputSet, spec: str, fresh: bool, step_code: Mapping[str, Any] | None = None,
                    core_code: str = "") -> None:
    """Record the LR files every shard made (rank 0, after :func:`merge_shards`); as one process would."""
    if inputs.manifest is None or not inputs.made:
        return
    manifest = {} if fresh else _read_manifest(inputs.manifest, core_code)
    manifest.update(sorted(inputs.made.items(), key=lambda kv: inputs.order.get(kv[0], -1)))
    _write_manifest(inputs.manifest, spec, inputs.scale, manifest, step_code, core_code)


def size_mismatch(hr: Tensor, lr: Tensor, scale: int) -> str:
    """Why an HR image (as read, before the crop to a multiple of ``scale``) does not pair with
    its LR, naming the scale the two sizes fit where there is one (``--lr-dir`` files made at
    another scale: LR files of the HR's size are ``--scale 1``)."""
    (h, w), (lh, lw) = hr.shape[-2:], lr.shape[-2:]
    ch, cw = h - h % scale, w - w % scale
    what = (f"HR {w}×{h} is not the size of its LR {lw}×{lh} (--scale 1)" if scale == 1 else
            f"HR {cw}×{ch} (cropped to a multiple of {scale}) is not {scale}× its LR {lw}×{lh}")
    fits = [k for k in range(1, 65) if k != scale and (h - h % k, w - w % k) == (lh * k, lw * k)]
    return f"{what}; the LR fits --scale {fits[0]}" if fits else what


def check_fits_scale(width: int, height: int, scale: int, where: object) -> None:
    """Refuse an HR image narrower or shorter than ``scale``, named by its own size: cropped to a
    multiple of the scale it would leave 0 px, which its LR's size would only hint at. The check
    of :func:`degrade_hr`, which ``serve`` makes before queueing a job, so both say the same."""
    if min(width, height) < scale:
        raise ImageError(f"{where}: {width}×{height} is smaller than the scale {scale} "
                         f"(each side must be ≥ {scale} px)")


def degrade_hr(hr: Tensor, chain: Chain, scale: int, *, where: object,
               max_pixels: int = DEFAULT_MAX_PIXELS, seed: int = 0,
               image_seed: int | None = None) -> tuple[Tensor, Tensor]:
    """compare's LR of one HR image (and ``restorekit degrade``'s): ``(hr cropped to a multiple of
    scale, lr in [0,1])``.

    The HR is cropped bottom/right to a multiple of ``scale``, degraded by ``chain`` with its
    randomness seeded from its pixels and ``seed`` (:func:`degradation_seed`), clamped, and checked to be HR /
    ``scale`` and within ``max_pixels`` (the check the LR file gets when read back). The LR is
    not yet rounded to 8 bits: that happens when it is written (``to_pil``). ``where`` names the
    image in errors; ``image_seed``: :func:`degradation_seed` of ``hr`` and ``seed`` when the caller
    has it already (the pixels are not hashed twice).
    """
    check_fits_scale(hr.shape[-1], hr.shape[-2], scale, where)
    g = torch.Generator().manual_seed(degradation_seed(hr, seed) if image_seed is None else image_seed)
    hr = crop_to_multiple(hr, scale)
    lr = chain(hr, generator=g).clamp(0, 1)
    want = (hr.shape[-2] // scale, hr.shape[-1] // scale)
    if tuple(lr.shape[-2:]) != want:
        raise ImageError(f"{where}: degradation '{chain.spec()}' gave {lr.shape[-1]}×{lr.shape[-2]}, "
                         f"expected {want[1]}×{want[0]} (HR / {scale})")
    check_size(lr.shape[-1], lr.shape[-2], f"{where}: its ×{scale} LR", max_pixels=max_pixels)
    return hr, lr


def from_degradation(hr_spec: str, chain: Chain, scale: int, out: Path, *, limit: int | None = None,
                     fresh: bool = False, max_pixels: int = DEFAULT_MAX_PIXELS,
                     max_output_pixels: int = DEFAULT_MAX_OUTPUT_PIXELS,
                     clock: Callable[[str, float], None] | None = None,
                     shard: tuple[int, int] = (0, 1),
                     step_code: Mapping[str, Any] | None = None, core_code: str = "") -> InputSet:
    """Make (or reuse) the LR of every HR image with ``chain``; unreadable HR files become failures.

    ``clock(stage, seconds)``, when given, receives the time spent degrading (``degrade``) and
    encoding and writing the LR files (``write_lr``), for ``bench harness``. ``shard=(rank,
    world)`` with ``world > 1``: only that share of the images, and the manifest is left to
    :func:`update_manifest`. ``step_code``: what the chain's steps from plugins are
    (:func:`~restorekit.harness.runner.degradation_plugins`), part of the LR folder's key.
    ``core_code``: restorekit's code fingerprint, recorded in the manifest; LR files listed by a
    manifest of other core code (a run stopped before ``compare.json`` recorded its code, resumed
    after an upgrade) are made again. A write the file system refuses for every file (a full disk:
    :func:`~restorekit.images.storage_errno`) stops here, raised as one line naming the LR file,
    once the LR files made so far are in the manifest where it still fits (one process).
    """
    tick = clock or (lambda stage, seconds: None)
    rank, world = shard
    items = _select(list_inputs(hr_spec), limit)
    if not items:
        raise RestorekitError(f"{hr_spec}: no HR images")
    spec = chain.spec()
    folder = out / "inputs" / lr_folder_key(spec, scale, step_code)
    # made, from --out down without following a link another user owns: one planted there is
    # refused in one line (LinkedFolderError)
    open_folder(out, folder.relative_to(out)).close()
    manifest_path = folder / "manifest.json"
    manifest = {} if fresh else _read_manifest(manifest_path, core_code)
    inputs = InputSet([], scale, f"degradation:{spec}", max_pixels=max_pixels, manifest=manifest_path)
    written, took = time.monotonic(), 0.0
    for index in range(rank, len(items), world):
        if world == 1 and inputs.made and \
                time.monotonic() - written >= MANIFEST_EVERY_S * max(1.0, took / MANIFEST_WRITE_S):
            t0 = time.monotonic()
            _write_manifest(manifest_path, spec, scale, {**manifest, **inputs.made}, step_code, core_code)
            written = time.monotonic()
            took = written - t0
        item = items[index]
        inputs.order[item.stem] = index
        lr_path = folder / f"{item.stem}.png"
        try:
            w, h = probe_size(item.path, max_pixels=max_pixels)
            check_output_size(w // scale, h // scale, scale, item.path, max_output_pixels=max_output_pixels)
            hr_bytes = item.path.read_bytes()
            hr_sha = hashlib.sha256(hr_bytes).hexdigest()
            entry = manifest.get(item.stem)
            if entry and entry.get("hr_sha256") == hr_sha and lr_path.is_file():
                lr_bytes = lr_path.read_bytes()
                if hashlib.sha256(lr_bytes).hexdigest() != entry.get("lr_sha256"):
                    entry = None
            else:
                entry = None
            if entry is None:  # (decoded from the bytes hashed: not read from the disk a second time)
                hr = read_image_bytes(hr_bytes, str(item.path), max_pixels=max_pixels, formats=FILE_FORMATS)
                t0 = time.perf_counter()
                seed = degradation_seed(hr)
                hr, lr = degrade_hr(hr, chain, scale, where=item.path, max_pixels=max_pixels, image_seed=seed)
                tick("degrade", time.perf_counter() - t0)
                t0 = time.perf_counter()
                pil = to_pil(lr)
                lr_bytes = png_bytes(pil)
                atomic_write_bytes(lr_path, lr_bytes, root=out)
                tick("write_lr", time.perf_counter() - t0)
                inputs.made[item.stem] = {"hr": str(item.path), "hr_sha256": hr_sha,
                                          "lr_sha256": hashlib.sha256(lr_bytes).hexdigest(),
                                          "seed": str(seed)}
                inputs.remember(item.stem, from_pil(pil), hr)  # what reading the PNG gives
            inputs.pairs.append(Pair(item.stem, item.path, lr_path, _hash_bytes(hr_bytes, lr_bytes)))
        except OSError as exc:
            if storage_errno(exc) is not None:  # a full disk: every LR file after it would fail the same way
                if world == 1 and inputs.made:  # the LR files made so far listed, so that a rerun reuses them
                    with contextlib.suppress(OSError):  # (where even that small file does not fit: made again)
                        _write_manifest(manifest_path, spec, scale, {**manifest, **inputs.made}, step_code,
                                        core_code)
                raise fs_error(exc, lr_path) from exc
            msg = str(exc) if str(item.path) in str(exc) else f"{item.path}: {exc}"
            inputs.failures.append({"image": item.stem, "path": str(item.path), "error": msg})
        except (RestorekitError, ValueError, RuntimeError) as exc:
            msg = str(exc) if str(item.path) in str(exc) else f"{item.path}: {exc}"
            inputs.failures.append({"image": item.stem, "path": str(item.path), "error": msg})
    if inputs.made and world == 1:
        _write_manifest(manifest_path, spec, scale, {**manifest, **inputs.made}, step_code, core_code)
        inputs.made = {}
    return inputs


def _shown(items: list[ImageItem]) -> str:
    """Files for a message, by their paths from the folder they share, sorted: ``b.png and b.webp``,
    ``a.png, a.tif and a.webp``."""
    paths = [os.path.abspath(it.path) for it in items]
    try:
        common = os.path.commonpath([os.path.dirname(p) for p in paths])
        names = sorted(os.path.relpath(p, common) for p in paths)
    except ValueError:  # no folder in common (Windows drives): the whole paths
        names = sorted(paths)
    return f"{', '.join(names[:-1])} and {names[-1]}"


def pair_items(hr_items: list[ImageItem], lr_items: list[ImageItem], hr_spec: str, lr_spec: str
               ) -> tuple[dict[str, tuple[ImageItem, ImageItem]], list[str]]:
    """``{HR output name: (HR, LR)}`` of ``--lr-dir``'s files, and the names present on one side only.

    An LR file is the LR of the HR image of its own output name (``degrade``'s outputs, a tree of
    LR files mirroring the HR one) or, failing that, of the HR image named as its file stem: two LR
    files of one stem (``b.png``, ``b.webp``) are named by their file names, and yet both are LR
    images of HR ``b``. Which of two files is meant is not for restorekit to guess: LR files of one
    stem claiming one HR image, or HR files of one stem that one LR file's stem names (``b.jpg``,
    ``b.png`` and LR ``b.png``), are refused (``RestorekitError``, one line naming them), and so is
    a set with no pair.
    """
    lr_named = {lr.stem: lr for lr in lr_items}
    pairs = {h.stem: (h, lr_named[h.stem]) for h in hr_items if h.stem in lr_named}
    used = {lr.path for _, lr in pairs.values()}
    lr_by_stem: dict[str, list[ImageItem]] = {}
    for lr in lr_items:
        lr_by_stem.setdefault(lr.path.stem, []).append(lr)
    hr_by_stem: dict[str, list[ImageItem]] = {}
    for h in hr_items:
        hr_by_stem.setdefault(h.path.stem, []).append(h)
    ambiguous: dict[str, str] = {}  # the image -> why
    for h in hr_items:  # (a file paired by its output name already is no claimant)
        claims = [lr for lr in lr_by_stem.get(h.stem, []) if lr.path not in used]
        if h.stem in pairs or not claims:
            continue
        if len(claims) > 1:
            ambiguous[h.stem] = (f"{lr_spec}: {_shown(claims)} are {'both' if len(claims) == 2 else 'all'} "
                                 f"LR images of {h.stem}: keep one")
        elif claims[0].path not in used:
            pairs[h.stem] = (h, claims[0])
            used.add(claims[0].path)
    for lr in lr_items:
        claims = [h for h in hr_by_stem.get(lr.path.stem, []) if h.stem not in pairs]
        if lr.path in used or not claims:
            continue
        if len(claims) > 1:
            ambiguous[lr.stem] = (f"{hr_spec}: {_shown(claims)} are {'both' if len(claims) == 2 else 'all'} HR "
                                  f"images of the LR image {lr.path}: keep one, or give each its own LR file "
                                  f"({' and '.join(sorted(f'{h.stem}.png' for h in claims))}, as restorekit "
                                  "degrade names them)")
        elif claims[0].stem not in pairs:
            pairs[claims[0].stem] = (claims[0], lr)
            used.add(lr.path)
    if ambiguous:
        first, *more = ambiguous
        raise RestorekitError(ambiguous[first] + (f" ({len(more)} more image{'s' if len(more) > 1 else ''} "
                                                  f"likewise: {', '.join(more[:4])}{' …' if len(more) > 4 else ''})"
                                                  if more else ""))
    if not pairs:
        raise RestorekitError(f"no HR image in {hr_spec} has an LR image of the same stem in {lr_spec}")
    unmatched = [h.stem for h in hr_items if h.stem not in pairs] + \
        [lr.stem for lr in lr_items if lr.path not in used]
    return pairs, sorted(unmatched)


def from_pairs(hr_spec: str, lr_spec: str, scale: int, *, limit: int | None = None,
               max_pixels: int = DEFAULT_MAX_PIXELS, max_output_pixels: int = DEFAULT_MAX_OUTPUT_PIXELS,
               shard: tuple[int, int] = (0, 1)) -> tuple[InputSet, list[str]]:
    """Pair HR and LR files (:func:`pair_items`); returns the set and the names present on one side only.

    ``shard=(rank, world)``: check and hash only that share of the pairs (:func:`merge_shards`).
    """
    pairs, unmatched = pair_items(list_inputs(hr_spec), list_inputs(lr_spec), hr_spec, lr_spec)
    items = _select([pairs[s] for s in sorted(pairs)], limit)
    inputs = InputSet([], scale, f"lr-dir:{lr_spec}", max_pixels=max_pixels)
    for index in range(shard[0], len(items), shard[1]):
        item, lr_item = items[index]
        inputs.order[item.stem] = index
        lr_path = lr_item.path
        try:
            w, h = probe_size(lr_path, max_pixels=max_pixels)
            check_output_size(w, h, scale, lr_path, max_output_pixels=max_output_pixels)
            probe_size(item.path, max_pixels=max_pixels)  # a regular file, an image: a FIFO's bytes never end
            digest = _hash_bytes(item.path.read_bytes(), lr_path.read_bytes())
            inputs.pairs.append(Pair(item.stem, item.path, lr_path, digest))
        except (RestorekitError, OSError) as exc:
            msg = str(exc) if str(item.path) in str(exc) or str(lr_path) in str(exc) else f"{item.path}: {exc}"
            inputs.failures.append({"image": item.stem, "path": str(item.path), "error": msg})
    return inputs, unmatched
