"""The aggregated view of a ``compare`` run (:class:`Summary`) that every report is rendered from,
and the number formats (and text encoding) all of them share."""

from __future__ import annotations

import math
from dataclasses import dataclass
from decimal import ROUND_DOWN, Decimal

from .aggregate import MethodSummary, Stat, best_per_column, summarize
from .paired import BaselineComparison, compare_to_baseline
from .runner import CompareResult, MetricState


@dataclass
class Summary:
    """The aggregated view of a run that every report is rendered from."""

    result: CompareResult
    methods: list[MethodSummary]
    best: dict[str, set[str]]
    paired: BaselineComparison | None = None  # with --baseline

    @property
    def active_metrics(self) -> list[MetricState]:
        return [m for m in self.result.plan.metrics if m.status == "ok"]


def report_bytes(text: str) -> bytes:
    """A text report (CSV, HTML) as UTF-8; a file name that is not UTF-8 (its bytes held as
    surrogate escapes) is written ``\\udcff``, as the terminal and the JSON reports show it, not refused."""
    return text.encode("utf-8", "backslashreplace")


def summarize_result(res: CompareResult) -> Summary:
    """Per-method aggregates and the best method per column."""
    metrics = [m for m in res.plan.metrics if m.status == "ok"]
    names = [m.name for m in metrics]
    rows = []
    for mp in res.plan.methods:
        recs = [r for r in res.records if r.method == mp.name]
        rows.append(summarize(mp.name, mp.deterministic, mp.seeds, len(res.inputs.pairs), recs, names))
    directions = {m.name: m.higher_is_better for m in metrics}
    fmts: dict[str, str | None] = {m.name: m.fmt for m in metrics}
    fmts["runtime"] = RUNTIME_FMT
    best = best_per_column(rows, directions, lambda col, v: fmt_number(v, fmts[col]))  # as printed
    baseline = res.plan.config.baseline
    paired = None
    if baseline is not None:
        paired = compare_to_baseline(res.records, baseline, [mp.name for mp in res.plan.methods], directions)
    return Summary(res, rows, best, paired)


#: The format of ms/img in the tables.
RUNTIME_FMT = ".1f"


def fmt_number(v: float | None, fmt: str | None = None) -> str:
    """A number for people: ``inf``, ``n/a`` for NaN/None, else ``fmt`` or a magnitude-based default."""
    if v is None or math.isnan(v):
        return "n/a"
    if math.isinf(v):
        return "inf" if v > 0 else "-inf"
    if fmt:
        return format(v, fmt)
    if v == 0:
        return "0"
    return format(v, magnitude_fmt(abs(v)))


def magnitude_fmt(a: float) -> str:
    """The format :func:`fmt_number` gives a number of magnitude ``a`` when no format is set."""
    if a >= 100:
        return ".1f"
    if a >= 1:
        return ".2f"
    if a >= 0.01:
        return ".4f"
    return ".3e"


def fmt_p(p: float | None) -> str:
    """A p-value in two significant digits, rounded down: 0.0498 reads ``0.049``, not ``0.05``.

    Rounded to nearest (``.2g``), a p just below 0.05 or 0.01 printed as the threshold itself;
    rounded down, a printed p is below such a threshold exactly when the p is.
    """
    if p is None or not math.isfinite(p) or p <= 0:
        return fmt_number(p)
    d = Decimal(repr(p))  # (the shortest text that reads back as p: 0.031 is 0.031, not 0.0309999…)
    step = Decimal(1).scaleb(d.adjusted() - 1)  # the unit of the second significant digit
    return format(float(d.quantize(step, rounding=ROUND_DOWN)), ".2g")


def fmt_stat(s: Stat, fmt: str | None = None) -> str:
    text = fmt_number(s.mean, fmt)
    if s.std is not None and not math.isnan(s.mean):
        text += f" ± {fmt_number(s.std, fmt)}"
    return text


def fmt_signed(v: float | None, fmt: str | None = None) -> str:
    """:func:`fmt_number` with a ``+`` on positive values (differences)."""
    text = fmt_number(v, fmt)
    return "+" + text if v is not None and v > 0 else text
