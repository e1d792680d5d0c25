"""``restorekit demo``: a real restoration of a real face, offline, in one command.

The face is NASA's portrait of astronaut Eileen Collins (public domain), which ships inside
scikit-image as ``skimage.data.astronaut()``. The demo detects and FFHQ-aligns the face, rounds
it to 8 bits (as ``astronaut_hr.png`` holds it), makes a low-resolution version (antialiased
bicubic ÷scale), restores it with each method, scores every result against that aligned original,
and writes a labelled side-by-side PNG plus the numbers.

``metrics.json`` (also what ``--json`` prints) is strict JSON:

* ``results``: one object per method that ran, every one with the same keys — each metric of
  ``metrics`` (a number, or ``null`` where the figure is missing) and ``weights`` (``name``,
  ``sha256``, ``license`` of the weights it restored with, each ``null`` where not recorded; the
  whole entry ``null`` for a method without weights, such as bicubic). An infinite value (PSNR of
  an exact match) is written ``"Infinity"``, as ``compare``'s report writes it.
* ``missing``: why figures are ``null``, each reason once — ``[{"metric", "methods", "reason"}]``,
  the methods in run order (a metric that cannot run here, its weights not installed, lists them
  all; an identity metric that finds no face on the original says ``faces not found``).
* ``metrics`` (the metric names, in column order), ``unavailable`` (methods left out, and why),
  ``photo``, ``scale``, ``hr_size``, ``face`` (the detection) and ``side_by_side`` (the PNG).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import click
import numpy as np
import torch
from PIL import Image, ImageDraw

from ..cli import emit_json, fail_usage, json_output, table, warn
from ..degradations import downscale
from ..errors import RestorekitError, UnknownNameError
from ..harness.store import dumps
from ..images import atomic_write_bytes, from_pil, save_image, to_pil
from ..samples import ASTRONAUT_CREDIT, astronaut

#: The methods the demo runs when --methods is not given, and the distribution each comes with.
#: Neither plugin depends on the other, so either may be missing; the demo runs those installed.
DEFAULT_METHODS = {"psp_sr": "restorekit-psp-sr", "bicubic": "restorekit-baselines"}
DEMO_METRICS = ("psnr_y_crop", "ssim_y_crop", "lpips_alex_v0.1", "identity_dlib", "identity_dlib_dist",
                "lr_consistency")


def labelled_row(images: list[torch.Tensor], labels: list[str], size: int) -> Image.Image:
    """Images side by side (nearest-resized to ``size``), each with a caption strip."""
    strip = 18
    canvas = Image.new("RGB", (size * len(images), size + strip), "white")
    draw = ImageDraw.Draw(canvas)
    for i, (img, label) in enumerate(zip(images, labels)):
        if img.shape[-1] != size:
            img = torch.nn.functional.interpolate(img, size=(size, size), mode="nearest")
        arr = (img[0].clamp(0, 1).permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
        canvas.paste(Image.fromarray(arr), (i * size, strip))
        draw.text((i * size + 4, 3), label, fill="black")
    return canvas


def _installed(distribution: str) -> bool:
    from importlib.metadata import PackageNotFoundError, distribution as dist

    try:
        dist(distribution)
    except PackageNotFoundError:
        return False
    return True


def missing_default_reason(distribution: str) -> str:
    """Why a default method's plugin is not there, and what to do about it (one clause)."""
    if _installed(distribution):
        import os

        limit = os.environ.get("RESTOREKIT_LOAD_PLUGINS")
        why = (f"RESTOREKIT_LOAD_PLUGINS={limit} leaves it out" if limit is not None
               else "restorekit plugins shows why")
        return f"{distribution} is installed but its plugin is not loaded ({why})"
    return f"{distribution} is not installed (pip install {distribution})"


def ready_metrics(names: tuple[str, ...] | list[str]) -> tuple[dict[str, Any], dict[str, str]]:
    """The metrics set up on the CPU, and the reason for each one that cannot run here."""
    from ..plugins import registry

    ready: dict[str, Any] = {}
    failed: dict[str, str] = {}
    for name in names:
        try:
            metric = registry().metric(name)()
            metric.setup(torch.device("cpu"))
        except RestorekitError as exc:  # WeightsMissing included: its message names the fix
            failed[name] = str(exc)
        else:
            ready[name] = metric
    return ready, failed


