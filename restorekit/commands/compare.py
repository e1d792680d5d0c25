"""``restorekit compare``: run several methods on the same LR inputs and score them.

Exit codes: 0 everything ran; 1 some (method, image) failed (each listed on stderr); 2 usage
errors (unknown method or metric with a did-you-mean, bad option, scale a method does not serve).

Under ``torchrun`` every rank runs its share (see :func:`restorekit.harness.runner.execute`) and
rank 0 alone shows progress (counting all ranks), writes the reports and prints; every rank ends
with the job's exit code.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import TYPE_CHECKING

import click

from ..cli import UsageProblem, emit_json, error_line, json_output, warn
from ..devices import DEVICE, DEVICE_HELP
from ..errors import FileSystemError, RestorekitError
from ..faces.align import PASTE_MASKS
from ..images import DEFAULT_MAX_OUTPUT_PIXELS, DEFAULT_MAX_PIXELS

if TYPE_CHECKING:
    from ..harness.runner import Plan
    from ..images import ImageItem


#: At most this many --seeds: each runs every stochastic method on every image.
MAX_COMPARE_SEEDS = 1_000


def _seed_list(ctx: click.Context, param: click.Parameter, value: str) -> list[int]:
    from ..seeds import parse_seeds

    return parse_seeds(value, limit=MAX_COMPARE_SEEDS)


def _name_list(value: str | None) -> list[str] | None:
    if value is None:
        return None
    return [v.strip() for v in value.split(",") if v.strip()]


def _check_exportable(names: list[str]) -> None:
    """--backend onnxruntime: refuse, before any work, the methods that offer no ONNX export
    (bicubic, pulse …), all named in one line; they used to fail image by image instead. Unknown
    names are left to the plan, which says so with a did-you-mean."""
    from ..methods import method_class
    from ..onnx_export import OnnxExportError, check_exportable

    cannot: list[str] = []
    for name in dict.fromkeys(names):
        try:
            cls = method_class(name.partition("@")[0])
        except RestorekitError:
            continue
        try:
            check_exportable(cls)
        except OnnxExportError:
            cannot.append(name)
    if cannot:
        raise UsageProblem(f"--backend onnxruntime: {', '.join(cannot)} cannot be exported to ONNX (no exporter); "
                           f"run {'it' if len(cannot) == 1 else 'them'} with --backend torch, or leave "
                           f"{'it' if len(cannot) == 1 else 'them'} out of --methods")


def _listed_inputs(data: str, lr_dir: str | None) -> list[ImageItem]:
    """The HR images of ``data``. A spec listing none, an ``lr_dir`` listing none, or one whose files pair
    with none of them, or two of whose files claim one image (:func:`~restorekit.harness.inputs.pair_items`),
    is a usage error here, before --out is made (the run found them only after making it, an empty
    folder left behind)."""
    from ..batch import require_inputs
    from ..harness.inputs import pair_items
    from ..images import list_inputs

    items = require_inputs(list_inputs(data), data)
    if lr_dir is not None:
        pair_items(items, require_inputs(list_inputs(lr_dir), lr_dir), data, lr_dir)
    return items


@click.command("compare")
@click.option("--methods", required=True, help="Comma-separated method names, e.g. psp_sr,pulse,bicubic; "
                                               "METHOD@LABEL runs a method again with its own --opt, e.g. "
                                               "psp_sr,psp_sr@cs3 --opt psp_sr@cs3.consistency_steps=3.")
@click.option("--scale", type=click.IntRange(min=1), required=True, help="Output size = scale × LR size.")
@click.option("--data", required=True, help="HR images: folder, file, glob or @list.txt.")
@click.option("--degradation", default=None, help="How LR inputs are made from HR (default bicubic:SCALE).")
@click.option("--lr-dir", default=None, help="Use these LR images instead (matched to HR by file stem).")
@click.option("--seeds", default="0", show_default=True, callback=_seed_list,
              help="Seeds for stochastic methods (deterministic ones run once), e.g. 0,1,2 or 0-4 (each 0 to "
                   f"2**64-1; at most {MAX_COMPARE_SEEDS:,}).")
@click.option("--limit", type=click.IntRange(min=1), default=None, help="Use only the first N images.")
@click.option("--out", "--output", "out", type=click.Path(path_type=Path), default=Path("report"), show_default=True,
              help="Folder for inputs, outputs, the result store and the reports.")
@click.option("--metrics", default=None, help="Comma-separated metric names (default: all registered).")
@click.option("--baseline", default=None, metavar="METHOD",
              help="One of --methods: compare each other method with it image by image (win share, mean "
                   "difference with a 95% CI, sign-test p) in a second table and paired.csv.")
@click.option("--device", type=DEVICE, default="auto", show_default=True,
              help=DEVICE_HELP)
@click.option("--opt", "opts", multiple=True, metavar="METHOD.KEY=VALUE", help="Method option (repeatable).")
@click.option("--fresh", is_flag=True, help="Recompute everything instead of reusing stored results.")
@click.option("--json", "as_json", is_flag=True, help="Print the results (without per-image rows) as JSON.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar, table or method notes.")
@click.option("--faces", type=click.Choice(["aligned", "detect"]), default="aligned", show_default=True,
              help="detect: photos from the wild; face methods run through detect-align-restore-paste.")
@click.option("--detector", default=None, help="Face detector for --faces detect (default: mtcnn).")
@click.option("--paste-mask", type=click.Choice(PASTE_MASKS), default=None,
              help="--faces detect: the region of each restored crop blended into the photo: face (an ellipse "
                   "around face and hair: the crop's corners stay the background's; the default) or square (the "
                   "whole aligned crop), as in run.")
@click.option("--backend", type=click.Choice(["torch", "onnxruntime"]), default="torch", show_default=True,
              help="Run methods in PyTorch or as exported ONNX graphs (methods that export).")
@click.option("--max-pixels", type=click.IntRange(min=1), default=DEFAULT_MAX_PIXELS, show_default=True,
              help="Refuse HR and LR images larger than this many pixels.")
@click.option("--max-output-pixels", type=click.IntRange(min=1), default=DEFAULT_MAX_OUTPUT_PIXELS,
              show_default=True, help="Refuse images whose restored output would be larger than this many "
                                      "pixels, before any method runs.")
@json_output
def compare_cmd(methods: str, scale: int, data: str, degradation: str | None, lr_dir: str | None,
                seeds: list[int], limit: int | None, out: Path, metrics: str | None, baseline: str | None,
                device: str, opts: tuple[str, ...], fresh: bool, as_json: bool, quiet: bool, faces: str,
                detector: str | None, paste_mask: str | None, backend: str, max_pixels: int,
                max_output_pixels: int) -> None:
    """Compare METHODS on the HR images of --data: same LR inputs, same metrics, one table.

    Results are stored per (method, image, seed) under --out and reused by a later run with the
    same settings; --fresh recomputes. Writes results.csv, summary.csv, results.json and a
    self-contained report.html to --out (and paired.csv with --baseline).
    """
    from ..batch import check_writable
    from ..harness.report_console import print_table
    from ..harness.report_files import results_document
    from ..harness.report_summary import summarize_result
    from ..harness.report_text import failure_lines
    from ..harness.outdir import exclusive
    from ..harness.reports import write_all
    from ..harness.runner import CompareConfig, execute, parse_method_opts, plan
    from ..harness.store import jsonable
    from ..plugins import registry
    from ..sharding import job_for

    names = _name_list(methods) or []
    with job_for(device) as job:  # one process, or one rank of a torchrun job

        def prepare() -> tuple[Plan, int]:
            try:
                config = CompareConfig(methods=names, scale=scale, data=data, out=out, degradation=degradation,
                                       lr_dir=lr_dir, seeds=seeds, limit=limit, metrics=_name_list(metrics),
                                       device=device, opts=parse_method_opts(opts, names), fresh=fresh,
                                       quiet=quiet, faces=faces, detector=detector, paste_mask=paste_mask,
                                       backend=backend,
                                       max_pixels=max_pixels, max_output_pixels=max_output_pixels,
                                       baseline=baseline.strip() if baseline is not None else None)
                if backend == "onnxruntime":
                    _check_exportable(names)
                if faces == "detect" and detector is not None:  # a typo is said even where no method is a face one
                    registry().get("face_detectors", detector)
                p = plan(config)
                # A --data (and --lr-dir) that lists no image, or no pair, is a usage error before --out is made.
                n_img = len(_listed_inputs(data, lr_dir))  # the count sizes the progress bar
                check_writable(out)
            except FileSystemError:  # not a usage problem: one line with the fix, exit 2
                raise
            except RestorekitError as exc:
                raise UsageProblem(str(exc)) from None
            return p, n_img

        p, n_img = job.together(prepare)
        held = contextlib.ExitStack()  # --out for this run alone (rank 0 holds it for the job)
        with held:
            if job.is_main:
                job.together(lambda: held.enter_context(exclusive(out)))
            else:
                job.together(lambda: None)
            total = sum(len(mp.seeds) for mp in p.methods) * (min(n_img, limit) if limit else n_img)
            with job.progress(total, "compare", quiet or as_json) as advance:
                res = execute(p, progress=advance, job=job)
            # Rank 0 writes the reports for the whole job; the others wait for it, so that a report
            # it cannot write (a full disk) ends every process with its exit code, not only its own.
            sm = summarize_result(res) if job.is_main else None
            job.together(lambda: write_all(sm, out) if sm is not None else None)
            if sm is None:
                raise SystemExit(res.exit_code)
        if as_json or quiet:  # otherwise the table's footnotes name each skipped metric, once
            for m in p.metrics:
                if m.status != "ok":
                    warn(f"metric {m.name} skipped: {m.reason}")
        if as_json:
            emit_json(jsonable(results_document(sm, include_images=False))
                      | {"results_json": str(out / "results.json")})
        elif not quiet:
            print_table(sm)
            click.echo(f"reports: {out / 'report.html'}, {out / 'results.json'}, {out / 'results.csv'}", err=True)
        for line in failure_lines(sm):
            error_line(line)
        raise SystemExit(res.exit_code)


def attach(cli: click.Group) -> None:
    cli.add_command(compare_cmd)
    bench = cli.commands.get("bench")
    if isinstance(bench, click.Group):
        from ..harness.bench import bench_harness_cmd
        from ..harness.bench_scaleout import bench_scaleout_cmd

        bench.add_command(bench_harness_cmd)
        bench.add_command(bench_scaleout_cmd)
