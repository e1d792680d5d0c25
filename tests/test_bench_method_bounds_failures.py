"""bench method: the audit's low-severity findings, each pinned.

- ``--batch 1000000`` and ``--size 60000`` had no bound: the input was built until a MemoryError
  ("unexpected … report it", exit 1) or the OOM killer;
- a batch size that failed mid-bench (pix2pixhd's memory guard) ended the command with exit 2 (usage,
  said before any work), lost the sizes already measured and suggested ``--faces detect``, which bench
  does not have;
- ``--batch 1,1`` and ``--backend torch,torch`` printed one measurement as two rows;
- the peak-memory footnote said the sides show the same figure also when they were timed one after
  the other (keep_memory), where they do not.

Fake methods built in place of the real ones: no weights, no GPU, nothing depends on timings.
"""

from __future__ import annotations

import json
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from torch import Tensor

from restorekit import device_memory, memory
from restorekit.cli import build_cli
from restorekit.commands import bench_method
from restorekit.testing import data as test_data

GB = 10**9


def invoke(*args: str) -> Any:
    return CliRunner().invoke(build_cli(), ["bench", "method", "bicubic", "--device", "cpu", *args],
                              prog_name="restorekit", catch_exceptions=False)


class Fake:
    """Bicubic upscaling; with ``need_per_image`` it first asks the memory guard for that many
    bytes per image, with the fix pix2pixhd names (an option of run, not of bench)."""

    def __init__(self, label: str, log: list[tuple[str, int]], *, need_per_image: int = 0,
                 keep_memory: bool | None = None) -> None:
        self.label, self.log, self.need = label, log, need_per_image
        self.device = torch.device("cpu")
        self.info = SimpleNamespace(name=label)
        self.options = SimpleNamespace() if keep_memory is None else SimpleNamespace(keep_memory=keep_memory)
        self.resolution = 1024
        self.keeps = keep_memory is True

    def check_scale(self, scale: int) -> None:
        pass

    def restore(self, lr: Tensor, scale: int, **_: Any) -> Tensor:
        from restorekit.degradations import bicubic_resize

        if self.need:
            device_memory.check_working_memory(
                int(lr.shape[0]) * self.need, self.device, f"fake at ×{scale}",
                "restore the faces alone (--faces detect), or use a machine with more memory")
        if self.keeps:
            memory._applied = True  # the flag only, as psp_sr's restore would switch it on
        self.log.append((self.label, int(lr.shape[0])))
        return bicubic_resize(lr, (lr.shape[-2] * scale, lr.shape[-1] * scale)).clamp(0, 1)


@pytest.fixture
def fakes(monkeypatch: pytest.MonkeyPatch):
    """``set(name=…, other=…)``: the keyword arguments of the fake NAME and --compare-to; returns the call log."""
    monkeypatch.setattr(memory, "_applied", None)
    log: list[tuple[str, int]] = []
    made: dict[str, dict[str, Any]] = {"name": {}, "other": {}}
    order = iter(["name", "other"])

    def build(name: str, opts: tuple[str, ...], weights: str | None, device: str) -> Fake:
        side = next(order)
        return Fake("N" if side == "name" else "O", log, **made[side])

    monkeypatch.setattr(bench_method, "_build", build)

    def setup(**sides: dict[str, Any]) -> list[tuple[str, int]]:
        made.update(sides)
        return log

    return setup


# 1. bounds on --batch and --size, and the input checked against the memory left


def test_a_batch_size_over_the_bound_is_refused_in_one_line_before_any_work(
        fakes, monkeypatch: pytest.MonkeyPatch) -> None:
    log = fakes()
    made: list[int] = []  # (the old code went on to make a million images)
    monkeypatch.setattr(test_data, "smooth_batch", lambda n, *a, **k: made.append(n) or test_data.sample_batch(1))
    for flag, value in (("--batch", "1,1000000"), ("--batch", "257")):
        r = invoke(flag, value, "--repeat", "1")
        assert r.exit_code == 2 and log == [], r.output
        assert f"Invalid value for --batch: '{value}': batch sizes must be integers from 1 to 256" in r.output
    r = invoke("--batch", "256", "--compare-to", "bicubic", "--compare-batch", "0,1", "--size", "8")
    assert r.exit_code == 2 and "Invalid value for --compare-batch" in r.output and log == [], r.output
    assert made == []


