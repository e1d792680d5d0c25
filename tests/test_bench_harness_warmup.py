"""bench harness timed --method first, so it paid the process's one-time costs (bicubic's set-up
43.8 ms/img on the first call against 2.0 after) and the stand-in after it did not.

These tests watch behaviour, not call order: a fake method whose first call in the process
costs 1000 ms on a fake clock (``time.perf_counter``, advanced only by the method) and every
later one a fixed cost. Whatever runs the warm-up, the timed figures must never contain that
first call; and every figure is the median over the repeats, with their range."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import ClassVar

import pytest
import torch
from click.testing import CliRunner
from torch import Tensor

from restorekit.cli import build_cli
from restorekit.harness import bench
from restorekit.interfaces import Method, MethodInfo, Options

FAKE = "bench_fake_first_call"


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Fake(Method):
    """Bicubic upscaling whose cost on the fake clock is ``costs_ms[i]`` for its i-th call."""

    info: ClassVar[MethodInfo] = MethodInfo(name=FAKE, summary="test: fake costs on a fake clock",
                                            license="Apache-2.0", deterministic=True)
    Options: ClassVar[type[Options]] = Options
    clock: ClassVar[FakeClock]
    costs_ms: ClassVar[list[float]] = []
    calls: ClassVar[int] = 0

    def restore(self, lr: Tensor, scale: int, *, seed: int | None = None, n_samples: int = 1) -> Tensor:
        from restorekit.degradations import bicubic_resize

        out = bicubic_resize(lr, (lr.shape[-2] * scale, lr.shape[-1] * scale)).clamp(0, 1)
        cost = Fake.costs_ms[min(Fake.calls, len(Fake.costs_ms) - 1)]
        Fake.calls += 1
        Fake.clock.now += cost / 1000.0
        return out


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> Iterator[type[Fake]]:
    from restorekit.plugins import registry

    Fake.clock, Fake.calls = FakeClock(), 0
    monkeypatch.setattr(time, "perf_counter", Fake.clock)  # only the fake method moves time
    reg = registry()
    reg.add("methods", FAKE, Fake, "tests")
    try:
        yield Fake
    finally:
        reg.items["methods"].pop(FAKE, None)
        reg.owner["methods"].pop(FAKE, None)


def run(n: int, repeats: int) -> dict:
    data = bench.run_bench(n, 32, 2, FAKE, ["psnr_y_crop"], "cpu", standin_ms=0.0, repeats=repeats)
    (row,) = [r for r in data["runs"] if r["method"] == FAKE]
    return row


def test_the_first_call_in_the_process_is_in_no_timed_figure(fake: type[Fake]) -> None:
    fake.costs_ms = [1000.0, 10.0]  # the first call: one-time costs; every later call 10 ms
    row = run(n=3, repeats=3)
    assert row["method_ms_per_image"] == pytest.approx(10.0)
    assert row["method_ms_per_image_range"] == pytest.approx([10.0, 10.0])  # in no repeat either
    assert fake.calls > 3 * 3  # the one-time cost was paid, by a call that is not timed


def test_each_figure_is_the_median_of_the_repeats_with_their_range(fake: type[Fake]) -> None:
    fake.costs_ms = [1000.0, 10.0, 30.0, 20.0]  # warm-up (one image), then one image per timed run
    row = run(n=1, repeats=3)
    assert row["repeats"] == 3
    assert row["method_ms_per_image"] == pytest.approx(20.0)
    assert row["method_ms_per_image_range"] == pytest.approx([10.0, 30.0])
    for stage, (lo, hi) in row["ms_per_image_range"].items():
        assert lo <= row["ms_per_image"][stage] <= hi
    if row["harness_to_method"] is not None:
        lo, hi = row["harness_to_method_range"]
        assert lo <= row["harness_to_method"] <= hi


def test_the_report_names_the_device_threads_and_the_repeats() -> None:
    args = ["bench", "harness", "--n", "2", "--size", "32", "--scale", "2", "--metrics", "psnr_y_crop",
            "--standin-ms", "1", "--repeats", "2"]
    r = CliRunner().invoke(build_cli(), args + ["--json"])
    assert r.exit_code == 0, r.output
    data = json.loads(r.stdout)
    assert data["torch_threads"] == torch.get_num_threads() and data["repeats"] == 2
    assert [r["method"] for r in data["runs"]] == ["bicubic", "bench_standin"]  # one entry per method
    for row in data["runs"]:
        lo, hi = row["method_ms_per_image_range"]
        assert row["repeats"] == 2 and lo <= row["method_ms_per_image"] <= hi
    r = CliRunner().invoke(build_cli(), args)
    assert r.exit_code == 0, r.output
    head = r.stdout.splitlines()
    assert f"cpu, {torch.get_num_threads()} torch threads, after an untimed warm-up" in head[0]
    assert head[1].startswith("median of 2 alternating runs of each method")
    assert any(ln.startswith("harness/method") and "×" in ln for ln in head)
