"""Tiny random pSp models in restorekit's format, shared by the psp_sr tests (no downloads)."""

from __future__ import annotations

from pathlib import Path

import torch

from restorekit_psp_sr.encoder import GradualStyleEncoder
from restorekit_psp_sr.method import save_psp_safetensors
from restorekit_psp_sr.psp import PSP
from restorekit_psp_sr.stylegan2 import StyleGAN2Generator


def tiny_psp(seed: int = 0, *, noise_strength: float | None = None) -> PSP:
    """A 32-px generator + light encoder; ``noise_strength`` makes the constant noise buffers matter."""
    torch.manual_seed(seed)
    g = StyleGAN2Generator(32, style_dim=16, n_mlp=2, channel_multiplier=1, channel_max=16, impl="ref")
    enc = GradualStyleEncoder(g.n_styles, 16, backbone="ir_se_light", input_size=32, head_channels=16)
    if noise_strength is not None:
        with torch.no_grad():
            for k, v in g.named_parameters():
                if k.endswith("noise.weight"):
                    v.fill_(noise_strength)
    return PSP(enc, g, g.mean_latent(256)).eval()


def save_tiny(path: Path, **kw: object) -> Path:
    """Write a tiny model trained (nominally) for factors 1, 2, 4."""
    save_psp_safetensors(tiny_psp(**kw), path, factors=[1, 2, 4], license="CC0-1.0", name="tiny")
    return path
