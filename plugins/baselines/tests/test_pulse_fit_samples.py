"""pulse's gaussian_fit_samples has a ceiling: the fit maps that many samples in chunks, so a
value like 10**20 ran without end instead of being refused as a bad option value."""

from __future__ import annotations

import pytest
from click.testing import CliRunner
from pydantic import ValidationError

from restorekit.cli import build_cli
from restorekit.images import save_image
from restorekit.testing.data import smooth_batch
from restorekit_baselines.pulse import PulseOptions


def test_the_options_model_refuses_a_fit_beyond_the_ceiling():
    assert PulseOptions(gaussian_fit_samples=10_000_000).gaussian_fit_samples == 10_000_000
    with pytest.raises(ValidationError, match="less than or equal to 10000000"):
        PulseOptions(gaussian_fit_samples=10_000_001)


def test_run_refuses_it_as_a_usage_error(tmp_path):
    face = save_image(smooth_batch(1, 16, 16, seed=1), tmp_path / "face.png")
    r = CliRunner().invoke(build_cli(), ["run", "pulse", "--scale", "2", "--opt", "random_generator=true",
                                         "--opt", f"gaussian_fit_samples={10**20}", "--input", str(face),
                                         "--output", str(tmp_path / "out"), "--device", "cpu"],
                           catch_exceptions=False)
    text = " ".join((r.output + r.stderr).split())
    assert r.exit_code == 2 and "option 'gaussian_fit_samples'" in text and "10000000" in text, text
    assert not (tmp_path / "out").exists()
