"""Throughput of the StyleGAN2 generator against plain convolutions on the same shapes.

:func:`bench_generator` synthesizes random W+ batches with a randomly initialised generator —
with its inference settings (:func:`.inference.optimize_generator` and, on CPU from 256 px,
:func:`restorekit.memory.keep_freed_memory_for`: what ``psp_sr`` runs) unless ``optimize=False`` — and reports time per image, images/s, peak memory and FLOP rates.
The plain-convolution reference is :mod:`.conv_reference`'s, measured in the same run:
``ratio`` = generator conv-FLOP rate / plain-conv rate on the same convolutions in the layout
the generator used (the share of its time its convolutions alone would take; 1.0 means zero
overhead); ``ratio_nchw`` against the same convolutions on contiguous ``NCHW`` tensors.

The generator and the two replays are timed alternately ``repeats`` times (:func:`measure_samples`);
every time is the median of its rounds with the range (``*_range``: smallest–largest round), and
each ratio the ratio of the medians with its range over every pairing of rounds
(:func:`restorekit.commands.bench.ratio_spread`).

Peak memory: CUDA ``max_memory_allocated``; CPU the growth of the process' peak RSS
(``getrusage``) over the first synthesis — 0 when an earlier allocation already set the peak.
"""

from __future__ import annotations

import gc
import sys
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from restorekit.commands.bench import ratio_spread, spread

from .conv_reference import ConvMeasure, Replay, conv_flops, dense, layout_of, record, sync
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
    repeats: int = 1
    ms_per_image_range: list[float] = field(default_factory=list)
    conv_ms_per_image_range: list[float] = field(default_factory=list)
    conv_nchw_ms_per_image_range: list[float] = field(default_factory=list)
    ratio_range: list[float] = field(default_factory=list)
    ratio_nchw_range: list[float] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _maxrss_mb() -> float | None:
    """The process's peak resident set; None where it is not known (Windows has no ``resource``)."""
    try:
        import resource
    except ImportError:
        return None
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return r / (1024 * 1024) if sys.platform == "darwin" else r / 1024


@dataclass
class ConvSamples:
    """:class:`.conv_reference.ConvMeasure` of the medians, and every round's seconds."""

    measure: ConvMeasure
    seconds: list[float]
    conv_s: list[float]
    conv_nchw_s: list[float]

    def ranges(self, batch: int) -> dict[str, list[float]]:
        """ms per image ``[min, max]`` of each timing, and of the two ratios over all pairings."""
        def ms(xs: list[float]) -> list[float]:
            s = spread(xs)
            return [s["min"] * 1e3 / batch, s["max"] * 1e3 / batch]

        r, rn = ratio_spread(self.conv_s, self.seconds), ratio_spread(self.conv_nchw_s, self.seconds)
        return {"ms_per_image_range": ms(self.seconds), "conv_ms_per_image_range": ms(self.conv_s),
                "conv_nchw_ms_per_image_range": ms(self.conv_nchw_s), "ratio_range": [r["min"], r["max"]] if r else [],
                "ratio_nchw_range": [rn["min"], rn["max"]] if rn else []}


