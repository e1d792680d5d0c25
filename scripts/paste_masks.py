"""Which paste mask ``run --faces detect`` should blend restored faces with: ``square`` or ``face``.

Group photos are composed (``restorekit.faces.compose.make_group_photo``) from FFHQ-aligned faces
of FOLDER (the last ``--faces`` files by name: a validation split, never trained on) on scikit-image
backgrounds, three faces a photo, 512×256 px. Half the backgrounds are busy (brick, grass, gravel, a
cat's fur, the Hubble deep field, a rocket and its launch tower), half are the same scenes blurred
(Gaussian, σ 16 px): plain. Each photo is degraded by bicubic ×1/4 and ×1/8 and restored with the
shipped psp_sr through ``FacePipeline`` (bicubic background, every face restored: ``min_face=0``,
no ``max_shrink``) once per mask (psp_sr is deterministic: each photo's crops are restored once,
and pasted with each mask). Faces are aligned from their true eye centres (the mouth corners
placed as in ``FFHQ_TEMPLATE_128``), so the figures compare masks, not detections. Eye distances
28–44 px at full size: crops spanning 0.9–1.4× psp_sr's input at both scales, where it is
meant to help (docs/faces.md, *Limits*).

``--radius`` sets the discs the faces are pasted with (make_group_photo's default 1.6 eye
distances cuts off the top of the hair; 2.0 keeps the head whole and leaves the background only in
the crop's corners).

Per face, in its crop's square (the quad's bounding box, full size) against the true photo:
LPIPS-alex v0.1 and PSNR-Y (BT.601, 8-bit scale), PSNR-Y of the part of the square outside the
true face disc (the background the crop takes in: the halo), and the seam: in the mask's feather
band (0.05 < mask < 0.95) the mean |∂Y/∂n| across the band (n: the mask's gradient direction;
8-bit levels per output pixel) of the result minus the same of the truth: positive where the blend
adds an edge the truth does not have, negative where the band is softer than the truth. The
bicubic background alone is scored too.

    .venv/bin/python scripts/paste_masks.py /work/shared/data/faces/ffhq128 --json paste_masks.json
    .venv/bin/python scripts/paste_masks.py /work/shared/data/faces/ffhq128 --mean-face mean_face.png

``--mean-face`` draws the ``face`` mask's 0.5 contour (and its 0.05 / 0.95 contours) on the mean of
every face in FOLDER, the check of ``FACE_ELLIPSE_128``'s proportions, and exits. Research-only
data: FOLDER is read, nothing of it is written but the mean face.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from restorekit.degradations import bicubic_resize, downscale, gaussian_kernel1d
from restorekit.faces.align import (FFHQ_TEMPLATE_128, PASTE_MASKS, AlignedFace, face_mask, paste_mask_at,
                                    similarity_fit)
from restorekit.faces.compose import make_group_photo
from restorekit.faces.pipeline import DEFAULT_FEATHER, FacePipeline
from restorekit.harness.metrics import psnr, rgb_to_y
from restorekit.images import atomic_write_bytes, list_inputs, read_image, save_image
from restorekit.interfaces import Face, FaceDetector, Method, MethodInfo

H, W = 256, 512
BUSY = ("brick", "grass", "gravel", "chelsea", "hubble_deep_field", "rocket")
BLUR_SIGMA = 16.0
EYE_DISTANCE = (28.0, 44.0)
DISC_DOWN = 0.55  # make_group_photo's face disc lies this many eye distances below the eyes


class RestoredOnce(Method):
    """``method``, remembering its last result: the masks' pipelines restore the same crops, so each
    photo's faces are restored once and pasted with every mask."""

    info = MethodInfo(name="psp_sr", summary="psp_sr, restored once per photo", input_kind="aligned_face")

    def __init__(self, method: Method) -> None:
        super().__init__(device=method.device)
        self.method = method
        self.face_input_size = method.face_input_size  # type: ignore[attr-defined]
        self.last: tuple[Tensor, int, Tensor] | None = None

    def restore(self, lr: Tensor, scale: int, *, seed: int | None = None, n_samples: int = 1) -> Tensor:
        if self.last is None or self.last[1] != scale or not torch.equal(self.last[0], lr):
            self.last = (lr.clone(), scale, self.method.restore(lr, scale, seed=seed, n_samples=n_samples))
        return self.last[2]


