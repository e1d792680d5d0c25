"""``restorekit bench faces``: face detection and alignment time per image and per face, per detector.

Without ``--input`` the photo is a synthetic group photo (five public-domain astronaut copies,
scaled, rotated and mirrored, on ``skimage.data.coffee()``; needs scikit-image). Times are
wall-clock medians over ``--repeat`` runs after one warm-up run (reported separately as the
first call, which includes loading the detector's models), with the range of the runs
(smallest–largest; a run's figure is the mean over the photos).

The reference, measured in the same run with the same repeats, is decoding the same photos
(:func:`restorekit.images.read_image` of each file; the synthetic photo is written to a PNG
first): every pipeline pays it once per photo, it is there whatever detectors are installed, and
it carries the machine's speed, so "detection takes 40× the photo's decode" reads the same on a
fast and a slow machine. Each detector's detection per image and alignment per face are given
as ratios to it (ratio of the medians, range over every pairing of runs), and each detector's
detection as a ratio to the fastest detector's of the run (which to pick).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
import torch

from ..cli import json_output, table
from .bench import fmt_ratio, fmt_spread, ratio_spread, spread


def synthetic_group_photo() -> tuple[torch.Tensor, int]:
    """The benchmark's default photo (400×300, five faces) and its number of faces."""
    try:
        from skimage import data
    except ImportError:
        raise click.UsageError("the default benchmark photo needs scikit-image; pass --input PHOTO") from None
    from ..degradations import bicubic_resize
    from ..faces.compose import make_group_photo

    def t(a: Any) -> torch.Tensor:
        return torch.from_numpy(a.copy()).permute(2, 0, 1)[None].float() / 255

    placements: list[dict[str, float]] = [dict(face=0, x=80, y=80, eye_distance=20, angle=0, mirror=0),
                  dict(face=0, x=210, y=95, eye_distance=28, angle=14, mirror=1),
                  dict(face=0, x=330, y=80, eye_distance=17, angle=-9, mirror=0),
                  dict(face=0, x=130, y=215, eye_distance=24, angle=-18, mirror=1),
                  dict(face=0, x=300, y=220, eye_distance=32, angle=6, mirror=0)]
    bg = bicubic_resize(t(data.coffee()), (300, 400)).clamp(0, 1)
    photo, truth = make_group_photo([(t(data.astronaut()), (205.5, 102.2), (247.3, 104.2))], bg, placements)
    return photo, len(truth)


def _rng(s: dict[str, Any], digits: int) -> list[float]:
    return [round(s["min"], digits), round(s["max"], digits)]


def bench_decode(paths: list[Path], repeat: int, clock: Callable[[], float] = time.perf_counter) -> dict[str, Any]:
    """Decoding each photo file (the reference): per run, the mean ms per photo; one untimed run first."""
    from ..images import read_image

    for p in paths:
        read_image(p)
    runs = []
    for _ in range(repeat):
        total = 0.0
        for p in paths:
            t0 = clock()
            read_image(p)
            total += clock() - t0
        runs.append(total * 1e3 / len(paths))
    return {"what": "decode", "files": [str(p) for p in paths], "samples": runs}


