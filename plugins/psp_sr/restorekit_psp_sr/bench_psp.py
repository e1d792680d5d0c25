"""pSp's two networks each timed against their own convolutions (``restorekit bench method psp_sr``).

:func:`psp_breakdown` times the encoder (``PSP.encode`` on encoder-sized inputs) and the
generator (``PSP.decode`` of those codes) separately against their own convolutions
(:func:`.bench_generator.measure_samples`): milliseconds per image, FLOPs, and the fraction of
the plain-convolution rate measured on the same shapes in the same run — in the layout the
network used, and on ``NCHW`` tensors. Times are the medians of the rounds and ratios the ratios
of the medians, each with its range (``*_range``).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from .bench_generator import ConvSamples, measure_samples
from .conv_reference import sync


def _row(samples: ConvSamples, batch: int) -> dict[str, Any]:
    m, rng = samples.measure, samples.ranges(batch)
    rng["fraction_range"], rng["fraction_nchw_range"] = rng.pop("ratio_range"), rng.pop("ratio_nchw_range")
    return {**rng, "repeats": len(samples.seconds), "ms_per_image": m.seconds * 1e3 / batch,
            "gflop_per_image": m.flops / batch / 1e9,
            "conv_gflop_per_image": m.conv_flops / batch / 1e9, "n_convs": m.n_convs,
            "conv_ms_per_image": m.conv_s * 1e3 / batch, "fraction": m.fraction,
            "conv_nchw_ms_per_image": m.conv_nchw_s * 1e3 / batch, "fraction_nchw": m.fraction_nchw,
            "layout": m.layout}


def psp_breakdown(model: Any, x: Tensor, *, repeats: int = 2) -> dict[str, dict[str, Any]]:
    """``{"encoder": row, "generator": row}`` for encoder-sized faces ``x`` in [0, 1]."""
    dev, n = x.device, x.shape[0]
    with torch.inference_mode():
        w = model.encode(x)
        model.decode(w)  # warm-up: caches, primitive creation
        sync(dev)
    enc = measure_samples(lambda: model.encode(x), dev, x.dtype, repeats=repeats)
    gen = measure_samples(lambda: model.decode(w), dev, x.dtype, repeats=repeats)
    return {"encoder": _row(enc, n), "generator": _row(gen, n)}
