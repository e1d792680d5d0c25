"""``restorekit degrade``: make low-quality test inputs from high-quality images."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import click
import torch

from ..batch import check_output_folder, output_held, process_files, require_inputs
from ..cli import emit_json, error_line, fail_usage, json_output, warn
from ..degradations import Chain, parse_spec
from ..errors import RestorekitError
from ..harness.inputs import degrade_hr
from ..images import DEFAULT_MAX_PIXELS, SAVE_EXTS, ImageItem, list_inputs
from ..provenance import cut_short, read_note
from ..run_record import changed_among_each, degrade_settings, differences, reading_notes, refusal, unrecorded_warning
from ..seeds import SEED

#: The key of a degrade record naming the spec's steps from plugins (distribution, version, code).
PLUGIN_STEPS = "degradation_plugins"


def plugin_step_differences(note: Mapping[str, Any], now: Mapping[str, Any]) -> list[str]:
    """What differs, in words, between the code of the steps from plugins an output's record
    ``note`` names and ``now``'s (its :data:`PLUGIN_STEPS`); none when either names none. The spec
    and seed are compared by :func:`~restorekit.run_record.differences`; an output recorded
    without the key (before it was recorded, or of a spec of built-in steps) is left to that."""
    steps = now.get(PLUGIN_STEPS)
    old = note.get(PLUGIN_STEPS) if note.get("spec") == now.get("spec") else None
    if not isinstance(steps, dict) or not isinstance(old, dict):
        return []
    return [f"the code of degradation step '{name}' changed (its plugin upgraded or edited)"
            if isinstance(old.get(name), dict) and {**old[name], "code": None} == {**info, "code": None}
            else f"degradation step '{name}': {_made_by(old.get(name))} → {_made_by(info)}"
            for name, info in steps.items() if old.get(name) != info]


def _made_by(info: Any) -> str:
    """A plugin step's record in words: ``distribution version``."""
    return f"{info.get('distribution', '?')} {info.get('version', '?')}" if isinstance(info, dict) else "—"


def _merged(*found: tuple[list[Path], list[str]] | None) -> tuple[list[Path], list[str]] | None:
    """Several :func:`~restorekit.run_record.changed_among`-shaped findings as one (each output and
    difference once)."""
    paths = list(dict.fromkeys(p for f in found if f for p in f[0]))
    diffs = list(dict.fromkeys(d for f in found if f for d in f[1]))
    return (paths, diffs) if paths else None


def _made_otherwise(made_from: Mapping[Path, str], settings: Mapping[str, Any],
                    read: Callable[[Path], Any]) -> tuple[list[Path], list[str]] | None:
    """The files among ``made_from`` (each with the name of the input this run makes its LR from)
    whose record (``read``) differs from this run's ``settings`` — spec, seed, input, plugin steps —
    and how; None when none does. Each record is read once."""
    def record(path: Path) -> dict[str, Any] | None:  # (the note, with what this run would make it from)
        note = read(path)
        if isinstance(note, dict) and "seed" not in settings:
            # A spec that draws nothing makes the same LR at any seed; earlier versions recorded one for
            # chains over ×32 they did not probe, which must not read as a change now.
            note = {k: v for k, v in note.items() if k != "seed"}
        return {"note": note, "input": made_from[path]} if isinstance(note, dict) else None

    return _merged(*changed_among_each(list(made_from), record, [
        lambda r: differences(r["note"], {**settings, "input": r["input"]}),
        lambda r: plugin_step_differences(r["note"], settings)]))


def other_formats(output: Path, items: Iterable[ImageItem], ext: str) -> dict[Path, str]:
    """Where each input's LR would be in degrade's other formats (``a.png`` and ``a.jpg`` beside
    this run's ``a.webp``), with the input's name: ``compare --lr-dir`` takes one LR file of a
    stem per image, so an earlier run's output there is no more this run's to mix in than ``a.webp``."""
    return {output / f"{item.stem}.{other}": item.path.name for item in items for other in SAVE_EXTS if other != ext}


def _identity(path: Path) -> tuple[int, int] | None:
    """A file's device and inode (links followed); None where it cannot be examined."""
    try:
        st = os.stat(path)
    except (OSError, ValueError):
        return None
    return st.st_dev, st.st_ino


def other_format_refusal(output: Path, ext: str, changed: tuple[list[Path], list[str]]) -> str:
    """The one-line refusal of a run whose outputs would sit beside LR files of the same stems in
    another format made with other settings (:func:`other_formats`)."""
    paths, diffs = changed
    names = ", ".join(p.name for p in paths[:3]) + (", …" if len(paths) > 3 else "")
    many = len(paths) > 1
    return (f"{output}: {len(paths)} LR file{'s' if many else ''} of the same stem{'s' if many else ''} in another "
            f"format ({names}) {'were' if many else 'was'} made with other settings ({'; '.join(diffs)}); this run's "
            f".{ext} files beside {'them' if many else 'it'} would mix both in one folder, where compare --lr-dir "
            f"takes one LR file per image: use another --output, or remove {'them' if many else 'it'} "
            f"(--overwrite replaces only .{ext} files)")


