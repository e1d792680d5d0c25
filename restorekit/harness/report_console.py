"""The terminal tables of ``compare`` (rich): the summary, wide or turned to fit the console, then
"vs BASELINE", each with its notes.

Text that comes from the run (the --lr-dir or --data path in the title, image names in the notes) is
shown as it is: never read as rich markup (a folder named ``faces [v2]`` keeps its ``[v2]``; one
with ``[/]`` does not stop the report), and with its unprintable characters escaped
(:func:`restorekit.images.shown_name`), so a file name cannot move the cursor or forge a line.
"""

from __future__ import annotations

from typing import Literal

from rich.console import Console, OverflowMethod
from rich.measure import Measurement
from rich.table import Table
from rich.text import Text

from ..images import shown_name
from .report_summary import Summary
from .report_text import PAIRED_TITLE, Rows, notes, paired_notes, paired_rows, table_rows, turned_rows


def print_table(sm: Summary, console: Console | None = None) -> None:
    """The comparison table on the terminal (best per metric bold and starred), then "vs BASELINE".

    Methods are rows and metrics columns when that fits the console's width; otherwise the table is
    turned (:func:`turned_rows`), split into as few tables as needed, so that no name or number is cut.
    """
    # A log or a pipe (not a terminal) gets each note whole on one line; a console of a given width
    # (a terminal, or a caller's) gets them wrapped to it, as the tables are.
    from ..cli import sized_console, stdout_is_terminal  # (FORCE_COLOR in a CI log is not a terminal)

    terminal = stdout_is_terminal()
    whole = console is None and not terminal
    console = console or (Console() if terminal else sized_console(200))  # (TERM=dumb: not 80)
    res = sm.result
    title = (f"restorekit compare ×{res.plan.config.scale} — {len(res.inputs.pairs)} images, "
             f"{res.inputs.source}")
    tables, wide = summary_tables(sm, console, title)
    for t in tables:
        console.print(t)
    _print_notes(console, notes(sm, best_in="column" if wide else "row" if len(tables) == 1 else
                                "row, over all the tables"), whole=whole)
    if sm.paired is not None:
        _print_rich(console, PAIRED_TITLE.format(base=sm.paired.baseline), *paired_rows(sm), paired_notes(sm),
                    heads=True, left=(0, 5), whole=whole)


def summary_tables(sm: Summary, console: Console, title: str) -> tuple[list[Table], bool]:
    """The summary as rich tables for ``console.width``, and whether they are in the wide layout.

    Wide (one row per method) where its natural width fits; else turned, the methods in order over as
    few tables as fit, as evenly as fits (the title on the first). A single method too wide for the
    console wraps its cells at spaces, then folds, rather than cutting them.
    """
    header, rows = table_rows(sm)
    wide = _rich_table(title, header, [rows])
    if _natural_width(console, wide) <= console.width:
        return [wide], True
    header, groups = turned_rows(sm)
    width = console.width
    chunks: list[list[int]] = []
    for col in range(1, len(header)):
        if chunks and _natural_width(console, _turned_table(header, groups, [*chunks[-1], col])) <= width:
            chunks[-1].append(col)
        else:
            chunks.append([col])
    k, n = len(chunks), len(header) - 1
    even = [list(range(1 + i * n // k, 1 + (i + 1) * n // k)) for i in range(k)]  # e.g. 2+2 rather than 3+1
    if all(_natural_width(console, _turned_table(header, groups, cols)) <= width for cols in even):
        chunks = even
    tables = []
    for i, cols in enumerate(chunks):
        t = _turned_table(header, groups, cols)
        if _natural_width(console, t) > width:  # one method alone too wide: its cells wrap, then the labels
            t = _turned_table(header, groups, cols, wrap="values")
            if _measure(console, t).minimum > width:
                t = _turned_table(header, groups, cols, wrap="all")
        if i == 0:
            shown = t.title = _plain(title)
            if len(chunks) == 1 and shown.cell_len <= width:  # widen a lone table to keep its title on one line
                t.min_width = shown.cell_len
        tables.append(t)
    return tables, False


def _turned_table(header: list[str], groups: list[Rows], cols: list[int], *,
                  wrap: Literal["none", "values", "all"] = "none") -> Table:
    """The turned summary's label column and method columns ``cols``, as a rich table.

    ``wrap``: "none" keeps every cell on one line; "values" lets the method columns wrap at spaces;
    "all" lets the labels wrap too. A word still too long is folded, never cut.
    """
    keep = [0, *cols]
    t = _rich_table(None, [header[i] for i in keep], [[[row[i] for i in keep] for row in g] for g in groups],
                    no_wrap=wrap == "none", overflow="fold")
    t.columns[0].no_wrap = wrap != "all"
    return t


def _measure(console: Console, table: Table) -> Measurement:
    """``table``'s least and natural widths, whatever the console's."""
    return Measurement.get(console, console.options.update_width(1 << 16), table)


def _natural_width(console: Console, table: Table) -> int:
    """The width ``table`` takes when nothing in it wraps or is cut."""
    return _measure(console, table).maximum


def _rich_table(title: str | None, header: list[str], groups: list[Rows], *, heads: bool = False,
                left: tuple[int, ...] = (0,), no_wrap: bool | None = None,
                overflow: OverflowMethod = "ellipsis") -> Table:
    """A table with a rule between the row ``groups``; with ``heads``, each group's first row is its heading.

    Columns ``left`` are left-aligned, the others right-aligned. Columns wrap at spaces when the
    console is narrow unless ``no_wrap``; ``None`` means every column but the last stays on one line
    with ``heads``, and all may wrap without. ``overflow`` is what happens to a word still too long.
    """
    t = Table(title=None if title is None else _plain(title))
    for i, h in enumerate(header):
        nw = (heads and i < len(header) - 1) if no_wrap is None else no_wrap
        t.add_column(h, justify="left" if i in left else "right", no_wrap=nw,
                     overflow="fold" if heads else overflow)
    for g, rows in enumerate(groups):
        for r, row in enumerate(rows):
            cells = [Text(f"{c}*", style="bold green") if best else Text(c) for c, best in row]
            if heads and r == 0:
                cells[0].stylize("bold")
            t.add_row(*cells, end_section=r == len(rows) - 1 and g < len(groups) - 1)
    return t


def _print_rich(console: Console, title: str, header: list[str], groups: list[Rows], lines: list[str], *,
                heads: bool = False, left: tuple[int, ...] = (0,), whole: bool = False) -> None:
    """:func:`_rich_table` on the console, then ``lines`` (dim; ``whole``: each on one line, as
    :func:`_print_notes`). With ``heads`` only the last column wraps (at a space) when the terminal is
    narrow: names and numbers stay whole."""
    console.print(_rich_table(title, header, groups, heads=heads, left=left))
    _print_notes(console, lines, whole=whole)


def _plain(text: str, style: str = "") -> Text:
    """``text`` as rich shows it literally: no markup, unprintable characters escaped."""
    return Text(shown_name(text), style=style)


def _print_notes(console: Console, lines: list[str], *, whole: bool = False) -> None:
    """Footnotes under a table, dim, wrapped to the console's width; ``whole``: each on one line
    whatever its length (a log or a pipe: ``grep 'metric .* skipped'`` reads the whole reason)."""
    for line in lines:
        console.print(_plain(line, "dim"), soft_wrap=whole)
