"""``bench scaleout`` figures over an even ``--repeats``: images/s is the median of the runs' own
rates and the speed-up the ratio of those medians (it used to be images over the median wall
time, which for two repeats is images over the mean wall time: neither figure the docs name)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from restorekit.harness import bench_scaleout

# Fixed wall times (s) of 4 images, per launch, in launch order (1 process, then 2, alternately).
WALLS = {1: [2.0, 8.0], 2: [1.0, 16.0]}


@pytest.fixture
def fake_launch(monkeypatch: pytest.MonkeyPatch) -> None:
    seen = {1: 0, 2: 0}

    def launch(processes: int, threads: int, hr: Path, out: Path, scale: int, steps: int,
               metrics: str) -> dict[str, Any]:
        wall = WALLS[processes][seen[processes]]
        seen[processes] += 1
        return {"processes": processes, "threads": threads, "images": 4, "wall_s": wall, "images_per_s": 4 / wall,
                "launcher_s": wall + 1.0, "cores_busy": 0.5 * processes, "method_ms_per_image": 100.0 * wall,
                "numbers": [("a.png", 0, {"psnr": 30.0}, "ab")], "aggregate": {"psnr": 30.0}}

    monkeypatch.setattr(bench_scaleout, "_launch", launch)
    monkeypatch.setattr(bench_scaleout, "check_settings", lambda size, scale, metrics: ["psnr"])


def test_even_repeats_give_median_rates_and_their_ratio(fake_launch: None) -> None:
    d = bench_scaleout.run_scaleout(2, 16, 4, 2, 1, 1, "psnr", repeats=2)
    one, many = d["one"], d["many"]
    # 1 process: rates 2.0 and 0.5 images/s → median 1.25 (not 4 / median wall 5.0 = 0.8)
    assert one["images_per_s"] == pytest.approx(1.25) and one["images_per_s_range"] == pytest.approx([0.5, 2.0])
    # 2 processes: rates 4.0 and 0.25 → median 2.125 (not 4 / 8.5 ≈ 0.47)
    assert many["images_per_s"] == pytest.approx(2.125) and many["images_per_s_range"] == pytest.approx([0.25, 4.0])
    assert one["wall_s"] == pytest.approx(5.0) and many["wall_s"] == pytest.approx(8.5)
    assert d["speedup"] == pytest.approx(2.125 / 1.25)
    assert d["speedup_range"] == pytest.approx([0.25 / 2.0, 4.0 / 0.5])
    text = bench_scaleout.format_scaleout(d)
    assert "1.250 (0.500–2.000)" in text and "2.125 (0.250–4.000)" in text
    assert "1.70×" in text, text


def test_odd_repeats_keep_images_over_the_median_wall(fake_launch: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(WALLS, 1, [2.0, 8.0, 4.0])
    monkeypatch.setitem(WALLS, 2, [1.0, 16.0, 2.0])
    d = bench_scaleout.run_scaleout(2, 16, 4, 2, 1, 1, "psnr", repeats=3)
    assert d["one"]["images_per_s"] == pytest.approx(4 / d["one"]["wall_s"]) == pytest.approx(1.0)
    assert d["many"]["images_per_s"] == pytest.approx(2.0) and d["speedup"] == pytest.approx(2.0)
