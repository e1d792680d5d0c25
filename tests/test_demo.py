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


def test_demo_writes_side_by_side_and_metrics(tmp_path, monkeypatch):
    from restorekit import methods
    from restorekit.errors import WeightsMissing

    out = tmp_path / "demo"
    # A name that is no method is a typo: a usage error naming it, before any work.
    r = CliRunner().invoke(build_cli(), ["demo", "--output", str(out), "--methods", "bicubic,bicubc"])
    assert r.exit_code == 2 and "bicubc" in r.output and "did you mean 'bicubic'" in r.output and not out.exists()
    r = CliRunner().invoke(build_cli(), ["demo", "--output", str(out), "--methods", ","])
    assert r.exit_code == 2 and "names no method" in r.output
    # A method that cannot run here (its weights missing) is named and left out, not fatal.
    build = methods.build_method

    def without_pix2pixhd(name, *args, **kwargs):
        if name == "pix2pixhd":
            raise WeightsMissing("pix2pixhd-faces128")
        return build(name, *args, **kwargs)

    monkeypatch.setattr(methods, "build_method", without_pix2pixhd)
    r = CliRunner().invoke(build_cli(), ["demo", "--output", str(out), "--methods", "bicubic,pix2pixhd", "--json"])
    assert r.exit_code == 0, r.output
    summary = json.loads((out / "metrics.json").read_text())
    assert summary["hr_size"] == 128 and summary["scale"] == 8
    assert "pix2pixhd" in summary["unavailable"]  # named, not fatal
    res = summary["results"]["bicubic"]
    # Bicubic from 16 px: a recognisable but blurred face (measured: PSNR-Y ≈ 22 dB).
    assert 18 < res["psnr_y_crop"] < 30
    assert 0 < res["lr_consistency"] < 0.01
    side = Image.open(out / "astronaut_x8.png")
    assert side.size == (128 * 3, 128 + 18)  # input | bicubic | original, with captions
    assert Image.open(out / "astronaut_lr_x8.png").size == (16, 16)
