"""Inference-time optimisation of pSp models: the same results (to float rounding), sooner.

:func:`optimize_for_inference` converts a loaded :class:`~.psp.PSP` in place, for evaluation
only. Training code never calls it, and nothing it does changes a module's parameters' values
or names: ``state_dict()`` stays the official layout (some 4-D weights are stored
``channels_last``; ``.contiguous()`` gives the usual layout), so saving, exporting and importing
work as before. What it sets:

- encoder: :func:`.fast_encoder.optimize_encoder` (batch norm folded into the IR-SE
  convolutions, ``channels_last``, batched style linears);
- generator (:func:`optimize_generator`): ``channels_last`` activations and cached
  ``channels_last`` weights on CPU; for a batch of one, each modulated convolution scales the
  weight or the activations, whichever is fewer products (at 4–32 px the activations); the FIR
  blur after each upsampling convolution as one cached depthwise convolution that also adds the
  layer's bias; equalized-linear scaling computed once instead of per call.

On CUDA the layout stays as it is (the fused CUDA ops expect contiguous ``NCHW``) and only the
layout-free changes apply.
"""

from __future__ import annotations

from typing import Any

import torch

from .fast_encoder import optimize_encoder
from .stylegan2 import Blur, EqualLinear, ModulatedConv2d, StyleGAN2Generator


def optimize_generator(generator: StyleGAN2Generator, *, channels_last: bool | None = None) -> StyleGAN2Generator:
    """Switch ``generator``'s layers to their inference settings (in place; returned).

    ``channels_last``: default on CPU (where it pays), off elsewhere.
    """
    if channels_last is None:
        channels_last = generator.input.input.device.type == "cpu"
    fmt = torch.channels_last if channels_last else None
    generator.memory_format = fmt
    for m in generator.modules():
        if isinstance(m, ModulatedConv2d):
            m.memory_format = fmt
            m.modulate_by_cost = True
        elif isinstance(m, Blur):
            m.cached = True
        elif isinstance(m, EqualLinear):
            m.cache_weights = True
    return generator


def optimize_for_inference(model: Any, *, channels_last: bool | None = None) -> Any:
    """Optimise a :class:`~.psp.PSP` (or anything with ``encoder`` and ``decoder``) in place for
    evaluation and return it. Put it on its device first: the layout default depends on it."""
    if hasattr(model.encoder, "inference_path"):
        optimize_encoder(model.encoder, channels_last=channels_last)
    if isinstance(model.decoder, StyleGAN2Generator):
        optimize_generator(model.decoder, channels_last=channels_last)
    return model
