"""``--weights`` of psp_sr, psp_pulse, ``generate`` and ``realism`` with a path that names no file:
one line, ``PATH: no such file``, exit 2 — not "unknown weights …; known: …"."""

from __future__ import annotations

from pathlib import Path

import pytest

from restorekit.images import save_image
from restorekit.testing import error_line
from restorekit.testing.data import smooth_batch


def _one_line(r) -> str:  # type: ignore[no-untyped-def]
    assert r.exit_code == 2, (r.exit_code, r.stderr)
    return error_line(r.stderr)


@pytest.fixture
def faces(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("RESTOREKIT_HOME", str(tmp_path / "home"))
    folder = tmp_path / "faces"
    for i in range(2):
        save_image(smooth_batch(1, 32, 32, seed=i), folder / f"f{i}.png")
    return folder


MISSING = ["/nonexistent/model.pt", "./missing.safetensors", "missing.onnx", "runs/psp"]


@pytest.mark.parametrize("value", MISSING)
@pytest.mark.parametrize("method", ["psp_sr", "psp_pulse"])
def test_run_missing_weights_file(rk_cli, faces, tmp_path, method, value):
    r = rk_cli("run", method, "--scale", "4", "--weights", value, "--input", faces, "--output", tmp_path / "out",
               "--device", "cpu")
    assert _one_line(r) == f"error: {value}: no such file"


@pytest.mark.parametrize("value", MISSING)
def test_generate_missing_weights_file(rk_cli, faces, tmp_path, value):
    r = rk_cli("generate", "--generator", "stylegan2", "--weights", value, "--seeds", "0", "--output",
               tmp_path / "out", "--device", "cpu")
    assert _one_line(r) == f"error: {value}: no such file"
    assert not (tmp_path / "out").exists()


def test_generate_registered_name_as_a_file_is_suggested(rk_cli, faces, tmp_path):
    r = rk_cli("generate", "--generator", "stylegan2", "--weights", "stylegan2-ffhq-config-f.pt", "--seeds", "0",
               "--output", tmp_path / "out", "--device", "cpu")
    assert _one_line(r) == ("error: stylegan2-ffhq-config-f.pt: no such file "
                            "(did you mean the registered weights 'stylegan2-ffhq-config-f'?)")


def test_realism_missing_weights_file(rk_cli, faces, tmp_path):
    r = rk_cli("realism", "--generator", "stylegan2", "--weights", "/nonexistent/g.pt", "--data", faces, "--n", "2",
               "--spaces", "dlib", "--detector", "none", "--cache", "none", "--device", "cpu")
    assert _one_line(r) == "error: /nonexistent/g.pt: no such file"


@pytest.mark.parametrize("setting", ["generator", "init"])
def test_train_missing_generator_or_init_file(rk_cli, faces, tmp_path, setting):
    # One line like every other command's: no click usage block for a file that is not there.
    r = rk_cli("train", "psp_sr", "--data", faces, "--out", tmp_path / "run", "--set", f"{setting}=./missing.safetensors",
               "--set", "device=cpu")
    assert _one_line(r) == "error: ./missing.safetensors: no such file"
    assert not (tmp_path / "run" / "checkpoints").exists()
