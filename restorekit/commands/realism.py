"""``restorekit realism``: Fréchet distances in offline feature spaces + face-detection share.

Not FID (Inception weights are not available offline); every output says so.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import click

from ..cli import emit_json, error_line, fail_usage, json_output, table
from ..devices import DEVICE, DEVICE_HELP
from ..errors import RestorekitError, UnknownNameError
from ..methods import resolve_device
from ..options import FiniteFloatRange, parse_pairs
from ..seeds import SEED, torch_seed
from .generate import build_generator, check_generator, generator_weights_options


def _space_weights(pairs: tuple[str, ...]) -> dict[str, str]:
    from ..harness.realism import canonical_space
    from ..options import parse_pairs

    return {canonical_space(key): value for key, value in parse_pairs(pairs, flag="--space-weights").items()}


def _count_images(flag: str, spec: str, what: str) -> list[str]:
    """The image files of ``spec`` (as strings), refusing (usage error, naming ``flag``) a spec that
    lists none or fewer than the 2 a Fréchet distance needs."""
    from ..images import list_inputs

    try:
        paths = [str(item.path) for item in list_inputs(spec)]
    except RestorekitError as exc:
        fail_usage(f"{flag} {exc}")
    if len(paths) < 2:
        fail_usage(f"{flag} {spec}: {what} needs at least 2 images, got {len(paths)}")
    return paths


def _failures(lines: tuple[str, ...], paths: list[str]) -> list[dict[str, str]]:
    """``[{"path", "error"}]`` of the files left out, from their one-line errors (each begins with
    its path; the longest listed input that begins the line is it)."""
    out = []
    for line in lines:
        path = max((p for p in paths if line.startswith(f"{p}: ")), key=len, default=None)
        out.append({"path": path if path is not None else line.split(": ", 1)[0], "error": line})
    return out


#: Ceilings of --n and --detect-n: each count's noise is drawn in one piece (z_dim floats a
#: sample), so a count beyond memory failed only after the reference statistics were done.
MAX_SAMPLES = 200_000
MAX_DETECT_SAMPLES = 10_000


@click.command("realism")
@click.option("--generator", "gen_name", default=None, help="Registered generator to sample (or --images).")
@generator_weights_options
@click.option("--images", default=None, help="Score these images instead of a generator (folder, glob, @list.txt).")
@click.option("--data", required=True, help="Reference images: folder, glob or @list.txt.")
@click.option("--n", "n_samples", type=click.IntRange(2, MAX_SAMPLES), default=1000, show_default=True,
              help="Generator samples for the Fréchet distances (their noise is drawn at once).")
@click.option("--truncation", type=FiniteFloatRange(0, 1), default=1.0, show_default=True,
              help="Truncation of the samples for the Fréchet distances (1: none).")
@click.option("--seed", type=SEED, default=0, show_default=True, help="Seed of the samples (0 to 2**64-1).")
@click.option("--spaces", default="alex,dlib", show_default=True,
              help="Feature spaces: alex (alex_conv5), dlib (dlib128), vgg (vgg_conv5).")
@click.option("--space-weights", "space_weights", multiple=True, metavar="SPACE=FILE",
              help="Weights file for a space instead of the cache (e.g. alex=lpips-alex.safetensors).")
@click.option("--detector", default="mtcnn", show_default=True,
              help="Face detector for the face share (a registered one; 'none' to skip). With --images it "
                   "runs on every image.")
@click.option("--detect-n", type=click.IntRange(1, MAX_DETECT_SAMPLES), default=32, show_default=True,
              help="Samples searched for a face.")
@click.option("--detect-truncation", type=FiniteFloatRange(0, 1), default=0.7, show_default=True,
              help="Truncation of the samples searched for a face.")
@click.option("--batch-size", "--batch", "batch_size", type=click.IntRange(1), default=32, show_default=True,
              help="Images per forward pass of the feature networks (and the generator).")
@click.option("--device", type=DEVICE, default="auto", show_default=True,
              help=DEVICE_HELP)
@click.option("--cache", default=None, help="Folder for cached reference statistics ('none': no cache; "
                                            "default: <restorekit cache>/realism).")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar or notes.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON (unreadable images under failed).")
@json_output
def realism_cmd(gen_name: str | None, weights: str | None, opts: tuple[str, ...], images: str | None, data: str,
                n_samples: int, truncation: float, seed: int, spaces: str, space_weights: tuple[str, ...],
                detector: str, detect_n: int, detect_truncation: float, batch_size: int, device: str,
                cache: str | None, quiet: bool, as_json: bool) -> None:
    """Fréchet distances between generated samples (or --images) and reference images in offline
    networks' feature spaces, and the share of samples with a detectable face. NOT FID."""
    from ..harness import realism as R
    from ..plugins import registry

    if (gen_name is None) == (images is None):
        fail_usage("give exactly one of --generator NAME and --images SPEC")
    if images is not None:
        ctx = click.get_current_context()
        flags = {"weights": "--weights", "opts": "--opt", "n_samples": "--n", "truncation": "--truncation",
                 "seed": "--seed", "detect_n": "--detect-n", "detect_truncation": "--detect-truncation"}
        given = [flag for name, flag in flags.items()
                 if ctx.get_parameter_source(name) == click.core.ParameterSource.COMMANDLINE]
        if given:
            fail_usage(f"{', '.join(given)} apply to --generator sampling, not to --images")
    if gen_name is not None:
        check_generator(gen_name)
    listed = _count_images("--data", data, "the reference set")
    if images is not None:
        listed += _count_images("--images", images, "the image set")
    names = [s for s in (p.strip() for p in spaces.split(",")) if s]
    if not names:
        fail_usage("--spaces: no feature space given")
    try:
        keys = [R.canonical_space(s) for s in names]
    except UnknownNameError as exc:  # a usage error, as an unknown generator or detector
        fail_usage(f"--spaces: {exc}")
    if len(set(keys)) != len(keys):
        fail_usage(f"--spaces lists a space twice: {spaces}")
    extra = _space_weights(space_weights)
    unused = sorted(set(extra) - set(keys))
    if unused:
        fail_usage(f"--space-weights for {', '.join(unused)}, which --spaces does not list")
    # Names first, then what loads weights: a mistyped detector is said before a missing space file.
    det = None if detector.lower() == "none" else detector
    if det is not None:
        from ..faces.detectors import check_available

        try:
            registry().get("face_detectors", det)
        except UnknownNameError as exc:  # a usage error with a suggestion, as run's and compare's
            fail_usage(str(exc))
        check_available(det)
    dev = resolve_device(device)
    cache_dir = None if (cache or "").lower() == "none" else Path(cache) if cache else R.default_cache_dir()
    built = [R.build_space(k, weights=extra.get(k), device=dev) for k in keys]

    if gen_name is not None:
        import torch

        # (a plugin's generator built with random weights from the global RNG is then the same on
        # every run; the shipped stylegan2 seeds its own)
        torch.manual_seed(torch_seed(seed))  # (its CPU generator keeps 32 bits: seeds.torch_seed)
        gen = build_generator(gen_name, weights, opts, dev, quiet=quiet)
        label = f"{gen_name}" + (f" ({weights})" if weights else "")
        # Which generator: two runs of one name with other weights or options read alike otherwise.
        provenance = R.generator_provenance(gen_name, gen, weights=weights, options=parse_pairs(opts))
        report = R.evaluate_generator(gen, data, n_samples=n_samples, truncation=truncation, seed=seed,
                                      spaces=built, batch_size=batch_size, device=dev, detector=det,
                                      detect_n=detect_n, detect_truncation=detect_truncation,
                                      cache_dir=cache_dir, label=label, provenance=provenance)
    else:
        assert images is not None
        report = R.evaluate_images(images, data, spaces=built, batch_size=batch_size, device=dev,
                                   detector=det, cache_dir=cache_dir)

    for line in report.skipped:  # one line each, then the figures of the others, and exit 1
        error_line(f"{line} (left out)")
    if as_json:
        # failed: [{path, error}], as run's and degrade's; skipped (the bare lines) stays for one
        # release, for scripts that read it (deprecated).
        emit_json({**report.as_dict(), "failed": _failures(report.skipped, listed)})
        if report.skipped:
            click.get_current_context().exit(1)
        return
    rows = [[f.metric, f"{f.distance:.4g}", str(f.n_samples), str(f.n_reference)] for f in report.figures]
    where = (f"truncation {report.truncation}, seed {report.seed}" if report.truncation is not None
             else "image set")
    table(f"realism of {report.source} vs {report.reference} ({where}) — NOT FID",
          ["Fréchet distance (lower is better)", "value", "samples", "reference"], rows)
    if report.generator is not None:
        click.echo(generator_line(report.generator))
    for f in report.figures:
        click.echo(f"{f.space}: {f.summary}")
    if report.faces is not None:
        faces = report.faces
        share = "n/a" if math.isnan(faces.share) else f"{100 * faces.share:.0f}%"
        at = f" at truncation {faces.truncation}" if faces.truncation is not None else ""
        click.echo(f"faces found by {faces.detector}: {faces.found}/{faces.n} ({share}){at}")
    if not quiet:
        click.echo(f"note: {report.note}", err=True)
    if report.skipped:
        click.echo(f"{len(report.skipped)} image file(s) could not be read and were left out", err=True)
        click.get_current_context().exit(1)


def generator_line(g: Mapping[str, Any]) -> str:
    """The report's generator in one line: name, weights (and which, from its notes), state sha256, the
    truncation centre's sha256 (when it has one: the state leaves it out), options."""
    which = [n.split(": ", 1)[-1] for n in g.get("notes") or [] if "weights" in n]  # "weights NAME …, license …"
    weights = (f"weights {g['weights']}" if g.get("weights") else which[0] if which else "its default weights")
    opts = ", ".join(f"{k}={v}" for k, v in (g.get("options") or {}).items()) or "none"
    centre = f"; latent_avg sha256 {g['latent_avg_sha256']}" if g.get("latent_avg_sha256") else ""
    return (f"generator: {g['name']}, {weights}; state sha256 {g.get('weights_state_sha256') or 'n/a'}{centre}; "
            f"--opt {opts}")


def attach(cli: click.Group) -> None:
    cli.add_command(realism_cmd)
