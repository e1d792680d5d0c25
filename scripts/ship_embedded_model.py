"""Ship a trained model as an embedded default: fp16 safetensors in its plugin + registry entry + golden.

Usage (the face prior first: psp_sr's shipped file names it instead of holding a second copy):
    python scripts/ship_embedded_model.py stylegan2 runs/prior128/generator.safetensors --data-note "..."
    python scripts/ship_embedded_model.py psp_sr runs/prior128_psp/model.safetensors --data-note "..."
    python scripts/ship_embedded_model.py pix2pixhd runs/faces128_p2phd/pix2pixhd.safetensors --data-note "..."

Writes the model into the plugin's ``weights/`` folder (float16 tensors, the JSON config kept in
the safetensors metadata, the license and data note added), a registry entry
``registry/weights/<name>.toml`` (size, sha256, license, ``bundled`` source) listed in the plugin's
registry entry, and ``<file>.golden.json``: the shipped model's output on a fixed input, and that of
the methods using it in other ways (:data:`PINS`; the generator's also as ``generate`` writes each
seed), which the plugins' embedded-model tests check later versions of the code against. Then it
checks that restorekit resolves the name to the file just written (registry found, sha256 verified).
Reproducible: the same input file gives the same output bytes.

``psp_sr`` keeps only the encoder, ``latent_avg`` and config, and names the generator weights
entry it decodes with (``--generator``, default ``stylegan2-faces128``; its file's sha256 is
recorded): refused unless the model's decoder is that generator (train stage 2 with
``--set generator=stylegan2-faces128``). ``--self-contained`` ships the decoder inside instead.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from safetensors import safe_open
from safetensors.torch import save

ROOT = Path(__file__).resolve().parents[1]
#: The registry the entries are written into (``weights/``, ``plugins/``).
REGISTRY = ROOT / "registry"
LICENSE = "LicenseRef-research-only"
LICENSE_NOTE = ("trained by restorekit on FFHQ thumbnails (CC BY-NC-SA 4.0, non-commercial) and All-Age-Faces "
                "(research use only); no third-party pretrained weights inside (frozen ImageNet AlexNet/LPIPS and "
                "dlib features served as losses or discriminator features)")
#: All weights shipped inside packages together (issue #18: at most 20 MB).
SHIPPED_BUDGET = 20_000_000
DEFAULT_GENERATOR = "stylegan2-faces128"


class ShipError(Exception):
    """The model cannot be shipped as asked; the message names the fix."""


@dataclass(frozen=True)
class Target:
    """Where one kind of embedded model goes and how it is described."""

    name: str  # registry name
    file: Path  # inside the plugin package
    module: str  # the package holding it (for the `bundled` source)
    architecture: str
    plugin: str
    plugin_entry: str  # the plugin's registry entry: registry/plugins/<plugin_entry>.toml
    source: str
    paper: str
    description: str
    golden: Callable[[Path], dict]
    formats: tuple[str, ...]  # safetensors metadata formats this target ships


@dataclass(frozen=True)
class Pin:
    """One run of a method on a shipped file that its golden records under ``variants``: on
    ``smooth_batch(1, input_size, input_size, seed=0)``, with ``options`` (the file passed as the
    method's weights), ``seed`` and ``n_samples``. The plugins' embedded-model tests repeat each
    with the defaults (the shipped file) and compare."""

    method: str
    options: dict[str, Any]
    input_size: int
    scale: int
    seed: int | None = None
    n_samples: int = 1


#: What the golden of each shipped file pins beyond its base output: paths the base leaves open
#: (psp_sr's ×4 input, back-projection, style mixing) and the searches decoding with it, at few
#: steps (a search's default steps move the output by 0.1 between thread counts; 5 steps by < 1e-6).
PINS: dict[str, dict[str, Pin]] = {
    "stylegan2": {"pulse steps=5": Pin("pulse", {"steps": 5}, 16, 8, seed=0)},
    "psp_sr": {
        "psp_sr x4": Pin("psp_sr", {}, 32, 4),
        "psp_sr consistency_steps=3": Pin("psp_sr", {"consistency_steps": 3}, 16, 8),
        "psp_sr n_samples=2 seed=0": Pin("psp_sr", {}, 16, 8, seed=0, n_samples=2),
        "psp_pulse steps=5": Pin("psp_pulse", {"steps": 5}, 16, 8, seed=0),
    },
}


def pin_record(pin: Pin, path: Path) -> dict:
    """``pin`` run on the file ``path`` (one thread): every 32nd pixel of each output row, the mean,
    each row's downscale error against the input (:func:`restorekit.consistency.downscale_error`)
    and, for a method that reports one (pulse, psp_pulse), its reported ``downscale_mse``."""
    import torch

    from restorekit.consistency import downscale_error
    from restorekit.methods import build_method, method_class, method_values
    from restorekit.testing.data import smooth_batch

    torch.set_num_threads(1)
    values = {**method_values(method_class(pin.method), (), weights=str(path)), **pin.options, "quiet": True}
    m = build_method(pin.method, values, "cpu")
    lr = smooth_batch(1, pin.input_size, pin.input_size, seed=0)
    out = m.restore(lr, pin.scale, seed=pin.seed, n_samples=pin.n_samples)
    record = {"method": pin.method, "options": pin.options,
              "input": f"smooth_batch(1, {pin.input_size}, {pin.input_size}, seed=0)", "input_size": pin.input_size,
              "scale": pin.scale, "seed": pin.seed, "n_samples": pin.n_samples,
              "samples_every_32px": out[:, :, ::32, ::32].tolist(), "mean": float(out.mean()),
              "downscale_error": downscale_error(out, lr.expand(out.shape[0], -1, -1, -1)).tolist()}
    reported = [r["downscale_mse"] for r in m.last_reports if "downscale_mse" in r]
    if reported:
        record["reported_downscale_mse"] = reported
    return record


def _variants(kind: str, path: Path) -> dict:
    return {"variants": {name: pin_record(pin, path) for name, pin in PINS[kind].items()}}


def _psp_golden(path: Path) -> dict:
    """×8 output on ``smooth_batch(1, 16, 16, seed=0)``: every 32nd pixel and the mean (one thread);
    and the :data:`PINS` variants."""
    import torch

    from restorekit.testing.data import smooth_batch
    from restorekit_psp_sr.method import PSPSR, PSPSROptions

    torch.set_num_threads(1)
    out = PSPSR(PSPSROptions(weights=str(path))).restore(smooth_batch(1, 16, 16, seed=0), 8)
    return {"input": "smooth_batch(1, 16, 16, seed=0)", "scale": 8,
            "samples_every_32px": out[0, :, ::32, ::32].tolist(), "mean": float(out.mean()),
            **_variants("psp_sr", path)}


GENERATE_SEEDS = (0, 1)
GENERATE_TRUNCATION = 0.7


def generate_draws(path: Path) -> dict:
    """The faces ``restorekit generate`` writes for seeds 0 and 1 (each seed its own draw) at
    truncation 0.7, as written (8-bit levels): every 32nd pixel and the mean level / 255."""
    import tempfile

    import numpy as np
    from click.testing import CliRunner
    from PIL import Image

    from restorekit.cli import build_cli

    seeds = f"{GENERATE_SEEDS[0]}-{GENERATE_SEEDS[-1]}"
    with tempfile.TemporaryDirectory() as tmp:
        r = CliRunner().invoke(build_cli(), ["generate", "--generator", "stylegan2", "--weights", str(path), "--seeds",
                                             seeds, "--truncation", str(GENERATE_TRUNCATION), "--output", tmp,
                                             "--device", "cpu", "-q"])
        if r.exit_code != 0:
            raise ShipError(f"{path}: `restorekit generate` failed on it: {r.output.strip()}")
        levels = np.stack([np.asarray(Image.open(Path(tmp) / f"seed{s:04d}.png").convert("RGB")).transpose(2, 0, 1)
                           for s in GENERATE_SEEDS])
    return {"command": f"restorekit generate --generator stylegan2 --seeds {seeds} --truncation {GENERATE_TRUNCATION}",
            "seeds": list(GENERATE_SEEDS), "truncation": GENERATE_TRUNCATION,
            "levels_every_32px": levels[:, :, ::32, ::32].tolist(), "mean": float(levels.mean() / 255)}


def _stylegan2_golden(path: Path) -> dict:
    """Realism's draw of two samples (``generator_batches``: one seed-0 draw of two latents,
    truncation 0.7): every 32nd pixel and the mean (one thread); ``generate``'s faces for seeds 0
    and 1 (:func:`generate_draws`; each seed draws alone, so row 1 above is not seed 1's face); and
    the :data:`PINS` variants."""
    import torch

    from restorekit.harness.realism.evaluate import generator_batches
    from restorekit_psp_sr.plugin import build_stylegan2

    torch.set_num_threads(1)
    g = build_stylegan2(weights=str(path), impl="ref").eval()
    out = next(generator_batches(g, 2, truncation=0.7, seed=0))
    return {"input": "generator_batches(g, 2, truncation=0.7, seed=0)", "n": 2, "truncation": 0.7,
            "rows": "both rows of one seed-0 draw of two latents, as `restorekit realism` samples; not "
                    "`generate --seeds 0-1` (each seed its own draw): see `generate`",
            "samples_every_32px": out[:, :, ::32, ::32].tolist(), "mean": float(out.mean()),
            "generate": generate_draws(path), **_variants("stylegan2", path)}


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
    "stylegan2": Target(
        name=DEFAULT_GENERATOR,
        file=ROOT / "plugins/psp_sr/restorekit_psp_sr/weights/stylegan2_faces128.safetensors",
        module="restorekit_psp_sr", architecture="stylegan2", plugin="psp_sr", plugin_entry="restorekit-psp-sr",
        source="plugins/psp_sr/recipes/prior128 (restorekit train stylegan2, adversarial)",
        paper="Karras et al., Analyzing and Improving the Image Quality of StyleGAN, CVPR 2020",
        description="StyleGAN2 face prior at 128 px, shipped inside restorekit-psp-sr: the default of the stylegan2 "
                    "generator (generate, realism, pulse) and the decoder of psp-sr-faces128",
        golden=_stylegan2_golden, formats=("restorekit.stylegan2/",)),
    "psp_sr": Target(
        name="psp-sr-faces128", file=ROOT / "plugins/psp_sr/restorekit_psp_sr/weights/psp_sr_faces128.safetensors",
        module="restorekit_psp_sr", architecture="psp", plugin="psp_sr", plugin_entry="restorekit-psp-sr",
        source="plugins/psp_sr/recipes (restorekit train stylegan2, then restorekit train psp_sr)",
        paper="Richardson et al., Encoding in Style: a StyleGAN Encoder for Image-to-Image Translation, CVPR 2021",
        description="pSp face super-resolution at 128 px (16-64 px aligned inputs), shipped inside restorekit-psp-sr",
        golden=_psp_golden, formats=("restorekit.psp/",)),
    "pix2pixhd": Target(
        name="pix2pixhd-faces128",
        file=ROOT / "plugins/baselines/restorekit_baselines/weights/pix2pixhd_faces128.safetensors",
        module="restorekit_baselines", architecture="pix2pixhd", plugin="baselines",
        plugin_entry="restorekit-baselines",
        source="plugins/baselines/recipes/faces128 (restorekit train pix2pixhd)",
        paper="Wang et al., High-Resolution Image Synthesis and Semantic Manipulation with Conditional GANs, CVPR 2018",
        description="pix2pixHD face super-resolution at 128 px (bicubic-upscaled 8-128 px aligned inputs), shipped "
                    "inside restorekit-baselines",
        golden=_pix2pixhd_golden, formats=("restorekit.pix2pixhd/",)),
}


def build_file(target: Target, model: Path, data_note: str = "", *,
               generator: str | None = None) -> tuple[bytes, dict]:
    """The bytes of ``target``'s shipped file made from the trained ``model`` (fp16 tensors, license,
    name and data note in the metadata), and its config.

    ``generator`` (psp_sr only): the weights entry the file names as its decoder instead of holding
    it (None: self-contained); refused unless the model's decoder is that generator.
    """
    tensors = {}
    try:
        with safe_open(str(model), framework="pt") as f:
            meta = dict(f.metadata() or {})
            for k in sorted(f.keys()):
                tensors[k] = f.get_tensor(k)
    except Exception as exc:
        raise ShipError(f"{model}: not a readable safetensors file ({exc})") from None
    fmt = meta.get("format", "")
    if not fmt.startswith(target.formats):
        raise ShipError(f"{model}: metadata format {fmt!r}, but the {target.plugin}/{target.architecture} target "
                        f"ships {' or '.join(f + '*' for f in target.formats)} files")
    config = json.loads(meta.get("config", "{}"))
    if generator is not None:
        if target.architecture != "psp":
            raise ShipError(f"--generator applies to psp_sr, not to {target.name}")
        from restorekit.errors import RestorekitError
        from restorekit_psp_sr.method import PSPModelError, reference_decoder

        try:
            tensors, config = reference_decoder(model, tensors, config, generator)
        except PSPModelError as exc:
            raise ShipError(str(exc)) from None
        except RestorekitError as exc:  # the generator is not registered or not installed
            raise ShipError(f"{model}: cannot reference the generator '{generator}': {exc}; ship "
                            f"`stylegan2` first") from None
    tensors = {k: t.half() if t.is_floating_point() else t for k, t in tensors.items()}
    info = {"name": target.name, "license": LICENSE, "weights_dtype": "float16",
            **({"data": data_note} if data_note else {})}
    if fmt.startswith("restorekit.pix2pixhd"):
        meta["shipped"] = json.dumps(info, sort_keys=True)  # its config is the architecture alone
    else:
        config.update({k: v for k, v in info.items() if k != "data"})
        if data_note:
            config.setdefault("training", {})["data"] = data_note
        meta["config"] = json.dumps(config, sort_keys=True)
    return canonical_safetensors(save(tensors, metadata=meta)), config


def canonical_safetensors(blob: bytes) -> bytes:
    """``blob`` with its JSON header's keys sorted: safetensors writes them in hash order, which
    changes from run to run, so the same tensors would give other bytes (and another sha256)."""
    n = int.from_bytes(blob[:8], "little")
    header = json.dumps(json.loads(blob[8:8 + n]), sort_keys=True, separators=(",", ":"),
                        ensure_ascii=False).encode()
    header += b" " * (-len(header) % 8)  # the data stays 8-byte aligned, as safetensors writes it
    return len(header).to_bytes(8, "little") + header + blob[8 + n:]


def ship(target: Target, model: Path, data_note: str = "", *, generator: str | None = None,
         registry: Path | None = None) -> dict:
    """Write ``target``'s shipped file (:func:`build_file`), registry entry and golden, and check
    that restorekit resolves the name to that file. ``registry``: where the entries go (default
    :data:`REGISTRY`)."""
    registry = REGISTRY if registry is None else registry
    blob, config = build_file(target, model, data_note, generator=generator)
    target.file.parent.mkdir(parents=True, exist_ok=True)
    target.file.write_bytes(blob)
    sha = hashlib.sha256(blob).hexdigest()
    entry = registry / "weights" / f"{target.name}.toml"
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
    list_in_plugin_entry(registry / "plugins" / f"{target.plugin_entry}.toml", target.name)
    check_resolves(target)
    golden = write_golden(target)
    total = shipped_total(registry)
    if total > SHIPPED_BUDGET:
        print(f"warning: the weights shipped inside packages now total {total / 1e6:.1f} MB, over the "
              f"{SHIPPED_BUDGET / 1e6:.0f} MB budget of issue #18", file=sys.stderr)
    return {"file": str(target.file), "size": len(blob), "sha256": sha, "entry": str(entry), "golden": str(golden),
            "decoder_weights": config.get("decoder_weights"), "shipped_total_bytes": total}


def write_golden(target: Target) -> Path:
    """Write ``<file>.golden.json`` beside ``target``'s shipped file (atomically) from what it gives now."""
    golden = target.file.with_suffix(".golden.json")
    part = golden.with_name(golden.name + ".part")
    part.write_text(json.dumps(target.golden(target.file), indent=1) + "\n")
    part.replace(golden)
    return golden


