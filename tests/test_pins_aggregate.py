"""Pins for compare-table aggregation rules that the mutation audit found unguarded."""

from __future__ import annotations

import math

from restorekit.harness.aggregate import MethodSummary, Stat, best_per_column, metric_stat, summarize
from restorekit.harness.store import Record


def _rec(img: str, v: float, *, seed: int | None = None, mem: float | None = None) -> Record:
    return Record("m", img, seed, "h", "i", "ok", ms=1.0, peak_mem_mb=mem, metrics={"x": v})


def test_pin_mean_of_plus_and_minus_infinity_is_nan():
    st = metric_stat([_rec("a", math.inf), _rec("b", -math.inf), _rec("c", 1.0)], "x", False)
    assert math.isnan(st.mean)
    assert (st.n, st.nan, st.inf) == (3, 0, 2)
    # one sign only: that infinity
    assert metric_stat([_rec("a", math.inf), _rec("b", 1.0)], "x", False).mean == math.inf
    assert metric_stat([_rec("a", -math.inf), _rec("b", 1.0)], "x", False).mean == -math.inf


def test_pin_stochastic_mean_over_seeds_of_opposite_infinities_is_nan():
    recs = [_rec("a", math.inf, seed=0), _rec("a", -math.inf, seed=1)]
    st = metric_stat(recs, "x", True)
    assert math.isnan(st.mean) and st.std is None


def test_pin_peak_memory_is_the_maximum_over_calls():
    recs = [_rec("a", 1.0, mem=50.0), _rec("b", 1.0, mem=10.0), _rec("c", 1.0, mem=None)]
    s = summarize("m", True, [None], 3, recs, ["x"])
    assert s.peak_mem_mb == 50.0
    s = summarize("m", True, [None], 3, list(reversed(recs)), ["x"])
    assert s.peak_mem_mb == 50.0


def _row(name: str, mean: float) -> MethodSummary:
    return MethodSummary(name, True, [None], 1, 1, 0, metrics={"x": Stat(mean, None, 1, 0)},
                         runtime_ms=Stat(1.0, None, 1, 0))


def test_pin_best_marker_ignores_nan_whatever_the_order():
    rows = [_row("A", math.nan), _row("B", 1.0), _row("C", 2.0)]
    for order in (rows, rows[::-1], [rows[1], rows[0], rows[2]]):
        assert best_per_column(order, {"x": True})["x"] == {"C"}
        assert best_per_column(order, {"x": False})["x"] == {"B"}


def test_pin_best_marker_needs_two_non_nan_values():
    rows = [_row("A", math.nan), _row("B", 1.0)]
    assert best_per_column(rows, {"x": True})["x"] == set()
    assert best_per_column(rows[::-1], {"x": True})["x"] == set()
