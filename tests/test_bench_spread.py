"""Every bench reports each time as the median over its repeats with their range, and each ratio
as the ratio of the medians with its range over all pairings of repeats. Fake clocks and fake
work: no assertion here depends on how fast anything really ran."""

from __future__ import annotations

import json
import time
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from click.testing import CliRunner

from restorekit.cli import build_cli
from restorekit.commands.bench import fmt_ratio, fmt_spread, ratio_spread, spread


def test_spread_and_ratio_spread() -> None:
    assert spread([30.0, 10.0, 20.0]) == {"median": 20.0, "min": 10.0, "max": 30.0, "n": 3}
    r = ratio_spread([12.0, 13.0, 14.0], [10.0, 9.0, 11.0])
    assert r is not None
    assert r["ratio"] == pytest.approx(13.0 / 10.0)
    assert r["min"] == pytest.approx(12.0 / 11.0) and r["max"] == pytest.approx(14.0 / 9.0)
    assert ratio_spread([1.0], [0.0]) is None
    assert fmt_spread(spread([30.0, 10.0, 20.0])) == "20.00 (10.00–30.00)"
    assert fmt_spread(spread([5.0])) == "5.00"
    assert fmt_ratio(r) == "1.30× (1.09–1.56×)"


class FakeMethod:
    """What time_method needs of a method: bicubic output, a cost per call on a fake clock."""

    def __init__(self, clock: list[float], costs_ms: list[float]) -> None:
        self.device = torch.device("cpu")
        self.info = SimpleNamespace(name="fake")
        self.clock, self.costs, self.calls = clock, costs_ms, 0

    def restore(self, lr: torch.Tensor, scale: int, **_: Any) -> torch.Tensor:
        from restorekit.degradations import bicubic_resize

        self.clock[0] += self.costs[min(self.calls, len(self.costs) - 1)] / 1000.0
        self.calls += 1
        return bicubic_resize(lr, (lr.shape[-2] * scale, lr.shape[-1] * scale)).clamp(0, 1)


def test_bench_method_times_are_medians_with_ranges_and_no_warmup(monkeypatch: pytest.MonkeyPatch) -> None:
    from restorekit.commands.bench_method import time_method

    clock = [100.0]
    monkeypatch.setattr(time, "perf_counter", lambda: clock[0])
    m = FakeMethod(clock, [1000.0, 40.0, 120.0, 80.0])  # warm-up, then three timed calls
    row = time_method(m, torch.rand(2, 3, 8, 8), 2, repeat=3, warmup=1)  # type: ignore[arg-type]
    assert row["ms_per_call_samples"] == pytest.approx([40.0, 120.0, 80.0])
    assert row["ms_per_call"] == pytest.approx(80.0) and row["ms_per_call_range"] == pytest.approx([40.0, 120.0])
    assert row["ms_per_image"] == pytest.approx(40.0) and row["ms_per_image_range"] == pytest.approx([20.0, 60.0])
    assert row["repeats"] == 3


def test_bench_method_ratios_come_with_their_range() -> None:
    r = CliRunner().invoke(build_cli(), ["bench", "method", "bicubic", "--compare-to", "bicubic", "--size", "16",
                                         "--batch", "1", "--repeat", "3", "--warmup", "0", "--compare-repeat", "2",
                                         "--device", "cpu", "--json"])
    assert r.exit_code == 0, r.output
    data = json.loads(r.stdout[r.stdout.index("{"):])
    (lo, hi), ratio = data["speed_ratio_range"]["1"], data["speed_ratio"]["1"]
    assert lo <= ratio <= hi
    (mine,), (other,) = data["results"], data["compare_results"]
    assert mine["repeats"] == 3 and other["repeats"] == 2
    assert ratio == pytest.approx(other["ms_per_image"] / mine["ms_per_image"])
    assert lo == pytest.approx(min(other["ms_per_call_samples"]) / max(mine["ms_per_call_samples"]))


def test_bench_method_console_prints_ranges() -> None:
    r = CliRunner().invoke(build_cli(), ["bench", "method", "bicubic", "--compare-to", "bicubic", "--size", "16",
                                         "--batch", "1", "--repeat", "2", "--warmup", "0", "--device", "cpu"])
    assert r.exit_code == 0, r.output
    line = [ln for ln in r.stdout.splitlines() if "as fast as" in ln][0]
    assert "ratio of the medians" in line and "×" in line


