"""A weights file named by an option is part of a method's settings by its contents: a model
retrained into the same file does not pass for the old one when compare resumes a run."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from PIL import Image

from restorekit.cli import build_cli
from restorekit.testing.data import smooth_image


def compare(data: Path, out: Path, weights: Path) -> Result:
    return CliRunner().invoke(build_cli(), ["compare", "--methods", "bicubic,pix2pixhd", "--scale", "2", "--data",
                                            str(data), "--out", str(out), "--metrics", "psnr_rgb",
                                            "--opt", f"pix2pixhd.weights={weights}", "-q"], catch_exceptions=False)


def test_a_weights_file_rewritten_in_place_is_not_taken_for_the_stored_results(tmp_path: Path) -> None:
    pytest.importorskip("restorekit_baselines")
    from restorekit_baselines.pix2pixhd import WEIGHTS_DIR

    data = tmp_path / "hr"
    data.mkdir()
    for i in range(2):
        Image.fromarray(smooth_image(32, 32, i)).save(data / f"{i}.png")
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    weights = tmp_path / "model.safetensors"
    shutil.copyfile(next(WEIGHTS_DIR.glob("pix2pixhd_*.safetensors")), weights)

    def retrain(by: float) -> None:
        with safe_open(str(weights), "pt") as f:
            meta = f.metadata()
        tensors = load_file(str(weights))
        key = next(iter(tensors))
        tensors[key] = tensors[key] + by
        save_file(tensors, str(weights), metadata=meta)

    retrain(0.05)  # (not the default's bytes, which compare files as the default weights)
    out = tmp_path / "out"
    r = compare(data, out, weights)
    assert r.exit_code == 0, r.output
    r = compare(data, out, weights)
    assert r.exit_code == 0, r.output  # the same file again: its results are reused
    # Retrained into the same path: the stored results are another model's.
    retrain(0.1)
    r = compare(data, out, weights)
    assert r.exit_code == 2
    assert "pix2pixhd.option_files.weights:" in r.stderr and "another configuration" in r.stderr
