"""``--weights`` / ``--opt weights=`` of the baselines with a path that names no file: one line,
``PATH: no such file``, exit 2 — not "unknown weights …; known: …" as for a mistyped registry name."""

from __future__ import annotations

from pathlib import Path

import pytest

from restorekit.testing import error_line
from restorekit.testing.data import smooth_batch
from restorekit.images import save_image


def _one_line(r) -> str:  # type: ignore[no-untyped-def]
    assert r.exit_code == 2, (r.exit_code, r.stderr)
    return error_line(r.stderr)


@pytest.fixture
def face(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("RESTOREKIT_HOME", str(tmp_path / "home"))
    return save_image(smooth_batch(1, 16, 16, seed=1), tmp_path / "face.png")


MISSING = ["/nonexistent/model.pt", "./missing.safetensors", "missing.pth", "runs/pix2pixhd"]


@pytest.mark.parametrize("value", MISSING)
@pytest.mark.parametrize("how", ["--weights", "--opt"])
def test_run_pix2pixhd_missing_weights_file(rk_cli, face, tmp_path, value, how):
    given = ["--weights", value] if how == "--weights" else ["--opt", f"weights={value}"]
    r = rk_cli("run", "pix2pixhd", "--scale", "4", *given, "--input", face, "--output", tmp_path / "out",
               "--device", "cpu")
    assert _one_line(r) == f"error: {value}: no such file"
    assert not (tmp_path / "out" / "face.png").exists()


def test_a_registered_name_with_a_file_suffix_is_suggested(rk_cli, face, tmp_path):
    r = rk_cli("run", "pix2pixhd", "--scale", "4", "--weights", "pix2pixhd-faces128.safetensors", "--input", face,
               "--output", tmp_path / "out", "--device", "cpu")
    assert _one_line(r) == ("error: pix2pixhd-faces128.safetensors: no such file "
                            "(did you mean the registered weights 'pix2pixhd-faces128'?)")


def test_a_mistyped_registry_name_keeps_its_message(rk_cli, face, tmp_path):
    r = rk_cli("run", "pix2pixhd", "--scale", "4", "--weights", "pix2pixhd-faces12", "--input", face,
               "--output", tmp_path / "out", "--device", "cpu")
    assert _one_line(r).startswith("error: unknown weights 'pix2pixhd-faces12' (did you mean 'pix2pixhd-faces128'?)")


def test_export_pix2pixhd_missing_weights_file(rk_cli, face, tmp_path):
    r = rk_cli("export", "pix2pixhd", "--weights", "./missing.pt", "--out", tmp_path / "m.onnx")
    assert _one_line(r) == "error: ./missing.pt: no such file"
    assert not (tmp_path / "m.onnx").exists()


@pytest.mark.parametrize("value", ["/nonexistent/generator.pt", "./missing.safetensors"])
def test_run_pulse_missing_generator_weights_file(rk_cli, face, tmp_path, value):
    r = rk_cli("run", "pulse", "--scale", "2", "--weights", value, "--input", face, "--output", tmp_path / "out",
               "--device", "cpu")
    assert value in _one_line(r) and "no such file" in r.stderr and "unknown weights" not in r.stderr
