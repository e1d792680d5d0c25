"""The embedded default model: bundled file matches its registry entry; restores deterministically."""

from __future__ import annotations

import hashlib

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
