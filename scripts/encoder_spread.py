"""How far a psp_sr encoder has left the average face: the spread of its codes against the generator's.

An encoder that has not learnt to tell faces apart returns nearly the same W+ code for every input,
and psp_sr then draws the same face for everyone. This measures that directly. For each modulated
convolution of the generator, the code that layer reads is mapped through the layer's modulation
(what the layer actually sees of W: the rest of W is invisible to it), and the root-mean-square
deviation from the mean over a set of faces is compared with the same over the generator's own
codes (normal z through the mapping). A ratio near 1 means the encoder's codes vary as much as the
generator's faces do; near 0, one face for all. Measured per input factor, with the faces
degraded as stage 2's data is, so ×1 (the sharp face) shows whether the encoder uses detail at all.

    .venv/bin/python scripts/encoder_spread.py runs/x/psp/model.safetensors --data @val_list.txt --factors 1,8   # (a list of image paths: docs/realism.md says how to make one of val.txt)
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from torch import Tensor

from restorekit.degradations import bicubic_resize
from restorekit.images import list_inputs, read_image
from restorekit.training.data import make_lr
from restorekit_psp_sr.method import load_psp_model


def layer_codes(gen: torch.nn.Module) -> list[tuple[str, torch.nn.Module, int]]:
    """``(name, modulated conv, W+ index it reads)`` for every StyledConv, coarse to fine."""
    out = [("conv1", gen.conv1.conv, 0)]
    out += [(f"convs.{j}", conv.conv, j + 1) for j, conv in enumerate(gen.convs)]
    return out


@torch.no_grad()
def spread(gen: torch.nn.Module, codes: Tensor) -> dict[str, float]:
    """Per layer: RMS over ``codes`` (``N×n_styles×dim``) of the modulation's deviation from its mean."""
    result = {}
    for name, conv, i in layer_codes(gen):
        s = conv.modulation(codes[:, i])
        result[name] = float((s - s.mean(0)).square().sum(1).mean().sqrt())
    return result


@torch.no_grad()
def generator_codes(gen: torch.nn.Module, n: int, seed: int = 0) -> Tensor:
    """``n`` of the generator's own W+ codes (normal z, mapped, one code for all layers)."""
    z = torch.randn(n, gen.z_dim, generator=torch.Generator().manual_seed(seed))
    return gen.broadcast(gen.map(z))


@torch.no_grad()
def spread_ratios(model: torch.nn.Module, faces: Tensor, factors: list[int], *, n_reference: int = 1000,
                  seed: int = 0) -> dict[str, dict[str, float]]:
    """``{"x<factor>": {layer: ratio, …, "mean": …}}``: the encoder's spread over ``faces`` degraded
    at each factor, divided by the spread of ``n_reference`` of the generator's own codes."""
    gen = model.decoder
    reference = spread(gen, generator_codes(gen, n_reference, seed))
    out: dict[str, dict[str, float]] = {}
    for f in factors:
        x = make_lr(faces, f, model.input_size)
        got = spread(gen, model.encode(x))
        ratios = {k: got[k] / reference[k] for k in reference}
        ratios["mean"] = sum(ratios.values()) / len(reference)
        out[f"x{f}"] = ratios
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model", help="a psp_sr model file (or weights name)")
    ap.add_argument("--data", required=True, help="faces at the generator's framing: a folder, or @list.txt")
    ap.add_argument("--factors", default="1,8", help="input factors, comma-separated")
    ap.add_argument("--n", type=int, default=60, help="faces to encode (the first N)")
    ap.add_argument("--json", type=Path, help="also write the ratios here")
    args = ap.parse_args()
    model, _ = load_psp_model(args.model, impl="ref")
    model.eval()
    res = model.decoder.resolution
    items = list_inputs(args.data)[: args.n]
    faces = torch.cat([bicubic_resize(read_image(it.path), (res, res)).clamp(0, 1) for it in items])
    factors = [int(f) for f in args.factors.split(",")]
    ratios = spread_ratios(model, faces, factors)
    layers = [k for k in next(iter(ratios.values())) if k != "mean"]
    print(f"encoder spread / generator spread, {len(items)} faces (1 = as varied as the generator's faces)")
    print("layer      " + "  ".join(f"{k:>6s}" for k in ratios))
    for name in [*layers, "mean"]:
        print(f"{name:10s} " + "  ".join(f"{ratios[k][name]:6.3f}" for k in ratios))
    if args.json:
        args.json.write_text(json.dumps({"model": str(args.model), "faces": len(items), "ratios": ratios}, indent=1))


if __name__ == "__main__":
    main()