def bench_detector(name: str, photos: list[torch.Tensor], repeat: int, crop: int,
                   clock: Callable[[], float] = time.perf_counter) -> dict[str, Any]:
    """Time one detector (and FFHQ alignment of what it finds) on ``photos``: medians over
    ``repeat`` runs (a run: every photo once) and their ranges; ``*_samples`` the runs."""
    import numpy as np

    from ..faces.align import align_face, quad_from_points
    from ..faces.detectors import layout_of, named_points
    from ..faces.pipeline import DEFAULT_MIN_FACE, build_detector

    t0 = clock()
    det = build_detector(name, min_face=DEFAULT_MIN_FACE)  # the pyramid run and compare search
    load_ms = (clock() - t0) * 1e3
    n = len(photos)
    first_ms, n_faces = 0.0, 0
    det_runs, align_runs = [0.0] * repeat, [0.0] * repeat  # per run: sum over the photos, ms
    for photo in photos:
        t0 = clock()
        faces = det.detect(photo[0])
        first_ms += (clock() - t0) * 1e3
        for r in range(repeat):
            t0 = clock()
            faces = det.detect(photo[0])
            det_runs[r] += (clock() - t0) * 1e3
        n_faces += len(faces)
        quads = [quad_from_points(named_points(f, layout_of(det))) for f in faces]
        for r in range(repeat):
            t0 = clock()
            for q in quads:
                align_face(photo, np.asarray(q), crop)
            align_runs[r] += (clock() - t0) * 1e3
    det_img = [t / n for t in det_runs]
    d = spread(det_img)
    row: dict[str, Any] = {
        "detector": name, "images": n, "faces": n_faces, "repeats": repeat, "load_ms": round(load_ms, 1),
        "first_call_ms": round(first_ms / n, 1), "detect_ms_per_image": round(d["median"], 1),
        "detect_ms_per_image_range": _rng(d, 1), "detect_ms_per_image_samples": det_img,
        "detect_ms_per_face": None, "detect_ms_per_face_range": None,
        "align_ms_per_face": None, "align_ms_per_face_range": None, "align_ms_per_face_samples": [],
        "crop": crop, "megapixels": round(sum(p.shape[-1] * p.shape[-2] for p in photos) / n / 1e6, 3),
    }
    if n_faces:
        f = spread([t / n_faces for t in det_runs])
        a = spread([t / n_faces for t in align_runs])
        row.update(detect_ms_per_face=round(f["median"], 1), detect_ms_per_face_range=_rng(f, 1),
                   align_ms_per_face=round(a["median"], 2), align_ms_per_face_range=_rng(a, 2),
                   align_ms_per_face_samples=[t / n_faces for t in align_runs])
    return row


def add_ratios(rows: list[dict[str, Any]], reference: dict[str, Any]) -> None:
    """Each row's detection per image and alignment per face ÷ the reference's decode per photo,
    and detection ÷ the fastest detector's (ratio of the medians, ``*_range`` over all pairings)."""
    def put(row: dict[str, Any], key: str, r: dict[str, Any] | None) -> None:
        row[key] = round(r["ratio"], 3) if r else None
        row[f"{key}_range"] = [round(r["min"], 3), round(r["max"], 3)] if r else None

    ref = reference["samples"]
    fastest = min(rows, key=lambda r: r["detect_ms_per_image"]) if rows else None
    for row in rows:
        put(row, "detect_to_decode", ratio_spread(row["detect_ms_per_image_samples"], ref))
        put(row, "align_per_face_to_decode",
            ratio_spread(row["align_ms_per_face_samples"], ref) if row["align_ms_per_face_samples"] else None)
        put(row, "detect_to_fastest", ratio_spread(row["detect_ms_per_image_samples"],
                                                   fastest["detect_ms_per_image_samples"]) if fastest else None)
        row["fastest"] = fastest["detector"] if fastest else None


@click.command("faces")
@click.option("--detector", "detectors", multiple=True, help="Detector to time (repeatable; default: all registered).")
@click.option("--input", "input_spec", default=None, help="Photos (file, folder, glob); default: a synthetic group photo.")
@click.option("--repeat", "--repeats", "repeat", type=click.IntRange(1, 100), default=5, show_default=True,
              help="Timed runs per photo (medians and their range).")
