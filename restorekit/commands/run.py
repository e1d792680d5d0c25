"""``restorekit run``: restore every image of an input spec with one method."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, TypedDict

import click
import torch

from ..batch import check_inputs, check_output_folder, output_held, process_files, require_inputs
from ..cli import UsageProblem, emit_json, error_line, fail_usage, json_output, warn
from ..devices import DEVICE, DEVICE_HELP
from ..errors import RestorekitError, describe_os_error, exception_line
from ..faces.align import PASTE_MASKS
from ..images import (DEFAULT_MAX_OUTPUT_PIXELS, DEFAULT_MAX_PIXELS, SAVE_EXTS, ImageItem, list_inputs,
                      side_by_side)
from ..methods import (OptionError, build_method, check_output_size_contract, check_restored, keep_black_and_white,
                       method_class, method_values, validate_options)
from ..options import FiniteFloatRange
from ..plugins import kept_global_state, method_plugin
from ..provenance import cut_short
from ..run_record import changed_outputs, reading_notes, refusal, run_settings, unrecorded_warning
from ..seeds import MAX_SEEDS, SEED

if TYPE_CHECKING:
    from ..faces.reruns import DetectPlan


class _Limits(TypedDict):
    """The size limits :func:`~restorekit.batch.check_inputs` and :func:`~restorekit.batch.process_files`
    both take, by keyword."""

    max_pixels: int
    out_scale: int
    n_outputs: int
    max_output_pixels: int | None
    couple: bool  # (a --couple file is twice as wide: WebP and JPEG cap a side)


#: Most ``--n-samples``: each is a file to name and check before any work (2 000 000 took 80 s and
#: 2 GB to be refused over the output limit; 10**11 ran out of memory), as ``generate``'s seeds.
MAX_SAMPLES = MAX_SEEDS


def positive_int(ctx: click.Context, param: click.Parameter, value: int | None) -> int | None:
    if value is not None and value < 1:
        raise click.BadParameter(f"must be a positive integer, got {value}")
    return value


def default_scale(method: str) -> int:
    """The ``--scale`` of a ``run`` that gives none: the method's only scale (``scales=(1,)``: a ×1
    denoiser); a method of several scales, or of any, needs it (usage error naming its scales)."""
    try:
        scales = method_class(method).info.scales
    except RestorekitError as exc:  # an unknown method: one line with a did-you-mean
        raise UsageProblem(str(exc)) from None
    if scales is not None and len(scales) == 1:
        return int(scales[0])
    which = "any scale" if scales is None else "--scale " + ", ".join(str(s) for s in scales)
    raise UsageProblem(f"Missing option '--scale': {method} supports {which} (output size = scale × input size)")


@click.command("run")
@click.argument("method")
@click.option("--scale", type=int, default=None, callback=positive_int,
              help="Output size = scale × input size. Required, unless METHOD declares a single scale (a ×1 "
                   "denoiser): that one is the default.")
@click.option("--input", "input_spec", required=True, help="File, folder, glob, or @list.txt.")
@click.option("--output", "--out", "output", type=click.Path(path_type=Path), required=True, help="Output folder.")
@click.option("--device", type=DEVICE, default="auto", show_default=True,
              help=DEVICE_HELP)
@click.option("--seed", type=SEED, default=None, help="Seed for stochastic methods (0 to 2**64-1).")
@click.option("--n-samples", type=click.IntRange(1, MAX_SAMPLES), default=1, show_default=True,
              help=f"Outputs per input (stochastic methods), at most {MAX_SAMPLES:,}.")
@click.option("--opt", "opts", multiple=True, metavar="KEY=VALUE", help="Method option (repeatable).")
@click.option("--weights", default=None, help="Weights name or path (methods with a `weights` option).")
@click.option("--ext", type=click.Choice(SAVE_EXTS), default="png", show_default=True, help="Output file format (jpg and webp: lossy, quality 95).")
@click.option("--overwrite", is_flag=True, help="Replace outputs that already exist.")
@click.option("--couple", is_flag=True, help="Write input | output side by side.")
@click.option("--max-pixels", type=click.IntRange(min=1), default=DEFAULT_MAX_PIXELS, show_default=True,
              help="Refuse inputs larger than this many pixels.")
@click.option("--max-output-pixels", type=click.IntRange(min=1), default=DEFAULT_MAX_OUTPUT_PIXELS,
              show_default=True, help="Refuse inputs whose output (× --n-samples) would be larger than this "
                                      "many pixels, before any work (the restored image: a --couple file, input "
                                      "beside it, is twice as wide).")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar or notes.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON summary.")
@click.option("--faces", "faces_mode", type=click.Choice(["aligned", "detect"]), default="aligned", show_default=True,
              help="aligned: each input is an aligned face crop; detect: find, align, restore and paste back "
                   "every face of whole photos (writes a <stem>.<ext>.json sidecar).")
@click.option("--detector", default=None, help="--faces detect: face detector (default: mtcnn).")
@click.option("--background", default=None, help="--faces detect: method upscaling the photo around the faces "
                                                  "(default: bicubic).")
@click.option("--only-faces", is_flag=True, help="--faces detect: write the restored crops <stem>_face<i>.")
@click.option("--min-face", type=FiniteFloatRange(min=0), default=None,
              help="--faces detect: skip faces whose box is smaller than PX input pixels (default: 20).")
@click.option("--require-face", is_flag=True, help="--faces detect: a photo without a face fails (exit 1).")
@click.option("--max-shrink", type=FiniteFloatRange(min=1), default=None,
              help="--faces detect: skip faces whose crop the method would shrink more than this (default: 3).")
@click.option("--colour-match", is_flag=True,
              help="--faces detect: correct a restored face's colours toward the photo's around it (off by "
                   "default: measured on psp_sr, it cast the background's colour onto the skin).")
@click.option("--paste-mask", type=click.Choice(PASTE_MASKS), default=None,
              help="--faces detect: the region of each restored crop blended into the photo: face (an ellipse "
                   "around face and hair: the crop's corners stay the background method's; the default) or square "
                   "(the whole aligned crop, with the background the method re-drew).")
@click.option("--backend", type=click.Choice(["torch", "onnxruntime"]), default="torch", show_default=True,
              help="Run the network in PyTorch or in onnxruntime (exported on first use into the cache, or --onnx).")
@click.option("--onnx", "onnx_path", type=click.Path(path_type=Path, dir_okay=False), default=None,
              help="--backend onnxruntime: an exported graph (`restorekit export`, with its .json sidecar "
                   "beside it) instead of the cached export.")
@json_output
def run_cmd(method: str, scale: int | None, input_spec: str, output: Path, device: str, seed: int | None,
            n_samples: int, opts: tuple[str, ...], weights: str | None, ext: str, overwrite: bool,
            couple: bool, max_pixels: int, max_output_pixels: int, quiet: bool, as_json: bool, faces_mode: str,
            detector: str | None,
            background: str | None, only_faces: bool, min_face: float | None, require_face: bool,
            max_shrink: float | None, colour_match: bool, paste_mask: str | None, backend: str,
            onnx_path: Path | None) -> None:
    """Restore images with METHOD at --scale.

    Under torchrun (torchrun --nproc_per_node N -m restorekit run ...) every process restores
    its share of the inputs on its own device; rank 0 shows the progress of all and prints one
    summary.
    """
    from ..sharding import job_for

    if faces_mode == "aligned":
        used = [f for f, v in (("--detector", detector), ("--background", background), ("--only-faces", only_faces),
                               ("--min-face", min_face), ("--require-face", require_face), ("--max-shrink", max_shrink),
                               ("--colour-match", colour_match), ("--paste-mask", paste_mask))
                if v is not None and v is not False]
        if used:
            fail_usage(f"{', '.join(used)} only apply with --faces detect")
    elif only_faces and couple:  # a crop has no input of its own to stand beside: refused, not dropped
        fail_usage("--couple pairs a photo with its restoration; with --only-faces there is no photo to pair "
                   "each restored face with: drop one of them")
    if onnx_path is not None and backend != "onnxruntime":
        fail_usage("--onnx only applies with --backend onnxruntime")
    if scale is None:
        scale = default_scale(method)

    def prepare() -> tuple[dict[str, Any], list[ImageItem], dict[str, Any], DetectPlan | None]:
        try:
            cls = method_class(method)
            values = method_values(cls, opts, weights)
            if quiet and "quiet" in cls.Options.model_fields and "quiet" not in values:
                values["quiet"] = True  # -q: the method's own notes and progress too (pulse's)
            probe = cls(validate_options(cls, values))
            try:
                probe.check_scale(scale)
            except ValueError as exc:
                raise UsageProblem(str(exc)) from None
            check_output_size_contract(probe)
            if backend == "onnxruntime":  # before any work: a graph to run, one sample per image
                from ..onnx_export import check_exportable

                check_exportable(cls)
                if n_samples > 1 and not cls.info.deterministic:
                    raise UsageProblem(f"{method}: --n-samples {n_samples} needs the torch backend (an exported "
                                       "graph draws no samples)")
            if n_samples > 1 and cls.info.deterministic and job.is_main:
                warn(f"{method} is deterministic: its {n_samples} samples will be identical")
            items = list_inputs(input_spec)
            check_output_folder(input_spec, output, ext)
            settings = run_settings(cls, probe.options, scale=scale, seed=seed, n_samples=n_samples, couple=couple,
                                    backend=backend)
            plan = None
            if faces_mode == "detect":  # what decides its outputs, before the method is built
                from ..faces.pipeline import detect_plan

                plan = detect_plan(cls, probe.options, settings, output, scale=scale, detector=detector,
                                   background=background, min_face=min_face, max_shrink=max_shrink,
                                   colour_match=colour_match, only_faces=only_faces, n_samples=n_samples, ext=ext,
                                   paste_mask=paste_mask)
        except (OptionError, RestorekitError) as exc:
            raise UsageProblem(str(exc)) from None
        require_inputs(items, input_spec)
        return values, items, settings, plan

    def check_settings() -> None:
        """Refuse outputs made with other settings (under the folder's lock: another run writing
        there meanwhile would have been counted as this one's skipped outputs)."""
        if overwrite:
            return
        if plan is not None:  # --faces detect: the outputs' records and the photos' sidecars
            problem = plan.refusal(items)
            if problem:
                raise UsageProblem(problem)
            return
        unrecorded: list[Path] = []
        made_from = {output / f"{stem}.{ext}": {"input": item.path.name} for item in items for stem in stems(item)}
        changed = changed_outputs(made_from, settings, ignore_options=method_class(method).Options.result_neutral,
                                  read=reading_notes(unrecorded), inputs=made_from)
        if changed:
            raise UsageProblem(refusal(output, changed))
        unrecorded = [p for p in unrecorded if cut_short(p) is None]  # (those cut short are made again, not kept)
        if unrecorded and not quiet and job.is_main:
            warn(unrecorded_warning(output, unrecorded))

    def stems(item: ImageItem) -> list[str]:
        return [item.stem] if n_samples == 1 else [f"{item.stem}_s{i}" for i in range(n_samples)]

    # The global torch state its load() changes is put back (with a warning): the rest of the run
    # (face detection, saving) computes as without it.
    loading = f"method '{method}' (plugin '{method_plugin(method)}')"

    with job_for(device) as job:  # one process, or one rank of a torchrun job
        values, items, settings, plan = job.together(prepare)
        with output_held(output, "run", job):  # this run alone writes into --output, to its end
            job.together(check_settings)
            limits: _Limits = {"max_pixels": max_pixels, "out_scale": scale, "n_outputs": n_samples,
                               "max_output_pixels": max_output_pixels, "couple": couple}
            # Inputs whose outputs all exist whole are skipped (photos: finished ones): only the others'
            # headers are read here (a rerun of a finished folder reads none, and builds no method).
            pending = [it for it in job.part(items) if overwrite or not (
                plan.done(it) and not any(map(cut_short, plan.outputs(it))) if plan is not None
                else all(_finished(output / f"{stem}.{ext}") for stem in stems(it)))]
            # Is any of them usable? Checked up to the first one that is: process_files checks each
            # input's header itself, so reading every header here too read each file twice.
            usable = any(check_inputs([it], ext=ext, **limits)[0] for it in pending)
            if not any(job.gather(usable)):
                # nothing to do, or nothing can succeed: say why without building the method
                done: dict[str, Any] = {"expected": stems} if plan is None else \
                    {"expected": plan.expected, "finished": plan.finished}
                result = process_files(items, output, lambda image, item: [], ext=ext, overwrite=overwrite,
                                       quiet=quiet, label=method, on_error=error_line, job=job, **done, **limits)
                if plan is not None:
                    from ..faces.pipeline import end_of_run

                    end_of_run(plan, result, device=None, backend=backend, as_json=as_json, quiet=quiet)
                if as_json and job.is_main:
                    emit_json({"method": method, "scale": scale, "device": None,  # no method was built
                               "backend": backend, **result.as_dict()})
                elif not quiet and job.is_main:
                    click.echo(f"0 written, {result.skipped_text()}, {len(result.failed)} failed → {output}",
                               err=True)
                raise SystemExit(result.exit_code)

            def built() -> Any:
                try:
                    return build_method(method, values, job.device_for(device))
                except RestorekitError:
                    raise
                except OSError as exc:  # a file that went (weights removed by `weights rm` as it loaded): named
                    raise RestorekitError(f"could not load {method}: {describe_os_error(exc, action='read')}") from exc
                except Exception as exc:  # a plugin's own failure (a module it lacks, a bug): named, not ours
                    raise RestorekitError(f"could not load {method} (plugin '{method_plugin(method)}'): "
                                          f"{exception_line(exc)}") from exc

            m = job.together(built)
            devices = job.gather(str(m.device))
            if backend == "onnxruntime":
                from ..onnx_backend import onnx_method

                with kept_global_state(loading, "while it loaded"):
                    try:
                        m = onnx_method(m, onnx_path=onnx_path, log=None if quiet or not job.is_main
                                        else (lambda msg: click.echo(msg, err=True)))
                    except OptionError as exc:  # the method's own check of its options for export (as `export`)
                        fail_usage(str(exc))
            if not quiet and job.is_main:
                for note in getattr(m, "notes", []):
                    click.echo(note, err=True)

            if plan is not None:
                from ..faces.pipeline import run_detect

                run_detect(m, plan, items, require_face=require_face, seed=seed, overwrite=overwrite, couple=couple,
                           max_pixels=max_pixels, quiet=quiet, as_json=as_json,
                           max_output_pixels=max_output_pixels, backend=backend)

            def restore(image: torch.Tensor, item: ImageItem) -> list[tuple[str, torch.Tensor]]:
                # no_grad, not inference_mode: optimisation-based methods (PULSE) enable grad inside restore.
                try:
                    with torch.no_grad():
                        out = m.restore(image.to(m.device), scale, seed=seed, n_samples=n_samples)
                except RestorekitError:
                    raise
                except (ValueError, RuntimeError, OSError) as exc:  # the method's refusal: one line naming it
                    raise RestorekitError(f"{method}: {exception_line(exc)}") from exc
                out = keep_black_and_white(m, image.cpu(), check_restored(method, out, image, scale, n_samples).cpu(),
                                           n_samples)
                outs = [out[i:i + 1] for i in range(out.shape[0])]
                if couple:
                    outs = [side_by_side(image, o) for o in outs]
                return list(zip(stems(item), outs))

            result = process_files(items, output, restore, ext=ext, overwrite=overwrite,
                                   quiet=quiet, label=method, on_error=error_line, expected=stems,
                                   report=lambda item: list(m.last_reports), job=job,
                                   note=lambda item, name: {**settings, "input": item.path.name}, **limits)
            if as_json and job.is_main:
                emit_json({"method": method, "scale": scale, "device": job.describe_devices(devices),
                           "backend": backend, **({"processes": job.world} if job.distributed else {}),
                           **result.as_dict()})
            elif not quiet and job.is_main:
                click.echo(f"{len(result.written)} written, {len(result.skipped)} skipped (exist; --overwrite "
                           f"replaces), {len(result.failed)} failed → {output}", err=True)
            raise SystemExit(result.exit_code)


def _finished(path: Path) -> bool:
    """Whether an output is at ``path``, whole: not cut short (:func:`~restorekit.provenance.cut_short`;
    :func:`process_files` makes such a one again, saying so). False where asking fails (a name too
    long for the file system: the input is left to :func:`process_files`, which fails it alone)."""
    try:
        return path.exists() and cut_short(path) is None
    except (OSError, ValueError):
        return False


def attach(cli: click.Group) -> None:
    cli.add_command(run_cmd)
