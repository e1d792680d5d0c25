"""Ship a trained psp_sr model as the embedded default: fp16 safetensors in the package + registry entry.

Usage: python scripts/ship_embedded_model.py runs/faces128_psp/model.safetensors \
           --data-note "../shared/data/faces (ffhq128 + aaf128), split plugins/psp_sr/recipes/faces128/val.txt"

Writes plugins/psp_sr/restorekit_psp_sr/weights/psp_sr_faces128.safetensors (float16 tensors, the
model's JSON config kept in the safetensors metadata) and registry/weights/psp-sr-faces128.toml
(size, sha256, license), and GOLDEN (the shipped model's output on a fixed synthetic input, which
plugins/psp_sr/tests/test_embedded_model.py checks later versions of the code against).
Reproducible: the same input file gives the same output bytes.
"""

from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path

from safetensors import safe_open
from safetensors.torch import save

ROOT = Path(__file__).resolve().parents[1]
TARGET = ROOT / "plugins/psp_sr/restorekit_psp_sr/weights/psp_sr_faces128.safetensors"
ENTRY = ROOT / "registry/weights/psp-sr-faces128.toml"
GOLDEN = TARGET.with_suffix(".golden.json")
PLUGIN_ENTRY = ROOT / "registry/plugins/restorekit-psp-sr.toml"
LICENSE = "LicenseRef-research-only"
LICENSE_NOTE = ("trained by restorekit on FFHQ thumbnails (CC BY-NC-SA 4.0, non-commercial) and All-Age-Faces "
                "(research use only); no third-party pretrained weights")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("model", type=Path)
    ap.add_argument("--data-note", default="")
    args = ap.parse_args()
    tensors = {}
    with safe_open(str(args.model), framework="pt") as f:
        meta = dict(f.metadata() or {})
        for k in sorted(f.keys()):
            t = f.get_tensor(k)
            tensors[k] = t.half() if t.is_floating_point() else t
    config = json.loads(meta.get("config", "{}"))
    config["name"] = "psp-sr-faces128"
    config["license"] = LICENSE
    config["weights_dtype"] = "float16"
    if args.data_note:
        config.setdefault("training", {})["data"] = args.data_note
    meta["config"] = json.dumps(config, sort_keys=True)
    blob = save(tensors, metadata=dict(sorted(meta.items())))
    TARGET.parent.mkdir(parents=True, exist_ok=True)
    TARGET.write_bytes(blob)
    sha = hashlib.sha256(blob).hexdigest()
    ENTRY.write_text(f'''# The embedded default psp_sr model: restorekit's own 128-px StyleGAN2 + pSp encoder, trained on
# CPU by plugins/psp_sr/recipes/faces128 (model card: docs/model-card-psp-sr-faces128.md).
name = "psp-sr-faces128"
kind = "weights"
architecture = "psp"
plugin = "psp_sr"
license = "{LICENSE}"
license_note = "{LICENSE_NOTE}"
source = "plugins/psp_sr/recipes/faces128 (restorekit train stylegan2_ae, then restorekit train psp_sr)"
paper = "Richardson et al., Encoding in Style: a StyleGAN Encoder for Image-to-Image Translation, CVPR 2021"
description = "pSp face super-resolution at 128 px (16-64 px aligned inputs), shipped inside restorekit-psp-sr"

[[files]]
filename = "{TARGET.name}"
size = {len(blob)}
sha256 = "{sha}"
bundled = "restorekit_psp_sr:weights/{TARGET.name}"
''')
    list_in_plugin_entry("psp-sr-faces128")
    write_golden()
    print(json.dumps({"file": str(TARGET), "size": len(blob), "sha256": sha, "entry": str(ENTRY),
                      "golden": str(GOLDEN)}, indent=2))


def list_in_plugin_entry(name: str) -> None:
    """Add ``name`` to the ``weights`` list of the plugin's registry entry (once)."""
    import re

    text = PLUGIN_ENTRY.read_text()
    m = re.search(r"^weights = \[(.*)\]$", text, flags=re.M)
    if m is None:
        raise SystemExit(f"{PLUGIN_ENTRY}: no `weights = [...]` line")
    names = [n.strip().strip('"') for n in m.group(1).split(",") if n.strip()]
    if name not in names:
        names.insert(0, name)
        line = "weights = [" + ", ".join(f'"{n}"' for n in names) + "]"
        PLUGIN_ENTRY.write_text(text[:m.start()] + line + text[m.end():])


def write_golden() -> None:
    """The shipped model's ×8 output on ``smooth_batch(1, 16, 16, seed=0)``: a 3×4×4 sample grid
    (every 32nd pixel) and the mean, computed on one CPU thread."""
    import torch

    from restorekit.testing.data import smooth_batch
    from restorekit_psp_sr.method import PSPSR, PSPSROptions

    torch.set_num_threads(1)
    out = PSPSR(PSPSROptions(weights=str(TARGET))).restore(smooth_batch(1, 16, 16, seed=0), 8)
    GOLDEN.write_text(json.dumps({"input": "smooth_batch(1, 16, 16, seed=0)", "scale": 8,
                                  "samples_every_32px": out[0, :, ::32, ::32].tolist(),
                                  "mean": float(out.mean())}, indent=1) + "\n")


if __name__ == "__main__":
    main()
