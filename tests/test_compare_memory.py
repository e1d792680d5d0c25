"""compare's CPU memory column is each call's own peak, whatever ran before it (Linux)."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from restorekit.harness.runner import _cpu_peak_mib, _cpu_peak_start


def touch(mib: int) -> None:
    a = np.ones(mib * 2**20 // 8)  # resident: every page written
    del a


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the high-water mark reset is Linux's")
def test_a_smaller_call_after_a_hungrier_one_reports_its_own_peak() -> None:
    start = _cpu_peak_start()
    assert start is not None and start[0] == "hwm"
    touch(300)
    big = _cpu_peak_mib(start)
    start = _cpu_peak_start()
    touch(60)
    small = _cpu_peak_mib(start)
    assert big is not None and 280 < big < 400
    assert small is not None and 50 < small < 120  # not 0: the earlier 300 MiB peak does not hide it
