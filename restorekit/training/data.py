"""Super-resolution training pairs made on the fly from a folder of high-resolution faces.

Per sample: the HR image is centre-cropped to a square and resized (antialiased bicubic) to
``hr_size`` (the loss resolution), and to ``input_size`` (the model's input); the input copy is
downscaled by a factor ``F`` drawn from ``factors`` (antialiased bicubic, PIL convention) and
bicubic-upscaled back to ``input_size``: as in pSp, the encoder always sees a 256-px image and
``F`` sets how much detail it lacks, but pSp resizes the HR and upsamples the LR with PIL
bilinear and truncates to 8 bit (the upsampling kernel makes most of the difference: 34–39 dB
PSNR between the two inputs over F = 1…32 on FFHQ faces); models trained here infer with the
bicubic upsampling they were trained with. Optionally the LR is rounded to 8-bit levels, as
real inputs are. Training samples are flipped horizontally with probability 1/2 (pSp's SR
transforms do not flip).

An image that cannot be read is left out (``bad_images="skip"``): its sample is taken from the next
readable file, so the substitute too depends only on the data, and the sample's ``left_out`` says
why in one line per file (the trainer warns once per file, also for files its loader workers
met); or it ends the run with a :class:`DataError` naming it (``"stop"``).

Determinism: every random choice for sample ``i`` in epoch ``e`` draws from a fresh
``torch.Generator`` seeded from ``(seed, e, i)``, so a sample does not depend on worker count,
batch order or what was drawn before — which is what makes resuming exact. Validation samples
use no flip and cycle through the factors (``factors[i % len]``) so every factor is scored.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import math
import os
import posixpath
import re
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Literal

import torch
from torch import Tensor
from torch.utils.data import Dataset

from ..degradations import bicubic_resize, downscale
from ..errors import ImageError, RestorekitError
from ..images import IMAGE_EXTS, name_key, read_image

BadImages = Literal["skip", "stop"]


class DataError(RestorekitError):
    """A training data folder or split file is unusable."""


def unreadable(exc: ImageError, policy: BadImages, *, part: str = "training") -> str:
    """The warning for an image of the ``part`` ("training" or "validation") that cannot be read
    (``"skip"``: it is left out), or a :class:`DataError` with the reader's one-line message (``"stop"``)."""
    # A reader's hint for the commands that have it (--max-pixels): train has none, it reads at the default.
    text = str(exc).replace(" (raise it with --max-pixels)", "")
    if policy == "stop":
        raise DataError(f"{text} (data.bad_images = \"skip\" would leave it out and go on)") from None
    return f"{text}; left out of {part} (data.bad_images = \"stop\" stops instead)"


def list_images(root: str | Path) -> list[Path]:
    """Image files under ``root`` (recursive), sorted by their path relative to ``root``."""
    base = Path(root)
    if not base.is_dir():
        raise DataError(f"{base}: not a folder of images")
    files = [p for p in base.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTS
             and not any(part.startswith(".") for part in p.relative_to(base).parts)]
    return sorted(files, key=lambda p: p.relative_to(base).as_posix())


