"""Ship a trained psp_sr model as the embedded default: fp16 safetensors in the package + registry entry.

Usage: python scripts/ship_embedded_model.py runs/faces128_psp/model.safetensors \
           --data-note "../shared/data/faces (ffhq128 + aaf128), split plugins/psp_sr/recipes/faces128/val.txt"

Writes plugins/psp_sr/restorekit_psp_sr/weights/psp_sr_faces128.safetensors (float16 tensors, the
model's JSON config kept in the safetensors metadata) and registry/weights/psp-sr-faces128.toml
(size, sha256, license). Reproducible: the same input file gives the same output bytes.
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
    print(json.dumps({"file": str(TARGET), "size": len(blob), "sha256": sha, "entry": str(ENTRY)}, indent=2))


if __name__ == "__main__":
    main()
