"""The summary table of `compare` on the terminal: wide (a row per method) where it fits, else turned
(a row per metric, a column per method, split into several tables if need be) — never a name or a
number cut with '…', never a line wider than the console."""

from __future__ import annotations

import io
import math
from collections import Counter
from pathlib import Path

import pytest
from rich.console import Console
from rich.text import Text

from restorekit.harness.report_console import print_table, summary_tables
from restorekit.harness.report_summary import RUNTIME_FMT, Summary, fmt_number, summarize_result
from restorekit.harness.runner import CompareConfig, execute, plan

# Three cheap methods beside bicubic; a stochastic one makes "mean ± std" cells and a "(2 seeds)" label.
LAYOUT_PLUGIN = '''
from typing import ClassVar
import torch
from restorekit.hookspecs import hookimpl
from restorekit.interfaces import Method, MethodInfo


class Nearest(Method):
    info: ClassVar[MethodInfo] = MethodInfo(name="nearest_layout3p", summary="nearest-neighbour")

    def restore(self, lr, scale, *, seed=None, n_samples=1):
        return torch.nn.functional.interpolate(lr, scale_factor=scale, mode="nearest")


class Bilinear(Method):
    info: ClassVar[MethodInfo] = MethodInfo(name="bilinear_layout3p", summary="bilinear")

    def restore(self, lr, scale, *, seed=None, n_samples=1):
        return torch.nn.functional.interpolate(lr, scale_factor=scale, mode="bilinear", align_corners=False)


class Noisy(Method):
    info: ClassVar[MethodInfo] = MethodInfo(name="noisy_layout3p", summary="nearest plus seeded noise",
                                            deterministic=False)

    def restore(self, lr, scale, *, seed=None, n_samples=1):
        g = torch.Generator().manual_seed(0 if seed is None else seed)
        up = torch.nn.functional.interpolate(lr, scale_factor=scale, mode="nearest")
        return (up + 0.02 * (seed + 1) * torch.randn(up.shape, generator=g)).clamp(0, 1)


@hookimpl
def register_methods(register):
    register(Nearest)
    register(Bilinear)
    register(Noisy)
'''

METHODS = ["bicubic", "nearest_layout3p", "noisy_layout3p", "bilinear_layout3p"]
Table = tuple[list[str], list[list[str]]]  # header cells, rows of cells


@pytest.fixture
def run(plugin_site, hr_folder: Path, tmp_path: Path):
    """``run(methods, metrics=None)``: the Summary of a compare on four 64-px images (default metrics)."""
    plugin_site("thirdparty-layout", "thirdparty_layout", LAYOUT_PLUGIN)

    def go(methods: list[str], metrics: list[str] | None = None) -> Summary:
        out = tmp_path / f"out-{len(methods)}-{len(metrics or [])}"
        cfg = CompareConfig(methods=methods, scale=2, data=str(hr_folder), out=out, seeds=[0, 1],
                            metrics=metrics, device="cpu")
        return summarize_result(execute(plan(cfg)))

    return go


def render(sm: Summary, width: int) -> str:
    buf = io.StringIO()
    print_table(sm, Console(width=width, file=buf, color_system=None, force_terminal=False))
    return buf.getvalue()


def _join(cells: list[str], more: list[str]) -> list[str]:
    return [" ".join(x for x in (a, b) if x) for a, b in zip(cells, more, strict=True)]


def tables(text: str) -> list[Table]:
    """The rich tables in ``text``: header cells and rows of stripped cells.

    A cell wrapped at spaces is joined back: header lines column by column, and a body line with an
    empty first cell (the labels never wrap above 24 columns) onto the row above.
    """
    found: list[Table] = []
    for line in text.splitlines():
        if line.startswith("┏"):
            found.append(([], []))
        elif line.startswith("┃"):
            cells = [c.strip() for c in line.strip("┃").split("┃")]
            header = found[-1][0]
            header[:] = _join(header, cells) if header else cells
        elif line.startswith("│"):
            cells = [c.strip() for c in line.strip("│").split("│")]
            rows = found[-1][1]
            if rows and not cells[0]:
                rows[-1] = _join(rows[-1], cells)
            else:
                rows.append(cells)
    return found


def table_text(text: str) -> str:
    """The printed tables with their title, without the footnotes."""
    return text[:text.index("* best in")]


def wide_cells(sm: Summary) -> dict[tuple[str, str], str]:
    """(method label, column label) → cell, from the wide layout on a console wide enough for it."""
    (header, rows), = tables(render(sm, 1000))
    assert header[0] == "method" and len(rows) == len(sm.methods)
    return {(row[0], col): cell for row in rows for col, cell in zip(header[1:], row[1:], strict=True)}


def turned_cells(found: list[Table]) -> dict[tuple[str, str], str]:
    """(method label, row label) → cell, from the turned tables (each repeats the label column)."""
    cells: dict[tuple[str, str], str] = {}
    for header, rows in found:
        assert header[0] == "metric"
        for row in rows:
            for method, cell in zip(header[1:], row[1:], strict=True):
                assert (method, row[0]) not in cells
                cells[method, row[0]] = cell
    return cells


def _printed(v: float, fmt: str | None) -> float:
    """``v`` as the table prints it (so equal-looking numbers tie), NaN and inf as they are."""
    try:
        return float(fmt_number(v, fmt).replace(",", ""))
    except ValueError:
        return v