class GivenFaces(FaceDetector):
    """Never asked: the faces are given to ``FacePipeline.run``."""

    name = "given"

    def detect(self, image: Tensor) -> list[Face]:
        return []


def as_tensor(arr: np.ndarray) -> Tensor:
    if arr.ndim == 2:
        arr = np.repeat(arr[..., None], 3, -1)
    return torch.from_numpy(np.ascontiguousarray(arr[..., :3])).permute(2, 0, 1)[None].float() / 255


def cover(img: Tensor, h: int, w: int) -> Tensor:
    """``img`` resized to cover h×w and centre-cropped to it."""
    k = max(h / img.shape[-2], w / img.shape[-1])
    hh, ww = math.ceil(img.shape[-2] * k), math.ceil(img.shape[-1] * k)
    img = bicubic_resize(img, (hh, ww)).clamp(0, 1)
    y, x = (hh - h) // 2, (ww - w) // 2
    return img[..., y:y + h, x:x + w]


def blur(img: Tensor, sigma: float) -> Tensor:
    g = gaussian_kernel1d(sigma).to(img)
    k = g.numel()
    x = torch.nn.functional.pad(img, (k // 2, k // 2, k // 2, k // 2), mode="reflect")
    x = torch.nn.functional.conv2d(x, g.view(1, 1, 1, k).expand(3, 1, 1, k), groups=3)
    return torch.nn.functional.conv2d(x, g.view(1, 1, k, 1).expand(3, 1, k, 1), groups=3)


def backgrounds() -> list[tuple[str, str, Tensor]]:
    import skimage.data

    out = []
    for name in BUSY:
        img = cover(as_tensor(getattr(skimage.data, name)()), H, W)
        out += [(name, "busy", img), (f"{name} (blurred)", "plain", blur(img, BLUR_SIGMA).clamp(0, 1))]
    return out


def template_landmarks(eye_left: tuple[float, float], eye_right: tuple[float, float]) -> list[tuple[float, float]]:
    """Eyes, nose, mouth corners (``eyes_nose_mouth5``) placed as the template's around these eyes."""
    t = FFHQ_TEMPLATE_128
    src = np.array([t["eye_left"], t["eye_right"]])
    m = similarity_fit(src, np.array([eye_left, eye_right]))
    pts = np.array([t["eye_left"], t["eye_right"], t["nose_base"], t["mouth_left"], t["mouth_right"]])
    return [tuple(p) for p in (pts @ m[:, :2].T + m[:, 2])]


def compose(faces: list[Tensor], bg: Tensor, rng: np.random.Generator,
            radius: float) -> tuple[Tensor, list[Any], list[dict[str, float]]]:
    eyes = (FFHQ_TEMPLATE_128["eye_left"], FFHQ_TEMPLATE_128["eye_right"])
    picks = rng.choice(len(faces), 3, replace=False)
    placements = [dict(face=k, x=W * (2 * k + 1) / 6 + rng.uniform(-8, 8), y=H * 0.42 + rng.uniform(-8, 8),
                       eye_distance=rng.uniform(*EYE_DISTANCE), angle=rng.uniform(-12, 12),
                       mirror=float(rng.integers(2))) for k in range(3)]
    photo, truth = make_group_photo([(faces[int(i)], *eyes) for i in picks], bg, placements, radius=radius)
    return photo, truth, placements


def seam(img: Tensor, truth: Tensor, mask: Tensor) -> tuple[float, float]:
    """Mean |∂Y/∂n| of ``img`` and ``truth`` in the mask's feather band (n: the mask's gradient)."""
    def grads(z: Tensor) -> tuple[Tensor, Tensor]:
        gy, gx = torch.zeros_like(z), torch.zeros_like(z)
        gx[..., 1:-1] = (z[..., 2:] - z[..., :-2]) / 2
        gy[..., 1:-1, :] = (z[..., 2:, :] - z[..., :-2, :]) / 2
        return gx, gy

    mx, my = grads(mask.double()[0, 0])
    norm = torch.sqrt(mx**2 + my**2)
    band = (mask[0, 0] > 0.05) & (mask[0, 0] < 0.95) & (norm > 0)
    band[[0, -1], :] = False
    band[:, [0, -1]] = False
    nx, ny = mx[band] / norm[band], my[band] / norm[band]
    out = []
    for z in (img, truth):
        gx, gy = grads(rgb_to_y(z)[0, 0])
        out.append(float((gx[band] * nx + gy[band] * ny).abs().mean()))
    return out[0], out[1]


def disc(truth: Any, h: int, w: int, radius: float) -> Tensor:
    """The true face's disc (where make_group_photo's mask is above 0: outside it, pure background)."""
    cx, cy = truth.centre
    th = -math.radians(truth.angle_deg)
    cx, cy = cx - math.sin(th) * DISC_DOWN * truth.eye_distance, cy + math.cos(th) * DISC_DOWN * truth.eye_distance
    ys = torch.arange(h, dtype=torch.float64)[:, None] + 0.5
    xs = torch.arange(w, dtype=torch.float64)[None, :] + 0.5
    return torch.hypot(xs - cx, ys - cy) < radius * truth.eye_distance


def mean_face(folder: str, out: Path) -> None:
    import io

    from PIL import Image, ImageDraw

    items = list_inputs(folder)
    mean = sum(read_image(it.path) for it in items) / len(items)
    n, k = mean.shape[-1], 4
    big = bicubic_resize(mean, (n * k, n * k)).clamp(0, 1)
    img = Image.fromarray((big[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8))
    draw = ImageDraw.Draw(img)
    t = (torch.arange(n * k, dtype=torch.float32) + 0.5) / k
    m = paste_mask_at(t[None, :], t[:, None], n, DEFAULT_FEATHER, "face")
    for level, colour in ((0.05, (0, 160, 255)), (0.5, (255, 40, 40)), (0.95, (0, 200, 80))):
        above = m >= level
        inner = torch.zeros_like(above)
        inner[1:-1, 1:-1] = above[1:-1, 1:-1] & above[:-2, 1:-1] & above[2:, 1:-1] & above[1:-1, :-2] & above[1:-1, 2:]
        for y, x in (above & ~inner).nonzero().tolist():
            draw.point((x, y), fill=colour)
    buf = io.BytesIO()
    img.save(buf, "PNG")
    atomic_write_bytes(out, buf.getvalue())
    print(f"mean of {len(items)} faces with the face mask's 0.05 / 0.5 / 0.95 contours (blue, red, green) → {out}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("folder", help="FFHQ-aligned face photos (e.g. /work/shared/data/faces/ffhq128)")
    ap.add_argument("--photos", type=int, default=24, help="photos per scale (default 24)")
    ap.add_argument("--faces", type=int, default=60, help="the last N faces by name are used (default 60)")
    ap.add_argument("--scales", default="4,8")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--radius", type=float, default=1.6, help="each face's disc, in eye distances (default 1.6, "
                                                               "make_group_photo's: the hair's top is cut off; "
                                                               "2.0 keeps the head whole)")
    ap.add_argument("--json", type=Path, default=None, help="write every face's figures here")
    ap.add_argument("--examples", type=Path, default=None, help="write truth | bicubic | square | face of the "
                                                                 "first photo per scale into this folder")
    ap.add_argument("--mean-face", type=Path, default=None, help="draw the face mask on the mean face; exit")
    args = ap.parse_args()
    if args.mean_face is not None:
        mean_face(args.folder, args.mean_face)
        return

    from restorekit.methods import build_method
    from restorekit.metrics_lpips import LPIPSAlex

    t_start = time.perf_counter()
    items = list_inputs(args.folder)[-args.faces:]
    faces = [read_image(it.path) for it in items]
    bgs = backgrounds()
    method = RestoredOnce(build_method("psp_sr", {}, "cpu"))
    lpips = LPIPSAlex()
    lpips.setup(torch.device("cpu"))
    rows: list[dict[str, Any]] = []
    for scale in (int(s) for s in args.scales.split(",")):
        rng = np.random.default_rng([args.seed, scale])
        pipes = {mask: FacePipeline(method, scale, detector=GivenFaces(), min_face=0, max_shrink=None,
                                    paste_mask=mask) for mask in PASTE_MASKS}
        for p in range(args.photos):
            bg_name, kind, bg = bgs[p % len(bgs)]
            photo, truth, _ = compose(faces, bg, rng, args.radius)
            lr = downscale(photo, scale)
            given = [Face((0, 0, 1, 1), 1.0, [(x / scale, y / scale) for x, y in
                                            template_landmarks(t.eye_left, t.eye_right)]) for t in truth]
            results = {mask: pipe.run(lr, faces=given) for mask, pipe in pipes.items()}
            base = pipes["square"].background(lr, scale).clamp(0, 1)
            if args.examples is not None and p == 0:
                args.examples.mkdir(parents=True, exist_ok=True)
                save_image(torch.cat([photo, base, *(r.image for r in results.values())], -1),
                           args.examples / f"paste_masks_x{scale}.png")
            for i, t in enumerate(truth):
                rec = results["square"].records[i]
                geom = AlignedFace(np.asarray(rec.quad), int(rec.crop_size))
                q = geom.quad * scale
                x0, y0 = max(int(math.floor(q[:, 0].min())), 0), max(int(math.floor(q[:, 1].min())), 0)
                x1, y1 = min(int(math.ceil(q[:, 0].max())), W), min(int(math.ceil(q[:, 1].max())), H)
                region = (Ellipsis, slice(y0, y1), slice(x0, x1))
                outside = ~disc(t, H, W, args.radius)[y0:y1, x0:x1]
                gt = photo[region]
                row: dict[str, Any] = {"scale": scale, "photo": p, "face": i, "background": bg_name, "kind": kind,
                                       "eye_distance": round(t.eye_distance, 2), "square_px": [x1 - x0, y1 - y0]}
                names = ("bicubic", *results)
                images = [base, *(r.image for r in results.values())]
                scores = lpips(torch.cat([img[region] for img in images]), gt.expand(len(images), -1, -1, -1))
                for name, img, score in zip(names, images, scores.tolist()):
                    im = img[region]
                    fig = {"lpips": score, "psnr_y": float(psnr(rgb_to_y(im), rgb_to_y(gt))[0]),
                           "halo_psnr_y": float(psnr(rgb_to_y(im)[0, 0][outside][None],
                                                     rgb_to_y(gt)[0, 0][outside][None])[0])}
                    if name in PASTE_MASKS:
                        mk = face_mask(geom, H, W, scale, DEFAULT_FEATHER, name)
                        res, tru = seam(img, photo, mk)
                        fig.update(seam=res - tru, band_grad=res, band_grad_truth=tru)
                    row[name] = fig
                rows.append(row)
            print(f"×{scale} photo {p + 1}/{args.photos} ({bg_name}) {time.perf_counter() - t_start:.0f} s",
                  flush=True)
    took = time.perf_counter() - t_start
    report(rows, took, args)
    if args.json is not None:
        data = {"seconds": round(took, 1), "radius": args.radius, "seed": args.seed, "faces": rows}
        atomic_write_bytes(args.json, (json.dumps(data, indent=1) + "\n").encode())


def report(rows: list[dict[str, Any]], took: float, args: argparse.Namespace) -> None:
    print(f"\n{len(rows)} faces, disc radius {args.radius:g} eye distances, seed {args.seed}: {took:.0f} s\n")
    print("| scale | backgrounds | faces | mask | LPIPS-alex ↓ | PSNR-Y ↑ | halo PSNR-Y ↑ | seam "
          "| face LPIPS < square's |")
    print("|---|---|---|---|---|---|---|---|---|")
    for scale in sorted({r["scale"] for r in rows}):
        for kind in ("busy", "plain", "all"):
            sel = [r for r in rows if r["scale"] == scale and kind in ("all", r["kind"])]
            if not sel:
                continue
            for name in ("bicubic", *PASTE_MASKS):
                mean = {k: float(np.mean([r[name][k] for r in sel])) for k in ("lpips", "psnr_y", "halo_psnr_y")}
                sm = f"{np.mean([r[name]['seam'] for r in sel]):+.2f}" if name in PASTE_MASKS else "–"
                wins = (f"{sum(r[name]['lpips'] < r['square']['lpips'] for r in sel)}/{len(sel)}"
                        if name == "face" else "")
                print(f"| ×{scale} | {kind} | {len(sel)} | {name} | {mean['lpips']:.4f} | {mean['psnr_y']:.2f} | "
                      f"{mean['halo_psnr_y']:.2f} | {sm} | {wins} |")


if __name__ == "__main__":
    main()
