"""``restorekit bench harness``: how much of a ``compare`` run is the harness rather than the method.

Makes ``--n`` synthetic smooth images of ``--size`` px in a temporary folder (not timed), runs
``compare`` in-process on them (cold: LR inputs made, outputs written, all metrics, reports),
then again on the same ``--out`` (resumed: everything reused), and reports the harness overhead
= (wall time − time inside ``method.restore``) / wall time, with the time per stage, and the
bookkeeping share (wall time less restore, metrics and image decode/encode: plan, store, reports). Interpreter
start-up and imports are not included (they are the same for any harness).
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

import click


def run_bench(n: int, size: int, scale: int, method: str, metrics: list[str] | None, device: str) -> dict[str, Any]:
    """Both runs' wall time, restore time, overhead fraction and per-stage seconds."""
    from PIL import Image

    from ..testing.data import smooth_image
    from .reports import summarize_result, write_all
    from .runner import CompareConfig, execute, plan

    out: dict[str, Any] = {"n": n, "size": size, "scale": scale, "method": method}
    with tempfile.TemporaryDirectory(prefix="restorekit-bench-") as tmp:
        hr = Path(tmp) / "hr"
        hr.mkdir()
        for i in range(n):
            Image.fromarray(smooth_image(size, size, i)).save(hr / f"img{i:04d}.png", compress_level=1)
        for label in ("cold", "resumed"):
            cfg = CompareConfig(methods=[method], scale=scale, data=str(hr), out=Path(tmp) / "out",
                                metrics=metrics, device=device)
            t0 = time.perf_counter()
            p = plan(cfg)
            res = execute(p)
            t1 = time.perf_counter()
            write_all(summarize_result(res), cfg.out)
            wall = time.perf_counter() - t0
            stages = dict(res.timings)
            stages["reports"] = time.perf_counter() - t1
            stages["plan"] = res.wall_s and (t1 - t0 - res.wall_s)
            restore = stages.get("restore", 0.0)
            # Bookkeeping: what is left after the method, the metrics and image decode/encode.
            book = wall - sum(stages.get(k, 0.0) for k in ("restore", "metrics", "save", "inputs"))
            out[label] = {"wall_s": wall, "restore_s": restore, "overhead_fraction": (wall - restore) / wall,
                          "bookkeeping_fraction": book / wall,
                          "overhead_ms_per_image": (wall - restore) / n * 1000.0,
                          "failures": len(res.failures), "stages_s": stages,
                          "metrics": [m.name for m in p.metrics if m.status == "ok"],
                          "device": str(p.device)}
    return out


@click.command("harness")
@click.option("--n", "n", type=click.IntRange(min=1), default=100, show_default=True, help="Number of images.")
@click.option("--size", type=click.IntRange(min=16), default=256, show_default=True, help="HR side in px.")
@click.option("--scale", type=click.IntRange(min=1), default=4, show_default=True)
@click.option("--method", default="bicubic", show_default=True)
@click.option("--metrics", default=None, help="Comma-separated metrics (default: all registered).")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="cpu", show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def bench_harness_cmd(n: int, size: int, scale: int, method: str, metrics: str | None, device: str,
                      as_json: bool) -> None:
    """Harness overhead of `compare` (everything but method.restore) as a fraction of wall time."""
    from ..cli import emit_json, fail_usage
    from ..errors import RestorekitError

    names = [m.strip() for m in metrics.split(",") if m.strip()] if metrics else None
    try:
        data = run_bench(n, size, scale, method, names, device)
    except RestorekitError as exc:
        fail_usage(str(exc))
        return
    if as_json:
        emit_json(data)
        return
    for label in ("cold", "resumed"):
        d = data[label]
        stages = ", ".join(f"{k} {v:.2f}s" for k, v in sorted(d["stages_s"].items(), key=lambda kv: -kv[1]))
        click.echo(f"{label:>8}: {n} images {size}px ×{scale} with {method} on {d['device']}: wall {d['wall_s']:.2f}s, "
                   f"restore {d['restore_s']:.2f}s, harness overhead {d['overhead_fraction']:.1%} "
                   f"({d['overhead_ms_per_image']:.1f} ms/image; goal < 20%)")
        click.echo(f"          bookkeeping (all but restore, metrics, image decode/encode): "
                   f"{d['bookkeeping_fraction']:.1%}; stages: {stages}")
