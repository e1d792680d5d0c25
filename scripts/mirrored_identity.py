"""dlib identity of a `compare` run's outputs, measured as compare does and on the mirrored pair.

psp_sr's stage 2 trains with the dlib descriptor's distance as its identity loss, and the same
descriptor judges the result. Mirroring output and face alike keeps who is in the picture but
changes what the network sees pixel by pixel: an encoder that has learnt the person moves both
figures together; one that has learnt patterns this network in particular reads as identity gains
on the plain figure only. Reported per method: mean distance and faces closer to the person than
the baseline's output, plain and mirrored.

    python scripts/mirrored_identity.py runs/probe/TAG/eval_x8 --data runs/probe/TAG/val60.txt \
        --json runs/probe/TAG/mirrored.json

Needs the cached dlib weights (`restorekit weights pull`); CPU, about a second a face.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
from pathlib import Path

import torch
from torch import Tensor

from restorekit.degradations import bicubic_resize
from restorekit.images import read_image
from restorekit.plugins import registry


def distances(folder: Path, faces: dict[str, Tensor], ident) -> dict[str, tuple[float, float]]:
    """``stem -> (plain, mirrored)`` dlib distances of each output in ``folder`` to its HR face."""
    out: dict[str, tuple[float, float]] = {}
    for f in sorted(folder.iterdir()):
        if f.stem not in faces:
            continue
        x, hr = read_image(f), faces[f.stem]
        out[f.stem] = (float(ident(x, hr)[0]), float(ident(x.flip(-1), hr.flip(-1))[0]))
    return out


def summarise(method: dict[str, tuple[float, float]], baseline: dict[str, tuple[float, float]]) -> dict:
    """Means and closer-than-baseline counts over the faces both have a finite distance for."""
    res = {}
    for i, label in enumerate(("plain", "mirrored")):
        keys = [k for k in method if k in baseline and not math.isnan(method[k][i] + baseline[k][i])]
        if not keys:
            raise SystemExit("no face has a finite distance for both methods (no face found?)")
        res[label] = {"faces": len(keys), "mean": statistics.mean(method[k][i] for k in keys),
                      "baseline_mean": statistics.mean(baseline[k][i] for k in keys),
                      "closer_than_baseline": sum(method[k][i] < baseline[k][i] for k in keys)}
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("eval_dir", type=Path, help="a `restorekit compare` output folder (has outputs/<method>/)")
    ap.add_argument("--data", required=True, type=Path, help="the HR faces compare ran on: one path per line")
    ap.add_argument("--methods", default="psp_sr", help="comma-separated methods to measure")
    ap.add_argument("--baseline", default="bicubic")
    ap.add_argument("--json", type=Path, default=None, help="write the figures here")
    args = ap.parse_args()

    torch.set_num_threads(1)
    lines = [ln.strip() for ln in args.data.read_text(encoding="utf-8").splitlines() if ln.strip()]
    first = next(iter((args.eval_dir / "outputs" / args.baseline).iterdir()))
    size = tuple(read_image(first).shape[-2:])
    # Each HR face read and brought to the outputs' size once, for the baseline and every method.
    faces = {Path(p).stem: bicubic_resize(read_image(p), size).clamp(0, 1) for p in lines if not p.startswith("#")}
    ident = registry().metric("identity_dlib_dist")()
    ident.setup(torch.device("cpu"))
    base = distances(args.eval_dir / "outputs" / args.baseline, faces, ident)
    report = {}
    for m in args.methods.split(","):
        s = summarise(distances(args.eval_dir / "outputs" / m, faces, ident), base)
        report[m] = s
        p, q = s["plain"], s["mirrored"]
        print(f"{m}: dlib {p['mean']:.3f} ({args.baseline} {p['baseline_mean']:.3f}), closer {p['closer_than_baseline']}"
              f"/{p['faces']}; mirrored {q['mean']:.3f} ({args.baseline} {q['baseline_mean']:.3f}), closer "
              f"{q['closer_than_baseline']}/{q['faces']}")
    if args.json:
        args.json.write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
