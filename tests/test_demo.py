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


def test_demo_default_methods_run_those_installed(tmp_path, monkeypatch):
    """`pip install restorekit-psp-sr` alone: the default methods leave bicubic (restorekit-baselines) out
    with one note and run psp_sr; naming bicubic with --methods is still a usage error."""
    from restorekit import plugins
    from restorekit.commands import demo

    monkeypatch.setenv("RESTOREKIT_LOAD_PLUGINS", "psp_sr")  # as if restorekit-baselines were not installed
    monkeypatch.setattr(demo, "_installed", lambda dist: dist != "restorekit-baselines")
    plugins.reset()
    try:
        out = tmp_path / "demo"
        r = CliRunner().invoke(build_cli(), ["demo", "--output", str(out), "--methods", "psp_sr,bicubic"])
        assert r.exit_code == 2 and "unknown method 'bicubic'" in r.output and not out.exists()

        r = CliRunner().invoke(build_cli(), ["demo", "--output", str(out), "--json"])
        assert r.exit_code == 0, r.output
        notes = [line for line in r.stderr.splitlines() if line.startswith("note:")]
        assert notes == ["note: the demo leaves out bicubic: restorekit-baselines is not installed "
                         "(pip install restorekit-baselines)"]
        summary = json.loads((out / "metrics.json").read_text())
        assert list(summary["results"]) == ["psp_sr"] and "bicubic" in summary["unavailable"]
        assert Image.open(out / "astronaut_x8.png").size == (128 * 3, 128 + 18)  # input | psp_sr | original

        # Nothing of the defaults installed: one error naming both distributions, before any work.
        monkeypatch.setenv("RESTOREKIT_LOAD_PLUGINS", "")
        monkeypatch.setattr(demo, "_installed", lambda dist: False)
        plugins.reset()
        r = CliRunner().invoke(build_cli(), ["demo", "--output", str(tmp_path / "none")])
        assert r.exit_code != 0 and "none of its default methods" in r.output
        assert "pip install restorekit-psp-sr" in r.output and "pip install restorekit-baselines" in r.output
        assert not (tmp_path / "none").exists()
    finally:
        plugins.reset()
