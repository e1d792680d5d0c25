"""Check the PyTorch port of dlib's face descriptor and the torch chip alignment against dlib.

For real face photos (default: 50 FFHQ thumbnails, upscaled to 256 px for detection) this runs
dlib's own pipeline (HOG detector, 5-point predictor, ``get_face_chip(img, shape, 150, 0.25)``,
``compute_face_descriptor(chip)``) and the port on the same chips, also after degrading the
chips (Gaussian blur; 4× downscale + upscale). It prints cosine similarity and max |diff| of
the descriptors, and the pixel error of ``restorekit.faces.chips.extract_face_chips`` against
``dlib.get_face_chip`` (at 256 px, and at 768 px where dlib uses its image pyramid).

    python scripts/check_dlib_port.py [--n 50] [--images 'glob'] [--derive-template N]

``--derive-template N`` prints the mean dlib 5-point landmarks of N images in FFHQ framing
(the constant ``FFHQ_FIVE_POINT_TEMPLATE`` in restorekit/faces/identity_dlib.py). Exits 1 when
a descriptor cosine falls below 0.9999.
"""

from __future__ import annotations

import argparse
import glob
import sys
import time

import numpy as np
import torch
from PIL import Image, ImageFilter


def load(path: str, side: int) -> np.ndarray:
    im = Image.open(path).convert("RGB")
    if im.size != (side, side):
        im = im.resize((side, side), Image.BICUBIC)
    return np.ascontiguousarray(np.asarray(im))


def degrade(chip: np.ndarray, kind: str) -> np.ndarray:
    im = Image.fromarray(chip)
    if kind == "blur":
        im = im.filter(ImageFilter.GaussianBlur(2.0))
    elif kind == "down4":
        im = im.resize((chip.shape[1] // 4, chip.shape[0] // 4), Image.BICUBIC).resize(
            (chip.shape[1], chip.shape[0]), Image.BICUBIC)
    return np.ascontiguousarray(np.asarray(im))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", default="/work/shared/data/faces/ffhq128/*.webp")
    ap.add_argument("--n", type=int, default=50)
    ap.add_argument("--side", type=int, default=256, help="resize images to this side first")
    ap.add_argument("--derive-template", type=int, default=0, metavar="N")
    args = ap.parse_args()
    torch.set_num_threads(1)

    import dlib

    from restorekit.faces.chips import extract_face_chips
    from restorekit.faces.dlib_models import dlib_model_path
    from restorekit.faces.dlib_resnet import load_dlib_face_descriptor
    from restorekit.faces.dlib_tools import DlibFaceTools

    files = sorted(glob.glob(args.images))
    if not files:
        print(f"no images match {args.images}", file=sys.stderr)
        return 2
    tools = DlibFaceTools()

    if args.derive_template:
        pts = []
        for f in files[:args.derive_template]:
            img = load(f, args.side)
            lm = tools.face_landmarks(img)
            if lm is not None:
                pts.append((lm + 0.5) / args.side)
        arr = np.array(pts)
        print(f"{len(arr)} of {min(len(files), args.derive_template)} images with a face")
        print("mean (x, y) as fractions of the side:\n", np.array2string(arr.mean(0), precision=5))
        print("std:\n", np.array2string(arr.std(0), precision=5))
        return 0

    facerec = dlib.face_recognition_model_v1(str(dlib_model_path("face_descriptor")))
    t0 = time.time()
    net = load_dlib_face_descriptor()
    print(f"port loaded from .dat in {time.time() - t0:.2f} s")

    chips: dict[str, list[np.ndarray]] = {"clean": [], "blur": [], "down4": []}
    framed: list[np.ndarray] = []  # whole FFHQ-framed images with a face, for the embedder
    chip_err: dict[str, list[np.ndarray]] = {"256": [], "768": []}
    found = 0
    for f in files[:args.n]:
        img = load(f, args.side)
        lm = tools.face_landmarks(img)
        if lm is None:
            continue
        found += 1
        framed.append(img)
        chip = tools.face_chip(img, lm)
        for kind in chips:
            chips[kind].append(chip if kind == "clean" else degrade(chip, kind))
        # torch chip alignment vs dlib.get_face_chip, same landmarks
        for label, im, l5 in (("256", img, lm),
                              ("768", np.ascontiguousarray(np.asarray(
                                  Image.fromarray(img).resize((768, 768), Image.BICUBIC))), (lm + 0.5) * 3 - 0.5)):
            l5 = np.round(l5)
            ref = tools.face_chip(im, l5).astype(np.float64)
            x = torch.from_numpy(im.copy()).permute(2, 0, 1)[None].double() / 255.0
            ours = extract_face_chips(x, l5)[0].permute(1, 2, 0).numpy() * 255.0
            chip_err[label].append(np.abs(np.floor(ours + 1e-6) - ref))
    print(f"faces found: {found} of {min(args.n, len(files))} images ({args.side} px)")

    worst = 1.0
    for kind, cs in chips.items():
        ref = np.stack([np.asarray(facerec.compute_face_descriptor(c), dtype=np.float64) for c in cs])
        x = torch.from_numpy(np.stack(cs)).permute(0, 3, 1, 2).float() / 255.0
        t0 = time.time()
        with torch.no_grad():
            ours = net(x).double().numpy()
        dt = time.time() - t0
        cos = (ours * ref).sum(1) / np.linalg.norm(ours, axis=1) / np.linalg.norm(ref, axis=1)
        worst = min(worst, float(cos.min()))
        print(f"descriptor [{kind:5s}] n={len(cs)}  cosine min {cos.min():.9f} mean {cos.mean():.9f}  "
              f"1-cos max {1 - cos.min():.1e}  max|diff| {np.abs(ours - ref).max():.2e}  |d| mean {np.linalg.norm(ref, axis=1).mean():.3f}  "
              f"port {1000 * dt / len(cs):.1f} ms/chip")
    # The training-loss embedder: fixed FFHQ->chip placement, no detector, vs dlib's pipeline.
    from restorekit.faces.identity_dlib import DlibResnetEmbedder

    emb = DlibResnetEmbedder()
    emb._net = net
    x = torch.from_numpy(np.stack(framed)).permute(0, 3, 1, 2).float() / 255.0
    ref = np.stack([np.asarray(facerec.compute_face_descriptor(c), dtype=np.float64) for c in chips["clean"]])
    with torch.no_grad():
        fixed = emb.descriptors(x).double().numpy()
    cos = (fixed * ref).sum(1) / np.linalg.norm(fixed, axis=1) / np.linalg.norm(ref, axis=1)
    dist = np.linalg.norm(fixed - ref, axis=1)
    print(f"dlib_resnet embedder (fixed FFHQ placement) vs dlib pipeline (detected landmarks): "
          f"cosine min {cos.min():.4f} mean {cos.mean():.4f}; distance mean {dist.mean():.3f} max {dist.max():.3f}")
    for label, errs in chip_err.items():
        e = np.stack(errs)
        print(f"torch chip vs dlib.get_face_chip [{label} px]: max {e.max():.0f}, mean {e.mean():.4f}, "
              f"share off by 1: {(e == 1).mean():.5f}, by >1: {(e > 1).mean():.5f} (8-bit levels)")
    ok = worst >= 0.9999
    print("PASS" if ok else "FAIL", f"(worst cosine {worst:.9f}, required >= 0.9999)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
