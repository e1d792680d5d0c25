"""compare --backend onnxruntime with methods that offer no ONNX export: refused before any work."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

pytest.importorskip("onnxruntime")

from click.testing import CliRunner  # noqa: E402
from PIL import Image  # noqa: E402

from restorekit.cli import build_cli  # noqa: E402


def test_compare_refuses_methods_without_an_exporter_up_front(tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """It used to fail image by image (exit 1, the summary listing backend torch)."""
    monkeypatch.setenv("RESTOREKIT_HOME", str(tmp_path / "home"))
    hr = tmp_path / "hr"
    hr.mkdir()
    Image.new("RGB", (32, 32), (120, 60, 30)).save(hr / "a.png")
    out = tmp_path / "report"
    res = CliRunner().invoke(build_cli(), ["compare", "--methods", "bicubic,bicubic@b", "--scale", "4",
                                           "--data", str(hr), "--out", str(out), "--backend", "onnxruntime",
                                           "-q"])
    assert res.exit_code == 2, res.output
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    err = [ln for ln in lines if "onnxruntime" in ln]
    assert len(err) == 1 and "bicubic, bicubic@b cannot be exported to ONNX" in err[0]
    assert not out.exists() or not any(out.iterdir())  # no work done, nothing written
    assert not (tmp_path / "home" / "onnx").exists()
    # With torch it runs.
    ok = CliRunner().invoke(build_cli(), ["compare", "--methods", "bicubic", "--scale", "4", "--data", str(hr),
                                          "--out", str(out), "--metrics", "psnr_rgb", "-q"])
    assert ok.exit_code == 0, ok.output
    assert os.path.isfile(out / "results.json")


@pytest.mark.parametrize("args, message", [
    (["bicubic"], "'bicubic' cannot be exported to ONNX"),
    (["psp_sr", "--n-samples", "2"], "--n-samples 2 needs the torch backend"),
])
def test_run_refuses_what_the_onnx_backend_cannot_do_before_any_work(tmp_path: Path, args: list[str],
                                                                      message: str) -> None:
    (tmp_path / "in").mkdir()
    Image.new("RGB", (16, 16), (120, 60, 30)).save(tmp_path / "in" / "a.png")
    res = CliRunner().invoke(build_cli(), ["run", *args, "--scale", "2", "--backend", "onnxruntime",
                                           "--input", str(tmp_path / "in"), "--output", str(tmp_path / "out")])
    assert res.exit_code == 2 and message in res.output, res.output
    assert not (tmp_path / "out").exists()
