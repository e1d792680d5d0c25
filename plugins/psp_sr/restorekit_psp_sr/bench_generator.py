"""Throughput of the StyleGAN2 generator against plain convolutions on the same shapes.

:func:`bench_generator` synthesizes random W+ batches with a randomly initialised generator
and reports time per image, images/s, peak memory and FLOP rates. FLOPs are counted with
``torch.utils.flop_counter.FlopCounterMode``. The reference is measured in the same run: every
dense (non-depthwise) convolution the generator issued (recorded at dispatch level, so transposed
convs stay transposed) is replayed with ``aten.convolution`` on random tensors of the same shapes.
``ratio`` = generator FLOP rate / plain-conv FLOP rate on those convs' FLOPs, i.e. the share of
the generator's time that its convolutions alone would take; 1.0 means zero overhead.

Peak memory: CUDA ``max_memory_allocated``; CPU the growth of the process' peak RSS
(``getrusage``) over the first synthesis — 0 when an earlier allocation already set the peak.
"""

from __future__ import annotations

import gc
import resource
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from .stylegan2 import StyleGAN2Generator

_CONV = torch.ops.aten.convolution.default


@dataclass
class ConvCall:
    """One convolution as the generator issued it."""

    input: tuple[int, ...]
    weight: tuple[int, ...]
    stride: tuple[int, ...]
    padding: tuple[int, ...]
    dilation: tuple[int, ...]
    transposed: bool
    output_padding: tuple[int, ...]
    groups: int
    has_bias: bool


