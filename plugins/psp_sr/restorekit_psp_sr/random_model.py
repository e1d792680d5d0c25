"""An untrained pSp model with the paper's shapes, for benchmarks and tests (no weights needed).

Encoder: GradualStyleEncoder on IR-SE50, 256-px input, 512-wide map2style heads; generator:
StyleGAN2 config-f (style_dim 512, 8 mapping layers, channel multiplier 2) at ``resolution``,
as pSp builds it (``Generator(output_size, 512, 8)``) — the shapes, FLOPs and memory of the
released super-resolution model at 1024 px. Built from a fixed seed, so two builds are the
same network; the global random state is left as it was.
"""

from __future__ import annotations

from typing import Any

import torch

from .encoder import GradualStyleEncoder
from .psp import PSP
from .stylegan2 import RESOLUTIONS, StyleGAN2Generator

PAPER_FACTORS = [1, 2, 4, 8, 16, 32]


def paper_shaped_psp(resolution: int = 1024, *, seed: int = 0, impl: Any = "auto") -> tuple[PSP, dict[str, Any]]:
    """``(PSP in eval mode, config)``: random weights, the paper's architecture at ``resolution``."""
    if resolution not in RESOLUTIONS:
        raise ValueError(f"resolution must be one of {', '.join(map(str, RESOLUTIONS))}; got {resolution}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        generator = StyleGAN2Generator(resolution, 512, 8, 2, impl=impl)
        encoder = GradualStyleEncoder(generator.n_styles, 512, backbone="ir_se50", input_size=256)
        model = PSP(encoder, generator, generator.mean_latent(1024, seed=seed))
    config = {"format": "random", "name": f"paper-shaped pSp ({resolution}-px generator)",
              "license": "none (random weights)", "training": {"factors": PAPER_FACTORS},
              "start_from_latent_avg": True}
    return model.eval(), config