def check_resolves(target: Target) -> None:
    """restorekit must find the new entry and verify the file just written (else the wrong registry
    or another checkout's package is in use)."""
    from restorekit.errors import RestorekitError
    from restorekit.weights import resolve

    try:
        found = resolve(target.name)
    except RestorekitError as exc:
        raise ShipError(f"wrote {target.file}, but restorekit does not resolve '{target.name}' to it ({exc}); "
                        "unset RESTOREKIT_REGISTRY, or install the plugins from this checkout (pip install -e)") from None
    if found.resolve() != target.file.resolve():
        raise ShipError(f"restorekit resolves '{target.name}' to {found}, not to {target.file}: install the plugins "
                        "from this checkout (pip install -e)")


def shipped_total(registry: Path) -> int:
    """Bytes of every weights file the registry says ships inside a package."""
    import tomllib

    total = 0
    for path in sorted((registry / "weights").glob("*.toml")):
        for f in tomllib.loads(path.read_text()).get("files", []):
            if f.get("bundled"):
                total += int(f.get("size", 0))
    return total


def list_in_plugin_entry(plugin_entry: Path, name: str) -> None:
    """Add ``name`` to the ``weights`` list of the plugin's registry entry (once; the list is
    created after ``provides`` when the entry has none)."""
    text = plugin_entry.read_text()
    m = re.search(r"^weights = \[(.*)\]$", text, flags=re.M)
    if m is None:
        line = f'weights = ["{name}"]'
        p = re.search(r"^provides = \[(.*)\]$", text, flags=re.M)
        if p is None:
            raise ShipError(f"{plugin_entry}: no `provides = [...]` line")
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
    ap.add_argument("--generator", default=None,
                    help=f"psp_sr: the generator weights entry its decoder is (default {DEFAULT_GENERATOR})")
    ap.add_argument("--self-contained", action="store_true", help="psp_sr: keep the decoder inside the file")
    args = ap.parse_args()
    if args.kind != "psp_sr" and (args.generator or args.self_contained):
        ap.error("--generator and --self-contained apply to psp_sr")
    if args.generator and args.self_contained:
        ap.error("--generator and --self-contained exclude each other")
    generator = None if args.kind != "psp_sr" or args.self_contained else (args.generator or DEFAULT_GENERATOR)
    try:
        print(json.dumps(ship(TARGETS[args.kind], args.model, args.data_note, generator=generator), indent=2))
    except ShipError as exc:
        raise SystemExit(f"ship_embedded_model: {exc}") from None


if __name__ == "__main__":
    main()