def score_outputs(names: tuple[str, ...] | list[str], outputs: dict[str, torch.Tensor], hr: torch.Tensor,
                  lr: torch.Tensor, scale: int) -> tuple[dict[str, dict[str, float | None]], list[dict[str, Any]]]:
    """Every metric of ``names`` on every output: ``{method: {metric: value or None}}``, and the
    ``missing`` list (``{"metric", "methods", "reason"}``, one entry per metric and reason)."""
    ready, failed = ready_metrics(names)
    values: dict[str, dict[str, float | None]] = {}
    why: dict[tuple[str, str], list[str]] = {}  # (metric, reason) -> methods, in order
    for method, pred in outputs.items():
        row: dict[str, float | None] = {}
        for name in names:
            value: float | None = None
            if name in failed:
                reason = failed[name]
            else:
                metric = ready[name]
                try:
                    value = float(metric(pred, hr, lr=lr, scale=scale)[0])
                except RestorekitError as exc:
                    reason = str(exc)
                else:
                    reason = (getattr(metric, "nan_label", "") or "not a number") if math.isnan(value) else ""
                if reason:
                    value = None
            row[name] = value
            if value is None:
                why.setdefault((name, reason), []).append(method)
        values[method] = row
    missing = [{"metric": m, "methods": ms, "reason": r} for (m, r), ms in why.items()]
    return values, missing


def weights_entry(method: Any) -> dict[str, Any] | None:
    """The weights a method restored with (``name``, ``sha256``, ``license``; None where not recorded)."""
    info = getattr(method, "weights_info", None)
    if not info:
        return None
    return {key: info.get(key) for key in ("name", "sha256", "license")}


@click.command("demo")
@click.option("--output", "--out", "output", type=click.Path(path_type=Path), default=Path("demo"), show_default=True,
              help="Folder for the side-by-side PNG, the images and metrics.json.")
@click.option("--scale", type=click.Choice(["4", "8"]), default="8", show_default=True,
              help="Restore from a 1/scale low-resolution face.")
@click.option("--methods", default=",".join(DEFAULT_METHODS), show_default=True,
              help="Methods to run, comma-separated (by default: those of these that are installed).")
