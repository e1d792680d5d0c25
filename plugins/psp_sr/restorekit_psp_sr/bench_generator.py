"""Throughput of the StyleGAN2 generator against plain convolutions on the same shapes.

:func:`bench_generator` synthesizes random W+ batches with a randomly initialised generator —
with its inference settings (:func:`.inference.optimize_generator` and, on CPU from 256 px,
:func:`restorekit.memory.keep_freed_memory_for`: what ``psp_sr`` runs) unless ``optimize=False`` — and reports time per image, images/s, peak memory and FLOP rates.
The plain-convolution reference is :mod:`.conv_reference`'s, measured in the same run:
``ratio`` = generator conv-FLOP rate / plain-conv rate on the same convolutions in the layout
the generator used (the share of its time its convolutions alone would take; 1.0 means zero
overhead); ``ratio_nchw`` against the same convolutions on contiguous ``NCHW`` tensors.

Peak memory: CUDA ``max_memory_allocated``; CPU the growth of the process' peak RSS
(``getrusage``) over the first synthesis — 0 when an earlier allocation already set the peak.
"""

from __future__ import annotations

import gc
import resource
import sys
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from .conv_reference import measure_against_convs, sync
from .inference import optimize_generator
from .stylegan2 import StyleGAN2Generator


@dataclass
class GeneratorBench:
    """What ``restorekit bench generator`` reports."""

    resolution: int
    batch: int
    device: str
    channel_multiplier: int
    channel_max: int
    threads: int
    optimized: bool
    ms_per_image: float
    images_per_s: float
    peak_memory_mb: float
    memory_kind: str
    gflop_per_image: float
    gflops: float
    conv_gflop_per_image: float
    conv_ms_per_image: float
    conv_gflops: float
    ratio: float
    conv_nchw_ms_per_image: float
    ratio_nchw: float
    layout: str
    n_convs: int
    profile_top: list[dict[str, Any]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _maxrss_mb() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return r / (1024 * 1024) if sys.platform == "darwin" else r / 1024


def profile_top(fn: Any, device: torch.device, n: int = 12) -> list[dict[str, Any]]:
    """The ``n`` ops with the most self time in one profiled call of ``fn``."""
    from torch.profiler import ProfilerActivity, profile as tprofile

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with torch.inference_mode(), tprofile(activities=acts) as prof:
        fn()
        sync(device)
    key = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    rows = sorted(prof.key_averages(), key=lambda e: getattr(e, key), reverse=True)[:n]
    tot = sum(getattr(e, key) for e in prof.key_averages()) or 1.0
    return [{"op": e.key, "calls": e.count, "self_ms": getattr(e, key) / 1e3,
             "share": getattr(e, key) / tot} for e in rows]


def bench_generator(resolution: int = 1024, batch: int = 1, device: str = "cpu",
                    channel_multiplier: int = 2, *, channel_max: int = 512, repeats: int = 2,
                    profile: bool = False, seed: int = 0, optimize: bool = True) -> GeneratorBench:
    """Measure synthesis of ``batch`` images at ``resolution`` (random weights, const noise).

    Runs: one untimed synthesis (memory), one under the FLOP counter and conv recorder,
    then ``repeats`` rounds of (timed synthesis, timed plain-conv replays) after one replay
    warm-up — the fastest of each counts — and optionally one synthesis under ``torch.profiler``.
    """
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("bench generator: --device cuda but CUDA is not available")
    torch.manual_seed(seed)
    g = StyleGAN2Generator(resolution, 512, 8, channel_multiplier, channel_max=channel_max).to(dev).eval().requires_grad_(False)
    if optimize:
        optimize_generator(g)
        from restorekit.memory import keep_freed_memory_for

        keep_freed_memory_for(dev, resolution)  # as psp_sr's keep_memory does
    wp = torch.randn(batch, g.n_styles, g.style_dim, device=dev)
    gc.collect()
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
        base = torch.cuda.memory_allocated(dev)
    else:
        base = _maxrss_mb()
    with torch.inference_mode():
        g.synthesize(wp)
        sync(dev)
    if dev.type == "cuda":
        peak, kind = (torch.cuda.max_memory_allocated(dev) - base) / 2**20, "cuda max_memory_allocated"
    else:
        peak, kind = max(0.0, _maxrss_mb() - base), "peak RSS growth (getrusage)"

    m = measure_against_convs(lambda: g.synthesize(wp), dev, wp.dtype, repeats=repeats)
    top = profile_top(lambda: g.synthesize(wp), dev) if profile else []
    best = m.seconds
    return GeneratorBench(
        resolution=resolution, batch=batch, device=str(dev), channel_multiplier=channel_multiplier,
        channel_max=channel_max, threads=torch.get_num_threads(), optimized=optimize,
        ms_per_image=best * 1e3 / batch, images_per_s=batch / best,
        peak_memory_mb=peak, memory_kind=kind, gflop_per_image=m.flops / batch / 1e9,
        gflops=m.flops / best / 1e9, conv_gflop_per_image=m.conv_flops / batch / 1e9,
        conv_ms_per_image=m.conv_s * 1e3 / batch, conv_gflops=m.conv_flops / m.conv_s / 1e9,
        ratio=m.fraction, conv_nchw_ms_per_image=m.conv_nchw_s * 1e3 / batch, ratio_nchw=m.fraction_nchw,
        layout=m.layout, n_convs=m.n_convs, profile_top=top)


def format_report(r: GeneratorBench) -> str:
    """Human-readable lines for the CLI."""
    layout = r.layout
    lines = [
        f"StyleGAN2 {r.resolution}px ×{r.channel_multiplier} batch {r.batch} on {r.device} ({r.threads} threads, "
        f"{'inference settings' if r.optimized else 'not optimised'})",
        f"  generator : {r.ms_per_image:9.1f} ms/image  {r.images_per_s:7.2f} images/s  "
        f"{r.gflop_per_image:6.1f} GFLOP/image  {r.gflops:7.1f} GFLOP/s",
        f"  plain conv: {r.conv_ms_per_image:9.1f} ms/image  ({r.n_convs} convs, "
        f"{r.conv_gflop_per_image:6.1f} GFLOP/image, {layout})  {r.conv_gflops:7.1f} GFLOP/s",
        f"  ratio (conv-FLOP rate of generator / plain conv): {r.ratio:.2f}",
        f"  ratio against the same convs on NCHW tensors ({r.conv_nchw_ms_per_image:.1f} ms/image): {r.ratio_nchw:.2f}",
        f"  peak memory: {r.peak_memory_mb:.0f} MiB ({r.memory_kind})",
    ]
    for row in r.profile_top:
        lines.append(f"    {row['op']:<40} {row['calls']:5d} calls {row['self_ms']:9.1f} ms {row['share']:6.1%}")
    return "\n".join(lines)
