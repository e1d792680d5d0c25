"""Bring a stage-2 pSp model back from a lent GPU within its 16 MiB-a-file limit, and rebuild it.

    python scripts/gpu/psp_parts.py split MODEL GENERATOR OUT     # on the device
    python scripts/gpu/psp_parts.py join PART GENERATOR OUT       # on the CPU machine

A trained ``restorekit train psp_sr`` model holds the frozen generator beside the encoder (27 MB in
float32 for the 128-px prior). The generator already comes back on its own, so ``split`` keeps the
encoder and ``latent_avg`` in float16 (about 5 MB), with the model's config and the sha256 of the
generator file it was trained against. ``join`` checks that sha256 against the generator given and
writes a whole restorekit pSp model (float32), which ``train psp_sr --set init=OUT`` continues from.
The encoder's float16 rounding is the only change (relative 1e-3 on its weights).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save

from restorekit.weights import sha256_file

PART_FORMAT = "restorekit.psp-encoder-part/1"
PSP_FORMAT = "restorekit.psp/1"


class PartsError(Exception):
    """The files do not belong together or are not what they should be."""


def _read(path: Path) -> tuple[dict[str, str], dict[str, torch.Tensor]]:
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            return dict(f.metadata() or {}), {k: f.get_tensor(k) for k in f.keys()}
    except Exception as exc:
        raise PartsError(f"{path}: not a readable safetensors file ({exc})") from None


def _write(path: Path, tensors: dict[str, torch.Tensor], meta: dict[str, str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".part")
    tmp.write_bytes(save({k: v.contiguous() for k, v in tensors.items()}, metadata=meta))
    tmp.replace(path)


def split(model: Path, generator: Path, out: Path) -> Path:
    """The encoder part of ``model`` (trained against ``generator``) as float16, into ``out``."""
    meta, tensors = _read(model)
    if meta.get("format") != PSP_FORMAT:
        raise PartsError(f"{model}: not a restorekit pSp model (format {meta.get('format')!r})")
    gmeta, gtensors = _read(generator)
    dec = {k[len("decoder."):]: v for k, v in tensors.items() if k.startswith("decoder.")}
    if not dec:
        raise PartsError(f"{model}: holds no decoder tensors to check against {generator}")
    for k, v in dec.items():  # the decoder must be exactly that generator (fp16 values, as loaded)
        if k not in gtensors or not torch.equal(gtensors[k].float(), v.float()):
            raise PartsError(f"{model}: its decoder differs from {generator} (tensor {k})")
    part = {k: v.half() for k, v in tensors.items() if k.startswith("encoder.") or k == "latent_avg"}
    _write(out, part, {"format": PART_FORMAT, "config": meta["config"], "generator_sha256": sha256_file(generator)})
    return out


def join(part: Path, generator: Path, out: Path) -> Path:
    """A whole float32 pSp model from an encoder part and the generator it was trained against."""
    meta, tensors = _read(part)
    if meta.get("format") != PART_FORMAT:
        raise PartsError(f"{part}: not an encoder part (format {meta.get('format')!r}, expected {PART_FORMAT!r})")
    want, got = meta.get("generator_sha256"), sha256_file(generator)
    if want != got:
        raise PartsError(f"{part} was trained against a generator with sha256 {want}; {generator} has {got}")
    _, gtensors = _read(generator)
    whole = {k: v.float() for k, v in tensors.items()}
    whole.update({f"decoder.{k}": v.float() for k, v in gtensors.items() if k != "latent_avg"})
    config = json.loads(meta["config"])
    config.setdefault("training", {})["encoder_float16_from"] = part.name
    _write(out, whole, {"format": PSP_FORMAT, "config": json.dumps(config)})
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("action", choices=["split", "join"])
    ap.add_argument("model", type=Path, help="split: the trained pSp model; join: the encoder part")
    ap.add_argument("generator", type=Path, help="the generator file the model was trained against")
    ap.add_argument("out", type=Path)
    args = ap.parse_args(argv)
    try:
        path = (split if args.action == "split" else join)(args.model, args.generator, args.out)
    except PartsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"{args.action}: {path} ({path.stat().st_size / 1e6:.1f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