@click.command("degrade")
@click.option("--spec", required=True, help="e.g. bicubic:8 or blur:1.5+bicubic:4+jpeg:60")
@click.option("--input", "input_spec", required=True, help="File, folder, glob, or @list.txt.")
@click.option("--output", "--out", "output", type=click.Path(path_type=Path), required=True, help="Output folder.")
@click.option("--seed", type=SEED, default=0, show_default=True,
              help="Seed for random steps (noise; 0 to 2**64-1).")
@click.option("--ext", type=click.Choice(SAVE_EXTS), default="png", show_default=True,
              help="Output file format (webp: lossless; jpg: re-encoded at quality 95, artefacts the spec does "
                   "not name).")
@click.option("--overwrite", is_flag=True, help="Replace outputs that already exist.")
@click.option("--max-pixels", type=click.IntRange(min=1), default=DEFAULT_MAX_PIXELS, show_default=True,
              help="Refuse inputs larger than this many pixels.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar or notes.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON summary.")
@json_output
def degrade_cmd(spec: str, input_spec: str, output: Path, seed: int, ext: str, overwrite: bool,
                max_pixels: int, quiet: bool, as_json: bool) -> None:
    """Degrade images by SPEC. Inputs are first cropped (bottom/right) to a multiple of the
    spec's total scale, so that restoring ×scale gives back the cropped size exactly.

    Under `torchrun` the inputs are shared out between the processes as `run` shares them;
    each image's randomness depends only on --seed and its pixels (not its name or the other
    inputs), so the files are the same."""
    from ..sharding import job_for

    # --json: stdout is the document alone; what the spec's plugin steps print goes to stderr.
    try:
        chain = parse_spec(spec)
        items = require_inputs(list_inputs(input_spec), input_spec)
        check_output_folder(input_spec, output, ext)
    except RestorekitError as exc:
        fail_usage(str(exc))
        return
    settings = degrade_settings(chain, seed=seed)
    steps = _plugin_steps(chain)
    if steps:  # what the spec's steps from plugins are: their outputs change with their code
        settings[PLUGIN_STEPS] = steps

    def check_settings() -> None:
        if not overwrite:  # outputs made with another spec, seed or plugin step are not this run's to skip
            unrecorded: list[Path] = []
            changed = _made_otherwise({output / f"{item.stem}.{ext}": item.path.name for item in items}, settings,
                                      reading_notes(unrecorded))
            if changed:
                fail_usage(refusal(output, changed))
            unrecorded[:] = [p for p in unrecorded if cut_short(p) is None]  # (those cut short are made again)
            if unrecorded and not quiet and job.is_main:
                warn(unrecorded_warning(output, unrecorded))
        # Another format's LR of the same stem made otherwise: --overwrite would not replace it. A file
        # without a record is not compared (another program's; an input listed from --output), nor an input.
        others = other_formats(output, items, ext)
        notes = {path: note for path in others if isinstance(note := read_note(path), dict)}
        if notes:  # (the inputs examined only then: most runs have no such file)
            inputs = {_identity(item.path) for item in items} - {None}
            notes = {path: note for path, note in notes.items() if _identity(path) not in inputs}
        changed = _made_otherwise({path: others[path] for path in notes}, settings, notes.get)
        if changed:
            fail_usage(other_format_refusal(output, ext, changed))

    def apply(image: torch.Tensor, item: ImageItem) -> list[tuple[str, torch.Tensor]]:
        # compare's LR rule (crop, per-image seed, size checks), with --seed mixed into the seed.
        _, lr = degrade_hr(image, chain, chain.scale, where=item.path, max_pixels=max_pixels, seed=seed)
        return [(item.stem, lr)]

    with job_for("cpu") as job, output_held(output, "degrade", job):  # this run alone writes into --output
        job.together(check_settings)  # under the lock: another run's outputs are not this one's to skip
        if ext == "jpg" and job.is_main:  # the LR the spec made is not the file written: said under -q too, once
            warn("--ext jpg re-encodes each LR at JPEG quality 95 after the spec: artefacts the spec does not name "
                 "(png or webp are lossless)")
        result = process_files(items, output, apply, ext=ext, overwrite=overwrite, max_pixels=max_pixels,
                               quiet=quiet, label="degrade", on_error=error_line, job=job,
                               note=lambda item, name: {**settings, "input": item.path.name}, lossless=True)
        main, processes = job.is_main, (job.world if job.distributed else None)
    if as_json and main:
        emit_json({"spec": chain.spec(), **({"processes": processes} if processes else {}), **result.as_dict()})
    elif not quiet and main:
        click.echo(f"{len(result.written)} written, {result.skipped_text()}, "
                   f"{len(result.failed)} failed → {output}", err=True)
    raise SystemExit(result.exit_code)


def _plugin_steps(chain: Chain) -> dict[str, dict[str, str]]:
    """compare's record of the chain's steps from plugins (:func:`~restorekit.harness.runner.degradation_plugins`)."""
    from ..harness.runner import degradation_plugins
    from ..plugins import registry

    return degradation_plugins(chain, registry())


def attach(cli: click.Group) -> None:
    cli.add_command(degrade_cmd)
