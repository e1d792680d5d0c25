"""How close can a face prior come to held-out faces at all? A guide to psp_sr's identity on it.

psp_sr maps a low-resolution face into the generator's W+; whatever it does, its output is one of
the generator's images. This fits W+ to each high-resolution face directly (Adam from the mean
latent, pixel MSE + LPIPS-alex, noise fixed) and reports the dlib descriptor distance of that best
reconstruction to the face, beside bicubic ×scale's (the first bar of issue #18). When the fit of
the HR face itself is no closer to the person than bicubic, an encoder fed the LR is unlikely to be
(the fit optimises pixels and LPIPS, not dlib's distance: a guide, not a strict bound), and stage 2
on that generator can wait.

    .venv/bin/python scripts/inversion_ceiling.py runs/prior128_cpu/run/snapshot/generator.safetensors \
        --data runs/prior128_cpu/progress/val.txt --n 12 --json OUT.json --grid OUT.png

Needs the cached ``lpips-alex`` and dlib weights (`restorekit weights pull`); CPU, seconds a face.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from restorekit.degradations import bicubic_resize, downscale, upscale
from restorekit.images import read_image, save_image
from restorekit.networks.lpips_net import lpips_from_registry
from restorekit.plugins import registry


def fit(gen: torch.nn.Module, target: torch.Tensor, w_avg: torch.Tensor, lpips: torch.nn.Module, steps: int,
        lr: float) -> torch.Tensor:
    """The generator's image closest to ``target`` (1×3×R×R in [0,1]) over W+, clamped to [0,1]."""
    w = gen.broadcast(w_avg.view(1, -1)).clone().requires_grad_(True)
    opt = torch.optim.Adam([w], lr=lr)
    for _ in range(steps):
        x = gen.synthesize(w)
        loss = F.mse_loss(x, target) + lpips(x, target).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    with torch.no_grad():
        return gen.synthesize(w).clamp(0, 1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("weights", help="restorekit StyleGAN2 .safetensors (what `train stylegan2` writes)")
    ap.add_argument("--data", required=True, type=Path, help="text file: one face image path per line")
    ap.add_argument("--n", type=int, default=12, help="faces: every len/n-th line of --data")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--lr", type=float, default=0.02)
    ap.add_argument("--scale", type=int, default=8, help="bicubic's factor for the comparison")
    ap.add_argument("--json", type=Path, default=None, help="write the figures here")
    ap.add_argument("--grid", type=Path, default=None, help="write rows of (face, fit, bicubic) here")
    args = ap.parse_args()

    lines = [ln.strip() for ln in args.data.read_text().splitlines() if ln.strip() and not ln.startswith("#")]
    files = lines[:: max(1, len(lines) // args.n)][: args.n]
    reg = registry()
    gen = reg.get("generators", "stylegan2").create({"weights": args.weights}).eval()
    gen.requires_grad_(False)
    lpips = lpips_from_registry("alex").eval().requires_grad_(False)
    ident = reg.metric("identity_dlib_dist")()
    ident.setup(torch.device("cpu"))
    res = gen.resolution
    w_avg = gen.mean_latent(4096)
    rows, faces = [], []
    t0 = time.monotonic()
    for f in files:
        hr = bicubic_resize(read_image(f), (res, res)).clamp(0, 1)
        hr = hr.mul(255).round().div(255)
        lr = downscale(hr, args.scale).clamp(0, 1).mul(255).round().div(255)
        bic = upscale(lr, args.scale).clamp(0, 1)
        best = fit(gen, hr, w_avg, lpips, args.steps, args.lr)
        d_fit, d_bic = float(ident(best, hr)[0]), float(ident(bic, hr)[0])
        faces.append({"file": str(f), "fit": d_fit, "bicubic": d_bic})
        rows.append(torch.cat([hr, best, bic], -1))
    scored = [r for r in faces if not (math.isnan(r["fit"]) or math.isnan(r["bicubic"]))]
    summary = {
        "what": f"dlib distance to the face of the generator's closest image (W+ fit, {args.steps} steps) "
                f"and of bicubic x{args.scale}; a guide to what psp_sr can reach on this generator",
        "weights": str(args.weights), "n": len(faces), "scored": len(scored),
        "fit_mean": sum(r["fit"] for r in scored) / max(1, len(scored)),
        "bicubic_mean": sum(r["bicubic"] for r in scored) / max(1, len(scored)),
        "fit_closer": sum(r["fit"] < r["bicubic"] for r in scored),
        "seconds": round(time.monotonic() - t0, 1), "faces": faces,
    }
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2) + "\n")
    if args.grid and rows:
        save_image(torch.cat(rows, -2), args.grid)
    print(f"W+ fit of the HR faces: dlib {summary['fit_mean']:.3f} (closer than bicubic x{args.scale} on "
          f"{summary['fit_closer']}/{len(scored)}); bicubic x{args.scale}: {summary['bicubic_mean']:.3f}")


if __name__ == "__main__":
    main()