def measure_samples(fn: Any, device: torch.device, dtype: torch.dtype = torch.float32, *,
                    repeats: int = 3) -> ConvSamples:
    """``fn`` (already warmed up) against its dense convolutions (:mod:`.conv_reference`), replayed
    in its layout and on NCHW tensors, timed alternately ``repeats`` times after one replay warm-up;
    the measure holds the medians, and every round is kept."""
    import statistics
    import time

    calls, flops = record(fn)
    main = dense(calls)
    replays = [Replay(main, device, dtype, "recorded"), Replay(main, device, dtype, "nchw")]
    for r in replays:
        r.run()  # warm-up: primitive creation, first touch of the random tensors
    secs: list[float] = []
    conv: list[float] = []
    nchw: list[float] = []
    for _ in range(max(1, repeats)):
        with torch.inference_mode():
            sync(device)
            t0 = time.perf_counter()
            fn()
            sync(device)
            secs.append(time.perf_counter() - t0)
        conv.append(replays[0].run())
        nchw.append(replays[1].run())
    del replays
    m = ConvMeasure(seconds=statistics.median(secs), flops=flops, n_convs=len(main), conv_flops=conv_flops(main),
                    conv_s=statistics.median(conv), conv_nchw_s=statistics.median(nchw), layout=layout_of(main))
    return ConvSamples(m, secs, conv, nchw)


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
                    channel_multiplier: int = 2, *, channel_max: int = 512, repeats: int = 3,
                    profile: bool = False, seed: int = 0, optimize: bool = True) -> GeneratorBench:
    """Measure synthesis of ``batch`` images at ``resolution`` (random weights, const noise).

    Runs: one untimed synthesis (memory), one under the FLOP counter and conv recorder,
    then ``repeats`` rounds of (timed synthesis, timed plain-conv replays) after one replay
    warm-up — the median of each counts, with its range — and optionally one synthesis under
    ``torch.profiler``.
    """
    from restorekit.methods import resolve_device

    dev = resolve_device(device)  # one line for no GPU, cuda:N past the GPUs, another device
    torch.manual_seed(seed)
    g = StyleGAN2Generator(resolution, 512, 8, channel_multiplier, channel_max=channel_max).to(dev).eval().requires_grad_(False)
    if optimize:
        optimize_generator(g)
        from restorekit.memory import keep_freed_memory_for

        keep_freed_memory_for(dev, resolution)  # as psp_sr's keep_memory does
    wp = torch.randn(batch, g.n_styles, g.style_dim, device=dev)
    gc.collect()
    cuda_base = 0  # bytes allocated on the GPU
    rss_base: float | None = None  # MB resident (None: not known here)
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
        cuda_base = torch.cuda.memory_allocated(dev)
    else:
        rss_base = _maxrss_mb()
    with torch.inference_mode():
        g.synthesize(wp)
        sync(dev)
    if dev.type == "cuda":
        peak, kind = (torch.cuda.max_memory_allocated(dev) - cuda_base) / 2**20, "cuda max_memory_allocated"
    elif rss_base is None or (now := _maxrss_mb()) is None:
        peak, kind = 0.0, "not measured (no getrusage here)"
    else:
        peak, kind = max(0.0, now - rss_base), "peak RSS growth (getrusage)"

    samples = measure_samples(lambda: g.synthesize(wp), dev, wp.dtype, repeats=repeats)
    m = samples.measure
    top = profile_top(lambda: g.synthesize(wp), dev) if profile else []
    best = m.seconds  # the median round
    return GeneratorBench(
        resolution=resolution, batch=batch, device=str(dev), channel_multiplier=channel_multiplier,
        channel_max=channel_max, threads=torch.get_num_threads(), optimized=optimize,
        ms_per_image=best * 1e3 / batch, images_per_s=batch / best,
        peak_memory_mb=peak, memory_kind=kind, gflop_per_image=m.flops / batch / 1e9,
        gflops=m.flops / best / 1e9, conv_gflop_per_image=m.conv_flops / batch / 1e9,
        conv_ms_per_image=m.conv_s * 1e3 / batch, conv_gflops=m.conv_flops / m.conv_s / 1e9,
        ratio=m.fraction, conv_nchw_ms_per_image=m.conv_nchw_s * 1e3 / batch, ratio_nchw=m.fraction_nchw,
        layout=m.layout, n_convs=m.n_convs, profile_top=top, repeats=max(1, repeats),
        **samples.ranges(batch))


def format_report(r: GeneratorBench) -> str:
    """Human-readable lines for the CLI."""
    from restorekit.commands.bench import fmt_ratio, fmt_spread

    layout = r.layout

    def ms(med: float, rng: list[float]) -> str:
        return fmt_spread({"median": med, "min": rng[0], "max": rng[1], "n": r.repeats} if rng
                          else {"median": med, "n": 1}, 1)

    def ratio(med: float, rng: list[float]) -> str:
        return fmt_ratio({"ratio": med, "min": rng[0], "max": rng[1]} if rng else {"ratio": med, "min": med,
                                                                                    "max": med})

    lines = [
        f"StyleGAN2 {r.resolution}px ×{r.channel_multiplier} batch {r.batch} on {r.device} ({r.threads} threads, "
        f"{'inference settings' if r.optimized else 'not optimised'}); median of {r.repeats} alternating rounds "
        f"(smallest–largest; ratios: of the medians, range over all pairs of rounds)",
        f"  generator : {ms(r.ms_per_image, r.ms_per_image_range)} ms/image  {r.images_per_s:7.2f} images/s  "
        f"{r.gflop_per_image:6.1f} GFLOP/image  {r.gflops:7.1f} GFLOP/s",
        f"  plain conv: {ms(r.conv_ms_per_image, r.conv_ms_per_image_range)} ms/image  ({r.n_convs} convs, "
        f"{r.conv_gflop_per_image:6.1f} GFLOP/image, {layout})  {r.conv_gflops:7.1f} GFLOP/s",
        f"  ratio (conv-FLOP rate of generator / plain conv): {ratio(r.ratio, r.ratio_range)}",
        f"  ratio against the same convs on NCHW tensors "
        f"({ms(r.conv_nchw_ms_per_image, r.conv_nchw_ms_per_image_range)} ms/image): "
        f"{ratio(r.ratio_nchw, r.ratio_nchw_range)}",
        f"  peak memory: {r.peak_memory_mb:.0f} MiB ({r.memory_kind})",
    ]
    for row in r.profile_top:
        lines.append(f"    {row['op']:<40} {row['calls']:5d} calls {row['self_ms']:9.1f} ms {row['share']:6.1%}")
    return "\n".join(lines)
