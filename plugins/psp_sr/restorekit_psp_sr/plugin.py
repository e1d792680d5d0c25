"""restorekit registrations of the psp_sr plugin (entry point ``psp_sr``).

Registration only: every factory and command imports torch models lazily, when first used.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal


#: ``weights`` value naming the decoder of psp_sr's default (embedded) model.
PSP_DEFAULT_DECODER = "psp_sr:default"

#: Seed of torch's CPU generator while an untrained generator (``random_weights=True``) is built,
#: inside a fork of it: its layers are the same in every process and the caller's RNG is not moved.
RANDOM_WEIGHTS_SEED = 0


def _psp_model_file(weights: str | os.PathLike[str]) -> Path | None:
    """The restorekit pSp ``.safetensors`` file whose decoder ``weights`` names, else None."""
    if str(weights) == PSP_DEFAULT_DECODER:
        from .method import DEFAULT_MODEL_FILE, DEFAULT_MODEL_NAME, shipped_file

        return shipped_file(DEFAULT_MODEL_NAME, DEFAULT_MODEL_FILE,
                            missing=f"stylegan2 weights '{PSP_DEFAULT_DECODER}' name psp_sr's default model",
                            fix="reinstall restorekit-psp-sr, or pass the generator's weights NAME|PATH")
    from restorekit.weights import registered_name

    p = Path(weights)
    return p if p.suffix == ".safetensors" and registered_name(weights) is None and p.is_file() else None


def _default_generator_file() -> Path:
    """The shipped face prior (``stylegan2-faces128``), verified against its registry entry."""
    from .method import GENERATOR_MODEL_FILE, GENERATOR_MODEL_NAME, shipped_file

    return shipped_file(
        GENERATOR_MODEL_NAME, GENERATOR_MODEL_FILE, missing="stylegan2: no weights given",
        fix="pass --weights NAME|PATH (a restorekit StyleGAN2 .safetensors such as `train stylegan2` writes, a "
            "rosinality .pt, or a registered name like stylegan2-ffhq-config-f), or ask for an untrained generator "
            "with random_weights=true (generate/realism: --opt random_weights=true)")


def build_stylegan2(*, resolution: int | None = None, channel_multiplier: int | None = None,
                    style_dim: int | None = None, n_mlp: int | None = None,
                    channel_max: int | None = None, weights: str | os.PathLike[str] | None = None,
                    impl: Literal["auto", "ref", "cuda"] = "auto", allow_unsafe: bool = False,
                    random_weights: bool = False) -> Any:
    """A StyleGAN2 generator loaded from ``weights`` (a rosinality ``.pt`` path or weights name, a
    restorekit StyleGAN2 ``.safetensors`` as ``train stylegan2`` exports it, the decoder of a
    restorekit pSp ``.safetensors`` model, or ``psp_sr:default`` for the decoder of psp_sr's
    embedded model; the architecture is read off the file and any config given must agree with it).
    Without ``weights``: the shipped face prior ``stylegan2-faces128`` (checked against its registry
    entry), else ``WeightsMissing`` naming the fix — never random weights unless asked for with
    ``random_weights=True`` (an untrained generator of the given config: tests, benchmarks; its layers
    come from a fork of torch's CPU RNG seeded with :data:`RANDOM_WEIGHTS_SEED`, the same everywhere).
    ``allow_unsafe`` lets a rosinality training checkpoint (pickled Python objects) be unpickled:
    only for a file you trust. The generator's ``notes`` say which registered weights it holds
    and their license (commands print them). Registered without an options model: the registry
    derives it from these typed parameters."""
    from .stylegan2 import StyleGAN2Generator

    given = {"resolution": resolution, "channel_multiplier": channel_multiplier,
             "style_dim": style_dim, "n_mlp": n_mlp, "channel_max": channel_max}
    if random_weights:
        if weights is not None:
            raise ValueError(f"random_weights=true and weights={str(weights)!r} exclude each other")
        import torch

        with torch.random.fork_rng(devices=[]):
            torch.random.default_generator.manual_seed(RANDOM_WEIGHTS_SEED)
            def pick(value: int | None, default: int) -> int:  # (0 is a value, refused by the generator)
                return default if value is None else value

            g = StyleGAN2Generator(pick(resolution, 1024), pick(style_dim, 512), pick(n_mlp, 8),
                                   pick(channel_multiplier, 2), channel_max=pick(channel_max, 512), impl=impl)
        g.notes = [f"stylegan2: random weights (random_weights=true): an untrained {g.resolution}-px generator"]
        return g
    from .train import load_generator

    name = ""
    if weights is None:
        from .method import GENERATOR_MODEL_NAME

        path, name = _default_generator_file(), GENERATOR_MODEL_NAME
    else:
        model_file = _psp_model_file(weights)
        if model_file is not None:
            path = model_file
        else:
            from restorekit.weights import weights_source

            # A registered name even beside a same-named file (./NAME is the file), else an existing file.
            path, registered = weights_source(weights)
            name = registered or ""
    # restorekit StyleGAN2 / pSp .safetensors (decoder + its latent_avg), or a rosinality .pt.
    extra = {} if path.suffix == ".safetensors" else {"allow_unsafe": allow_unsafe}
    g = load_generator(str(path), impl=impl, **extra)
    have = g.config()
    clash = [f"{k}={v} (file has {have[k]})" for k, v in given.items() if v is not None and v != have[k]]
    if clash:
        raise ValueError(f"stylegan2 weights '{weights or name}' do not match the requested config: "
                         + ", ".join(clash))
    if name:
        from restorekit.weights import get_spec

        default = " (the shipped default; --weights NAME|PATH selects another)" if weights is None else ""
        g.notes.append(f"stylegan2: weights {name}{default}, license {get_spec(name).license}")
    return g


def register_generators(register: Any) -> None:
    register("stylegan2", build_stylegan2,
             summary="StyleGAN2 (config-f and smaller, rosinality layout), 32-1024 px; weights: rosinality .pt, "
                     "restorekit StyleGAN2 or pSp .safetensors; default: the shipped stylegan2-faces128")


def register_commands(cli: Any) -> None:
    import click

    from restorekit.cli import json_output
    from restorekit.devices import DEVICE, DEVICE_HELP
    from restorekit.errors import RestorekitError

    bench = cli.commands.get("bench")
    if bench is None:
        @click.group("bench")
        def bench() -> None:
            """Benchmarks."""

        cli.add_command(bench)

    @click.command("generator")
    @click.option("--resolution", type=click.Choice(["32", "64", "128", "256", "512", "1024"]),
                  default="1024", show_default=True, help="Output side of the synthesis network, px.")
    @click.option("--batch", "--batch-size", "batch", type=click.IntRange(1, 256), default=1, show_default=True,
                  help="Images per synthesis call.")
    @click.option("--device", type=DEVICE, default="cpu", show_default=True,
                  help=f"Where the networks run: {DEVICE_HELP}")
    @click.option("--channel-multiplier", type=click.IntRange(1, 8), default=2, show_default=True,
                  help="StyleGAN2's channel multiplier (2 for config-f).")
    @click.option("--channel-max", type=click.IntRange(1, 512), default=512, show_default=True,
                  help="Cap every layer's width (512 is StyleGAN2; smaller for quick checks).")
    @click.option("--repeats", "--repeat", "repeats", type=click.IntRange(1, 20), default=3, show_default=True,
                  help="Timed rounds (generator, then plain convs); medians with their range.")
    @click.option("--profile", is_flag=True, help="Add the top ops of one profiled synthesis.")
    @click.option("--optimize/--no-optimize", default=True, show_default=True,
                  help="The inference settings psp_sr runs the generator with (or the modules as trained).")
    @click.option("--json", "as_json", is_flag=True, help="Print JSON.")
    @json_output
    def generator_cmd(resolution: str, batch: int, device: str, channel_multiplier: int,
                      channel_max: int, repeats: int, profile: bool, optimize: bool, as_json: bool) -> None:
        """StyleGAN2 synthesis speed vs plain convolutions on the same shapes (random weights)."""
        from restorekit.cli import emit_json, fail_usage

        from .bench_generator import bench_generator, format_report

        try:
            r = bench_generator(int(resolution), batch, device, channel_multiplier,
                                channel_max=channel_max, repeats=repeats, profile=profile, optimize=optimize)
        except (RuntimeError, RestorekitError) as exc:
            fail_usage(str(exc))
            return
        if as_json:
            emit_json(r.as_dict())
        else:
            click.echo(format_report(r))

    bench.add_command(generator_cmd)
    _register_train_commands(cli)


# -- encoder, identity loss, ArcFace embedder (lazy factories) ---------------------------------
def _build_gradual_style(**kwargs: Any) -> Any:
    """pSp's GradualStyleEncoder (``learn_in_w=True``: the single-W backbone encoder)."""
    from .encoder import build_gradual_style_encoder

    return build_gradual_style_encoder(**kwargs)


def _build_arcface_irse50(**kwargs: Any) -> Any:
    """ArcFace IR-SE50 with the ``ir-se50`` weights (or ``weights=PATH``)."""
    from .arcface import build_arcface_irse50

    return build_arcface_irse50(**kwargs)


def register_encoders(register: Any) -> None:
    register("gradual_style", _build_gradual_style,
             summary="pSp feature-pyramid encoder into W+ on an IR-SE backbone (ir_se50, ir_se_light)")


def register_losses(register: Any) -> None:
    from .identity_loss import IdentityLoss

    register(IdentityLoss)


def register_face_embedders(register: Any) -> None:
    register("arcface_irse50", _build_arcface_irse50,
             summary="ArcFace IR-SE50 (pSp's identity network), pSp's FFHQ crop; weights: ir-se50")


# -- the psp_sr method and its trainers -------------------------------------------------------------
def register_methods(register: Any) -> None:
    from .method import PSPSR  # light: torch models are built in PSPSR.load()
    from .psp_pulse import PSPPulse

    register(PSPSR)
    register(PSPPulse)


def _load_psp_trainer() -> Any:
    from .train import PSPTrainer

    return PSPTrainer


def _register_train_commands(cli: Any) -> None:
    """``restorekit train psp_sr`` (needs a core with ``restorekit.commands.train``)."""
    try:
        from restorekit.commands.train import add_trainer
    except ImportError:
        return
    add_trainer(cli, "psp_sr", "Train pSp super-resolution: an encoder into a frozen StyleGAN2's W+.",
                _load_psp_trainer)
    add_trainer(cli, "stylegan2_ae", "Train a StyleGAN2 generator without a GAN, as an autoencoder's decoder.",
                _load_ae_trainer)
    add_trainer(cli, "stylegan2", "Train a StyleGAN2 generator adversarially (DiffAugment, lazy R1, EMA): "
                "the face prior.", _load_gan_trainer)


def _load_ae_trainer() -> Any:
    from .train_ae import AETrainer

    return AETrainer


def _load_gan_trainer() -> Any:
    from .train_gan import GANTrainer

    return GANTrainer
