"""A network's time against its own convolutions alone: the plain-convolution reference.

:func:`record` runs a callable once under ``FlopCounterMode`` and a dispatch-level recorder of
every ``aten.convolution`` it issues (so transposed convolutions stay transposed); a
:class:`Replay` runs its dense convolutions (``groups == 1``, not 1→1-channel) with
``aten.convolution`` on random tensors of the same shapes, in the memory layout the network used
(``channels_last`` or not) or on contiguous ``NCHW`` tensors, the layout plain PyTorch code uses.
:func:`.bench_generator.measure_samples` times the callable and the two replays alternately in
the same run (so load from other processes on a shared machine hits all three alike) and keeps
the medians with their ranges.

``fraction = conv_s / seconds``: the network's conv-FLOP rate as a share of the plain
convolutions' rate on the same FLOPs, i.e. the share of its time its convolutions alone would
take (1.0: no overhead). ``fraction_nchw`` uses the ``NCHW`` replay: above 1.0 when the network
runs its convolutions faster than plain ``NCHW`` calls of the same shapes would.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode

_CONV = torch.ops.aten.convolution.default


@dataclass
class ConvCall:
    """One convolution as the network issued it."""

    input: tuple[int, ...]
    weight: tuple[int, ...]
    stride: tuple[int, ...]
    padding: tuple[int, ...]
    dilation: tuple[int, ...]
    transposed: bool
    output_padding: tuple[int, ...]
    groups: int
    has_bias: bool
    input_layout: str = "nchw"  # "nchw", "nhwc", "both" (e.g. 1×1 maps or kernels) or "strided"
    weight_layout: str = "nchw"

    @property
    def channels_last(self) -> bool:
        return self.input_layout == "nhwc"

    @property
    def weight_channels_last(self) -> bool:
        return self.weight_layout == "nhwc"


def _layout(t: torch.Tensor) -> str:
    nchw = t.is_contiguous()
    nhwc = t.ndim == 4 and t.is_contiguous(memory_format=torch.channels_last)
    return "both" if nchw and nhwc else "nchw" if nchw else "nhwc" if nhwc else "strided"


class ConvRecorder(TorchDispatchMode):
    """Records every ``aten.convolution`` call (shapes, parameters, layout)."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[ConvCall] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[override]
        if func is _CONV:
            x, w, b, stride, padding, dilation, transposed, opad, groups = args
            self.calls.append(ConvCall(tuple(x.shape), tuple(w.shape), tuple(stride), tuple(padding),
                                       tuple(dilation), bool(transposed), tuple(opad), int(groups),
                                       b is not None, _layout(x), _layout(w)))
        return func(*args, **(kwargs or {}))


def dense(calls: list[ConvCall]) -> list[ConvCall]:
    """The convolutions that count as the network's work: not depthwise/grouped (FIR filters),
    not 1→1 channel."""
    return [c for c in calls if c.groups == 1 and not (c.weight[0] == 1 and c.weight[1] == 1)]


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Replay:
    """The recorded convolutions on random tensors of the same shapes, ready to time.

    ``layout``: ``"recorded"`` (as the network laid them out) or ``"nchw"`` (contiguous)."""

    def __init__(self, calls: list[ConvCall], device: torch.device, dtype: torch.dtype,
                 layout: str = "recorded") -> None:
        self.calls = calls
        self.device = device
        self.tensors = []
        cl = torch.channels_last
        for c in calls:
            x = torch.randn(c.input, device=device, dtype=dtype)
            w = torch.randn(c.weight, device=device, dtype=dtype)
            if layout == "recorded":
                x = x.contiguous(memory_format=cl) if c.channels_last else x
                w = w.contiguous(memory_format=cl) if c.weight_channels_last else w
            nb = c.weight[1] * c.groups if c.transposed else c.weight[0]
            b = torch.randn(nb, device=device, dtype=dtype) if c.has_bias else None
            self.tensors.append((x, w, b))

    def run(self) -> float:
        """Seconds for one pass over all convolutions."""
        with torch.inference_mode():
            sync(self.device)
            t0 = time.perf_counter()
            for c, (x, w, b) in zip(self.calls, self.tensors):
                _CONV(x, w, b, c.stride, c.padding, c.dilation, c.transposed, c.output_padding, c.groups)
            sync(self.device)
            return time.perf_counter() - t0


def conv_flops(calls: list[ConvCall]) -> float:
    """FLOPs of these convolutions as ``FlopCounterMode`` counts them."""
    from torch.utils.flop_counter import FlopCounterMode

    total = 0.0
    for c in calls:
        x = torch.empty(c.input, device="meta")
        w = torch.empty(c.weight, device="meta")
        with FlopCounterMode(display=False) as fc:
            _CONV(x, w, None, c.stride, c.padding, c.dilation, c.transposed, c.output_padding, c.groups)
        total += fc.get_total_flops()
    return total


@dataclass
class ConvMeasure:
    """A callable timed against its own dense convolutions (see the module docstring)."""

    seconds: float
    flops: float  # everything FlopCounterMode counts (convolutions, matrix products)
    n_convs: int
    conv_flops: float
    conv_s: float  # the replay in the recorded layout
    conv_nchw_s: float  # the replay on contiguous NCHW tensors
    layout: str  # of the recorded convolutions: "channels_last", "NCHW", or "mixed" (NHWC activations
    # with NCHW weights somewhere: what an image read from a file brings into an unoptimised model)

    @property
    def fraction(self) -> float:
        return self.conv_s / self.seconds

    @property
    def fraction_nchw(self) -> float:
        return self.conv_nchw_s / self.seconds

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "fraction": self.fraction, "fraction_nchw": self.fraction_nchw}


def record(fn: Callable[[], object]) -> tuple[list[ConvCall], float]:
    """``(every convolution fn issues, total FLOPs)`` from one call of ``fn``."""
    from torch.utils.flop_counter import FlopCounterMode

    rec = ConvRecorder()
    # no_grad, not inference_mode: the FLOP counter's module tracker needs autograd views, and
    # under inference mode convolutions reach the dispatcher below aten.convolution.
    with torch.inference_mode(False), torch.no_grad(), FlopCounterMode(display=False) as fc, rec:
        fn()
    return rec.calls, float(fc.get_total_flops())


def layout_of(calls: list[ConvCall]) -> str:
    """``"channels_last"`` (every activation and weight NHWC), ``"NCHW"`` (all NCHW) or ``"mixed"``."""
    layouts = {lay for c in calls for lay in (c.input_layout, c.weight_layout)} - {"both"}
    if layouts <= {"nhwc"} and layouts:
        return "channels_last"
    if layouts <= {"nchw"}:
        return "NCHW"
    return "mixed"