@click.option("--detector", default=None, help="Face detector (default: the pipeline's default).")
@click.option("--quiet", "-q", is_flag=True, help="No notes, table or summary line (errors and warnings stay).")
@click.option("--json", "as_json", is_flag=True, help="Print the results as JSON.")
@click.pass_context
@json_output
def demo_cmd(ctx: click.Context, output: Path, scale: str, methods: str, detector: str | None, quiet: bool,
             as_json: bool) -> None:
    """Restore a public-domain face photo (×8 by default) and write a side-by-side PNG + metrics."""
    from ..methods import build_method, method_class

    k = int(scale)
    names = list(dict.fromkeys(m.strip() for m in methods.split(",") if m.strip()))
    if not names:
        fail_usage(f"--methods '{methods}' names no method")
    unavailable: dict[str, str] = {}
    if ctx.get_parameter_source("methods") == click.core.ParameterSource.DEFAULT:
        # The defaults come from two plugins: run those installed, say once what the others need.
        absent: dict[str, str] = {}  # method -> the distribution that brings it
        for n in names:
            try:
                method_class(n)
            except UnknownNameError:
                absent[n] = DEFAULT_METHODS[n]
        if absent:
            names = [n for n in names if n not in absent]
            why = {d: missing_default_reason(d) for d in sorted(set(absent.values()))}
            reason = "; ".join(why.values())
            if not names:
                raise RestorekitError(f"demo: none of its default methods ({', '.join(absent)}) is available: {reason}")
            unavailable.update({n: why[d] for n, d in absent.items()})
            if not quiet:
                click.echo(f"note: the demo leaves out {', '.join(absent)}: {reason}", err=True)
    for n in names:  # a name that is not a method is a typo, not a method missing its weights
        try:
            method_class(n)
        except RestorekitError as exc:
            fail_usage(str(exc))
    built: dict[str, Any] = {}
    for n in names:
        try:
            built[n] = build_method(n, {}, "auto")
        except RestorekitError as exc:  # e.g. weights not installed: say why, run the others
            unavailable[n] = str(exc)
            warn(f"{n} is not available here and is left out of the demo: {exc}")
    if not built:
        raise RestorekitError(f"demo: none of the methods {', '.join(names)} can run here")
    # The face model's own resolution is the HR size, so its output needs no resizing.
    res = next((int(getattr(m, "resolution")) for m in built.values()
                if isinstance(getattr(m, "resolution", None), int)), 128)
    photo = astronaut()
    try:
        from ..faces.pipeline import largest_face_crop, largest_face_detector

        hr, record = largest_face_crop(photo, res, largest_face_detector(detector))
    except RestorekitError as exc:
        raise RestorekitError(f"demo: {exc}") from None
    # The HR as astronaut_hr.png holds it (as compare reads its HR files): degraded and scored
    # against as written, so metrics.json can be recomputed from the demo's own files.
    hr = from_pil(to_pil(hr))
    lr = downscale(hr, k)
    lr = torch.round(lr * 255) / 255  # what a saved 8-bit LR file holds
    outputs: dict[str, torch.Tensor] = {}
    for name, m in built.items():
        if not quiet:
            for note in getattr(m, "notes", []):
                click.echo(note, err=True)
        with torch.no_grad():
            sr = m.restore(lr.to(m.device), k, seed=0).cpu().clamp(0, 1)
        sr = torch.round(sr * 255) / 255
        outputs[name] = sr
    values, missing = score_outputs(DEMO_METRICS, outputs, hr, lr, k)
    results: dict[str, dict[str, Any]] = {name: {**values[name], "weights": weights_entry(m)}
                                          for name, m in built.items()}
    output.mkdir(parents=True, exist_ok=True)
    row = labelled_row([lr, *outputs.values(), hr], [f"input {lr.shape[-1]}px", *outputs, "original"], res)
    import io

    buf = io.BytesIO()
    row.save(buf, "PNG")
    atomic_write_bytes(output / f"astronaut_x{k}.png", buf.getvalue())
    save_image(hr, output / "astronaut_hr.png")
    save_image(lr, output / f"astronaut_lr_x{k}.png")
    for name, sr in outputs.items():
        save_image(sr, output / f"astronaut_x{k}_{name}.png")
    summary = {"photo": ASTRONAUT_CREDIT,
               "scale": k, "hr_size": res, "face": record, "metrics": list(DEMO_METRICS), "results": results,
               "missing": missing, "unavailable": unavailable, "side_by_side": str(output / f"astronaut_x{k}.png")}
    text = dumps(summary, indent=2)  # strict JSON: NaN never reaches the file
    atomic_write_bytes(output / "metrics.json", text.encode())
    if as_json:
        emit_json(summary)
        return
    # A column for each metric with a figure; a method without one shows n/a (the reason follows).
    shown = [m for m in DEMO_METRICS if any(values[n][m] is not None for n in values)]
    if not quiet:
        table(f"astronaut ×{k} ({lr.shape[-1]} → {res} px)", ["method", *shown],
              [[n, *("n/a" if values[n][m] is None else f"{values[n][m]:.4f}" for m in shown)] for n in values],
              overflow="fold")  # a metric's name folds onto a second line, never cut (80 columns)
    for entry in missing:
        whom = "" if len(entry["methods"]) == len(values) else f" for {', '.join(entry['methods'])}"
        warn(f"{entry['metric']} skipped{whom}: {entry['reason']}")
    if not quiet:
        click.echo(f"side by side: {output / f'astronaut_x{k}.png'}; numbers: {output / 'metrics.json'}", err=True)


def attach(cli: click.Group) -> None:
    cli.add_command(demo_cmd)
