"""``restorekit export METHOD --out model.onnx``: a method's network as a checked ONNX graph.

The file is written only when onnxruntime reproduces PyTorch's output within ``--tolerance``
(see :mod:`restorekit.onnx_export`); a ``model.onnx.json`` sidecar describes it, with the graph
file's sha256 (a graph beside another export's sidecar is refused when used). Without
``--overwrite`` an existing file is never replaced, also one that appears while exporting. ``restorekit
run METHOD --backend onnxruntime --onnx model.onnx`` runs it.
"""

from __future__ import annotations

import os
from pathlib import Path

import click

from ..cli import emit_json, fail_usage, json_output
from ..errors import RestorekitError
from ..options import FiniteFloatRange
from ..methods import OptionError, build_method, method_class, method_values, validate_options
from ..onnx_export import (DEFAULT_OPSET, MIN_OPSET, OnnxExportError, OnnxOutputExists, check_exportable, check_opset,
                           export_onnx, find_export_spec, sidecar_path)


@click.command("export")
@click.argument("method")
@click.option("--weights", default=None, help="Weights name or path (methods with a `weights` option).")
@click.option("--out", "--output", "out", type=click.Path(path_type=Path, dir_okay=False), required=True,
              help="The .onnx file to write (a <file>.json sidecar goes beside it).")
@click.option("--opset", type=click.IntRange(min=MIN_OPSET), default=DEFAULT_OPSET, show_default=True,
              help="ONNX opset version (up to the highest this torch exports).")
@click.option("--dynamic-batch/--fixed-batch", default=True, show_default=True,
              help="One file for any batch size, or batches of one only.")
@click.option("--fp16", is_flag=True, help="Compute in float16 inside the graph (float32 input and output).")
@click.option("--tolerance", type=FiniteFloatRange(min=0), default=None,
              help="Largest |onnxruntime − PyTorch| allowed on the export check [default: 1e-3; 3e-2 with --fp16].")
@click.option("--opt", "opts", multiple=True, metavar="KEY=VALUE", help="Method option (repeatable).")
@click.option("--overwrite", is_flag=True, help="Replace an existing --out file.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar or notes.")
@click.option("--json", "as_json", is_flag=True, help="Print the sidecar as JSON.")
@json_output
def export_cmd(method: str, weights: str | None, out: Path, opset: int, dynamic_batch: bool, fp16: bool,
               tolerance: float | None, opts: tuple[str, ...], overwrite: bool, quiet: bool, as_json: bool) -> None:
    """Export METHOD's network to ONNX (checked against PyTorch before the file is written)."""
    # Said at once here; export_onnx checks again when it puts the file in place (it may appear meanwhile).
    # lexists: a link there counts, also one to nothing (the export would not replace it either).
    if not overwrite:
        for path, what in ((out, ""), (sidecar_path(out), ", where the export's sidecar goes")):
            if os.path.lexists(path):
                dangling = " as a link to nothing" if not path.exists() else ""
                fail_usage(f"{path} exists{dangling}{what} (--overwrite replaces it)")
    try:
        check_opset(opset)
    except OnnxExportError as exc:
        fail_usage(str(exc))
        return
    try:
        cls = method_class(method)
    except RestorekitError as exc:
        fail_usage(str(exc))
        return
    check_exportable(cls)  # one line, before its options and weights: no use fetching weights for it
    try:
        values = method_values(cls, opts, weights)
        validate_options(cls, values)
    except (OptionError, RestorekitError) as exc:
        fail_usage(str(exc))
        return
    # Export always traces on the CPU: the graph does not depend on the device it came from.
    m = build_method(method, values, "cpu")
    try:
        spec = find_export_spec(m)
    except ValueError as exc:  # the method's own check of its options for export
        fail_usage(str(exc))
        return
    try:
        result = export_onnx(spec, out, opset=opset, dynamic_batch=dynamic_batch, fp16=fp16, tolerance=tolerance,
                             overwrite=overwrite,
                             log=None if as_json or quiet else (lambda msg: click.echo(msg, err=True)))
    except OnnxOutputExists as exc:
        fail_usage(f"{exc}: it appeared while exporting (--overwrite replaces it)")
        return
    if as_json:
        emit_json({"path": str(result.path), "sidecar": str(result.sidecar), "seconds": round(result.seconds, 2),
                   **result.info})
        return
    if quiet:
        return
    shape_in = "×".join(str(d) for d in result.info["input"]["shape"])
    shape_out = "×".join(str(d) for d in result.info["output"]["shape"])
    click.echo(f"{method} → {result.path} ({shape_in} → {shape_out}, opset {opset}, {result.info['precision']}); "
               f"max |onnxruntime − PyTorch| {result.max_abs_diff:.3g} ≤ {result.tolerance:g}; "
               f"{result.seconds:.1f} s", err=True)


def attach(cli: click.Group) -> None:
    cli.add_command(export_cmd)