def test_a_size_over_the_bound_or_the_output_limit_is_refused(fakes, monkeypatch: pytest.MonkeyPatch) -> None:
    log = fakes()
    made: list[int] = []
    monkeypatch.setattr(test_data, "smooth_batch", lambda n, *a, **k: made.append(n) or test_data.sample_batch(1))
    r = invoke("--size", "60000", "--repeat", "1")
    assert r.exit_code == 2 and "'--size': 60000 is not in the range 2<=x<=8000" in r.output, r.output
    # 4001 px ×4: 16004² px, just over run's default output limit of 256 MP per image.
    r = invoke("--size", "4001", "--scale", "4", "--repeat", "1")
    assert r.exit_code == 2, r.output
    assert ("--size 4001: its ×4 output would be 16004×16004 = 256.1 MP per image, over the output limit of "
            "256.0 MP that run and compare apply; lower --size or --scale") in r.output
    assert log == [] and made == []  # nothing built, nothing timed


def test_an_input_batch_larger_than_the_memory_left_is_refused_before_it_is_made(
        fakes, monkeypatch: pytest.MonkeyPatch) -> None:
    log = fakes()
    made: list[int] = []
    monkeypatch.setattr(test_data, "smooth_batch", lambda n, *a, **k: made.append(n) or test_data.sample_batch(1))
    monkeypatch.setattr(device_memory, "available_memory", lambda device: 100 * 10**6)
    # 256 images of 1000×1000: 256 · 3 · 10⁶ values at 5 bytes each (uint8 images, float32 batch).
    r = invoke("--batch", "1,256", "--size", "1000", "--repeat", "1")
    assert r.exit_code == 2 and made == [] and log == [], r.output
    line = " ".join(r.output.split())
    assert ("the input of bench method (256 images of 1000×1000) needs about 3.9 GB of memory, 100 MB is "
            "available on cpu (lower --batch or --size)") in line


def test_smooth_batch_holds_the_same_values_in_the_same_layout_with_less_memory() -> None:
    old = torch.from_numpy(np.stack([test_data.smooth_image(9, 7, 3 + i) for i in range(3)])
                           .transpose(0, 3, 1, 2) / 255.0).float()
    new = test_data.smooth_batch(3, 9, 7, seed=3)
    assert torch.equal(new, old) and new.stride() == old.stride()
    assert test_data.smooth_batch_bytes(256, 1000, 1000) == 256 * 3 * 10**6 * 5 + 10**6 * 96
    # The estimate covers the real peak where one image's working arrays dominate (one image, large).
    import tracemalloc

    tracemalloc.start()
    try:
        test_data.smooth_batch(1, 400, 400)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak <= test_data.smooth_batch_bytes(1, 400, 400), (peak, test_data.smooth_batch_bytes(1, 400, 400))


# 2. a batch size that fails mid-bench: the others kept, one line, exit 1


