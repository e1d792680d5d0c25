"""The fixed columns of ``results.csv`` and ``summary.csv`` (:mod:`.report_files`), apart so that
registration (:func:`restorekit.plugin_checks.check_metric`) can refuse a metric name that would
collide with one without importing the harness."""

from __future__ import annotations

#: results.csv's columns: these, one per metric (named as the metric), then :data:`RESULTS_TAIL`.
RESULTS_HEAD = ("method", "image", "seed", "status", "ms", "warmup", "peak_mem_mb")
RESULTS_TAIL = ("output", "error", "metric_errors")
#: summary.csv's: these, ``<metric>_<suffix>`` for each metric and suffix, then :data:`SUMMARY_TAIL`.
SUMMARY_HEAD = ("method", "deterministic", "seeds", "images", "ok", "failed")
METRIC_SUFFIXES = ("mean", "std", "nan", "n", "inf", "errors", "seed_left_out")
SUMMARY_TAIL = ("ms_per_image", "ms_std", "runtime_is_warmup", "warmup_ms", "peak_mem_mb", "device", "precision",
                "backend")
#: Columns of the per-method tables and of results.json's ``best`` beside the metrics' (aggregate.py).
TABLE_COLUMNS = ("runtime",)


def metric_name_clash(name: str) -> str | None:
    """The fixed column a metric called ``name`` would collide with in results.csv (its own column),
    summary.csv (``<name>_<suffix>``) or the tables, or None."""
    if name in RESULTS_HEAD + RESULTS_TAIL:
        return f"results.csv column '{name}'"
    if name in TABLE_COLUMNS:
        return f"the tables' '{name}' column"
    for suffix in METRIC_SUFFIXES:
        if f"{name}_{suffix}" in SUMMARY_HEAD + SUMMARY_TAIL:
            return f"summary.csv column '{name}_{suffix}'"
    return None