def _read_split(path: Path, root: Path) -> tuple[list[str] | None, list[str], list[str]]:
    """``(train or None, val, exclude)`` as a split file lists them."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise DataError(f"{path}: not UTF-8 text, so not a split file (one image path a line, or JSON)") from None
    if path.suffix.lower() == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}: not valid JSON ({exc.msg}, line {exc.lineno})") from None
        if not isinstance(data, dict) or "val" not in data:
            raise DataError(f"{path}: a JSON split needs a 'val' list (and optionally 'train', 'exclude')")
        for key in ("train", "val", "exclude"):
            if key in data and data[key] is not None and not isinstance(data[key], list):
                raise DataError(f"{path}: '{key}' must be a list of image paths, not {type(data[key]).__name__}")
        train = data.get("train")
        return ([str(t) for t in train] if train is not None else None), [str(v) for v in data["val"]], \
            [str(x) for x in data.get("exclude") or []]
    listed = [ln for ln in (raw.strip() for raw in text.splitlines()) if ln and not ln.startswith("#")]
    # `!path  # why`: the note after an exclusion is cut (a validation line is a whole file name,
    # which may hold " #"; one that starts with "!" is written "./!name").
    excluded = [re.sub(r"\s+#.*$", "", ln[1:]).strip() for ln in listed if ln.startswith("!")]
    return None, [ln for ln in listed if not ln.startswith("!")], [x for x in excluded if x]


def _split_name(line: str, base: Path) -> str:
    """A split file's entry as the data folder's relative POSIX path: ``./a.png`` and ``sub//a.png``
    as ``a.png`` and ``sub/a.png``; an absolute path inside ``base`` relative to it (outside: as is,
    to be named as not under it)."""
    p = Path(line)
    if p.is_absolute():
        for inside, folder in ((Path(os.path.abspath(p)), Path(os.path.abspath(base))),  # as written (a
                               (p.resolve(), base.resolve())):  # symlinked image stays inside), else real
            try:
                return inside.relative_to(folder).as_posix()
            except ValueError:
                pass
        return line
    return posixpath.normpath(p.as_posix())


def _identities(rel: dict[str, Path]) -> dict[tuple[int, int], str]:
    """The listed files (``rel``: relative name to path) by device and inode number (files on a file
    system without inode numbers left out)."""
    found: dict[tuple[int, int], str] = {}
    for listed, path in rel.items():
        with contextlib.suppress(OSError):
            st = path.stat()
            if st.st_ino:
                found.setdefault((st.st_dev, st.st_ino), listed)
    return found


def _listed_as(name: str, rel: dict[str, Path], base: Path,
               identities: Callable[[], dict[tuple[int, int], str]]) -> str:
    """The data folder's own name for a split file's entry ``name`` (:func:`_split_name`) that it does
    not list as written: ``sub\\a.png`` (a split file written on Windows) as ``sub/a.png``; else the
    listed image that a case-insensitive or normalising file system (macOS, Windows) opens by that
    name: ``Face.PNG`` for ``face.png``, ``é`` as one code point for the two that a folder lists
    (the same file, by :func:`_identities`, whose name differs only so: :func:`~restorekit.images.name_key`).
    ``name`` itself when neither."""
    if name in rel:
        return name
    spellings = [name]
    if "\\" in name:
        spellings.insert(0, posixpath.normpath(name.replace("\\", "/")))
        if spellings[0] in rel:
            return spellings[0]
    for spelling in spellings:
        if PurePosixPath(spelling).is_absolute() or spelling.startswith("../"):
            continue
        try:
            st = (base / spelling).stat()
        except (OSError, ValueError):
            continue
        found = identities().get((st.st_dev, st.st_ino)) if st.st_ino else None
        if found is not None and name_key(found) == name_key(spelling):
            return found
    return name


def split_files(files: Sequence[Path], root: str | Path, *, split_file: str | Path | None = None,
                holdout_fraction: float = 0.0) -> tuple[list[Path], list[Path]]:
    """``(train, val)``: by a split file (paths relative to ``root``; one written on Windows, or
    spelled in another letter case that this file system opens as a listed image, names that
    image: :func:`_listed_as`), else the last ``holdout_fraction`` of the sorted list (at least one
    image when the fraction is > 0).

    Validation images are never in the training list, nor are byte-for-byte copies of them under
    other names (a data set holding one photo twice: left out with a warning), nor what the split
    file excludes (``!path`` lines, JSON ``exclude``: e.g. re-encoded copies of validation images;
    an excluded name the folder does not hold is passed over).
    """
    base = Path(root)
    rel = {p.relative_to(base).as_posix(): p for p in files}
    if split_file is not None:
        sp = Path(split_file)
        if not sp.is_file():
            raise DataError(f"{sp}: no such split file")
        train_names, val_names, exclude_names = _read_split(sp, base)
        if not val_names and train_names is None:  # (a text split is its list of validation images)
            raise DataError(f"{sp}: lists no validation image (`!path` lines exclude images; a file name that "
                            "starts with '!' is written ./!name)")
        identities = functools.cache(lambda: _identities(rel))
        val_names = [_listed_as(_split_name(v, base), rel, base, identities) for v in val_names]
        train_names = None if train_names is None else [_listed_as(_split_name(t, base), rel, base, identities)
                                                        for t in train_names]
        excluded = {_listed_as(_split_name(x, base), rel, base, identities) for x in exclude_names}
        missing = [v for v in val_names + (train_names or []) if v not in rel]
        if missing:
            raise DataError(f"{sp}: {len(missing)} listed images are not under {base} (first: {missing[0]}; "
                            "paths are relative to the data folder, as sub/name.png)")
        val_set = set(val_names)
        for other, what in ((set(train_names) if train_names is not None else set(), "train"), (excluded, "exclude")):
            overlap = val_set & other
            if overlap:
                raise DataError(f"{sp}: {len(overlap)} images are in both {what} and val (first: {sorted(overlap)[0]})")
        val = [rel[v] for v in sorted(val_set)]
        names = list(dict.fromkeys(train_names)) if train_names is not None else sorted(rel)  # each image once
        train = [rel[n] for n in sorted(names) if n not in val_set and n not in excluded]
        return _without_copies_of(val, train, base), val
    if not 0.0 <= holdout_fraction < 1.0:
        raise DataError(f"holdout_fraction must be in [0, 1); got {holdout_fraction}")
    n_val = math.ceil(len(files) * holdout_fraction) if holdout_fraction > 0 else 0
    if n_val >= len(files) and files:
        raise DataError(f"holdout_fraction {holdout_fraction} leaves no training image out of {len(files)}")
    cut = len(files) - n_val
    val = list(files[cut:])
    return _without_copies_of(val, list(files[:cut]), base), val


def _without_copies_of(val: Sequence[Path], train: list[Path], root: Path) -> list[Path]:
    """``train`` less the files whose bytes are those of a validation file (a photo a data set holds
    under two names would be trained on and validated on at once), with one warning saying how many.
    Only files of a validation file's size are read, their first 64 KiB unless those match too, so a
    large set of compressed images costs a listing of sizes (one of uncompressed images, whose sizes
    are alike, a read of each file's head)."""
    if not val or not train:
        return train

    def size(p: Path) -> int:
        try:
            return p.stat().st_size
        except OSError:  # (unreadable files are the loader's to report)
            return -1

    by_size: dict[int, list[Path]] = {}
    for v in val:
        by_size.setdefault(size(v), []).append(v)
    by_size.pop(-1, None)
    digests: dict[tuple[Path, bool], str | None] = {}

    def digest(p: Path, whole: bool) -> str | None:
        """sha256 of the file's first 64 KiB, or of all of it (``whole``); None when unreadable."""
        if (p, whole) not in digests:
            try:
                with open(p, "rb") as f:
                    digests[p, whole] = hashlib.sha256(f.read() if whole else f.read(1 << 16)).hexdigest()
            except OSError:
                digests[p, whole] = None
        return digests[p, whole]

    def same_bytes(t: Path, v: Path) -> bool:
        return all(digest(t, whole) is not None and digest(t, whole) == digest(v, whole) for whole in (False, True))

    copies: dict[Path, Path] = {}
    for t in train:
        twin = next((v for v in by_size.get(size(t), []) if same_bytes(t, v)), None)
        if twin is not None:
            copies[t] = twin
    if not copies:
        return train
    first, twin = next(iter(copies.items()))
    said = (f"{len(copies)} training images are byte-for-byte copies of validation images" if len(copies) > 1
            else "1 training image is a byte-for-byte copy of a validation image")
    warnings.warn(f"{root}: {said}, left out of training (first: {first.relative_to(root).as_posix()} = "
                  f"{twin.relative_to(root).as_posix()})", stacklevel=3)
    return [t for t in train if t not in copies]


@dataclass(frozen=True)
class Split:
    """The images a run trains and validates on, by their names under the data folder: what its
    checkpoints record (:meth:`record`), so that a resume on data that changed since is told so,
    and one that would train on the run's validation images is refused (:meth:`check_resume`)."""

    train: frozenset[str]
    val: tuple[str, ...]

    @classmethod
    def of(cls, train: Sequence[Path], val: Sequence[Path], root: str | Path) -> Split:
        base = Path(root)

        def name(p: Path) -> str:
            try:
                return p.relative_to(base).as_posix()
            except ValueError:  # (files given from elsewhere: by their own path)
                return p.as_posix()

        return cls(frozenset(name(p) for p in train), tuple(sorted({name(p) for p in val})))

    def record(self) -> dict[str, Any]:
        """The validation names and a digest of the training names (a checkpoint stays small)."""
        digest = hashlib.sha256("\n".join(sorted(self.train)).encode("utf-8", "surrogateescape")).hexdigest()
        return {"val": list(self.val), "train_count": len(self.train), "train_sha256": digest}

    def check_resume(self, saved: Any, step: int) -> str | None:
        """A warning line when this split differs from ``saved`` (a checkpoint's :meth:`record`;
        ``None`` for a checkpoint written before splits were recorded: nothing to compare), so the
        resume is not an exact continuation; a :class:`DataError` when images that validated the
        run up to ``step`` would now be trained on (a holdout fraction of a folder that gained
        images moves its last images into training)."""
        if not isinstance(saved, dict):
            return None
        old_val = [str(v) for v in saved.get("val") or []]
        moved = sorted(set(old_val) & self.train)
        if moved:
            raise DataError(f"--resume: {len(moved)} image{'s' if len(moved) > 1 else ''} that validated this run "
                            f"up to step {step} would now be trained on (first: {moved[0]}): the split changed "
                            "(images added to or removed from the data folder, another split file or "
                            "holdout_fraction); put the data back as it was, or start a new run in another --out")
        said = []
        if saved.get("train_sha256") != self.record()["train_sha256"]:
            said.append(f"other training images: {saved.get('train_count')} in the checkpoint, {len(self.train)} now")
        if old_val != list(self.val):
            said.append(f"other validation images: {len(old_val)} in the checkpoint, {len(self.val)} now")
        if not said:
            return None
        return f"warning: resuming with {'; '.join(said)}, so this is not an exact continuation"


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """A 63-bit seed mixing ``(seed, epoch, index)`` (splitmix64 finaliser; stable across runs)."""
    x = (seed * 0x9E3779B97F4A7C15 + epoch * 0xBF58476D1CE4E5B9 + index * 0x94D049BB133111EB) & (2**64 - 1)
    x ^= x >> 30
    x = (x * 0xBF58476D1CE4E5B9) & (2**64 - 1)
    x ^= x >> 27
    x = (x * 0x94D049BB133111EB) & (2**64 - 1)
    x ^= x >> 31
    return x & (2**63 - 1)


def center_square(x: Tensor) -> Tensor:
    """Centre crop ``…×H×W`` to a square of side ``min(H, W)``."""
    h, w = x.shape[-2:]
    s = min(h, w)
    top, left = (h - s) // 2, (w - s) // 2
    return x[..., top:top + s, left:left + s]


def degrade_lr(hr: Tensor, factor: int, input_size: int, *, quantize: bool = True) -> Tensor:
    """The LR face behind the model input for ``hr`` (``N×3×H×W``) at ``factor``: resize to
    ``input_size``, downscale by ``factor``, optionally round to 8 bit (``input_size / factor`` px)."""
    x = bicubic_resize(hr, (input_size, input_size)).clamp(0, 1)
    lr = downscale(x, factor)
    return lr.mul(255).round().div(255) if quantize else lr


def make_lr(hr: Tensor, factor: int, input_size: int, *, quantize: bool = True) -> Tensor:
    """The model input for ``hr`` (``N×3×H×W``) at ``factor``: :func:`degrade_lr`, upscaled back to
    ``input_size`` (and rounded to 8 bit again when ``quantize``)."""
    lr = degrade_lr(hr, factor, input_size, quantize=quantize)
    up = bicubic_resize(lr, (input_size, input_size)).clamp(0, 1)
    return up.mul(255).round().div(255) if quantize else up


class SRPairDataset(Dataset[dict[str, Any]]):
    """``dict(lr_up=3×S×S, hr=3×H×H, factor=int, index=int, left_out=str)`` from a list of HR image
    files (``left_out``: why files were passed over for this sample, one line each; usually empty).

    ``input_size`` S is the model input; ``hr_size`` H the target (default S). ``train=False``
    gives validation samples (no flip, factors cycled). Call :meth:`set_epoch` before each epoch.
    """

    def __init__(self, files: Sequence[str | Path], input_size: int, *, hr_size: int | None = None,
                 factors: Sequence[int] = (1, 2, 4, 8, 16), seed: int = 0, flip: bool = True,
                 train: bool = True, quantize: bool = True, cache: bool = False,
                 bad_images: BadImages = "skip") -> None:
        if not files:
            raise DataError("no images to train on")
        bad = [f for f in factors if f < 1 or input_size // f < 1]
        if bad or not factors:
            raise DataError(f"factors {list(factors)} do not fit input size {input_size}")
        self.files = [Path(f) for f in files]
        self.input_size = int(input_size)
        self.hr_size = int(hr_size or input_size)
        self.factors = tuple(int(f) for f in factors)
        self.seed = int(seed)
        self.flip = flip and train
        self.train = train
        self.quantize = quantize
        self.cache = cache
        self.bad_images = bad_images
        self._cache: dict[int, Tensor] = {}
        self._bad: set[int] = set()  # found unreadable in this process (each warned about once)
        self.epoch = 0
        self.split: Split | None = None  # the run's split (:func:`sr_datasets` sets it on the training set)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.files)

    def load_hr(self, index: int) -> Tensor:
        """``1×3×H×W`` HR in [0,1] (8-bit levels) at ``max(hr_size, input_size)``, square (centre crop)."""
        if self.cache and index in self._cache:
            return self._cache[index].float().div(255)
        img = center_square(read_image(self.files[index]))
        side = max(self.hr_size, self.input_size)
        # Rounded to 8 bit like a stored thumbnail, so caching does not change any sample.
        q = bicubic_resize(img, (side, side)).clamp(0, 1).mul(255).round().to(torch.uint8)
        if self.cache:
            self._cache[index] = q
        return q.float().div(255)

    def sample_params(self, index: int) -> tuple[int, bool]:
        """``(factor, flip)`` for sample ``index`` in the current epoch."""
        if not self.train:
            return self.factors[index % len(self.factors)], False
        g = torch.Generator().manual_seed(sample_seed(self.seed, self.epoch, index))
        factor = self.factors[int(torch.randint(len(self.factors), (1,), generator=g))]
        flip = bool(torch.rand((), generator=g) < 0.5) if self.flip else False
        return factor, flip

    def _load_readable(self, index: int) -> tuple[int, Tensor, list[str]]:
        """``(i, load_hr(i), warnings)`` for the first readable file from ``index`` on (cyclically);
        a warning for each file found unreadable on the way (once per file in this process)."""
        n = len(self.files)
        said: list[str] = []
        for k in range(n):
            i = (index + k) % n
            if i in self._bad:
                continue
            try:
                return i, self.load_hr(i), said
            except ImageError as exc:
                said.append(unreadable(exc, self.bad_images, part="training" if self.train else "validation"))
                self._bad.add(i)
        what = "training" if self.train else "validation"
        raise DataError(f"none of the {n} {what} images can be read ({self.files[0].parent} …)")

    def __getitem__(self, index: int) -> dict[str, Any]:
        factor, flip = self.sample_params(index)
        index, img, said = self._load_readable(index)
        if flip:
            img = img.flip(-1)
        hr = bicubic_resize(img, (self.hr_size, self.hr_size)).clamp(0, 1)
        lr_up = make_lr(img, factor, self.input_size, quantize=self.quantize)
        return {"lr_up": lr_up[0].contiguous(), "hr": hr[0].contiguous(), "factor": factor, "index": index,
                "left_out": "\n".join(said)}


def oversample(files: Sequence[Path], root: str | Path, repeat: dict[str, int]) -> list[Path]:
    """``files`` with those under each ``repeat`` subfolder listed ``repeat[sub]`` times (in place)."""
    if not repeat:
        return list(files)
    base = Path(root)
    prefixes = {sub.strip("/") + "/": k for sub, k in repeat.items()}
    used = dict.fromkeys(prefixes, 0)
    out: list[Path] = []
    for f in files:
        rel = f.relative_to(base).as_posix()
        k = 1
        for prefix, n in prefixes.items():
            if rel.startswith(prefix):
                k = max(k, n)
                used[prefix] += 1
        out.extend([f] * k)
    missing = [p.rstrip("/") for p, n in used.items() if n == 0]
    if missing:
        raise DataError(f"{base}: data.repeat names subfolders with no training image: {', '.join(missing)}")
    return out


def sr_datasets(root: str | Path, input_size: int, data: Any, *, hr_size: int | None = None,
                seed: int = 0) -> tuple[SRPairDataset, SRPairDataset | None]:
    """Train and validation datasets for a folder, from a :class:`~.config.DataConfig`."""
    files = list_images(root)
    if not files:
        raise DataError(f"{root}: no image files ({', '.join(IMAGE_EXTS)})")
    train, val = split_files(files, root, split_file=data.split_file, holdout_fraction=data.holdout_fraction)
    if not train:
        raise DataError(f"{root}: the split leaves no training images")
    train = oversample(train, root, getattr(data, "repeat", {}) or {})
    common = dict(hr_size=hr_size, factors=data.factors, seed=seed, quantize=data.quantize, cache=data.cache,
                  bad_images=data.bad_images)
    split = Split.of(train, val, root)
    train_ds = SRPairDataset(train, input_size, flip=data.flip, train=True, **common)
    train_ds.split = split
    val_ds = SRPairDataset(val[: data.max_val_images], input_size, train=False, **common) if val else None
    return train_ds, val_ds