def test_a_batch_size_that_fails_keeps_the_sizes_measured_and_exits_1(fakes, monkeypatch: pytest.MonkeyPatch) -> None:
    need = {"need_per_image": 6 * 10**8}
    log = fakes(name=need, other=need)  # (the second invocation builds the fixture's "other")
    monkeypatch.setattr(device_memory, "available_memory", lambda device: GB)  # batch 1 fits, batch 2 does not
    r = invoke("--batch", "1,2,1", "--size", "8", "--repeat", "2", "--warmup", "0", "--json")
    assert r.exit_code == 1, r.output
    data = json.loads(r.stdout)
    assert [(x["batch"], x["repeats"]) for x in data["results"]] == [(1, 2)]
    assert log == [("N", 1), ("N", 1)]
    err = [ln for ln in r.stderr.splitlines() if ln.strip()]
    want = ("bench method: batch 2 of bicubic (torch) not measured: fake at ×4 needs about 1.2 GB of memory, "
            "1.0 GB is available on cpu (bench method: a smaller --batch or --size needs less)")
    assert len(err) == 1 and err[0] == f"error: {want}", r.stderr
    assert "--faces" not in r.stderr
    assert data["failed"] == [{"method": "bicubic", "options": [], "backend": "torch", "batch": 2,
                               "error": want.split(" not measured: ")[1]}]
    # The table: the measured batch size, and exit 1 too.
    r = invoke("--batch", "1,2", "--size", "8", "--repeat", "1", "--warmup", "0")
    assert r.exit_code == 1 and "│ 1     │" in r.stdout and "│ 2     │" not in r.stdout, r.output


def test_a_failed_batch_size_with_a_second_method_gives_the_ratio_where_both_ran(
        fakes, monkeypatch: pytest.MonkeyPatch) -> None:
    fakes(other={"need_per_image": 6 * 10**8})
    monkeypatch.setattr(device_memory, "available_memory", lambda device: GB)
    r = invoke("--batch", "1,2", "--compare-to", "bicubic", "--compare-batch", "1,2", "--size", "8", "--repeat", "1",
               "--compare-repeat", "1", "--warmup", "0", "--json")
    assert r.exit_code == 1, r.output
    data = json.loads(r.stdout)
    assert [x["batch"] for x in data["results"]] == [1] and [x["batch"] for x in data["compare_results"]] == [1]
    assert set(data["speed_ratio"]) == {"1"} and [f["batch"] for f in data["failed"]] == [2, 2]
    assert "batch 2 of bicubic (torch), bicubic (torch) not measured" in " ".join(r.stderr.split())


# 3. a batch size or backend listed twice: one row


def test_a_batch_size_or_backend_listed_twice_is_timed_once(fakes) -> None:
    log = fakes()
    r = invoke("--batch", "2,1,2,1", "--backend", "torch,torch", "--size", "8", "--repeat", "1", "--warmup", "0",
               "--json")
    assert r.exit_code == 0, r.output
    data = json.loads(r.stdout)
    assert [(x["backend"], x["batch"]) for x in data["results"]] == [("torch", 2), ("torch", 1)]
    assert data["backends"] == ["torch"] and log == [("N", 2), ("N", 1)]


# 4. the peak-memory footnote says what holds in each order


def _footnote(stdout: str) -> str:
    text = " ".join(stdout.split())
    return text[text.index("peak MiB (rss, whole process):"):]


def test_the_peak_memory_footnote_says_what_holds_in_each_order(fakes) -> None:
    fakes(name={"keep_memory": True}, other={"keep_memory": False})
    args = ("--compare-to", "bicubic", "--size", "8", "--batch", "1", "--repeat", "1", "--compare-repeat", "1",
            "--warmup", "0")
    r = invoke(*args)
    assert r.exit_code == 0 and "timed one after the other" in r.stdout, r.output
    note = _footnote(r.stdout)
    assert "same figure" not in note
    assert "the side timed later shows a peak that includes the earlier side's" in note


def test_the_footnote_of_interleaved_sides_says_they_show_the_same_figure(fakes) -> None:
    fakes(name={}, other={})
    r = invoke("--compare-to", "bicubic", "--size", "8", "--batch", "1", "--repeat", "1", "--compare-repeat", "1",
               "--warmup", "0")
    assert r.exit_code == 0 and "runs interleaved" in r.stdout, r.output
    note = _footnote(r.stdout)
    assert "timed together (runs interleaved), so each shows the same figure" in note
    assert "one after the other" not in note
