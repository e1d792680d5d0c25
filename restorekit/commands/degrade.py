"""``restorekit degrade``: make low-quality test inputs from high-quality images."""

from __future__ import annotations

import zlib
from pathlib import Path

import click
import torch

from ..batch import process_files
from ..cli import emit_json, error_line, fail_usage
from ..degradations import crop_to_multiple, parse_spec
from ..errors import RestorekitError
from ..images import DEFAULT_MAX_PIXELS, SAVE_EXTS, ImageItem, check_size, list_inputs


def item_seed(seed: int, stem: str) -> int:
    """A per-image seed that does not depend on the order or number of inputs."""
    return (seed * 1_000_003 + zlib.crc32(stem.encode())) % (2**63)


@click.command("degrade")
@click.option("--spec", required=True, help="e.g. bicubic:8 or blur:1.5+bicubic:4+jpeg:60")
@click.option("--input", "input_spec", required=True, help="File, folder, glob, or @list.txt.")
@click.option("--output", type=click.Path(path_type=Path), required=True, help="Output folder.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed for random steps (noise).")
@click.option("--ext", type=click.Choice(SAVE_EXTS), default="png", show_default=True)
@click.option("--overwrite", is_flag=True, help="Replace outputs that already exist.")
@click.option("--max-pixels", type=click.IntRange(min=1), default=DEFAULT_MAX_PIXELS, show_default=True,
              help="Refuse inputs larger than this many pixels.")
@click.option("--quiet", "-q", is_flag=True)
@click.option("--json", "as_json", is_flag=True, help="Print a JSON summary.")
def degrade_cmd(spec: str, input_spec: str, output: Path, seed: int, ext: str, overwrite: bool,
                max_pixels: int, quiet: bool, as_json: bool) -> None:
    """Degrade images by SPEC. Inputs are first cropped (bottom/right) to a multiple of the
    spec's total scale, so that restoring ×scale gives back the cropped size exactly.

    Under ``torchrun`` the inputs are shared out between the processes as ``run`` shares them;
    each image's randomness depends only on ``--seed`` and its name, so the files are the same."""
    from ..sharding import job_for

    try:
        chain = parse_spec(spec)
        items = list_inputs(input_spec)
    except RestorekitError as exc:
        fail_usage(str(exc))
        return

    def apply(image: torch.Tensor, item: ImageItem) -> list[tuple[str, torch.Tensor]]:
        hr = crop_to_multiple(image, chain.scale)
        if hr.shape[-1] == 0 or hr.shape[-2] == 0:
            raise RestorekitError(f"{item.path}: {image.shape[-1]}×{image.shape[-2]} is smaller than "
                                  f"the spec's scale {chain.scale}")
        g = torch.Generator().manual_seed(item_seed(seed, item.stem))
        lr = chain(hr, generator=g)
        # What degrade makes must be readable as an input later: the same size rule as any image.
        check_size(lr.shape[-1], lr.shape[-2], f"{item.path}: its degraded image", max_pixels=max_pixels)
        return [(item.stem, lr)]

    with job_for("cpu") as job:  # one process, or one rank of a torchrun job
        result = process_files(items, output, apply, ext=ext, overwrite=overwrite, max_pixels=max_pixels,
                               quiet=quiet, label="degrade", on_error=error_line, job=job)
        if as_json and job.is_main:
            emit_json({"spec": chain.spec(), **({"processes": job.world} if job.distributed else {}),
                       **result.as_dict()})
        elif not quiet and job.is_main:
            click.echo(f"{len(result.written)} written, {len(result.skipped)} skipped, "
                       f"{len(result.failed)} failed → {output}", err=True)
        raise SystemExit(result.exit_code)


def attach(cli: click.Group) -> None:
    cli.add_command(degrade_cmd)
