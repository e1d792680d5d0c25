"""What a device has left: the kernel's MemAvailable within a cgroup limit; the refusal line."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import restorekit.device_memory as dm
from restorekit.errors import InsufficientMemory


def test_meminfo_and_cgroup_are_read_and_the_smaller_wins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:       24000000 kB\nMemFree:  100 kB\nMemAvailable:   17000000 kB\n")
    assert dm._meminfo_available(str(meminfo)) == 17_000_000 * 1024
    assert dm._meminfo_available(str(tmp_path / "absent")) is None
    cg = tmp_path / "cg"
    cg.mkdir()
    (cg / "memory.max").write_text("max\n")
    (cg / "memory.current").write_text("5000\n")
    assert dm._cgroup_available(str(cg)) is None  # no limit set
    (cg / "memory.max").write_text("8000000000\n")
    assert dm._cgroup_available(str(cg)) == 8_000_000_000 - 5000
    (cg / "memory.current").write_text("9000000000\n")
    assert dm._cgroup_available(str(cg)) == 0
    assert dm._cgroup_available(str(tmp_path / "absent")) is None

    monkeypatch.setattr(dm, "_meminfo_available", lambda: 17_000_000)
    monkeypatch.setattr(dm, "_cgroup_available", lambda: 3_000_000)
    assert dm.available_memory(torch.device("cpu")) == 3_000_000
    monkeypatch.setattr(dm, "_cgroup_available", lambda: None)
    assert dm.available_memory(torch.device("cpu")) == 17_000_000
    assert dm.available_memory(torch.device("meta")) is None


def test_a_job_over_what_is_left_is_refused_and_one_within_passes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dm, "available_memory", lambda device: 2_500_000_000)
    dm.check_working_memory(2_400_000_000, torch.device("cpu"), "x", "fix")
    with pytest.raises(InsufficientMemory, match=r"^big job needs about 3.0 GB of memory, 2.5 GB is available "
                                                 r"on cpu \(do less\)$"):
        dm.check_working_memory(3_000_000_000, torch.device("cpu"), "big job", "do less")
    monkeypatch.setattr(dm, "available_memory", lambda device: None)  # unknown: never refused
    dm.check_working_memory(10**15, torch.device("cpu"), "x", "fix")


@pytest.mark.skipif(not Path("/proc/meminfo").is_file(), reason="reads Linux's /proc/meminfo")
def test_this_machine_reports_what_the_kernel_says() -> None:
    have = dm.available_memory(torch.device("cpu"))
    assert have is not None and 0 < have <= (dm._meminfo_available() or 0)
