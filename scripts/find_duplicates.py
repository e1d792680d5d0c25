"""Training images that are copies of validation images, re-encoded or not: `!path` lines for a split file.

`split_files` leaves byte-for-byte copies of validation images out of training by itself; a photo a
data set holds twice in other encodings (two JPEG qualities, a WebP of a PNG) differs in every byte
and is found only by looking. Each image is reduced to a 16×16 grey thumbnail (box filter: the
average of each cell, which re-encoding barely moves); a training image whose thumbnail lies within
--max-rms levels (of 255, root-mean-square over the cells) of a validation image's is reported as a
copy. On the faces of `../shared/data/faces/`, the copies lie within 1.6 levels and the nearest
different face 20.7 levels away, so the default of 6 leaves a wide margin either way.

    python scripts/find_duplicates.py ../shared/data/faces plugins/psp_sr/recipes/faces128/val.txt

prints one `!path  # copy of VAL (rms R)` line for each image outside the validation split that
copies a validation image, byte copies and those the split file already excludes included: the
split file's `!` lines are to be replaced by them. Reads every image once (about 0.3 ms a 128-px
WebP).
"""

from __future__ import annotations

import argparse
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from restorekit.training.data import list_images, split_files


def thumbnail(path: Path, side: int = 16) -> np.ndarray:
    """``side²`` grey levels of ``path`` (box-filtered, 0–255, float32)."""
    with Image.open(path) as img:
        return np.asarray(img.convert("L").resize((side, side), Image.Resampling.BOX), np.float32).ravel()


def copies(train: list[Path], val: list[Path], max_rms: float) -> list[tuple[Path, Path, float]]:
    """``(training image, the validation image it copies, RMS distance)`` for each training image
    within ``max_rms`` of a validation image (the nearest one), by training image order."""
    if not train or not val:
        return []
    v = torch.from_numpy(np.stack([thumbnail(p) for p in val]))
    found: list[tuple[Path, Path, float]] = []
    for start in range(0, len(train), 2048):
        chunk = train[start:start + 2048]
        t = torch.from_numpy(np.stack([thumbnail(p) for p in chunk]))
        d = torch.cdist(t.double(), v.double()) / v.shape[1] ** 0.5
        best, index = d.min(dim=1)
        found += [(p, val[int(i)], float(r)) for p, r, i in zip(chunk, best, index) if r <= max_rms]
    return found


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("root", type=Path, help="the data folder")
    ap.add_argument("split", type=Path, help="its split file (text or JSON), as `data.split_file` takes it")
    ap.add_argument("--max-rms", type=float, default=6.0, help="largest thumbnail distance of a copy (of 255)")
    args = ap.parse_args()
    files = list_images(args.root)
    with warnings.catch_warnings():  # (byte copies: reported below with the others)
        warnings.simplefilter("ignore")
        _, val = split_files(files, args.root, split_file=args.split)
    held_out = set(val)
    for t, v, rms in copies([f for f in files if f not in held_out], val, args.max_rms):
        print(f"!{t.relative_to(args.root).as_posix()}  # copy of {v.relative_to(args.root).as_posix()} (rms {rms:.2f})")


if __name__ == "__main__":
    main()
