"""Reference figures for ``restorekit realism`` on the faces128 data (docs/realism.md).

Fréchet distances (NOT FID) to the validation split of ``../shared/data/faces`` of:
real training faces (random subsets of several sizes: the real-vs-real floor at that sample
count) and the validation faces themselves after bicubic ×8 / ×4 degradation and bicubic
upscaling (8-bit at each step, as ``degrade`` + ``run bicubic`` write them); plus the share of
validation faces in which each detector finds a face. CPU, one thread:

    OMP_NUM_THREADS=1 .venv/bin/python scripts/measure_realism_floor.py --faces ../shared/data/faces
"""

from __future__ import annotations

import argparse
import json
import random
import time
from collections.abc import Iterator
from pathlib import Path

import torch

from restorekit.degradations import downscale, upscale
from restorekit.harness import realism as R
from restorekit.training.data import list_images, split_files

VAL = Path(__file__).resolve().parents[1] / "plugins/psp_sr/recipes/faces128/val.txt"


def split(faces: Path) -> tuple[list[Path], list[Path]]:
    """``(val, train)`` as the training reads the recipe's split (its exclusions left out of both)."""
    train, val = split_files(list_images(faces), faces, split_file=VAL)
    return val, train


def degraded(paths: list[Path], k: int, batch: int) -> Iterator[torch.Tensor]:
    for x in R.image_batches(paths, batch):
        lr = (downscale(x, k).clamp(0, 1) * 255).round() / 255
        yield (upscale(lr, k).clamp(0, 1) * 255).round() / 255


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--faces", type=Path, default=Path("../shared/data/faces"))
    ap.add_argument("--train-n", default="420,1000,4000", help="training-subset sizes")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--detectors", default="mtcnn,dlib_hog")
    ap.add_argument("--out", type=Path, default=None, help="write the figures as JSON here")
    args = ap.parse_args()
    torch.set_num_threads(1)
    val, train = split(args.faces)
    spaces = [R.build_space(s) for s in R.DEFAULT_SPACES]
    t0 = time.perf_counter()
    ref = R.multi_statistics(R.image_batches(val, 64), spaces)
    rows: list[dict[str, object]] = []

    def add(label: str, stats: dict[str, R.FeatureStats]) -> None:
        row: dict[str, object] = {"set": label, "n": next(iter(stats.values())).n}
        for s in spaces:
            a, b = stats[s.name], ref[s.name]
            row[f"frechet_{s.name}"] = round(R.frechet_distance(a.mu, a.sigma, b.mu, b.sigma), 4)
        rows.append(row)
        print(json.dumps(row), flush=True)

    order = list(train)
    random.Random(args.seed).shuffle(order)
    for n in (int(v) for v in args.train_n.split(",")):
        add(f"train, random {n} (seed {args.seed})", R.multi_statistics(R.image_batches(order[:n], 64), spaces))
    for k in (4, 8):
        add(f"val, bicubic x{k} down + up", R.multi_statistics(degraded(val, k, 64), spaces))
    shares = {}
    for name in (d for d in args.detectors.split(",") if d):
        share = R.face_share(R.image_batches(val, 64), name)
        shares[name] = {"found": share.found, "n": share.n}
        print(json.dumps({"detector": name, **shares[name]}), flush=True)
    result = {"reference": f"val.txt ({len(val)} faces)", "spaces": {s.name: s.identity for s in spaces},
              "rows": rows, "faces_found_on_val": shares, "seconds": round(time.perf_counter() - t0, 1),
              "note": R.NOT_FID_NOTE}
    if args.out:
        args.out.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
