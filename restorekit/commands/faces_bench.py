"""``restorekit bench faces``: face detection and alignment time per image and per face, per detector.

Without ``--input`` the photo is a synthetic group photo (five public-domain astronaut copies,
scaled, rotated and mirrored, on ``skimage.data.coffee()``; needs scikit-image). Times are
wall-clock medians over ``--repeat`` runs after one warm-up run (reported separately as the
first call, which includes loading the detector's models).
"""

from __future__ import annotations

import statistics
import time
from typing import Any

import click
import torch


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

    placements = [dict(face=0, x=80, y=80, eye_distance=20, angle=0, mirror=0),
                  dict(face=0, x=210, y=95, eye_distance=28, angle=14, mirror=1),
                  dict(face=0, x=330, y=80, eye_distance=17, angle=-9, mirror=0),
                  dict(face=0, x=130, y=215, eye_distance=24, angle=-18, mirror=1),
                  dict(face=0, x=300, y=220, eye_distance=32, angle=6, mirror=0)]
    bg = bicubic_resize(t(data.coffee()), (300, 400)).clamp(0, 1)
    photo, truth = make_group_photo([(t(data.astronaut()), (205.5, 102.2), (247.3, 104.2))], bg, placements)
    return photo, len(truth)


def bench_detector(name: str, photos: list[torch.Tensor], repeat: int, crop: int) -> dict[str, Any]:
    """Time one detector (and FFHQ alignment of what it finds) on ``photos``."""
    import numpy as np

    from ..faces.align import align_face, quad_from_points
    from ..faces.detectors import layout_of, named_points
    from ..faces.pipeline import DEFAULT_MIN_FACE, build_detector

    t0 = time.perf_counter()
    det = build_detector(name, min_face=DEFAULT_MIN_FACE)  # the pyramid run and compare search
    load_ms = (time.perf_counter() - t0) * 1e3
    first_ms, det_ms, align_ms, n_faces = [], [], [], 0
    for photo in photos:
        t0 = time.perf_counter()
        faces = det.detect(photo[0])
        first_ms.append((time.perf_counter() - t0) * 1e3)
        runs = []
        for _ in range(repeat):
            t0 = time.perf_counter()
            faces = det.detect(photo[0])
            runs.append((time.perf_counter() - t0) * 1e3)
        det_ms.append(statistics.median(runs))
        n_faces += len(faces)
        quads = [quad_from_points(named_points(f, layout_of(det))) for f in faces]
        runs = []
        for _ in range(repeat):
            t0 = time.perf_counter()
            for q in quads:
                align_face(photo, np.asarray(q), crop)
            runs.append((time.perf_counter() - t0) * 1e3)
        align_ms.append(statistics.median(runs) if quads else 0.0)
    n = len(photos)
    per_image = sum(det_ms) / n
    total_align = sum(align_ms)
    return {
        "detector": name, "images": n, "faces": n_faces, "load_ms": round(load_ms, 1),
        "first_call_ms": round(sum(first_ms) / n, 1), "detect_ms_per_image": round(per_image, 1),
        "detect_ms_per_face": round(sum(det_ms) / n_faces, 1) if n_faces else None,
        "align_ms_per_face": round(total_align / n_faces, 2) if n_faces else None,
        "crop": crop, "megapixels": round(sum(p.shape[-1] * p.shape[-2] for p in photos) / n / 1e6, 3),
    }


@click.command("faces")
@click.option("--detector", "detectors", multiple=True, help="Detector to time (repeatable; default: all registered).")
@click.option("--input", "input_spec", default=None, help="Photos (file, folder, glob); default: a synthetic group photo.")
@click.option("--repeat", type=click.IntRange(1, 100), default=3, show_default=True, help="Timed runs per photo.")
@click.option("--crop", type=click.IntRange(8, 2048), default=256, show_default=True, help="Aligned crop side.")
@click.option("--threads", type=click.IntRange(1, 256), default=None, help="torch CPU threads (default: unchanged).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def faces_bench_cmd(detectors: tuple[str, ...], input_spec: str | None, repeat: int, crop: int,
                    threads: int | None, as_json: bool) -> None:
    """Face detection and alignment time on CPU, per image and per face, for each detector."""
    from ..cli import emit_json, table, warn
    from ..errors import RestorekitError
    from ..images import list_inputs, read_image
    from ..plugins import registry

    if threads is not None:
        torch.set_num_threads(threads)
    if input_spec is None:
        photo, _ = synthetic_group_photo()
        photos, source = [photo], "synthetic group photo (5 astronaut faces, 400×300)"
    else:
        photos = [read_image(it.path) for it in list_inputs(input_spec)]
        source = input_spec
    names = list(detectors) or registry().names("face_detectors")
    rows = []
    for name in names:
        try:
            rows.append(bench_detector(name, photos, repeat, crop))
        except RestorekitError as exc:
            if detectors:  # asked for by name: a usage problem
                raise
            warn(f"{name}: skipped ({exc})")
    meta = {"device": "cpu", "threads": torch.get_num_threads(), "input": source, "repeat": repeat}
    if as_json:
        emit_json({**meta, "results": rows})
        return
    click.echo(f"input: {source}; cpu threads: {meta['threads']}; median of {repeat} runs", err=True)
    table("face detection + FFHQ alignment (CPU)",
          ["detector", "faces", "ms/image", "ms/face", f"align ms/face ({crop}px)", "first call ms", "load ms"],
          [[r["detector"], str(r["faces"]), f"{r['detect_ms_per_image']:.1f}",
            "-" if r["detect_ms_per_face"] is None else f"{r['detect_ms_per_face']:.1f}",
            "-" if r["align_ms_per_face"] is None else f"{r['align_ms_per_face']:.2f}",
            f"{r['first_call_ms']:.1f}", f"{r['load_ms']:.1f}"] for r in rows])


def attach(cli: click.Group) -> None:
    """Add ``faces`` to the core ``bench`` group (attached before this module)."""
    bench = cli.commands.get("bench")
    if not isinstance(bench, click.Group):
        raise RuntimeError("restorekit.commands.faces_bench must be attached after restorekit.commands.bench")
    bench.add_command(faces_bench_cmd)
