"""``restorekit bench harness``: what a ``compare`` run costs per image besides the method.

Makes ``--n`` synthetic smooth images of ``--size`` px in a temporary folder (not timed), then runs
``compare`` in-process once per method, each into a fresh folder (LR inputs made, outputs written,
metrics, reports): ``--method`` (bicubic: a few ms per image, so the harness dominates) and a
stand-in that takes ``--standin-ms`` (50) per image, about a small network's time. Per image, in
ms: reading (decoding and hashing the HR and LR files), degrading, metrics, writing (LR and output
PNGs, the result store), report (table, CSV, JSON, HTML), set-up (planning, metric set-up) and
other (the runner's own bookkeeping), next to the method's restore time, with harness/method as a
ratio. Interpreter start-up and imports are not counted (the same for any harness), nor loading
the method (its own cost, reported apart).

The two methods' timed runs alternate ``--repeats`` times (:data:`DEFAULT_REPEATS`), each into a
fresh folder, so load from other processes hits both alike; every figure is the median over the
repeats — the run with the median wall time, whose stages add up to its harness cost — with the
range of each figure over all the repeats (smallest–largest), and harness/method that run's ratio
with its range over every pairing of repeats (:func:`restorekit.commands.bench.ratio_spread`).

Before the timed runs, both methods run once, untimed, on :data:`WARMUP_IMAGES` of the images:
the first ``compare`` in a process pays one-time costs (imports inside functions, kernel and
allocator set-up, first-call dispatch) that a run after it does not, so without it ``--method``
(timed first) was charged them and the stand-in was not. The device and torch's intra-op thread
count are printed with the figures (``torch_threads`` in the JSON).
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, ClassVar

import click
from pydantic import Field
from torch import Tensor

from ..cli import json_output
from ..commands.bench import fmt_ratio, fmt_spread, ratio_spread, spread
from ..devices import DEVICE, DEVICE_HELP
from ..errors import RestorekitError
from ..options import FiniteFloatRange
from ..interfaces import Method, MethodInfo, Options

STANDIN = "bench_standin"
#: Images of the untimed warm-up pass of each method before the timed runs.
WARMUP_IMAGES = 2
#: Timed runs of each method (alternating), by default.
DEFAULT_REPEATS = 3
STAGES = ("reading", "degrading", "metrics", "writing", "report", "set-up", "other")


class StandInOptions(Options):
    """Options of the bench stand-in."""

    ms_per_image: float = Field(50.0, ge=0, description="time each image takes (bicubic, then sleep)")


class StandIn(Method):
    """A method that takes a fixed time per image: bicubic upscaling, then sleep for the rest."""

    info: ClassVar[MethodInfo] = MethodInfo(
        name=STANDIN, summary="bench stand-in: bicubic upscaling padded to a fixed time per image",
        license="Apache-2.0", deterministic=True)
    Options: ClassVar[type[Options]] = StandInOptions
    options: StandInOptions

    def restore(self, lr: Tensor, scale: int, *, seed: int | None = None, n_samples: int = 1) -> Tensor:
        from ..degradations import bicubic_resize

        t0 = time.perf_counter()
        out = bicubic_resize(lr, (lr.shape[-2] * scale, lr.shape[-1] * scale)).clamp(0, 1)
        out = out.repeat_interleave(n_samples, dim=0) if n_samples > 1 else out
        rest = self.options.ms_per_image * lr.shape[0] / 1000.0 - (time.perf_counter() - t0)
        if rest > 0:
            time.sleep(rest)
        return out


@contextmanager
def _registered(cls: type[Method]) -> Iterator[None]:
    """``cls`` in the process registry for the duration (compare plans by name)."""
    from ..plugins import registry

    reg = registry()
    name = cls.info.name
    reg.add("methods", name, cls, "bench")
    try:
        yield
    finally:
        reg.items["methods"].pop(name, None)
        reg.owner["methods"].pop(name, None)


def _one_run(hr: Path, out: Path, method: str, opts: dict[str, Any], n: int, scale: int, metrics: list[str] | None,
             device: str) -> dict[str, Any]:
    """One cold ``compare`` of ``method``: per-image ms of each stage, the method's, and the ratio."""
    from .report_summary import summarize_result
    from .reports import write_all
    from .runner import CompareConfig, execute, plan

    cfg = CompareConfig(methods=[method], scale=scale, data=str(hr), out=out, metrics=metrics, device=device,
                        opts={method: opts} if opts else {}, degradation=f"bicubic:{scale}")
    t0 = time.perf_counter()
    p = plan(cfg)
    t_plan = time.perf_counter() - t0
    res = execute(p)
    t1 = time.perf_counter()
    failed = [r for r in res.records if r.status != "ok"]
    if failed:  # timings of images that failed would be a table of zeros
        raise RestorekitError(f"bench harness: {method} failed on {len(failed)}/{len(res.records)} images "
                              f"({failed[0].error})")
    write_all(summarize_result(res), cfg.out)
    wall = time.perf_counter() - t0
    st = res.timings
    degrade, write_lr = st.get("degrade", 0.0), st.get("write_lr", 0.0)
    seconds = {"reading": st.get("inputs", 0.0) - degrade - write_lr, "degrading": degrade,
               "metrics": st.get("metrics", 0.0), "writing": st.get("save", 0.0) + write_lr + st.get("store", 0.0),
               "report": wall - (t1 - t0),
               "set-up": t_plan + st.get("metric_setup", 0.0)}
    restore, load = st.get("restore", 0.0), st.get("method_load", 0.0)
    seconds["other"] = max(0.0, wall - restore - load - sum(seconds.values()))
    ms = {k: v / n * 1000.0 for k, v in seconds.items()}
    harness, method_ms = sum(ms.values()), restore / n * 1000.0
    return {"method": method, "wall_s": wall, "method_load_s": load, "ms_per_image": ms,
            "harness_ms_per_image": harness, "method_ms_per_image": method_ms,
            "harness_to_method": harness / method_ms if method_ms > 0 else None,
            "failures": len(res.failures), "metrics": [m.name for m in p.metrics if m.status == "ok"],
            "skipped_metrics": [m.name for m in p.metrics if m.status != "ok"], "device": str(p.device)}


