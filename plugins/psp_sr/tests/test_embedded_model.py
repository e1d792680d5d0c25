"""The embedded default model: bundled file matches its registry entry; restores deterministically."""

from __future__ import annotations

import hashlib
import importlib.util

import pytest
import torch

from restorekit.testing.data import smooth_batch
from restorekit.weights import get_spec, resolve
from restorekit_psp_sr.method import DEFAULT_MODEL_FILE, DEFAULT_MODEL_NAME, WEIGHTS_DIR, PSPSR

BUNDLED = WEIGHTS_DIR / DEFAULT_MODEL_FILE
pytestmark = pytest.mark.skipif(not BUNDLED.is_file(), reason=f"{DEFAULT_MODEL_FILE} is not in this checkout")


def test_bundled_file_matches_the_registry():
    wf = get_spec(DEFAULT_MODEL_NAME).file()
    data = BUNDLED.read_bytes()
    assert len(data) == wf.size and hashlib.sha256(data).hexdigest() == wf.sha256
    assert resolve(DEFAULT_MODEL_NAME) == BUNDLED
    assert get_spec(DEFAULT_MODEL_NAME).license == "LicenseRef-research-only"


def test_bundled_model_names_the_shipped_generator_instead_of_holding_it():
    """One copy of the generator in the package: psp_sr's file holds the encoder (fp16) and names
    the generator entry, pinned by its sha256."""
    import json

    from safetensors import safe_open

    from restorekit_psp_sr.method import GENERATOR_MODEL_FILE, GENERATOR_MODEL_NAME

    if not (WEIGHTS_DIR / GENERATOR_MODEL_FILE).is_file():
        pytest.skip(f"{GENERATOR_MODEL_FILE} is not shipped: the psp file may hold its decoder")
    with safe_open(str(BUNDLED), framework="pt") as f:
        config = json.loads(f.metadata()["config"])
        assert not [k for k in f.keys() if k.startswith("decoder.")]
        assert all(f.get_tensor(k).dtype == torch.float16 for k in f.keys() if f.get_tensor(k).is_floating_point())
    assert config["decoder_weights"] == {"name": GENERATOR_MODEL_NAME,
                                         "sha256": get_spec(GENERATOR_MODEL_NAME).file().sha256}


def test_default_restores_deterministically_at_each_trained_scale():
    torch.set_num_threads(1)
    m = PSPSR()
    m.load()
    assert m.weights_info["name"] == DEFAULT_MODEL_NAME
    assert "LicenseRef-research-only" in m.notes[0] and "embedded default" in m.notes[0]
    assert m.resolution == 128
    for scale in (4, 8):
        lr = smooth_batch(2, 128 // scale, 128 // scale, seed=scale)
        out = m.restore(lr, scale)
        assert out.shape == (2, 3, 128, 128) and out.dtype == torch.float32
        assert 0 <= out.min() and out.max() <= 1
        assert torch.equal(out, m.restore(lr, scale))
        # The restoration depends on the input: two different faces give different outputs.
        assert (out[0] - out[1]).abs().mean() > 0.01


def test_default_output_matches_the_recorded_values():
    """Golden values of the shipped model on a fixed synthetic input (×8, 16 → 128 px), written by
    scripts/ship_embedded_model.py when it was shipped; the tolerance covers float32 differences
    between CPUs, not changes to the model's code."""
    import json

    golden = json.loads(BUNDLED.with_suffix(".golden.json").read_text())
    torch.set_num_threads(1)
    out = PSPSR().restore(smooth_batch(1, 16, 16, seed=0), golden["scale"])
    torch.testing.assert_close(out[0, :, ::32, ::32], torch.tensor(golden["samples_every_32px"]), rtol=0, atol=3e-3)
    assert abs(float(out.mean()) - golden["mean"]) < 1e-3


@pytest.mark.skipif(importlib.util.find_spec("skimage") is None or importlib.util.find_spec("facenet_pytorch") is None,
                    reason="the demo photo ships in scikit-image; the default detector's weights in facenet-pytorch")
def test_demo_runs_psp_sr_on_the_embedded_model(tmp_path):
    """The README's first command: the astronaut, detected, aligned, ×8, psp_sr and bicubic."""
    import json

    from click.testing import CliRunner
    from PIL import Image

    from restorekit.cli import build_cli

    out = tmp_path / "demo"
    r = CliRunner().invoke(build_cli(), ["demo", "--output", str(out), "--methods", "psp_sr,bicubic", "-q"])
    assert r.exit_code == 0, r.output
    summary = json.loads((out / "metrics.json").read_text())
    assert not summary["unavailable"]
    psp, bic = summary["results"]["psp_sr"], summary["results"]["bicubic"]
    # A restored face, not noise: close to the original in Y, and sharper in LR terms than noise would be.
    assert 14 < psp["psnr_y_crop"] < bic["psnr_y_crop"] + 5
    assert psp["lr_consistency"] < 0.05
    assert Image.open(out / "astronaut_x8.png").size == (128 * 4, 128 + 18)  # input | 2 methods | original
