"""Ship a trained model as an embedded default: fp16 safetensors in its plugin + registry entry + golden.

Usage:
    python scripts/ship_embedded_model.py psp_sr runs/faces128_psp/model.safetensors --data-note "..."
    python scripts/ship_embedded_model.py pix2pixhd runs/faces128_p2phd/pix2pixhd.safetensors --data-note "..."

Writes the model into the plugin's ``weights/`` folder (float16 tensors, the JSON config kept in
the safetensors metadata, the license and data note added), a registry entry
``registry/weights/<name>.toml`` (size, sha256, license, ``bundled`` source) listed in the plugin's
registry entry, and ``<file>.golden.json``: the shipped model's output on a fixed synthetic input,
which the plugin's embedded-model test checks later versions of the code against. Reproducible:
the same input file gives the same output bytes.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from safetensors import safe_open
from safetensors.torch import save

ROOT = Path(__file__).resolve().parents[1]
LICENSE = "LicenseRef-research-only"
LICENSE_NOTE = ("trained by restorekit on FFHQ thumbnails (CC BY-NC-SA 4.0, non-commercial) and All-Age-Faces "
                "(research use only); no third-party pretrained weights")


@dataclass(frozen=True)
class Target:
    """Where one kind of embedded model goes and how it is described."""

    name: str  # registry name
    file: Path  # inside the plugin package
    module: str  # the package holding it (for the `bundled` source)
    architecture: str
    plugin: str
    plugin_entry: Path
    source: str
    paper: str
    description: str
    golden: Callable[[Path], dict]


def _psp_golden(path: Path) -> dict:
    """×8 output on ``smooth_batch(1, 16, 16, seed=0)``: every 32nd pixel and the mean (one thread)."""
    import torch

    from restorekit.testing.data import smooth_batch
    from restorekit_psp_sr.method import PSPSR, PSPSROptions

    torch.set_num_threads(1)
    out = PSPSR(PSPSROptions(weights=str(path))).restore(smooth_batch(1, 16, 16, seed=0), 8)
    return {"input": "smooth_batch(1, 16, 16, seed=0)", "scale": 8,
            "samples_every_32px": out[0, :, ::32, ::32].tolist(), "mean": float(out.mean())}


def _pix2pixhd_golden(path: Path) -> dict:
    """×8 output on ``smooth_batch(1, 16, 16, seed=0)``: every 32nd pixel and the mean (one thread)."""
    import torch

    from restorekit.testing.data import smooth_batch
    from restorekit_baselines.pix2pixhd import Pix2PixHD

    torch.set_num_threads(1)
    out = Pix2PixHD(Pix2PixHD.Options(weights=str(path))).restore(smooth_batch(1, 16, 16, seed=0), 8)
    return {"input": "smooth_batch(1, 16, 16, seed=0)", "scale": 8,
            "samples_every_32px": out[0, :, ::32, ::32].tolist(), "mean": float(out.mean())}


TARGETS = {
    "psp_sr": Target(
        name="psp-sr-faces128", file=ROOT / "plugins/psp_sr/restorekit_psp_sr/weights/psp_sr_faces128.safetensors",
        module="restorekit_psp_sr", architecture="psp", plugin="psp_sr",
        plugin_entry=ROOT / "registry/plugins/restorekit-psp-sr.toml",
        source="plugins/psp_sr/recipes (restorekit train stylegan2, then restorekit train psp_sr)",
        paper="Richardson et al., Encoding in Style: a StyleGAN Encoder for Image-to-Image Translation, CVPR 2021",
        description="pSp face super-resolution at 128 px (16-64 px aligned inputs), shipped inside restorekit-psp-sr",
        golden=_psp_golden),
    "pix2pixhd": Target(
        name="pix2pixhd-faces128",
        file=ROOT / "plugins/baselines/restorekit_baselines/weights/pix2pixhd_faces128.safetensors",
        module="restorekit_baselines", architecture="pix2pixhd", plugin="baselines",
        plugin_entry=ROOT / "registry/plugins/restorekit-baselines.toml",
        source="plugins/baselines/recipes/faces128 (restorekit train pix2pixhd)",
        paper="Wang et al., High-Resolution Image Synthesis and Semantic Manipulation with Conditional GANs, CVPR 2018",
        description="pix2pixHD face super-resolution at 128 px (bicubic-upscaled 8-128 px aligned inputs), shipped "
                    "inside restorekit-baselines",
        golden=_pix2pixhd_golden),
}


def ship(target: Target, model: Path, data_note: str = "") -> dict:
    tensors = {}
    with safe_open(str(model), framework="pt") as f:
        meta = dict(f.metadata() or {})
        for k in sorted(f.keys()):
            t = f.get_tensor(k)
            tensors[k] = t.half() if t.is_floating_point() else t
    config = json.loads(meta.get("config", "{}"))
    info = {"name": target.name, "license": LICENSE, "weights_dtype": "float16",
            **({"data": data_note} if data_note else {})}
    if "format" in meta and meta["format"].startswith("restorekit.pix2pixhd"):
        meta["shipped"] = json.dumps(info, sort_keys=True)  # its config is the architecture alone
    else:
        config.update({k: v for k, v in info.items() if k != "data"})
        if data_note:
            config.setdefault("training", {})["data"] = data_note
        meta["config"] = json.dumps(config, sort_keys=True)
    blob = save(tensors, metadata=dict(sorted(meta.items())))
    target.file.parent.mkdir(parents=True, exist_ok=True)
    target.file.write_bytes(blob)
    sha = hashlib.sha256(blob).hexdigest()
    entry = ROOT / "registry/weights" / f"{target.name}.toml"
    entry.write_text(f'''# An embedded default model, trained by restorekit ({target.source}).
name = "{target.name}"
kind = "weights"
architecture = "{target.architecture}"
plugin = "{target.plugin}"
license = "{LICENSE}"
license_note = "{LICENSE_NOTE}"
source = "{target.source}"
paper = "{target.paper}"
description = "{target.description}"

[[files]]
filename = "{target.file.name}"
size = {len(blob)}
sha256 = "{sha}"
bundled = "{target.module}:weights/{target.file.name}"
''')
    list_in_plugin_entry(target.plugin_entry, target.name)
    golden = target.file.with_suffix(".golden.json")
    golden.write_text(json.dumps(target.golden(target.file), indent=1) + "\n")
    return {"file": str(target.file), "size": len(blob), "sha256": sha, "entry": str(entry), "golden": str(golden)}


def list_in_plugin_entry(plugin_entry: Path, name: str) -> None:
    """Add ``name`` to the ``weights`` list of the plugin's registry entry (once; the list is
    created after ``provides`` when the entry has none)."""
    text = plugin_entry.read_text()
    m = re.search(r"^weights = \[(.*)\]$", text, flags=re.M)
    if m is None:
        line = f'weights = ["{name}"]'
        p = re.search(r"^provides = \[(.*)\]$", text, flags=re.M)
        if p is None:
            raise SystemExit(f"{plugin_entry}: no `provides = [...]` line")
        provides = [n.strip().strip('"') for n in p.group(1).split(",") if n.strip()]
        if "weights" not in provides:
            provides.append("weights")
        new = "provides = [" + ", ".join(f'"{n}"' for n in provides) + "]\n" + line
        plugin_entry.write_text(text[:p.start()] + new + text[p.end():])
        return
    names = [n.strip().strip('"') for n in m.group(1).split(",") if n.strip()]
    if name not in names:
        names.insert(0, name)
        line = "weights = [" + ", ".join(f'"{n}"' for n in names) + "]"
        plugin_entry.write_text(text[:m.start()] + line + text[m.end():])


def main() -> None:
    ap = argparse.ArgumentParser(description="Ship a trained model as an embedded default.")
    ap.add_argument("kind", choices=sorted(TARGETS))
    ap.add_argument("model", type=Path)
    ap.add_argument("--data-note", default="")
    args = ap.parse_args()
    print(json.dumps(ship(TARGETS[args.kind], args.model, args.data_note), indent=2))


if __name__ == "__main__":
    main()
