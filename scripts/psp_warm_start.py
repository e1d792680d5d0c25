"""Start pSp's encoder from its generator's own faces: latent regression before stage 2.

Stage 2 (`train psp_sr`) teaches the encoder W+ codes only through the images they decode to. On
a 2-core CPU its few thousand steps leave the encoder near the average face: against the CPU prior
at 419 kimg, 2,000 steps drew nearly the same face for every input at ×8. Here the generator draws
faces from codes it was given (normal z → W, two codes mixed at a random layer half the time), each
face is degraded exactly as stage 2's data is (random factor of the recipe, 8-bit), and the encoder
learns to return the code. The loss is in W+ alone, so no synthesis sits in the backward pass and a
step costs a fraction of a stage-2 step. The result is a psp_sr model file for stage 2 to start
from (``--set init=FILE``); stage 2's paper losses then fit it to real faces.

    .venv/bin/python scripts/psp_warm_start.py --generator G.safetensors \\
        --config plugins/psp_sr/recipes/faces128/stage2_psp.toml --steps 3000 --out WARM.safetensors

CPU or CUDA; writes a checkpoint every --save-every steps and resumes from it (--out's ``.part``).
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from restorekit.training.config import load_config
from restorekit.training.data import make_lr
from restorekit.training.trainer import atomic_save
from restorekit_psp_sr.method import save_psp_safetensors
from restorekit_psp_sr.train import PSPTrainConfig, build_psp


def code_loss(model: torch.nn.Module, x: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
    """MSE in W+; for a ReStyle model (``restyle_iterations`` in the config) the mean over its
    passes, each pass's gradient reaching its own step, as its stage 2 trains it."""
    if model.restyle_iterations is None:
        return F.mse_loss(model.encode(x), codes)
    passes = model.refine(x, decode_last=False)
    return torch.stack([F.mse_loss(w, codes) for w, _ in passes]).mean()


def draw_codes(gen: torch.nn.Module, n: int, mixing: float, rng: torch.Generator) -> torch.Tensor:
    """``n×n_styles×style_dim`` W+ codes: ``map(z)`` repeated, or with probability ``mixing`` two
    codes joined at a random layer (StyleGAN's style mixing), as the generator met in training."""
    device = gen.input.input.device
    z = torch.randn(2, n, gen.z_dim, generator=rng).to(device)
    w1, w2 = gen.map(z[0]), gen.map(z[1])
    codes = gen.broadcast(w1).clone()
    cut = torch.randint(1, gen.n_styles, (n,), generator=rng)
    mixed = torch.rand(n, generator=rng) < mixing
    layer = torch.arange(gen.n_styles)
    take = (mixed[:, None] & (layer[None, :] >= cut[:, None])).to(device)
    return torch.where(take[..., None], gen.broadcast(w2), codes)


def degraded(images: torch.Tensor, factors: list[int], input_size: int, rng: torch.Generator) -> torch.Tensor:
    """Stage 2's model input for each image: its own random factor, 8-bit (``make_lr``)."""
    picks = torch.randint(len(factors), (images.shape[0],), generator=rng).tolist()
    return torch.cat([make_lr(images[i:i + 1], factors[k], input_size) for i, k in enumerate(picks)])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--generator", required=True, help="StyleGAN2 weights (name or .safetensors) stage 2 will use")
    ap.add_argument("--config", required=True, type=Path, help="the stage-2 recipe (encoder shape, factors)")
    ap.add_argument("--out", required=True, type=Path, help="the psp_sr model file to write")
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--mixing", type=float, default=0.5, help="share of codes mixed from two")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--save-every", type=int, default=200)
    ap.add_argument("--log-every", type=int, default=50)
    ap.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                    help="override a setting of --config, as `train psp_sr --set` (repeatable)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")

    cfg = load_config(PSPTrainConfig, args.config, overrides=[*args.sets, f"generator={args.generator}"])
    torch.manual_seed(args.seed)  # the fresh encoder's weights
    model = build_psp(cfg).to(device)
    gen, enc = model.decoder.eval().requires_grad_(False), model.encoder.train()
    opt = torch.optim.Adam(enc.parameters(), lr=args.lr)
    part = args.out.with_name(args.out.name + ".part")
    step, rng = 0, torch.Generator().manual_seed(args.seed)
    if part.is_file():  # resume: encoder, optimiser, step and the random stream, from one file
        state = torch.load(part, map_location=device, weights_only=True)
        enc.load_state_dict(state["encoder"])
        opt.load_state_dict(state["optimizer"])
        step = state["step"]
        rng.set_state(state["rng"].cpu())
        print(f"psp_warm_start: resumed at step {step}")
    # Codes farther from the average than the encoder can tell apart are learnt last: a cosine
    # schedule to a tenth keeps the late steps from undoing the early ones.
    sched = lambda s: 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, s / max(1, args.steps))))  # noqa: E731
    factors, size = list(cfg.data.factors), cfg.encoder_input_size
    t0, seen, running = time.monotonic(), 0, 0.0

    while step < args.steps:
        with torch.no_grad():
            codes = draw_codes(gen, args.batch, args.mixing, rng)
            noise = [t.to(device) for t in gen.make_noise(args.batch, generator=rng)]
            faces = gen.synthesize(codes, noise=noise).clamp(0, 1)
            x = degraded(faces.cpu(), factors, size, rng).to(device)
        for g in opt.param_groups:
            g["lr"] = args.lr * sched(step)
        loss = code_loss(model, x, codes)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        step += 1
        seen += args.batch
        running += float(loss.detach())
        if step % args.log_every == 0 or step == args.steps:
            n = (step - 1) % args.log_every + 1
            print(f"psp_warm_start: step {step}  w_mse {running / n:.4f}  "
                  f"faces/s {seen / (time.monotonic() - t0):.1f}", flush=True)
            running = 0.0
        if step % args.save_every == 0 and step < args.steps:
            atomic_save({"step": step, "encoder": enc.state_dict(), "optimizer": opt.state_dict(),
                         "rng": rng.get_state()}, part)

    model.eval()
    save_psp_safetensors(model, args.out, factors=factors, license=cfg.license, name=f"{cfg.model_name}_warm",
                         training={"warm_start": {"steps": step, "batch_size": args.batch, "lr": args.lr,
                                                  "mixing": args.mixing, "generator": str(args.generator)}})
    part.unlink(missing_ok=True)
    print(f"psp_warm_start: {args.out} after {step} steps")


if __name__ == "__main__":
    main()