def _aggregate(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """One method's timed repeats as one entry: the figures of its median run (the run with the
    median wall time: the median itself for an odd number of repeats), so that its stages add up
    to its harness cost and, with the method and its loading, to its wall time; beside each figure
    ``<figure>_range``, its ``[min, max]`` over all the runs, and for harness/method the smallest
    and largest ratio over every pairing of a run's harness cost with a run's method time."""
    def rng(xs: list[float]) -> list[float]:
        s = spread(xs)
        return [s["min"], s["max"]]

    mid = sorted(runs, key=lambda r: r["wall_s"])[(len(runs) - 1) // 2]
    out: dict[str, Any] = {**mid, "repeats": len(runs)}
    for key in ("wall_s", "method_load_s", "harness_ms_per_image", "method_ms_per_image"):
        out[f"{key}_range"] = rng([r[key] for r in runs])
    out["ms_per_image_range"] = {k: rng([r["ms_per_image"][k] for r in runs]) for k in mid["ms_per_image"]}
    ratio = ratio_spread([r["harness_ms_per_image"] for r in runs], [r["method_ms_per_image"] for r in runs])
    out["harness_to_method_range"] = [ratio["min"], ratio["max"]] if ratio and mid["harness_to_method"] is not None else None
    out["failures"] = max(r["failures"] for r in runs)
    return out


def run_bench(n: int, size: int, scale: int, method: str, metrics: list[str] | None, device: str,
              standin_ms: float = 50.0, repeats: int = DEFAULT_REPEATS) -> dict[str, Any]:
    """``--method`` and the stand-in, alternately ``repeats`` times, each in a fresh folder, on the
    same ``n`` images, after one untimed warm-up run of each."""
    from PIL import Image

    from ..testing.data import smooth_image

    import torch

    warm = min(n, WARMUP_IMAGES)
    out: dict[str, Any] = {"n": n, "size": size, "scale": scale, "standin_ms": standin_ms,
                           "torch_threads": torch.get_num_threads(), "warmup_images": warm, "repeats": repeats,
                           "runs": []}
    timed: dict[str, list[dict[str, Any]]] = {method: [], STANDIN: []}
    with tempfile.TemporaryDirectory(prefix="restorekit-bench-") as tmp:
        hr = Path(tmp) / "hr"
        hr.mkdir()
        for i in range(n):
            Image.fromarray(smooth_image(size, size, i)).save(hr / f"img{i:04d}.png", compress_level=1)
        hr_warm = Path(tmp) / "hr-warm"
        hr_warm.mkdir()
        for i in range(warm):
            Image.fromarray(smooth_image(size, size, n + i)).save(hr_warm / f"img{i:04d}.png", compress_level=1)
        with _registered(StandIn):
            # Untimed: the process's one-time costs are paid here, by none of the timed runs.
            _one_run(hr_warm, Path(tmp) / "warm-a", method, {}, warm, scale, metrics, device)
            _one_run(hr_warm, Path(tmp) / "warm-b", STANDIN, {"ms_per_image": "0"}, warm, scale, metrics, device)
            for r in range(repeats):
                timed[method].append(_one_run(hr, Path(tmp) / f"a{r}", method, {}, n, scale, metrics, device))
                timed[STANDIN].append(_one_run(hr, Path(tmp) / f"b{r}", STANDIN, {"ms_per_image": str(standin_ms)},
                                               n, scale, metrics, device))
    out["runs"] = [_aggregate(timed[method]), _aggregate(timed[STANDIN])]
    return out


def format_report(data: dict[str, Any]) -> str:
    """The figures as a small table: one column per method, one row per stage (ms per image,
    the median run's and, in brackets, the smallest–largest over the repeats)."""
    runs = data["runs"]
    n_rep = data.get("repeats", 1)
    labels = [r["method"] if r["method"] != STANDIN else f"stand-in {data['standin_ms']:g} ms" for r in runs]

    def cell(r: dict[str, Any], key: str, stage: str | None = None) -> str:
        med = r[key][stage] if stage else r[key]
        rng = (r.get(f"{key}_range") or {}).get(stage) if stage else r.get(f"{key}_range")
        s = {"median": med, "min": rng[0], "max": rng[1], "n": n_rep} if rng else {"median": med, "n": 1}
        return fmt_spread(s)

    def ratio(r: dict[str, Any]) -> str:
        if r["harness_to_method"] is None:
            return "-"
        rng = r.get("harness_to_method_range") or [r["harness_to_method"]] * 2
        return fmt_ratio({"ratio": r["harness_to_method"], "min": rng[0], "max": rng[1]})

    table = [[stage, *(cell(r, "ms_per_image", stage) for r in runs)] for stage in STAGES]
    table.append(["harness", *(cell(r, "harness_ms_per_image") for r in runs)])
    table.append(["method", *(cell(r, "method_ms_per_image") for r in runs)])
    table.append(["harness/method", *(ratio(r) for r in runs)])
    w = max(14, *(len(x) for x in labels), *(len(c) for row in table for c in row[1:])) + 2
    lines = [f"compare's cost per image, ms ({data['n']} images, {data['size']} px, ×{data['scale']}, "
             f"{runs[0]['device']}, {data.get('torch_threads', '?')} torch threads, after an untimed warm-up "
             f"of {data.get('warmup_images', 0)} images each; metrics: {', '.join(runs[0]['metrics']) or 'none'})",
             f"median of {n_rep} alternating runs of each method (the run of median wall time, so the rows add "
             f"up; in brackets the smallest–largest run); harness/method: smallest–largest over all pairs of runs",
             f"{'':<16}" + "".join(f"{x:>{w}}" for x in labels)]
    lines += [f"{row[0]:<16}" + "".join(f"{c:>{w}}" for c in row[1:]) for row in table]
    if runs[0]["skipped_metrics"]:
        lines.append(f"skipped metrics (weights missing): {', '.join(runs[0]['skipped_metrics'])}")
    return "\n".join(lines)


@click.command("harness")
@click.option("--n", "n", type=click.IntRange(min=1), default=100, show_default=True, help="Number of images.")
@click.option("--size", type=click.IntRange(min=16), default=256, show_default=True, help="HR side in px.")
@click.option("--scale", type=click.IntRange(min=1), default=4, show_default=True,
              help="Output size = scale × LR size.")
@click.option("--method", default="bicubic", show_default=True, help="The real method timed beside the stand-in.")
@click.option("--standin-ms", type=FiniteFloatRange(min=0), default=50.0, show_default=True,
              help="Time per image of the stand-in method.")
@click.option("--metrics", default=None, help="Comma-separated metrics (default: all registered).")
@click.option("--device", type=DEVICE, default="cpu", show_default=True,
              help="Where the methods and metrics run: " + DEVICE_HELP)
@click.option("--repeats", "--repeat", "repeats", type=click.IntRange(min=1), default=DEFAULT_REPEATS, show_default=True,
              help="Timed runs of each method, alternating; figures are medians with their range.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@json_output
def bench_harness_cmd(n: int, size: int, scale: int, method: str, standin_ms: float, metrics: str | None, device: str,
                      repeats: int, as_json: bool) -> None:
    """compare's own cost per image (reading, degrading, metrics, writing, report) next to the method's."""
    from ..cli import emit_json, fail_usage

    names = [m.strip() for m in metrics.split(",") if m.strip()] if metrics else None
    if size < scale:
        fail_usage(f"--size {size} is smaller than --scale {scale}: the LR would have no pixel")
        return
    try:
        data = run_bench(n, size, scale, method, names, device, standin_ms, repeats)
    except RestorekitError as exc:
        fail_usage(str(exc))
        return
    if as_json:
        emit_json(data)
    else:
        click.echo(format_report(data))
