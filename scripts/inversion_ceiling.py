"""How close can a face prior come to held-out faces at all? A guide to psp_sr's identity on it.

psp_sr maps a low-resolution face into the generator's W+; whatever it does, its output is one of
the generator's images. This fits W+ to each high-resolution face directly (Adam from the mean
latent, pixel MSE + LPIPS-alex, noise fixed) and reports the dlib descriptor distance of that best
reconstruction to the face, beside bicubic ×scale's (the first bar of issue #18). ``--identity W``
adds stage 2's identity term (W · (1 − cos) of the dlib descriptors) to the fit, as psp_sr's
encoder is trained; the figure is then measured by the network the fit optimised, so the distance
of the mirrored pair (a different input to that network) is reported beside it as a check that the
fit did not merely fool it. On the 358-kimg CPU prior the plain fit was at bicubic's level (0.617
against 0.624 on 12 faces) while the identity-seeking fit reached 0.255, mirrored 0.354, closer
than bicubic on 12 of 12: the plain fit understates what the generator can draw of a person, and
the encoder, which sees only the low-resolution face, is what stands between psp_sr and the bar.

    .venv/bin/python scripts/inversion_ceiling.py runs/prior128_cpu/run/snapshot/generator.safetensors \
        --data runs/prior128_cpu/progress/val.txt --n 12 --json OUT.json --grid OUT.png

Needs the cached ``lpips-alex`` and dlib weights (`restorekit weights pull`); CPU, seconds a face.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

from restorekit.degradations import bicubic_resize, downscale, upscale
from restorekit.images import read_image, save_image
from restorekit.networks.lpips_net import lpips_from_registry
from restorekit.plugins import registry


def fit(gen: torch.nn.Module, target: torch.Tensor, w_avg: torch.Tensor, lpips: torch.nn.Module, steps: int,
        lr: float, identity: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None) -> torch.Tensor:
    """The generator's image closest to ``target`` (1×3×R×R in [0,1]) over W+, clamped to [0,1];
    ``identity(x, target)``, when given, is added to the pixel and LPIPS terms."""
    w = gen.broadcast(w_avg.view(1, -1)).clone().requires_grad_(True)
    opt = torch.optim.Adam([w], lr=lr)
    for _ in range(steps):
        x = gen.synthesize(w)
        loss = F.mse_loss(x, target) + lpips(x, target).mean()
        if identity is not None:
            loss = loss + identity(x.clamp(0, 1), target)
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
    ap.add_argument("--identity", type=float, default=0.0,
                    help="weight of stage 2's identity term (1 - cos of dlib descriptors) in the fit; 0: none")
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
    identity = None
    if args.identity > 0:
        from restorekit_psp_sr.identity_loss import IdentityLoss

        id_loss = IdentityLoss()
        identity = lambda x, t: args.identity * id_loss(x, t)  # noqa: E731
    rows, faces = [], []
    t0 = time.monotonic()
    for f in files:
        hr = bicubic_resize(read_image(f), (res, res)).clamp(0, 1)
        hr = hr.mul(255).round().div(255)
        lr = downscale(hr, args.scale).clamp(0, 1).mul(255).round().div(255)
        bic = upscale(lr, args.scale).clamp(0, 1)
        best = fit(gen, hr, w_avg, lpips, args.steps, args.lr, identity)
        d_fit, d_bic = float(ident(best, hr)[0]), float(ident(bic, hr)[0])
        mirrored = float(ident(best.flip(-1), hr.flip(-1))[0])
        faces.append({"file": str(f), "fit": d_fit, "fit_mirrored": mirrored, "bicubic": d_bic})
        rows.append(torch.cat([hr, best, bic], -1))
    scored = [r for r in faces if not (math.isnan(r["fit"]) or math.isnan(r["bicubic"]))]
    summary = {
        "what": f"dlib distance to the face of the generator's closest image (W+ fit, {args.steps} steps"
                f"{f', identity weight {args.identity:g}' if args.identity > 0 else ''}) and of bicubic x{args.scale}; "
                "a guide to what psp_sr can reach on this generator",
        "weights": str(args.weights), "n": len(faces), "scored": len(scored),
        "fit_mean": sum(r["fit"] for r in scored) / max(1, len(scored)),
        "fit_mirrored_mean": sum(r["fit_mirrored"] for r in scored) / max(1, len(scored)),
        "bicubic_mean": sum(r["bicubic"] for r in scored) / max(1, len(scored)),
        "fit_closer": sum(r["fit"] < r["bicubic"] for r in scored),
        "seconds": round(time.monotonic() - t0, 1), "faces": faces,
    }
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2) + "\n")
    if args.grid and rows:
        save_image(torch.cat(rows, -2), args.grid)
    print(f"W+ fit of the HR faces: dlib {summary['fit_mean']:.3f} (mirrored {summary['fit_mirrored_mean']:.3f}; "
          f"closer than bicubic x{args.scale} on {summary['fit_closer']}/{len(scored)}); "
          f"bicubic x{args.scale}: {summary['bicubic_mean']:.3f}")


if __name__ == "__main__":
    main()
