"""pix2pixhd's embedded default: the bundled file matches its registry entry and restores as recorded."""

from __future__ import annotations

import hashlib
import json

import pytest
import torch

from restorekit.testing.data import smooth_batch
from restorekit.weights import get_spec, resolve
from restorekit_baselines.pix2pixhd import DEFAULT_MODEL_FILE, DEFAULT_MODEL_NAME, WEIGHTS_DIR, Pix2PixHD

BUNDLED = WEIGHTS_DIR / DEFAULT_MODEL_FILE
pytestmark = pytest.mark.skipif(not BUNDLED.is_file(), reason=f"{DEFAULT_MODEL_FILE} is not in this checkout")


def test_bundled_file_matches_the_registry() -> None:
    spec = get_spec(DEFAULT_MODEL_NAME)
    data = BUNDLED.read_bytes()
    assert len(data) == spec.file().size and hashlib.sha256(data).hexdigest() == spec.file().sha256
    assert resolve(DEFAULT_MODEL_NAME) == BUNDLED
    assert spec.license == "LicenseRef-research-only"


def test_default_is_announced_and_restores_deterministically() -> None:
    torch.set_num_threads(1)
    m = Pix2PixHD()
    m.load()
    assert "embedded default" in m.notes[0] and "LicenseRef-research-only" in m.notes[0]
    for scale in (4, 8):
        lr = smooth_batch(2, 128 // scale, 128 // scale, seed=scale)
        out = m.restore(lr, scale)
        assert out.shape == (2, 3, 128, 128) and 0 <= out.min() and out.max() <= 1
        assert torch.equal(out, m.restore(lr, scale))
        assert (out[0] - out[1]).abs().mean() > 0.01  # depends on the input


def test_default_output_matches_the_recorded_values() -> None:
    """Golden values written by scripts/ship_embedded_model.py when the model was shipped; the
    tolerance covers float32 differences between CPUs, not changes to the model's code."""
    golden = json.loads(BUNDLED.with_suffix(".golden.json").read_text())
    torch.set_num_threads(1)
    out = Pix2PixHD().restore(smooth_batch(1, 16, 16, seed=0), golden["scale"])
    torch.testing.assert_close(out[0, :, ::32, ::32], torch.tensor(golden["samples_every_32px"]), rtol=0, atol=3e-3)
    assert abs(float(out.mean()) - golden["mean"]) < 1e-3


def test_compare_runs_pix2pixhd_without_weights(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """The paper's baselines on a fresh machine: no --weights, no network."""
    from click.testing import CliRunner

    from restorekit.cli import build_cli
    from restorekit.images import save_image

    data = tmp_path / "hr"
    for i in range(2):
        save_image(smooth_batch(1, 128, 128, seed=i), data / f"face{i}.png")
    res = CliRunner().invoke(build_cli(), ["compare", "--methods", "pix2pixhd,bicubic", "--scale", "8", "--data",
                                           str(data), "--out", str(tmp_path / "cmp"), "--metrics", "psnr_y_crop",
                                           "--json"])
    assert res.exit_code == 0, res.output
    rows = json.loads((tmp_path / "cmp" / "results.json").read_text())
    assert "pix2pixhd" in json.dumps(rows)