@click.option("--crop", type=click.IntRange(8, 2048), default=256, show_default=True, help="Aligned crop side.")
@click.option("--threads", type=click.IntRange(1, 256), default=None, help="torch CPU threads (default: unchanged).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@json_output
def faces_bench_cmd(detectors: tuple[str, ...], input_spec: str | None, repeat: int, crop: int,
                    threads: int | None, as_json: bool) -> None:
    """Face detection and alignment time on CPU, per image and per face, for each detector, as
    ratios to decoding the same photos (measured in the same run)."""
    import tempfile

    from ..cli import UsageProblem, emit_json, fail_usage, warn
    from ..errors import RestorekitError
    from ..images import list_inputs, read_image
    from ..plugins import registry

    from ..errors import UnknownNameError

    for name in detectors:  # a typo is a usage error, before any photo is read
        try:
            registry().get("face_detectors", name)
        except UnknownNameError as exc:
            fail_usage(str(exc))
    if threads is not None:
        torch.set_num_threads(threads)
    with tempfile.TemporaryDirectory(prefix="restorekit-bench-faces-") as tmp:
        if input_spec is None:
            from PIL import Image

            photo, _ = synthetic_group_photo()
            photos, source = [photo], "synthetic group photo (5 astronaut faces, 400×300)"
            paths = [Path(tmp) / "group.png"]
            arr = (photo[0].clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy()
            Image.fromarray(arr).save(paths[0])
        else:
            from ..batch import require_inputs

            try:
                items = list_inputs(input_spec)
            except RestorekitError as exc:
                raise UsageProblem(str(exc)) from None
            paths = [Path(it.path) for it in require_inputs(items, input_spec)]
            photos = [read_image(p) for p in paths]
            source = input_spec
        reference = bench_decode(paths, repeat)
    names = list(detectors) or registry().names("face_detectors")
    rows = []
    for name in names:
        try:
            rows.append(bench_detector(name, photos, repeat, crop))
        except RestorekitError as exc:
            if detectors:  # asked for by name: a usage problem
                raise
            warn(f"{name}: skipped ({exc})")
    add_ratios(rows, reference)
    ref = spread(reference["samples"])
    reference.update(ms_per_image=round(ref["median"], 2), ms_per_image_range=_rng(ref, 2))
    meta = {"device": "cpu", "threads": torch.get_num_threads(), "input": source, "repeat": repeat,
            "reference": {k: v for k, v in reference.items() if k != "files"}}
    if as_json:
        emit_json({**meta, "results": rows})
        return

    def cell(r: dict[str, Any], key: str, digits: int) -> str:
        if r[key] is None:
            return "-"
        lo, hi = r[f"{key}_range"]
        return fmt_spread({"median": r[key], "min": lo, "max": hi, "n": repeat}, digits)

    def ratio(r: dict[str, Any], key: str) -> str:
        if r[key] is None:
            return "-"
        lo, hi = r[f"{key}_range"]
        return fmt_ratio({"ratio": r[key], "min": lo, "max": hi}, 1 if r[key] >= 10 else 2)

    click.echo(f"input: {source}; cpu threads: {meta['threads']}; median of {repeat} runs (smallest–largest); "
               f"reference: decoding the photo, {cell(reference, 'ms_per_image', 2)} ms/image", err=True)
    table("face detection + FFHQ alignment (CPU); ×decode: ratio to decoding the same photo",
          ["detector", "faces", "ms/image", "×decode", "ms/face", f"align ms/face ({crop}px)", "align ×decode",
           "first call ms", "load ms"],
          [[r["detector"], str(r["faces"]), cell(r, "detect_ms_per_image", 1), ratio(r, "detect_to_decode"),
            cell(r, "detect_ms_per_face", 1), cell(r, "align_ms_per_face", 2), ratio(r, "align_per_face_to_decode"),
            f"{r['first_call_ms']:.1f}", f"{r['load_ms']:.1f}"] for r in rows], overflow="fold")
    for r in rows:
        if r["detector"] != r["fastest"]:
            click.echo(f"{r['detector']} detection takes {ratio(r, 'detect_to_fastest')} the time of "
                       f"{r['fastest']}'s per image (ratio of the medians, range over all pairs of runs)")


def attach(cli: click.Group) -> None:
    """Add ``faces`` to the core ``bench`` group (attached before this module)."""
    bench = cli.commands.get("bench")
    if not isinstance(bench, click.Group):
        raise RuntimeError("restorekit.commands.faces_bench must be attached after restorekit.commands.bench")
    bench.add_command(faces_bench_cmd)
