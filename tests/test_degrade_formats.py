"""degrade writes what its spec made: WebP without loss, and JPEG (a second encoding) said aloud."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from click.testing import CliRunner
from PIL import Image

from restorekit.cli import build_cli
from restorekit.images import save_image
from restorekit.testing.data import smooth_batch


def _degrade(src: Path, out: Path, ext: str) -> object:
    return CliRunner().invoke(build_cli(), ["degrade", "--spec", "bicubic:4", "--input", str(src), "--output",
                                            str(out), "--ext", ext], catch_exceptions=False)


def test_webp_lr_files_are_the_png_ones_and_jpg_warns(tmp_path: Path) -> None:
    src = tmp_path / "hr"
    # A textured face-sized image: a lossy WebP would move many of its LR pixels.
    img = smooth_batch(1, 128, 128, seed=3)
    img = (img + 0.15 * torch.sin(torch.arange(128) * 1.7)).clamp(0, 1)
    save_image(img, src / "a.png")
    r_png, r_webp = _degrade(src, tmp_path / "png", "png"), _degrade(src, tmp_path / "webp", "webp")
    assert r_png.exit_code == 0 and r_webp.exit_code == 0, (r_png.output, r_webp.output)
    png = np.asarray(Image.open(tmp_path / "png" / "a.png").convert("RGB"))
    webp = np.asarray(Image.open(tmp_path / "webp" / "a.webp").convert("RGB"))
    assert png.shape == (32, 32, 3) and np.array_equal(png, webp)
    assert "warning" not in r_webp.output
    r_jpg = _degrade(src, tmp_path / "jpg", "jpg")
    assert r_jpg.exit_code == 0 and "warning: --ext jpg re-encodes each LR at JPEG quality 95" in r_jpg.output
    jpg = np.asarray(Image.open(tmp_path / "jpg" / "a.jpg").convert("RGB"))
    assert not np.array_equal(png, jpg)  # (what the warning is about)
