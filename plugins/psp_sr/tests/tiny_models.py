"""Tiny random pSp models in restorekit's format, shared by the psp_sr tests (no downloads)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from restorekit_psp_sr.encoder import GradualStyleEncoder
from restorekit_psp_sr.method import save_psp_safetensors
from restorekit_psp_sr.psp import PSP
from restorekit_psp_sr.stylegan2 import StyleGAN2Generator


def tiny_psp(seed: int = 0, *, noise_strength: float | None = None) -> PSP:
    """A 32-px generator + light encoder; ``noise_strength`` makes the constant noise buffers matter."""
    torch.manual_seed(seed)
    g = StyleGAN2Generator(32, style_dim=16, n_mlp=2, channel_multiplier=1, channel_max=16, impl="ref")
    enc = GradualStyleEncoder(g.n_styles, 16, backbone="ir_se_light", input_size=32, head_channels=16)
    if noise_strength is not None:
        with torch.no_grad():
            for k, v in g.named_parameters():
                if k.endswith("noise.weight"):
                    v.fill_(noise_strength)
    return PSP(enc, g, g.mean_latent(256)).eval()


def write_faces(root: Path, n: int = 8) -> Path:
    """``n`` smooth 48-px stand-in faces as PNGs in ``root`` (a training folder for tiny runs)."""
    from restorekit.images import save_image
    from restorekit.testing.data import smooth_batch

    imgs = smooth_batch(n, 48, 48, seed=21)
    for i in range(n):
        save_image(imgs[i:i + 1], root / f"face_{i:02d}.png")
    return root


def tiny_train_config(out: Path, **over: object) -> Any:
    """``train psp_sr`` settings for a tiny run on :func:`write_faces`'s folder (32-px encoder input)."""
    from restorekit.training import DataConfig
    from restorekit_psp_sr.train import PSPTrainConfig

    fields: dict = dict(steps=12, batch_size=2, lr=2e-3, optimizer="adam", log_every=1, val_every=6, ckpt_every=6,
                        seed=1, device="cpu", out=str(out), encoder_input_size=32, loss_size=256, model_name="tiny",
                        license="CC0-1.0", data=DataConfig(factors=[1, 2, 4], holdout_fraction=0.25))
    fields.update(over)
    return PSPTrainConfig(**fields)


def save_tiny(path: Path, **kw: object) -> Path:
    """Write a tiny model trained (nominally) for factors 1, 2, 4."""
    save_psp_safetensors(tiny_psp(**kw), path, factors=[1, 2, 4], license="CC0-1.0", name="tiny")
    return path


# -- shipping: scripts/ship_embedded_model.py run against a temporary package and registry --------
REPO = Path(__file__).resolve().parents[3]
SHIP_SCRIPT = REPO / "scripts" / "ship_embedded_model.py"
#: The stand-in for restorekit_psp_sr in shipping tests: a package on a temporary sys.path entry.
SHIP_PACKAGE = "rk_shipped_tiny"
DATA_NOTE = "tiny random stand-ins (test)"


def load_ship_script() -> Any:
    """The ship script as a module (it is a script, not part of any package)."""
    from script_modules import script_module

    return script_module(SHIP_SCRIPT)


def tiny_generator(seed: int = 0) -> StyleGAN2Generator:
    """A 64-px generator (10 styles of 16), small enough to build in milliseconds."""
    torch.manual_seed(seed)
    return StyleGAN2Generator(64, style_dim=16, n_mlp=2, channel_multiplier=1, channel_max=16, impl="ref").eval()


def tiny_psp_on(generator: Any, seed: int = 0) -> PSP:
    """A light encoder (32-px input) on ``generator``, as stage 2 of the recipe pairs them."""
    torch.manual_seed(seed)
    enc = GradualStyleEncoder(generator.n_styles, generator.style_dim, backbone="ir_se_light", input_size=32,
                              head_channels=16)
    return PSP(enc, generator, generator.mean_latent(256)).eval()


@dataclass
class Shipped:
    """What :func:`ship_tiny` made: the trained stand-ins, the shipped files, the targets used."""

    ship: Any  # the ship script's module
    registry: Path  # the temporary registry (RESTOREKIT_REGISTRY)
    weights_dir: Path  # the temporary package's weights/ (restorekit_psp_sr.method.WEIGHTS_DIR)
    targets: dict[str, Any]  # ship.Target by kind, pointing into the temporary package
    generator_run: Path  # what `train stylegan2` would export (fp32)
    psp_run: Path  # what `train psp_sr --set generator=stylegan2-faces128` would export (fp32, self-contained)
    generator_file: Path  # shipped
    psp_file: Path  # shipped, naming the generator
    results: dict[str, dict[str, Any]]  # ship()'s return values by kind


def ship_tiny(root: Path, monkeypatch: Any) -> Shipped:
    """Ship a tiny generator, then a tiny pSp model trained (nominally) against it, into a temporary
    package ``rk_shipped_tiny`` and a copy of the registry under ``root``; points restorekit there
    (``RESTOREKIT_REGISTRY``, ``sys.path``, ``WEIGHTS_DIR``) through ``monkeypatch``."""
    import dataclasses
    import importlib
    import shutil

    from restorekit_psp_sr import method as method_mod
    from restorekit_psp_sr.train import load_generator, save_stylegan2_safetensors

    ship = load_ship_script()
    registry = root / "registry"
    shutil.copytree(REPO / "registry", registry)
    package = root / "site" / SHIP_PACKAGE
    weights_dir = package / "weights"
    weights_dir.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    monkeypatch.setenv("RESTOREKIT_REGISTRY", str(registry))
    monkeypatch.syspath_prepend(str(root / "site"))
    importlib.invalidate_caches()
    monkeypatch.setattr(method_mod, "WEIGHTS_DIR", weights_dir)
    targets = {kind: dataclasses.replace(ship.TARGETS[kind], file=weights_dir / ship.TARGETS[kind].file.name,
                                         module=SHIP_PACKAGE) for kind in ("stylegan2", "psp_sr")}
    runs = root / "runs"
    gen_run = save_stylegan2_safetensors(tiny_generator(), runs / "generator.safetensors", license="unknown",
                                         name="stylegan2_faces128", training={"kimg": 1})
    results = {"stylegan2": ship.ship(targets["stylegan2"], gen_run, DATA_NOTE, registry=registry)}
    # Stage 2 against the shipped generator: `--set generator=stylegan2-faces128` loads it by name.
    decoder = load_generator(ship.DEFAULT_GENERATOR, impl="ref")
    psp_run = runs / "model.safetensors"
    save_psp_safetensors(tiny_psp_on(decoder), psp_run, factors=[1, 2, 4], license="unknown", name="psp_sr_faces128",
                         training={"generator": ship.DEFAULT_GENERATOR})
    results["psp_sr"] = ship.ship(targets["psp_sr"], psp_run, DATA_NOTE, generator=ship.DEFAULT_GENERATOR,
                                  registry=registry)
    return Shipped(ship, registry, weights_dir, targets, gen_run, psp_run, targets["stylegan2"].file,
                   targets["psp_sr"].file, results)