def expected_best(sm: Summary) -> dict[str, set[str]]:
    """Per column label, the methods that should be starred: best finite mean as printed (ties all
    starred) when two or more have one."""
    labels = {s.name: s.name if s.deterministic else f"{s.name} (2 seeds)" for s in sm.methods}
    columns = {f"{m.name} {'↑' if m.higher_is_better else '↓'}":
               (m.higher_is_better, {s.name: _printed(s.metrics[m.name].mean, m.fmt) for s in sm.methods})
               for m in sm.active_metrics}
    columns["ms/img (cpu) ↓"] = (False, {s.name: _printed(s.runtime_ms.mean, RUNTIME_FMT) for s in sm.methods})
    best: dict[str, set[str]] = {}
    for col, (hib, means) in columns.items():
        finite = {k: v for k, v in means.items() if not math.isnan(v)}
        target = (max if hib else min)(finite.values()) if len(finite) > 1 else None
        best[col] = {labels[k] for k, v in finite.items() if v == target}
    return best


@pytest.mark.parametrize("n_methods", [2, 3, 4])
def test_default_metrics_never_cut_at_80_100_200(run, n_methods):
    sm = run(METHODS[:n_methods])
    assert len(sm.active_metrics) >= 8  # the default set: every registered metric that can run
    wide = wide_cells(sm)
    best = expected_best(sm)
    assert any(best.values())
    for width in (80, 100, 200):
        text = render(sm, width)
        shown = table_text(text)
        assert "…" not in shown, shown
        assert max(len(line) for line in text.splitlines()) <= width
        found = tables(text)
        if found[0][0][0] == "method":  # the wide layout fits: it is the reference itself
            assert len(found) == 1 and "* best in column." in text
            continue
        assert "* best in row" in text and "* best in column" not in text
        cells = turned_cells(found)
        assert cells == wide  # every (method, column) value, in the same text, stars included
        for (method, col), cell in cells.items():
            assert cell.endswith("*") == (method in best.get(col, set())), (method, col, cell)
        # Metrics first with their arrows, then the run's own rows; the title once, above the first table.
        labels = [row[0] for row in found[0][1]]
        assert labels == [f"{m.name} {'↑' if m.higher_is_better else '↓'}" for m in sm.active_metrics] + [
            "ms/img (cpu) ↓", "peak MiB", "ok"]
        assert shown.count("restorekit compare ×2") == 1 and shown.index("restorekit compare ×2") < shown.index("┏")
    # The starred cells are the bold ones, in the turned tables as in the wide one.
    for width in (80, 1000):
        for t in summary_tables(sm, Console(width=width), "title")[0]:
            for col in t.columns:
                for cell in col.cells:
                    assert isinstance(cell, Text)
                    assert (str(cell.style) == "bold green") == cell.plain.endswith("*"), cell
    # The stochastic method's label and its "mean ± std" cells are whole.
    if n_methods >= 3:
        assert any(m == "noisy_layout3p (2 seeds)" and " ± " in c for (m, _), c in wide.items())


def test_wide_layout_is_kept_where_it_fits(run):
    sm = run(METHODS[:2], ["psnr_y_crop", "lpips_alex_v0.1"])
    text = render(sm, 200)
    (header, rows), = tables(text)
    assert header == ["method", "psnr_y_crop ↑", "lpips_alex_v0.1 ↓", "ms/img (cpu) ↓", "peak MiB", "ok"]
    assert [r[0] for r in rows] == ["bicubic", "nearest_layout3p"] and "* best in column." in text
    # The switch is exactly at the wide table's own width.
    natural = max(len(line) for line in table_text(text).splitlines() if line.startswith(("┏", "│")))
    assert tables(render(sm, natural))[0][0][0] == "method"
    narrower = render(sm, natural - 1)
    assert tables(narrower)[0][0][0] == "metric" and turned_cells(tables(narrower)) == wide_cells(sm)


@pytest.mark.parametrize("width", [48, 56, 64])
def test_narrow_console_splits_the_methods_into_tables(run, width):
    sm = run(METHODS)
    text = render(sm, width)
    assert "…" not in table_text(text) and max(len(line) for line in text.splitlines()) <= width
    found = tables(text)
    assert len(found) > 1 and all(len(header) > 1 for header, _ in found)
    assert turned_cells(found) == wide_cells(sm)  # each method once, in order, nothing lost
    assert "* best in row, over all the tables." in " ".join(text.split())
    assert [m for header, _ in found for m in header[1:]] == [
        "bicubic", "nearest_layout3p", "noisy_layout3p (2 seeds)", "bilinear_layout3p"]


@pytest.mark.parametrize("width", [24, 40])
def test_console_narrower_than_one_method_wraps_rather_than_cuts(run, width):
    """A table per method, its cells wrapped at spaces or folded: every character still there."""
    sm = run(METHODS)
    text = render(sm, width)
    shown = table_text(text)
    assert "…" not in shown and max(len(line) for line in text.splitlines()) <= width
    wide = wide_cells(sm)
    methods = list(dict.fromkeys(m for m, _ in wide))
    assert shown.count("┏") == len(methods)
    rows = sorted({col for _, col in wide})
    title = f"restorekit compare ×2 — 4 images, {sm.result.inputs.source}"
    expected = title + "".join("metric" + m + "".join(rows) + "".join(wide[m, c] for c in rows) for m in methods)
    kept = "".join(ch for ch in shown if not ch.isspace() and not 0x2500 <= ord(ch) <= 0x257F)  # no box lines
    assert Counter(kept) == Counter(ch for ch in expected if not ch.isspace())
