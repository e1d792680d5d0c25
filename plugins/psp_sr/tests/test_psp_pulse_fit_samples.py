"""psp_pulse's gaussian_fit_samples has a ceiling: its noise is drawn in one piece, so 10**20
ended with 'unexpected RuntimeError: ... can't allocate memory' instead of a bad option value."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from restorekit_psp_sr.psp_pulse import PSPPulseOptions


def test_the_options_model_refuses_a_fit_beyond_the_ceiling():
    assert PSPPulseOptions(gaussian_fit_samples=1_000_000).gaussian_fit_samples == 1_000_000
    with pytest.raises(ValidationError, match="less than or equal to 1000000"):
        PSPPulseOptions(gaussian_fit_samples=10**20)
