"""``restorekit generate``: sample images from a registered generator, for eyeballing it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click
import torch

from ..cli import emit_json, fail_usage
from ..images import save_image
from ..methods import resolve_device
from ..options import parse_pairs, weights_option
from ..plugins import registry
from ..seeds import MAX_SEEDS, parse_seeds


def _seeds(ctx: click.Context, param: click.Parameter, value: str) -> list[int]:
    return parse_seeds(value)  # 0 … 2**64 − 1 each, at most MAX_SEEDS, checked before the list is built


def generator_weights_options(command: Any) -> Any:
    """``--weights`` and ``--opt``, as every command that builds a generator with
    :func:`build_generator` takes them."""
    command = click.option("--opt", "opts", multiple=True, metavar="KEY=VALUE",
                           help="Generator config (repeatable); random_weights=true asks for an untrained "
                                "generator.")(command)
    return click.option("--weights", default=None,
                        help="Weights name or path for the generator (default: the generator's shipped weights, "
                             "if any).")(command)


def build_generator(name: str, weights: str | None, opts: tuple[str, ...], device: torch.device) -> Any:
    """The registered generator ``name`` from a command's ``--weights`` and ``--opt`` words, in eval
    mode on ``device``; its notes (which weights, their license) go to stderr.

    The factory's options model reads every value (``allow_unsafe=false`` is False, not a truthy
    string); a bad value or argument is a usage error (exit 2).
    """
    factory = registry().get("generators", name)
    label = f"generator '{name}'"
    config: dict[str, object] = dict(parse_pairs(opts))
    if weights is not None:
        key = weights_option(factory.options_model())
        if key is None:
            fail_usage(f"{label} takes no --weights")
        config[str(key)] = weights
    try:
        gen = factory.create(config, label=label).to(device).eval()
    except (TypeError, ValueError) as exc:  # the factory's own check of its arguments
        fail_usage(f"{label}: {exc}")
    for note in getattr(gen, "notes", []):
        click.echo(note, err=True)
    return gen


@click.command("generate")
@click.option("--generator", "name", required=True, help="Registered generator name.")
@generator_weights_options
@click.option("--seeds", "seed_list", default="0-7", show_default=True, callback=_seeds,
              help=f"Seeds, e.g. 0-7,12 (each 0 to 2**64-1; at most {MAX_SEEDS:,}).")
@click.option("--truncation", type=click.FloatRange(0, 1), default=0.7, show_default=True)
@click.option("--output", type=click.Path(path_type=Path), required=True)
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@click.option("--overwrite", is_flag=True, help="Replace images that already exist (else they are skipped).")
@click.option("--json", "as_json", is_flag=True)
def generate_cmd(name: str, weights: str | None, opts: tuple[str, ...], seed_list: list[int], truncation: float,
                 output: Path, device: str, overwrite: bool, as_json: bool) -> None:
    """Write one image per seed from GENERATOR (truncated towards its mean latent).

    Without --weights the generator's factory picks its default (stylegan2: the shipped face prior,
    named on stderr) or fails naming the fix; random weights only with --opt random_weights=true."""
    dev = resolve_device(device)
    gen = build_generator(name, weights, opts, dev)
    written: list[str] = []
    skipped: list[str] = []
    with torch.inference_mode():
        w_avg = gen.mean_latent()
        for seed in seed_list:
            path = output / f"seed{seed:04d}.png"
            if not overwrite and (path.exists() or path.is_symlink()):
                skipped.append(str(path))  # as run: a file already there is not replaced unasked
                continue
            z = torch.randn(1, gen.z_dim, generator=torch.Generator().manual_seed(seed)).to(dev)
            w = w_avg + truncation * (gen.map(z) - w_avg)
            img = gen.synthesize(w.unsqueeze(1).repeat(1, gen.n_styles, 1)).clamp(0, 1)
            written.append(str(save_image(img.cpu(), path)))
    if as_json:
        emit_json({"generator": name, "truncation": truncation, "written": written, "skipped": skipped})
    else:
        extra = f", {len(skipped)} skipped (exist; --overwrite replaces them)" if skipped else ""
        click.echo(f"{len(written)} images{extra} → {output}", err=True)


def attach(cli: click.Group) -> None:
    cli.add_command(generate_cmd)
