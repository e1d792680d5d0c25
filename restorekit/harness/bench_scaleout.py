"""``restorekit bench scaleout``: ``compare`` under ``torchrun``, N processes against one, in one run.

Makes ``--n`` synthetic images (not timed), then runs the same ``compare`` twice through
``python -m torch.distributed.run --standalone``: with one process and with ``--processes``, each
process with ``--threads`` threads, each into a fresh folder. The method is
:class:`PulseLike`, a stand-in for PULSE-like work that burns CPU per image (gradient steps on a
latent through a small fixed generator until its output downscales to the input), so the
figure is about the work, not a sleep. Throughput is images per second of each run's own
``wall_s`` (from ``results.json``: inputs, metrics, store and every rank, without interpreter
start-up). The two launches alternate ``--repeats`` times (default 3); every figure is the median
over the repeats with its range (smallest–largest), and the speed-up is the ratio of the median
throughputs with its range over every pairing of a one-process run with an N-process run
(:func:`restorekit.commands.bench.ratio_spread`). Every run's per-image metrics are compared too: they
must be the same numbers. "cores busy" is each launch's CPU time over its wall time (start-up
included): on a machine shared with other work it shows how much of the cores a run got.
``--metrics`` and ``--size``/``--scale`` are checked before the first launch
(:func:`check_settings`); a launch that fails anyway is reported by its worker's own error line
(:func:`worker_error`), not by torchrun's summary.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, ClassVar

import click
import torch
from pydantic import Field
from torch import Tensor

from ..cli import json_output
from ..commands.bench import fmt_ratio, fmt_spread, ratio_spread, spread
from ..interfaces import Method, MethodInfo, Options
from ..sharding import cpu_budget

PULSELIKE = "bench_pulselike"
#: Alternating runs of each launch, by default (figures: medians and their range).
DEFAULT_REPEATS = 3
#: The figures of a launch summarised over the repeats.
FIGURES = ("wall_s", "images_per_s", "launcher_s", "cores_busy", "method_ms_per_image")


class PulseLikeOptions(Options):
    """Options of the PULSE-like stand-in."""

    steps: int = Field(100, ge=1, description="gradient steps per image (the work per image)")
    channels: int = Field(96, ge=8, description="channels of the fixed random generator")


class PulseLike(Method):
    """A stand-in for PULSE: search a fixed random generator's latent until its output downscales to the input.

    The generator (linear, then three upsample + 3×3 conv blocks to 32 px, then to RGB) has
    weights drawn from a fixed seed, so every process holds the same network; the latent's
    start is drawn from the seed. Deterministic for a given seed and thread count.
    """

    info: ClassVar[MethodInfo] = MethodInfo(
        name=PULSELIKE, summary="bench stand-in: PULSE-like latent search through a small fixed random generator",
        license="Apache-2.0", deterministic=False)
    Options: ClassVar[type[Options]] = PulseLikeOptions
    options: PulseLikeOptions

    def load(self) -> None:
        c = self.options.channels
        gen = torch.Generator().manual_seed(1234)
        layers: list[torch.nn.Module] = []
        for _ in range(3):
            layers += [torch.nn.Upsample(scale_factor=2.0, mode="nearest"), torch.nn.Conv2d(c, c, 3, padding=1),
                       torch.nn.LeakyReLU(0.2)]
        self.net = torch.nn.Sequential(torch.nn.Linear(64, c * 16), torch.nn.Unflatten(1, (c, 4, 4)), *layers,
                                       torch.nn.Conv2d(c, 3, 1), torch.nn.Sigmoid()).to(self.device)
        with torch.no_grad():
            for p in self.net.parameters():
                p.copy_(torch.randn(p.shape, generator=gen) * (1.0 / max(1, p[0].numel()) ** 0.5))
        self.net.requires_grad_(False)

    def restore(self, lr: Tensor, scale: int, *, seed: int | None = None, n_samples: int = 1) -> Tensor:
        self.check_scale(scale)
        size = (lr.shape[-2] * scale, lr.shape[-1] * scale)
        outs = []
        for i in range(n_samples):
            g = torch.Generator().manual_seed((seed or 0) + i)
            z = torch.randn(lr.shape[0], 64, generator=g).to(lr.device).requires_grad_(True)
            opt = torch.optim.Adam([z], lr=0.05)
            with torch.enable_grad():
                for _ in range(self.options.steps):
                    sr = torch.nn.functional.interpolate(self.net(z), size=size, mode="bilinear", align_corners=False)
                    loss = torch.nn.functional.mse_loss(torch.nn.functional.avg_pool2d(sr, scale), lr)
                    opt.zero_grad()
                    loss.backward()
                    opt.step()
            with torch.no_grad():
                outs.append(torch.nn.functional.interpolate(self.net(z), size=size, mode="bilinear",
                                                            align_corners=False).clamp(0, 1))
        return torch.cat(outs)


def _children_cpu_s() -> float:
    """CPU seconds of the finished child processes (and theirs): -1 where the OS cannot tell."""
    try:
        import resource
    except ImportError:  # Windows
        return -1.0
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def _launch(processes: int, threads: int, hr: Path, out: Path, scale: int, steps: int,
            metrics: str) -> dict[str, Any]:
    """One ``compare`` under ``torchrun``; its throughput and the numbers it wrote."""
    # (--log-dir os.devnull: torchrun's default is a new /tmp/torchelastic_* folder per launch, never removed)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes),
           "--log-dir", os.devnull, "-m", "restorekit.harness.bench_worker", "compare", "--methods", PULSELIKE, "--scale", str(scale),
           "--data", str(hr), "--out", str(out), "--metrics", metrics, "--device", "cpu", "-q",
           "--opt", f"{PULSELIKE}.steps={steps}", "--degradation", f"bicubic:{scale}"]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    cpu0 = _children_cpu_s()
    t0 = time.perf_counter()
    res = subprocess.run(cmd, capture_output=True, text=True, encoding="utf-8", errors="replace", env=env)
    launcher_s = time.perf_counter() - t0
    cpu_s = _children_cpu_s() - cpu0
    if res.returncode != 0:
        from ..errors import RestorekitError

        raise RestorekitError(f"bench scaleout: compare with {processes} process{'es' if processes > 1 else ''} "
                              f"failed: {worker_error(res.stderr)}")
    doc = json.loads((out / "results.json").read_text(encoding="utf-8"))
    n = sum(1 for img in doc["images"] if img["status"] == "ok")
    return {"processes": processes, "threads": threads, "images": n, "wall_s": doc["wall_s"],
            "images_per_s": n / doc["wall_s"], "launcher_s": launcher_s,
            "cores_busy": cpu_s / launcher_s if cpu_s >= 0 else None,
            "method_ms_per_image": doc["methods"][0]["aggregate"]["runtime_ms"]["mean"],
            "numbers": [(img["image"], img["seed"], img["metrics"], img["output_sha256"]) for img in doc["images"]],
            "aggregate": doc["methods"][0]["aggregate"]["metrics"]}


_ERROR_LINE = re.compile(r"^(?:\[[^\]]*\]:?\s*)?(?:error|Error): (.+)$")


def worker_error(stderr: str) -> str:
    """What a failed ``compare`` under ``torchrun`` said: its first ``error:`` line (restorekit's
    one-line errors, click's ``Error:``; a ``[rank0]:`` prefix dropped), rather than torchrun's
    summary below it, which names no cause; the last lines when there is none."""
    for line in stderr.splitlines():
        m = _ERROR_LINE.match(line.strip())
        if m:
            return m.group(1).strip()
    return " | ".join(stderr.strip().splitlines()[-3:]) or "no message"


def check_settings(size: int, scale: int, metrics: str) -> list[str]:
    """The metric names of ``metrics``, checked before any launch: known to the registry, and
    low-resolution inputs (``size // scale``) of at least the 2 px a side compare takes. :class:`RestorekitError`
    (one line) otherwise: a mistake found by the first worker after torchrun's start-up cost
    half a minute and came back as torchrun's summary."""
    from ..errors import RestorekitError
    from ..plugins import registry

    if size // scale < 2:  # compare's own floor for an LR side
        raise RestorekitError(f"bench scaleout: --size {size} at --scale {scale} gives {size // scale}-px "
                              f"low-resolution inputs; compare needs at least 2 px a side: use --size "
                              f"{2 * scale} or more, or a smaller --scale")
    names = [m.strip() for m in metrics.split(",") if m.strip()]
    if not names:
        raise RestorekitError(f"bench scaleout: --metrics '{metrics}' names no metric")
    reg = registry()
    for name in names:
        try:
            reg.metric(name)
        except RestorekitError as exc:  # unknown: with a did-you-mean and the known names
            raise RestorekitError(f"bench scaleout: --metrics: {exc}") from None
    return names


def _summary(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """One launch's repeats: each figure the median of the runs' own figures (images/s too: the
    median of the per-run rates, which for an even number of repeats is not images over the median
    wall time), ``<figure>_range`` its ``[min, max]``."""
    out: dict[str, Any] = {k: runs[0][k] for k in ("processes", "threads", "images")}
    for key in FIGURES:
        vals = [r[key] for r in runs if r[key] is not None]
        s = spread(vals) if vals else None
        out[key] = s["median"] if s else None
        out[f"{key}_range"] = [s["min"], s["max"]] if s else None
    out["repeats"] = len(runs)
    return out


def run_scaleout(n: int, size: int, scale: int, processes: int, threads: int, steps: int, metrics: str,
                 repeats: int = DEFAULT_REPEATS) -> dict[str, Any]:
    """One process, then ``processes``, ``repeats`` times alternately; medians and ranges of each."""
    from PIL import Image

    from ..testing.data import smooth_image

    check_settings(size, scale, metrics)
    runs: dict[int, list[dict[str, Any]]] = {1: [], processes: []}
    with tempfile.TemporaryDirectory(prefix="restorekit-scaleout-") as tmp:
        hr = Path(tmp) / "hr"
        hr.mkdir()
        for i in range(n):
            Image.fromarray(smooth_image(size, size, i)).save(hr / f"img{i:04d}.png", compress_level=1)
        for r in range(repeats):
            for p in (1, processes):
                runs[p].append(_launch(p, threads, hr, Path(tmp) / f"out{p}_{r}", scale, steps, metrics))
    ref = runs[1][0]
    identical = all(r["numbers"] == ref["numbers"] and r["aggregate"] == ref["aggregate"]
                    for rs in runs.values() for r in rs)
    one, many = _summary(runs[1]), _summary(runs[processes])
    speedup = ratio_spread([r["images_per_s"] for r in runs[processes]], [r["images_per_s"] for r in runs[1]])
    assert speedup is not None  # images per second are positive
    return {"n": n, "size": size, "scale": scale, "steps": steps, "metrics": metrics, "repeats": repeats,
            "one": one, "many": many,
            "speedup": speedup["ratio"], "speedup_range": [speedup["min"], speedup["max"]],
            "identical": identical,
            "cpu_cores": cpu_budget()}


def format_scaleout(d: dict[str, Any]) -> str:
    one, many = d["one"], d["many"]

    def cell(r: dict[str, Any], key: str, digits: int) -> str:
        if r[key] is None:
            return "-"
        rng = r.get(f"{key}_range") or [r[key], r[key]]
        return fmt_spread({"median": r[key], "min": rng[0], "max": rng[1], "n": r.get("repeats", 1)}, digits)

    cols = [("wall s", "wall_s", 2), ("images/s", "images_per_s", 3), ("method ms/img", "method_ms_per_image", 1),
            ("cores busy", "cores_busy", 2)]
    cells = [[cell(r, key, dg) for _, key, dg in cols] for r in (one, many)]
    ws = [max(len(h), *(len(c[i]) for c in cells)) + 2 for i, (h, _, _) in enumerate(cols)]
    rows = [f"compare under torchrun: {d['n']} images, {d['size']} px, ×{d['scale']}, {PULSELIKE} "
            f"({d['steps']} steps), metrics {d['metrics']}, {d['cpu_cores']} cores; median of {d['repeats']} "
            f"alternating runs (smallest–largest)",
            f"{'processes × threads':<22}" + "".join(f"{h:>{w}}" for (h, _, _), w in zip(cols, ws))]
    for r, c in zip((one, many), cells):
        label = f"{r['processes']} × {r['threads']}"
        rows.append(f"{label:<22}" + "".join(f"{x:>{w}}" for x, w in zip(c, ws)))
    rng = d.get("speedup_range") or [d["speedup"], d["speedup"]]
    rows.append(f"speed-up {many['processes']} processes / 1: "
                f"{fmt_ratio({'ratio': d['speedup'], 'min': rng[0], 'max': rng[1]})} (ratio of the median "
                f"images/s, range over all pairs of runs); results identical: {'yes' if d['identical'] else 'NO'}")
    return "\n".join(rows)


@click.command("scaleout")
@click.option("--n", "n", type=click.IntRange(min=2), default=16, show_default=True, help="Number of images.")
@click.option("--size", type=click.IntRange(min=16), default=64, show_default=True, help="HR side in px.")
@click.option("--scale", type=click.IntRange(min=1), default=4, show_default=True,
              help="Output size = scale × LR size.")
@click.option("--processes", type=click.IntRange(min=2), default=2, show_default=True,
              help="Processes of the second run (the first has one).")
@click.option("--threads", type=click.IntRange(min=1), default=1, show_default=True,
              help="Threads per process (OMP_NUM_THREADS), in both runs.")
@click.option("--steps", type=click.IntRange(min=1), default=100, show_default=True,
              help="The stand-in's gradient steps per image (its work per image).")
@click.option("--metrics", default="psnr_y_crop,ssim_y_crop", show_default=True,
              help="Comma-separated metrics scored in both runs.")
@click.option("--repeats", "--repeat", "repeats", type=click.IntRange(min=1), default=DEFAULT_REPEATS, show_default=True,
              help="Run both this many times, alternately; figures are medians with their range.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@json_output
def bench_scaleout_cmd(n: int, size: int, scale: int, processes: int, threads: int, steps: int, metrics: str,
                       repeats: int, as_json: bool) -> None:
    """compare's images per second under torchrun: --processes processes against one, as a ratio."""
    from ..cli import emit_json

    data = run_scaleout(n, size, scale, processes, threads, steps, metrics, repeats)
    if as_json:
        emit_json(data)
    else:
        click.echo(format_scaleout(data))
    if not data["identical"]:
        raise SystemExit(1)
