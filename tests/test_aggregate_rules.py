"""Runtime and peak-memory aggregates, and best marks compared as printed with thousands separators."""

from __future__ import annotations

import math

import pytest

from restorekit.harness.aggregate import MethodSummary, Stat, best_per_column, summarize
from restorekit.harness.store import Record


def _rec(img: str, ms: float, *, warmup: bool = False, mem: float | None = None) -> Record:
    return Record("m", img, None, "h", "i", "ok", ms=ms, warmup=warmup, peak_mem_mb=mem, metrics={"x": 1.0})


def test_runtime_is_mean_and_population_std_of_the_timed_calls():
    recs = [_rec("a", 100.0, warmup=True), _rec("b", 2.0), _rec("c", 4.0), _rec("d", 9.0)]
    s = summarize("m", True, [None], 4, recs, ["x"])
    # Warm-up left out: mean of 2, 4, 9 = 5; population std = sqrt((9 + 1 + 16) / 3).
    assert s.runtime_ms.mean == pytest.approx(5.0, abs=1e-12)
    assert s.runtime_ms.std == pytest.approx(math.sqrt(26 / 3), abs=1e-12)
    assert s.runtime_ms.n == 3 and s.warmup_ms == 100.0 and not s.runtime_is_warmup
    # One timed call: a mean and no spread (None, not 0).
    one = summarize("m", True, [None], 2, [_rec("a", 100.0, warmup=True), _rec("b", 7.0)], ["x"])
    assert one.runtime_ms.mean == 7.0 and one.runtime_ms.std is None


def test_peak_memory_counts_the_warm_up_call():
    """Peak memory is the maximum over the calls: the warm-up call's peak is the method's too."""
    recs = [_rec("a", 100.0, warmup=True, mem=80.0), _rec("b", 2.0, mem=10.0), _rec("c", 3.0, mem=12.0)]
    assert summarize("m", True, [None], 3, recs, ["x"]).peak_mem_mb == 80.0


def _row(name: str, mean: float) -> MethodSummary:
    return MethodSummary(name, True, [None], 1, 1, 0, metrics={"x": Stat(mean, None, 1, 0)},
                         runtime_ms=Stat(1.0, None, 1, 0))


def test_best_is_compared_as_printed_with_thousands_separators():
    rows = [_row("A", 1234.51), _row("B", 1234.54), _row("C", 1300.0)]
    shown = lambda col, v: format(v, ",.1f")  # noqa: E731  "1,234.5" for both A and B
    assert best_per_column(rows, {"x": False}, shown)["x"] == {"A", "B"}
    assert best_per_column(rows, {"x": False})["x"] == {"A"}  # unrounded: A alone


def test_a_method_that_failed_everywhere_has_no_runtime_and_is_not_marked_fastest() -> None:
    """Failed calls are timed before their output is checked: their time stood in for the runtime
    (as a warm-up) of a method with no successful call, and made it the fastest."""
    from restorekit.harness.aggregate import best_per_column, summarize
    from restorekit.harness.store import Record

    broken = summarize("broken", True, [None], 2,
                       [Record("broken", "a", None, "h", "i", "failed", ms=1.0, warmup=True, error="e"),
                        Record("broken", "b", None, "h", "i", "failed", ms=1.0, error="e")], [])
    assert math.isnan(broken.runtime_ms.mean) and not broken.runtime_is_warmup and broken.warmup_ms is None
    fine = summarize("fine", True, [None], 2,
                     [Record("fine", "a", None, "h", "i", "ok", ms=9.0, warmup=True),
                      Record("fine", "b", None, "h", "i", "ok", ms=5.0)], [])
    assert fine.runtime_ms.mean == 5.0
    assert best_per_column([broken, fine], {}).get("runtime", set()) != {"broken"}
