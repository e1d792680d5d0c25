"""The shipped models run as recorded along the paths their base goldens leave open: psp_sr at ×4
(32-px inputs), back-projected (consistency_steps=3) and style-mixed (n_samples=2), and the searches
decoding with the shipped prior, psp_pulse and pulse, at 5 steps (few enough that thread counts move
them < 1e-6; their default step counts move 0.1, so those are not pinned).

The records are the golden files' ``variants``, written by scripts/ship_embedded_model.py (``PINS``)
when the models were shipped; each is run here with the defaults, i.e. on the shipped files."""

from __future__ import annotations

import json
from typing import Any

import pytest
import torch

from restorekit.consistency import downscale_error
from restorekit.methods import build_method
from restorekit.plugins import registry
from restorekit.testing.data import smooth_batch
from restorekit_psp_sr.method import DEFAULT_MODEL_FILE, GENERATOR_MODEL_FILE, WEIGHTS_DIR

PSP_GOLDEN = WEIGHTS_DIR / DEFAULT_MODEL_FILE.replace(".safetensors", ".golden.json")
GENERATOR_GOLDEN = WEIGHTS_DIR / GENERATOR_MODEL_FILE.replace(".safetensors", ".golden.json")
pytestmark = pytest.mark.skipif(not (WEIGHTS_DIR / DEFAULT_MODEL_FILE).is_file()
                                or not (WEIGHTS_DIR / GENERATOR_MODEL_FILE).is_file(),
                                reason="the shipped models are not in this checkout")


def check_pin(record: dict[str, Any], *, atol: float = 3e-3, mean_atol: float = 1e-3, rel: float = 1e-3) -> None:
    """Run a recorded variant on the defaults and compare: every 32nd pixel of each row within
    ``atol``, the mean within ``mean_atol`` (by default float32 differences between CPUs, as the
    base goldens), and each row's downscale error against the input, and the one the method
    reports, within ``rel``."""
    torch.set_num_threads(1)
    m = build_method(record["method"], {**record["options"], "quiet": True}, "cpu")
    lr = smooth_batch(1, record["input_size"], record["input_size"], seed=0)
    out = m.restore(lr, record["scale"], seed=record["seed"], n_samples=record["n_samples"])
    assert out.shape == (record["n_samples"], 3, record["input_size"] * record["scale"],
                         record["input_size"] * record["scale"])
    torch.testing.assert_close(out[:, :, ::32, ::32], torch.tensor(record["samples_every_32px"]), rtol=0, atol=atol)
    assert abs(float(out.mean()) - record["mean"]) < mean_atol
    errors = downscale_error(out, lr.expand(out.shape[0], -1, -1, -1)).tolist()
    assert errors == pytest.approx(record["downscale_error"], rel=rel)
    if "reported_downscale_mse" in record:
        assert [r["downscale_mse"] for r in m.last_reports] == pytest.approx(record["reported_downscale_mse"], rel=rel)


def _variant(golden: Any, name: str) -> dict[str, Any]:
    return json.loads(golden.read_text())["variants"][name]


@pytest.mark.parametrize("name", ["psp_sr x4", "psp_sr consistency_steps=3", "psp_sr n_samples=2 seed=0"])
def test_psp_sr_variants_match_the_recorded_values(name: str) -> None:
    record = _variant(PSP_GOLDEN, name)
    assert record["method"] == "psp_sr"
    check_pin(record)


def test_psp_pulse_at_5_steps_matches_the_recorded_values() -> None:
    record = _variant(PSP_GOLDEN, "psp_pulse steps=5")
    assert (record["method"], record["options"], record["seed"]) == ("psp_pulse", {"steps": 5}, 0)
    assert "reported_downscale_mse" in record
    check_pin(record)


@pytest.mark.skipif("pulse" not in registry().names("methods"), reason="pulse is in restorekit-baselines")
def test_pulse_at_5_steps_on_the_shipped_prior_matches_the_recorded_values() -> None:
    record = _variant(GENERATOR_GOLDEN, "pulse steps=5")
    assert (record["method"], record["options"], record["seed"]) == ("pulse", {"steps": 5}, 0)
    assert "reported_downscale_mse" in record
    check_pin(record)
