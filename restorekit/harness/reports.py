"""What ``compare`` writes: a terminal table, ``results.csv``/``summary.csv``/``results.json``, ``report.html``.

With ``--baseline`` each also gets the paired comparison with the baseline (:mod:`.paired`): a
second table "vs BASELINE" (terminal, HTML), ``paired.csv`` (one row per method and metric) and a
``"paired"`` section of ``results.json``. Without it, none of these exist (a stale ``paired.csv``
is removed).

- ``results.csv``: one row per (method, image, seed): status, runtime, memory, every metric, and
  last ``metric_errors`` (JSON: metric → message, for a metric that raised; empty when none).
  ``inf`` is written as ``inf``; a missing value (NaN) as an empty cell. In every CSV file a text
  cell that a spreadsheet would read as a formula (starting with ``= + - @``, tab or CR: an image
  named ``=HYPERLINK(…).png``) gets a leading ``'``; results.json keeps the names as they are.
- ``summary.csv``: one row per method: ``deterministic`` (1: run once per image, the seed ignored),
  per metric ``_mean``, ``_std`` (over seeds), ``_nan`` (NaN values left out), ``_n`` (values the
  mean is over: images × seeds), ``_inf`` (of those, infinite), ``_errors`` (results where the
  metric raised) and ``_seed_left_out`` (images of a stochastic method left out because not every
  seed has a value there: their values are in neither ``_n`` nor ``_nan``); runtime
  (``ms_per_image`` and its ``ms_std`` over the timed calls; ``runtime_is_warmup`` 1 when the only
  call was the warm-up, which then stands in), the warm-up call's time and the peak memory
  (``peak_mem_mb``, here and in results.csv in MiB, 2²⁰ bytes: the tables' ``peak MiB``).
- ``results.json``: both of the above (a method's ``deterministic`` as in summary.csv) plus the
  settings, device and backend, the versions of restorekit and of every plugin distribution, each
  method's license, options and weights (``weights_info``: names and sha256 where the method
  exposes them), skipped metrics with the reason, and failures. Non-finite numbers:
  ``"Infinity"``/``"-Infinity"``, NaN as ``null``. A ``torchrun`` job adds ``processes``; its stage
  timings are summed over them, and every number that describes the results (not the run) is the
  one a single process writes.
- What describes the run rather than the results: ``created`` (UTC, ISO 8601; also report.html's
  date), ``wall_s``, ``timings_s``, each ``ms``/``ms_std``/``warmup_ms``/``ms_per_image``/``runtime_ms``
  and ``peak_mem_mb`` (and their CSV and HTML columns), and ``settings.out``. Two runs of the same
  settings on the same inputs and machine agree in every other byte of every file.
  ``SOURCE_DATE_EPOCH`` is not read: it would fix the date, not the timings.
- ``report.html``: one self-contained file (inline CSS, images as base64 PNG), the table and,
  per image, a row of crops ``LR | each method | HR`` at the same place.

This module writes them all (:func:`write_all`). Each job has its own module; each imports only
those listed above it, so the three outputs never import one another, nor this module:

    report_summary   the Summary of a run and the number formats every report shares
    report_text      the tables' cells, notes and failure lines as plain text
    report_console   the terminal tables (rich)
    report_files     the CSV files and results.json
    report_html      report.html

Re-exported here, for code outside the harness that turns a run into reports: ``Summary``,
``summarize_result``, ``print_table``, ``summary_tables``, ``failure_lines``,
``results_document``, and the writers ``write_csv``, ``write_paired_csv``, ``write_json``,
``write_html``. :func:`write_all` calls the writers through this module's names, so patching
``reports.write_html`` (say) reaches it.
"""

from __future__ import annotations

from pathlib import Path

from .report_console import print_table, summary_tables
from .report_files import results_document, write_csv, write_json, write_paired_csv
from .report_html import write_html
from .report_summary import Summary, summarize_result
from .report_text import failure_lines

__all__ = ["Summary", "failure_lines", "print_table", "results_document", "summarize_result", "summary_tables",
           "write_all", "write_csv", "write_html", "write_json", "write_paired_csv"]


def write_all(sm: Summary, out: Path) -> dict[str, Path]:
    """All report files under ``out``, so that ``results.json`` never names a file that is not there.

    ``results.json`` is the index of the others: the previous one is removed first and the new one
    written last, each file atomically. Interrupted in between (SIGTERM, a full disk), the folder
    has no ``results.json`` rather than one naming a missing or stale report.
    """
    (out / "results.json").unlink(missing_ok=True)
    html_p = write_html(sm, out)
    csv_p, summary_p = write_csv(sm, out)
    files = {"results_csv": csv_p, "summary_csv": summary_p, "html": html_p}
    paired_p = write_paired_csv(sm, out)
    if paired_p is not None:
        files["paired_csv"] = paired_p
    return files | {"results_json": write_json(sm, out)}
