"""Synthetic test images and stand-in weight files: no downloads, reproducible."""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import torch


def smooth_image(h: int, w: int, seed: int) -> np.ndarray:
    """An ``H×W×3`` uint8 smooth colour image (sum of low-frequency waves).

    Smooth content is what bicubic round trips and SR models are judged on; white noise is not.
    """
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    out = np.zeros((h, w, 3))
    for c in range(3):
        for _ in range(4):
            fy, fx = rng.uniform(0.5, 3.0, 2) * 2 * np.pi / np.array([h, w])
            ph = rng.uniform(0, 2 * np.pi)
            out[..., c] += np.sin(fy * y + fx * x + ph)
    out = (out - out.min()) / (out.max() - out.min() + 1e-9)
    return (out * 255).round().astype(np.uint8)


#: Bytes :func:`smooth_batch` holds per value of its batch at its peak: the uint8 images and the float32 batch.
SMOOTH_BATCH_BYTES_PER_VALUE = 5


def smooth_batch_bytes(n: int, h: int, w: int) -> int:
    """About the peak memory :func:`smooth_batch` takes for ``n`` images of ``h×w``: the batch being
    filled and converted, plus one image's working arrays (its int64 grid and float64 temporaries:
    about 92 bytes a pixel at their peak, measured with tracemalloc; 96 counted)."""
    return n * 3 * h * w * SMOOTH_BATCH_BYTES_PER_VALUE + h * w * 96


def smooth_batch(n: int, h: int, w: int, seed: int = 0) -> torch.Tensor:
    """``n`` smooth images as a batch in the image convention.

    Filled in place, one image at a time, and converted once: a list of the images, their stack
    and a float64 copy held about three times the batch's own memory."""
    arr = np.empty((n, h, w, 3), dtype=np.uint8)
    for i in range(n):
        arr[i] = smooth_image(h, w, seed + i)
    return torch.from_numpy(arr).permute(0, 3, 1, 2).float().div_(255)


def sample_batch(n: int = 2, h: int = 12, w: int = 10, seed: int = 0) -> torch.Tensor:
    """A random batch in the image convention with odd sizes."""
    return torch.rand(n, 3, h, w, generator=torch.Generator().manual_seed(seed))


def random_alexnet_file(path: str | os.PathLike[str], seed: int = 0) -> Path:
    """Random He-scaled AlexNet convolutions in torchvision naming (``features.<i>.weight``/``bias``)
    as safetensors at ``path``: a stand-in feature space for ``--space-weights alex=…`` (realism) or
    the LPIPS backbone in tests — never a figure to report."""
    from ..images import atomic_write_bytes
    from ..networks.lpips_weights import CONV_SHAPES, FEATURE_INDICES
    from ..weights.st_bytes import safetensors_bytes

    g = torch.Generator().manual_seed(seed)
    sd = {}
    for index, shape in zip(FEATURE_INDICES["alex"], CONV_SHAPES["alex"]):
        fan_out = shape[0] * shape[2] * shape[3]
        sd[f"features.{index}.weight"] = torch.randn(shape, generator=g) * math.sqrt(2 / fan_out)
        sd[f"features.{index}.bias"] = torch.zeros(shape[0])
    out = Path(path)
    atomic_write_bytes(out, safetensors_bytes(sd))
    return out
