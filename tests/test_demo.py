"""`restorekit demo`: a real face photo, detected, aligned, degraded, restored and scored offline."""

from __future__ import annotations

import importlib.util
import json

import pytest
from click.testing import CliRunner
from PIL import Image

from restorekit.cli import build_cli

pytestmark = [
    pytest.mark.skipif(importlib.util.find_spec("skimage") is None, reason="the demo photo ships in scikit-image"),
    pytest.mark.skipif(importlib.util.find_spec("facenet_pytorch") is None,
                       reason="the default face detector's weights ship in facenet-pytorch==2.6.0 (--no-deps)"),
]


def test_demo_writes_side_by_side_and_metrics(tmp_path):
    out = tmp_path / "demo"
    r = CliRunner().invoke(build_cli(), ["demo", "--output", str(out), "--methods", "bicubic,no_such_method",
                                         "--json"])
    assert r.exit_code == 0, r.output
    summary = json.loads((out / "metrics.json").read_text())
    assert summary["hr_size"] == 128 and summary["scale"] == 8
    assert "no_such_method" in summary["unavailable"]  # named, not fatal
    res = summary["results"]["bicubic"]
    # Bicubic from 16 px: a recognisable but blurred face (measured: PSNR-Y ≈ 22 dB).
    assert 18 < res["psnr_y_crop"] < 30
    assert 0 < res["lr_consistency"] < 0.01
    side = Image.open(out / "astronaut_x8.png")
    assert side.size == (128 * 3, 128 + 18)  # input | bicubic | original, with captions
    assert Image.open(out / "astronaut_lr_x8.png").size == (16, 16)
