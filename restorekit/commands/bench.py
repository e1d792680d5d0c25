"""``restorekit bench``: performance measurements; plugins add their own subcommands.

Every bench reports each timed figure as the median over its repeats with the range (smallest
and largest repeat) beside it, and each ratio as the ratio of the two medians with the range of
the ratio over every pairing of one side's repeats with the other's (so a 1.3× whose range is
0.9–1.8× is within the noise of the run). :func:`spread` and :func:`ratio_spread` compute them;
:func:`fmt_spread` and :func:`fmt_ratio` print them alike in every bench, in tables whose cells
fold rather than end in an ellipsis (``restorekit.cli.table(..., overflow="fold")``).
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from typing import Any

import click

from ..command_group import CommandGroup


def spread(samples: Sequence[float]) -> dict[str, Any]:
    """``{"median", "min", "max", "n"}`` of one figure's repeats (at least one)."""
    xs = [float(x) for x in samples]
    if not xs:
        raise ValueError("spread of no samples")
    return {"median": statistics.median(xs), "min": min(xs), "max": max(xs), "n": len(xs)}


def ratio_spread(num: Sequence[float], den: Sequence[float]) -> dict[str, Any] | None:
    """``num ÷ den``: the ratio of the medians, and its smallest and largest value over every pair
    (one repeat of ``num``, one of ``den``); ``None`` when a denominator is not positive."""
    a, b = spread(num), spread(den)
    if b["min"] <= 0:
        return None
    return {"ratio": a["median"] / b["median"], "min": a["min"] / b["max"], "max": a["max"] / b["min"],
            "n": [a["n"], b["n"]]}


def fmt_spread(s: dict[str, Any] | None, digits: int = 2) -> str:
    """``median (min–max)``; just the median for a single repeat; ``-`` for none."""
    if s is None:
        return "-"
    med, lo, hi = (f"{s[k]:.{digits}f}" for k in ("median", "min", "max"))
    return med if s["n"] <= 1 or lo == hi else f"{med} ({lo}–{hi})"


def fmt_ratio(r: dict[str, Any] | None, digits: int = 2) -> str:
    """``ratio× (min–max×)``; ``-`` for none."""
    if r is None:
        return "-"
    med, lo, hi = (f"{r[k]:.{digits}f}" for k in ("ratio", "min", "max"))
    return f"{med}×" if lo == hi else f"{med}× ({lo}–{hi}×)"


@click.group("bench", cls=CommandGroup)
def bench_group() -> None:
    """Benchmarks (figures are reported as ratios against a reference measured in the same run;
    times are medians over repeats, with the range of the repeats)."""


def attach(cli: click.Group) -> None:
    cli.add_command(bench_group)
