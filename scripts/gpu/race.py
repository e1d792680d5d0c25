"""Rank face-prior snapshots by realism: the Fréchet distance in an offline feature space.

    python scripts/gpu/race.py --data FACES_DIR --val plugins/psp_sr/recipes/faces128/val.txt \
        --out race.json plain=/tmp/rk/race_plain/snapshot projected=/tmp/rk/race_projected/snapshot

Each ``NAME=FOLDER`` holds a ``restorekit train stylegan2`` snapshot (``generator.safetensors``).
All are sampled with the same seed and count and compared with the same validation faces, so the
figures rank them (they are not FID; see ``restorekit realism``). ``run.sh`` ranks in dlib's
descriptor space (``--space dlib128``) when it has the weights: a projected D trained on AlexNet
features would be favoured by AlexNet's own space (the default, ``alex_conv5``). Writes the figures as
strict JSON and prints the winner's name on the last line (lowest distance); a snapshot whose distance
is not finite is written but not ranked (none finite: no winner, exit status 1).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", required=True, type=Path, help="the faces folder the split file is relative to")
    ap.add_argument("--val", required=True, type=Path, help="validation split file (one relative path a line)")
    ap.add_argument("--n", type=int, default=2000, help="samples per generator")
    ap.add_argument("--space", default="alex_conv5")
    ap.add_argument("--weights", default=None, help="the space's network weights file (default: the weights cache)")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("runs", nargs="+", metavar="NAME=FOLDER")
    args = ap.parse_args(argv)

    from restorekit.harness.realism.evaluate import NOT_FID_NOTE, evaluate_generator, reference_statistics
    from restorekit.harness.realism.spaces import build_space
    from restorekit.harness.store import jsonable
    from restorekit.images import atomic_write_bytes
    from restorekit.training.data import list_images, split_files
    from restorekit.training.plot import read_records
    from restorekit_psp_sr.train import load_generator

    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    _, val = split_files(list_images(args.data), args.data, split_file=args.val)  # (as the training reads it)
    space = build_space(args.space, weights=args.weights, device=dev)
    t0 = time.perf_counter()
    ref = reference_statistics(val, [space])
    results = {}
    for item in args.runs:
        name, _, folder = item.partition("=")
        path = Path(folder) / "generator.safetensors"
        if not path.is_file():
            print(f"race: {name}: no {path}", file=sys.stderr)
            continue
        # The PyTorch ops ("ref"): the CUDA kernels are still being built and tested beside this
        # process (run.sh), and a ranking must not depend on kernels that never ran on a GPU.
        g = load_generator(str(path), impl="ref").to(dev).eval()
        rep = evaluate_generator(g, ref, n_samples=args.n, spaces=[space], device=dev, label=name)
        # The snapshot's last row (strict JSON now, bare Infinity/NaN in a run's older lines: both read).
        last = ([{}] + read_records(Path(folder) / "metrics.jsonl"))[-1]
        results[name] = {"frechet": rep.figures[0].distance, "kimg": last.get("kimg"), "step": last.get("step"),
                         "seconds": last.get("seconds")}
        print(f"race: {name}: {rep.figures[0].metric} {rep.figures[0].distance:.3f} at {last.get('kimg')} kimg",
              flush=True)
    if not results:
        print("race: no snapshot to rank", file=sys.stderr)
        return 1
    ranked = {k: r["frechet"] for k, r in results.items() if math.isfinite(r["frechet"])}
    winner = min(ranked, key=lambda k: ranked[k]) if ranked else None
    doc = {"space": args.space, "n_samples": args.n, "n_reference": len(val), "note": NOT_FID_NOTE, "runs": results,
           "winner": winner, "seconds": round(time.perf_counter() - t0, 1)}
    # Strict JSON, a distance that is not finite as results.json writes one ("Infinity", NaN null).
    atomic_write_bytes(args.out, json.dumps(jsonable(doc), indent=2, allow_nan=False).encode("utf-8"))
    if winner is None:
        print("race: no snapshot has a finite distance", file=sys.stderr)
        return 1
    print(winner)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