def test_faces_ratios_against_decoding_and_the_fastest_detector() -> None:
    from restorekit.commands.faces_bench import add_ratios

    rows = [{"detector": "slow", "detect_ms_per_image_samples": [300.0, 200.0, 400.0],
             "align_ms_per_face_samples": [2.0, 3.0, 4.0]},
            {"detector": "quick", "detect_ms_per_image_samples": [50.0, 40.0, 60.0], "align_ms_per_face_samples": []}]
    for r in rows:
        r["detect_ms_per_image"] = spread(r["detect_ms_per_image_samples"])["median"]
    add_ratios(rows, {"what": "decode", "samples": [10.0, 8.0, 12.0]})
    slow, quick = rows
    assert slow["detect_to_decode"] == pytest.approx(30.0)
    assert slow["detect_to_decode_range"] == pytest.approx([200.0 / 12.0, 400.0 / 8.0], abs=1e-3)
    assert slow["align_per_face_to_decode"] == pytest.approx(0.3)
    assert quick["align_per_face_to_decode"] is None and quick["align_per_face_to_decode_range"] is None
    assert slow["fastest"] == quick["fastest"] == "quick"
    assert slow["detect_to_fastest"] == pytest.approx(6.0)
    assert slow["detect_to_fastest_range"] == pytest.approx([200.0 / 60.0, 400.0 / 40.0], abs=1e-3)
    assert quick["detect_to_fastest"] == 1.0


def test_faces_json_has_the_decode_reference(monkeypatch: pytest.MonkeyPatch) -> None:
    from restorekit.errors import RestorekitError
    from restorekit.faces.detectors import check_available

    try:
        check_available("dlib_hog")
    except RestorekitError as exc:  # dlib or its model files missing; any other error is a bug
        pytest.skip(f"dlib_hog unavailable: {exc}")
    r = CliRunner().invoke(build_cli(), ["bench", "faces", "--detector", "dlib_hog", "--repeat", "2", "--json"])
    assert r.exit_code == 0, r.output
    data = json.loads(r.stdout)
    ref = data["reference"]
    assert ref["what"] == "decode" and len(ref["samples"]) == 2 and ref["ms_per_image"] > 0
    (row,) = data["results"]
    lo, hi = row["detect_to_decode_range"]
    assert row["repeats"] == 2 and lo <= row["detect_to_decode"] <= hi
    lo, hi = row["detect_ms_per_image_range"]
    assert lo <= row["detect_ms_per_image"] <= hi


def test_scaleout_reports_medians_and_the_speedup_range(monkeypatch: pytest.MonkeyPatch) -> None:
    from restorekit.harness import bench_scaleout

    speeds = {1: iter([1.0, 1.2, 0.8]), 2: iter([1.5, 2.1, 1.8])}

    def launch(processes: int, threads: int, hr: Any, out: Any, *a: Any) -> dict[str, Any]:
        ips = next(speeds[processes])
        return {"processes": processes, "threads": threads, "images": 4, "wall_s": 4 / ips, "images_per_s": ips,
                "launcher_s": 1.0, "cores_busy": None, "method_ms_per_image": 10.0 * processes,
                "numbers": [("a", 0, {}, "x")], "aggregate": {}}

    monkeypatch.setattr(bench_scaleout, "_launch", launch)
    d = bench_scaleout.run_scaleout(4, 32, 4, 2, 1, 1, "psnr_y_crop", repeats=3)
    assert d["one"]["images_per_s"] == pytest.approx(1.0)
    assert d["one"]["images_per_s_range"] == pytest.approx([0.8, 1.2])
    assert d["many"]["images_per_s"] == pytest.approx(1.8)
    assert d["speedup"] == pytest.approx(1.8) and d["speedup_range"] == pytest.approx([1.5 / 1.2, 2.1 / 0.8])
    assert d["identical"] and d["one"]["cores_busy"] is None
    text = bench_scaleout.format_scaleout(d)
    assert "median of 3" in text and "1.80× (1.25–2.62×)" in text
