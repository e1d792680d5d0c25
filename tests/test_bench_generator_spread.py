"""bench generator and the pSp breakdown: medians of the rounds, with their range."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("restorekit_psp_sr")


def test_generator_figures_are_medians_with_ranges() -> None:
    from restorekit_psp_sr.bench_generator import bench_generator, format_report

    r = bench_generator(32, 1, "cpu", 1, channel_max=16, repeats=3, optimize=False)
    assert r.repeats == 3
    for key in ("ms_per_image", "conv_ms_per_image", "conv_nchw_ms_per_image", "ratio", "ratio_nchw"):
        lo, hi = getattr(r, f"{key}_range")
        assert lo <= getattr(r, key) <= hi, key
    assert r.ratio == pytest.approx(r.conv_ms_per_image / r.ms_per_image)
    assert "median of 3 alternating rounds" in format_report(r)


def test_measure_samples_keeps_every_round() -> None:
    from restorekit_psp_sr.bench_generator import measure_samples

    conv = torch.nn.Conv2d(3, 8, 3, padding=1)
    x = torch.rand(1, 3, 16, 16)
    s = measure_samples(lambda: conv(x), torch.device("cpu"), repeats=4)
    assert len(s.seconds) == len(s.conv_s) == len(s.conv_nchw_s) == 4 and s.measure.n_convs == 1
    assert min(s.seconds) <= s.measure.seconds <= max(s.seconds)