class _ConvRecorder(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.calls: list[ConvCall] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[override]
        if func is _CONV:
            x, w, b, stride, padding, dilation, transposed, opad, groups = args
            self.calls.append(ConvCall(tuple(x.shape), tuple(w.shape), tuple(stride), tuple(padding),
                                       tuple(dilation), bool(transposed), tuple(opad), int(groups),
                                       b is not None))
        return func(*args, **(kwargs or {}))


@dataclass
class GeneratorBench:
    """What ``restorekit bench generator`` reports."""

    resolution: int
    batch: int
    device: str
    channel_multiplier: int
    channel_max: int
    threads: int
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
    n_convs: int
    profile_top: list[dict[str, Any]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _maxrss_mb() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return r / (1024 * 1024) if sys.platform == "darwin" else r / 1024


class _Replay:
    """The recorded convs on random tensors of the same shapes, ready to time."""

    def __init__(self, calls: list[ConvCall], device: torch.device, dtype: torch.dtype) -> None:
        self.calls = calls
        self.device = device
        self.tensors = []
        for c in calls:
            x = torch.randn(c.input, device=device, dtype=dtype)
            w = torch.randn(c.weight, device=device, dtype=dtype)
            nb = c.weight[1] * c.groups if c.transposed else c.weight[0]
            b = torch.randn(nb, device=device, dtype=dtype) if c.has_bias else None
            self.tensors.append((x, w, b))

    def run(self) -> float:
        """Seconds for one pass over all convs."""
        with torch.inference_mode():
            _sync(self.device)
            t0 = time.perf_counter()
            for c, (x, w, b) in zip(self.calls, self.tensors):
                _CONV(x, w, b, c.stride, c.padding, c.dilation, c.transposed, c.output_padding, c.groups)
            _sync(self.device)
            return time.perf_counter() - t0


def _conv_flops(calls: list[ConvCall]) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    total = 0.0
    for c in calls:
        x = torch.empty(c.input, device="meta")
        w = torch.empty(c.weight, device="meta")
        with FlopCounterMode(display=False) as fc:
            _CONV(x, w, None, c.stride, c.padding, c.dilation, c.transposed, c.output_padding, c.groups)
        total += fc.get_total_flops()
    return total


def bench_generator(resolution: int = 1024, batch: int = 1, device: str = "cpu",
                    channel_multiplier: int = 2, *, channel_max: int = 512, repeats: int = 2,
                    profile: bool = False, seed: int = 0) -> GeneratorBench:
    """Measure synthesis of ``batch`` images at ``resolution`` (random weights, const noise).

    Runs: one untimed synthesis (memory), one under the FLOP counter and conv recorder,
    then ``repeats`` rounds of (timed synthesis, timed plain-conv replay) after one replay
    warm-up — the fastest of each counts — and optionally one synthesis under ``torch.profiler``.
    """
    from torch.utils.flop_counter import FlopCounterMode

    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("bench generator: --device cuda but CUDA is not available")
    torch.manual_seed(seed)
    g = StyleGAN2Generator(resolution, 512, 8, channel_multiplier, channel_max=channel_max).to(dev).eval().requires_grad_(False)
    wp = torch.randn(batch, g.n_styles, g.style_dim, device=dev)
    gc.collect()
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
        base = torch.cuda.memory_allocated(dev)
    else:
        base = _maxrss_mb()
    with torch.inference_mode():
        g.synthesize(wp)
        _sync(dev)
    if dev.type == "cuda":
        peak, kind = (torch.cuda.max_memory_allocated(dev) - base) / 2**20, "cuda max_memory_allocated"
    else:
        peak, kind = max(0.0, _maxrss_mb() - base), "peak RSS growth (getrusage)"

    rec = _ConvRecorder()
    # no_grad, not inference_mode: the FLOP counter's module tracker needs autograd views.
    with torch.no_grad(), FlopCounterMode(display=False) as fc, rec:
        g.synthesize(wp)
    total_flops = float(fc.get_total_flops())
    # Dense convs only: the depthwise FIR (blur/upsample) passes are overhead of the generator,
    # not part of the conv work it is compared against.
    main = [c for c in rec.calls if c.groups == 1 and not (c.weight[0] == 1 and c.weight[1] == 1)]

    # Generator and plain convs are timed alternately (fastest of each counts), so load from
    # other processes on a shared machine hits both alike.
    replay = _Replay(main, dev, wp.dtype)
    replay.run()  # warm-up: primitive creation, first-touch of the random tensors
    best = conv_s = float("inf")
    for _ in range(max(1, repeats)):
        with torch.inference_mode():
            _sync(dev)
            t0 = time.perf_counter()
            g.synthesize(wp)
            _sync(dev)
            best = min(best, time.perf_counter() - t0)
        conv_s = min(conv_s, replay.run())
    del replay

    top: list[dict[str, Any]] = []
    if profile:
        from torch.profiler import ProfilerActivity, profile as tprofile

        acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if dev.type == "cuda" else [])
        with torch.inference_mode(), tprofile(activities=acts) as prof:
            g.synthesize(wp)
            _sync(dev)
        key = "self_cuda_time_total" if dev.type == "cuda" else "self_cpu_time_total"
        rows = sorted(prof.key_averages(), key=lambda e: getattr(e, key), reverse=True)[:12]
        tot = sum(getattr(e, key) for e in prof.key_averages()) or 1.0
        top = [{"op": e.key, "calls": e.count, "self_ms": getattr(e, key) / 1e3,
                "share": getattr(e, key) / tot} for e in rows]

    conv_flops = _conv_flops(main)
    gen_rate = total_flops / best / 1e9
    conv_rate = conv_flops / conv_s / 1e9
    return GeneratorBench(
        resolution=resolution, batch=batch, device=str(dev), channel_multiplier=channel_multiplier,
        channel_max=channel_max,
        threads=torch.get_num_threads(), ms_per_image=best * 1e3 / batch, images_per_s=batch / best,
        peak_memory_mb=peak, memory_kind=kind, gflop_per_image=total_flops / batch / 1e9,
        gflops=gen_rate, conv_gflop_per_image=conv_flops / batch / 1e9,
        conv_ms_per_image=conv_s * 1e3 / batch, conv_gflops=conv_rate,
        ratio=(conv_flops / best) / (conv_flops / conv_s), n_convs=len(main), profile_top=top)


def format_report(r: GeneratorBench) -> str:
    """Human-readable lines for the CLI."""
    lines = [
        f"StyleGAN2 {r.resolution}px ×{r.channel_multiplier} batch {r.batch} on {r.device} ({r.threads} threads)",
        f"  generator : {r.ms_per_image:9.1f} ms/image  {r.images_per_s:7.2f} images/s  "
        f"{r.gflop_per_image:6.1f} GFLOP/image  {r.gflops:7.1f} GFLOP/s",
        f"  plain conv: {r.conv_ms_per_image:9.1f} ms/image  ({r.n_convs} convs, "
        f"{r.conv_gflop_per_image:6.1f} GFLOP/image)  {r.conv_gflops:7.1f} GFLOP/s",
        f"  ratio (conv-FLOP rate of generator / plain conv): {r.ratio:.2f}",
        f"  peak memory: {r.peak_memory_mb:.0f} MiB ({r.memory_kind})",
    ]
    for row in r.profile_top:
        lines.append(f"    {row['op']:<40} {row['calls']:5d} calls {row['self_ms']:9.1f} ms {row['share']:6.1%}")
    return "\n".join(lines)
