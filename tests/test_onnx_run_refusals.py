"""``run --backend onnxruntime`` refusals are one line: an option the exporter refuses is a usage
error as in ``export`` (it was ``unexpected ValueError … report it``, exit 1)."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner
from PIL import Image

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from restorekit.cli import build_cli  # noqa: E402


def test_an_option_the_exporter_refuses_is_a_usage_line(tmp_path: Path) -> None:
    env = {"RESTOREKIT_HOME": str(tmp_path / "home")}
    Image.new("RGB", (16, 16), (120, 90, 60)).save(tmp_path / "in.png")
    cli, runner = build_cli(), CliRunner()
    exported = runner.invoke(cli, ["export", "pix2pixhd", "--out", str(tmp_path / "m.onnx"), "--opt",
                                   "input_size=60"], env=env)
    r = runner.invoke(cli, ["run", "pix2pixhd", "--scale", "4", "--input", str(tmp_path / "in.png"), "--output",
                            str(tmp_path / "o"), "--opt", "input_size=60", "--backend", "onnxruntime", "-q"], env=env)
    assert exported.exit_code == 2 and "multiple of 8" in exported.output, exported.output
    assert r.exit_code == 2, r.output
    assert "input_size must be a multiple of 8" in r.output and "unexpected" not in r.output, r.output
    assert [line for line in r.output.splitlines() if "input_size" in line] == [
        "error: pix2pixhd: input_size must be a multiple of 8 for these weights, got 60 (nearest: 56 or 64)"], r.output
    assert not list((tmp_path / "o").glob("*.png"))
