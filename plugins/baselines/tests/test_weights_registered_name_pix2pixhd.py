"""``run pix2pixhd --weights pix2pixhd-faces128`` uses the registered (embedded, sha256-checked)
weights even when a file named ``pix2pixhd-faces128`` lies in the current folder; ``./NAME`` uses the file."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from restorekit.images import save_image
from restorekit.testing.data import smooth_batch
from restorekit.weights import load_checkpoint, resolve

NAME = "pix2pixhd-faces128"


@pytest.fixture
def face(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("RESTOREKIT_HOME", str(tmp_path / "home"))
    return save_image(smooth_batch(1, 16, 16, seed=1), tmp_path / "face.png")


def _plant_decoy(path: Path) -> None:
    """A valid pix2pixhd training checkpoint of the same architecture with other weights."""
    from restorekit_baselines.pix2pixhd import load_generator

    gen, info = load_generator(resolve(NAME))
    state = {f"G.{k}": (v * 0.5 if v.is_floating_point() else v) for k, v in gen.state_dict().items()}
    from dataclasses import asdict

    torch.save({"trainer": "pix2pixhd", "model": state,
                "extra": {"generator_config": asdict(gen.cfg), **info}}, path)
    assert load_checkpoint(path)["trainer"] == "pix2pixhd"


def _run(rk_cli, face: Path, out: Path, weights: str):
    r = rk_cli("run", "pix2pixhd", "--scale", "4", "--weights", weights, "--input", face, "--output", out,
               "--device", "cpu")
    assert r.exit_code == 0, r.stderr
    return r, (out / "face.png").read_bytes()


def test_a_same_named_file_does_not_replace_the_registered_weights(rk_cli, face, tmp_path):
    _, clean = _run(rk_cli, face, tmp_path / "clean", NAME)
    _plant_decoy(tmp_path / NAME)
    r, named = _run(rk_cli, face, tmp_path / "named", NAME)
    assert named == clean
    note = f"note: '{NAME}' is the registered weights; for the file of that name in this folder write ./{NAME}"
    assert r.stderr.count(note) == 1, r.stderr
    _, as_path = _run(rk_cli, face, tmp_path / "path", f"./{NAME}")
    assert as_path != clean
