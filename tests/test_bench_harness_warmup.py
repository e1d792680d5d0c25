"""bench harness timed --method first, so it paid the process's one-time costs (bicubic's set-up
43.8 ms/img on the first call against 2.0 after) and the stand-in after it did not."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from click.testing import CliRunner

from restorekit.cli import build_cli
from restorekit.harness import bench


def test_both_methods_are_warmed_up_untimed_before_the_timed_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[str, int, str]] = []
    real = bench._one_run

    def spy(hr: Path, out: Path, method: str, opts: dict[str, Any], n: int, *a: Any) -> dict[str, Any]:
        calls.append((method, n, out.name))
        return real(hr, out, method, opts, n, *a)

    monkeypatch.setattr(bench, "_one_run", spy)
    data = bench.run_bench(3, 32, 2, "bicubic", ["psnr_y_crop"], "cpu", standin_ms=1.0)
    assert [c[:2] for c in calls] == [("bicubic", 2), ("bench_standin", 2), ("bicubic", 3), ("bench_standin", 3)]
    assert [r["method"] for r in data["runs"]] == ["bicubic", "bench_standin"]  # only the timed runs reported
    assert data["torch_threads"] == torch.get_num_threads() and data["warmup_images"] == 2


def test_the_report_names_the_device_and_torchs_threads() -> None:
    args = ["bench", "harness", "--n", "2", "--size", "32", "--scale", "2", "--metrics", "psnr_y_crop",
            "--standin-ms", "1"]
    r = CliRunner().invoke(build_cli(), args + ["--json"])
    assert r.exit_code == 0, r.output
    data = json.loads(r.stdout)
    assert data["torch_threads"] == torch.get_num_threads()
    r = CliRunner().invoke(build_cli(), args)
    assert r.exit_code == 0, r.output
    head = r.stdout.splitlines()[0]
    assert f"cpu, {torch.get_num_threads()} torch threads, after an untimed warm-up" in head
