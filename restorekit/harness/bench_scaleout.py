"""``restorekit bench scaleout``: ``compare`` under ``torchrun``, N processes against one, in one run.

Makes ``--n`` synthetic images (not timed), then runs the same ``compare`` twice through
``python -m torch.distributed.run --standalone``: with one process and with ``--processes``, each
process with ``--threads`` threads, each into a fresh folder. The method is
:class:`PulseLike`, a stand-in for PULSE-like work that burns CPU per image (gradient steps on a
latent through a small fixed generator until its output downscales to the input), so the
figure is about the work, not a sleep. Throughput is images per second of each run's own
``wall_s`` (from ``results.json``: inputs, metrics, store and every rank, without interpreter
start-up); the speed-up is their ratio. Both runs' per-image metrics are compared too: they
must be the same numbers. "cores busy" is each launch's CPU time over its wall time (start-up
included): on a machine shared with other work it shows how much of the cores a run got.
"""

from __future__ import annotations

import json
import os
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

from ..interfaces import Method, MethodInfo, Options

PULSELIKE = "bench_pulselike"


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
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes),
           "-m", "restorekit.harness.bench_worker", "compare", "--methods", PULSELIKE, "--scale", str(scale),
           "--data", str(hr), "--out", str(out), "--metrics", metrics, "--device", "cpu", "-q",
           "--opt", f"{PULSELIKE}.steps={steps}"]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    cpu0 = _children_cpu_s()
    t0 = time.perf_counter()
    res = subprocess.run(cmd, capture_output=True, text=True, env=env)
    launcher_s = time.perf_counter() - t0
    cpu_s = _children_cpu_s() - cpu0
    if res.returncode != 0:
        from ..errors import RestorekitError

        tail = " | ".join(res.stderr.strip().splitlines()[-3:])
        raise RestorekitError(f"bench scaleout: compare with {processes} processes failed ({tail})")
    doc = json.loads((out / "results.json").read_text())
    n = sum(1 for img in doc["images"] if img["status"] == "ok")
    return {"processes": processes, "threads": threads, "images": n, "wall_s": doc["wall_s"],
            "images_per_s": n / doc["wall_s"], "launcher_s": launcher_s,
            "cores_busy": cpu_s / launcher_s if cpu_s >= 0 else None,
            "method_ms_per_image": doc["methods"][0]["aggregate"]["runtime_ms"]["mean"],
            "numbers": [(img["image"], img["seed"], img["metrics"], img["output_sha256"]) for img in doc["images"]],
            "aggregate": doc["methods"][0]["aggregate"]["metrics"]}


def run_scaleout(n: int, size: int, scale: int, processes: int, threads: int, steps: int, metrics: str,
                 repeats: int = 1) -> dict[str, Any]:
    """One process, then ``processes``, ``repeats`` times alternately; the best throughput of each."""
    from PIL import Image

    from ..testing.data import smooth_image

    runs: dict[int, list[dict[str, Any]]] = {1: [], processes: []}
    with tempfile.TemporaryDirectory(prefix="restorekit-scaleout-") as tmp:
        hr = Path(tmp) / "hr"
        hr.mkdir()
        for i in range(n):
            Image.fromarray(smooth_image(size, size, i)).save(hr / f"img{i:04d}.png", compress_level=1)
        for r in range(repeats):
            for p in (1, processes):
                runs[p].append(_launch(p, threads, hr, Path(tmp) / f"out{p}_{r}", scale, steps, metrics))
    best = {p: max(rs, key=lambda x: x["images_per_s"]) for p, rs in runs.items()}
    one, many = best[1], best[processes]
    identical = all(r["numbers"] == one["numbers"] and r["aggregate"] == one["aggregate"]
                    for rs in runs.values() for r in rs)
    strip = ("numbers", "aggregate")
    return {"n": n, "size": size, "scale": scale, "steps": steps, "metrics": metrics, "repeats": repeats,
            "one": {k: v for k, v in one.items() if k not in strip},
            "many": {k: v for k, v in many.items() if k not in strip},
            "speedup": many["images_per_s"] / one["images_per_s"], "identical": identical,
            "cpu_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()}


def format_scaleout(d: dict[str, Any]) -> str:
    one, many = d["one"], d["many"]
    rows = [f"compare under torchrun: {d['n']} images, {d['size']} px, ×{d['scale']}, {PULSELIKE} "
            f"({d['steps']} steps), metrics {d['metrics']}, {d['cpu_cores']} cores, best of {d['repeats']}",
            f"{'processes × threads':<22}{'wall s':>10}{'images/s':>12}{'method ms/img':>16}{'cores busy':>12}"]
    for r in (one, many):
        busy = "-" if r["cores_busy"] is None else f"{r['cores_busy']:.2f}"
        rows.append(f"{str(r['processes']) + ' × ' + str(r['threads']):<22}{r['wall_s']:>10.2f}"
                    f"{r['images_per_s']:>12.3f}{r['method_ms_per_image']:>16.1f}{busy:>12}")
    rows.append(f"speed-up {many['processes']} processes / 1: {d['speedup']:.2f}×; "
                f"results identical: {'yes' if d['identical'] else 'NO'}")
    return "\n".join(rows)


@click.command("scaleout")
@click.option("--n", "n", type=click.IntRange(min=2), default=16, show_default=True, help="Number of images.")
@click.option("--size", type=click.IntRange(min=16), default=64, show_default=True, help="HR side in px.")
@click.option("--scale", type=click.IntRange(min=1), default=4, show_default=True)
@click.option("--processes", type=click.IntRange(min=2), default=2, show_default=True,
              help="Processes of the second run (the first has one).")
@click.option("--threads", type=click.IntRange(min=1), default=1, show_default=True,
              help="Threads per process (OMP_NUM_THREADS), in both runs.")
@click.option("--steps", type=click.IntRange(min=1), default=100, show_default=True,
              help="The stand-in's gradient steps per image (its work per image).")
@click.option("--metrics", default="psnr_y_crop,ssim_y_crop", show_default=True)
@click.option("--repeats", type=click.IntRange(min=1), default=1, show_default=True,
              help="Run both this many times, alternately, and keep the best of each (busy machines).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
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
