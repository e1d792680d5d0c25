"""What ``compare`` writes: a terminal table, ``results.csv``/``summary.csv``/``results.json``, ``report.html``.

With ``--baseline`` each also gets the paired comparison with the baseline (:mod:`.paired`): a
second table "vs BASELINE" (terminal, HTML), ``paired.csv`` (one row per method and metric) and a
``"paired"`` section of ``results.json``. Without it, none of these exist (a stale ``paired.csv``
is removed).

- ``results.csv``: one row per (method, image, seed): status, runtime, memory, every metric.
  ``inf`` is written as ``inf``; a missing value (NaN) as an empty cell.
- ``summary.csv``: one row per method: mean, std (over seeds) and NaN count per metric, runtime.
- ``results.json``: both of the above plus the settings, device and backend, the versions of
  restorekit and of every plugin distribution, each method's license, options and weights
  (``weights_info``: names and sha256 where the method exposes them), skipped metrics with the
  reason, and failures. Non-finite numbers: ``"Infinity"``/``"-Infinity"``, NaN as ``null``. A
  ``torchrun`` job adds ``processes``; its stage timings are summed over them, and every number
  that describes the results (not the run) is the one a single process writes.
- ``report.html``: one self-contained file (inline CSS, images as base64 PNG), the table and,
  per image, a row of crops ``LR | each method | HR`` at the same place.
"""

from __future__ import annotations

import base64
import csv
import html
import io
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from rich.console import Console, OverflowMethod
from rich.measure import Measurement
from rich.cells import cell_len
from rich.table import Table
from rich.text import Text

from ..images import atomic_write_bytes, read_image
from .aggregate import MethodSummary, Stat, best_per_column, failure_groups, summarize
from .inputs import png_bytes
from .paired import BOOTSTRAP_RESAMPLES, BOOTSTRAP_SEED, CI_LEVEL, BaselineComparison, PairedStat, compare_to_baseline
from .runner import CompareResult, MethodPlan, MetricState, backend_info, plugin_versions, restorekit_version
from .store import Record, dumps

HTML_MAX_IMAGES = 24
CROP_SIDE = 128
ARROW = {True: "↑", False: "↓"}
Rows = list[list[tuple[str, bool]]]  # a table's rows of cells: (text, is-best)


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


def summarize_result(res: CompareResult) -> Summary:
    """Per-method aggregates and the best method per column."""
    metrics = [m for m in res.plan.metrics if m.status == "ok"]
    names = [m.name for m in metrics]
    rows = []
    for mp in res.plan.methods:
        recs = [r for r in res.records if r.method == mp.name]
        rows.append(summarize(mp.name, mp.deterministic, mp.seeds, len(res.inputs.pairs), recs, names))
    directions = {m.name: m.higher_is_better for m in metrics}
    best = best_per_column(rows, directions)
    baseline = res.plan.config.baseline
    paired = None
    if baseline is not None:
        paired = compare_to_baseline(res.records, baseline, [mp.name for mp in res.plan.methods], directions)
    return Summary(res, rows, best, paired)


# --------------------------------------------------------------------------------------------
# Formatting


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


def fmt_stat(s: Stat, fmt: str | None = None) -> str:
    text = fmt_number(s.mean, fmt)
    if s.std is not None and not math.isnan(s.mean):
        text += f" ± {fmt_number(s.std, fmt)}"
    return text


def fmt_signed(v: float | None, fmt: str | None = None) -> str:
    """:func:`fmt_number` with a ``+`` on positive values (differences)."""
    text = fmt_number(v, fmt)
    return "+" + text if v is not None and v > 0 else text


def _runtime_cell(s: MethodSummary) -> str:
    text = fmt_number(s.runtime_ms.mean, ".1f")
    return text + " (warm-up)" if s.runtime_is_warmup else text


def table_rows(sm: Summary) -> tuple[list[str], Rows]:
    """Header and rows (cell text, is-best) shared by the terminal and HTML tables."""
    metrics = sm.active_metrics
    header = (["method"] + [f"{m.name} {ARROW[m.higher_is_better]}" for m in metrics]
              + [f"ms/img ({sm.result.plan.device.type}) ↓", "peak MiB", "ok"])
    rows = []
    for s in sm.methods:
        label = s.name if s.deterministic else f"{s.name} ({len(s.seeds)} seed{'s' if len(s.seeds) > 1 else ''})"
        row: list[tuple[str, bool]] = [(label, False)]
        for m in metrics:
            row.append((fmt_stat(s.metrics[m.name], m.fmt), s.name in sm.best.get(m.name, set())))
        row.append((_runtime_cell(s), s.name in sm.best.get("runtime", set())))
        row.append((fmt_number(s.peak_mem_mb, ".0f"), False))
        row.append((f"{s.ok}/{s.ok + s.failed}", False))
        rows.append(row)
    return header, rows


def turned_rows(sm: Summary) -> tuple[list[str], list[Rows]]:
    """:func:`table_rows` turned for narrow terminals: a column per method, a row per metric, then
    ``ms/img``, ``peak MiB`` and ``ok`` in a group of their own.

    The cells are :func:`table_rows`' own, so every number reads the same and ``*`` still marks the
    best method on that metric (now best in its row).
    """
    header, rows = table_rows(sm)
    turned: Rows = [[(label, False)] + [row[i] for row in rows] for i, label in enumerate(header) if i]
    n = len(sm.active_metrics)
    return ["metric"] + [row[0][0] for row in rows], [g for g in (turned[:n], turned[n:]) if g]


PAIRED_TITLE = "vs {base}: Δ = method − {base}"


def paired_metric_fmt(sm: Summary, m: MetricState) -> str:
    """One format for all of a metric's paired numbers: its own, else the one its values get in the table.

    The values' format (:func:`magnitude_fmt` of the largest method mean) keeps a difference as
    precise as the means it is a difference of, and scientific only where the values are.
    """
    if m.fmt:
        return m.fmt
    means = [abs(s.metrics[m.name].mean) for s in sm.methods if math.isfinite(s.metrics[m.name].mean)]
    return magnitude_fmt(max(means, default=0.0))


def _why_unpaired(sm: Summary, name: str, baseline: str) -> str:
    """Why a method has no image paired with the baseline on any metric, in a few words."""
    for who in (name, baseline):
        images = {r.image for r in sm.result.records if r.method == who}
        if images and not any(r.status == "ok" for r in sm.result.records if r.method == who):
            return f"{'' if who == name else who + ' '}failed on {len(images)}/{len(images)}"
    return "no finite value on one side"


def paired_rows(sm: Summary) -> tuple[list[str], list[Rows]]:
    """Header and, per method, the rows of the "vs BASELINE" table (terminal and HTML).

    A method's group starts with a row naming it, then one row per metric: ``n``, ``win``, ``p``,
    ``Δ`` and its CI. A method with no image paired on any metric gets only its first row, saying why.
    Its width does not grow with the number of metrics.
    """
    if sm.paired is None:
        return [], []
    metrics = sm.active_metrics
    header = ["method, metric", "n", "win", "p", "Δ", f"{CI_LEVEL:.0%} CI"]
    if not metrics:
        return header, []
    fmts = {m.name: paired_metric_fmt(sm, m) for m in metrics}
    groups: list[Rows] = []
    for name, per in sm.paired.stats.items():
        if not any(per[m.name].n for m in metrics):
            why = _why_unpaired(sm, name, sm.paired.baseline)
            groups.append([[(name, False), ("0", False), ("", False), ("", False), ("", False),
                            (f"no image paired: {why}", False)]])
            continue
        rows: Rows = [[(name, False)] + [("", False)] * (len(header) - 1)]
        for m in metrics:
            st, f = per[m.name], fmts[m.name]
            if st.n:
                cells = [str(st.n), f"{100 * st.win:.1f}%", fmt_number(st.p, ".2g"), fmt_signed(st.diff, f),
                         f"[{fmt_signed(st.ci_low, f)}, {fmt_signed(st.ci_high, f)}]"]
            else:
                cells = ["0", "n/a", "n/a", "n/a", "n/a"]
            rows.append([(f"{m.name} {ARROW[m.higher_is_better]}", False), *[(c, False) for c in cells]])
        groups.append(rows)
    return header, groups


def paired_notes(sm: Summary) -> list[str]:
    """What the "vs BASELINE" numbers are, and per method the images each metric left out (one line)."""
    if sm.paired is None:
        return []
    base = sm.paired.baseline
    out = [f"Paired with {base} image by image, over the images where both have a finite value (stochastic "
           f"methods: the mean over seeds per image). n: images paired; win: share of them where the method "
           f"is better (ties count half); p: two-sided exact sign test, ties dropped. Δ: mean of method − "
           f"{base}, with a {CI_LEVEL:.0%} percentile-bootstrap CI ({BOOTSTRAP_RESAMPLES} resamples, seed "
           f"{BOOTSTRAP_SEED})."]
    metrics = sm.active_metrics
    for name, per in sm.paired.stats.items():
        stats = [(m.name, per[m.name]) for m in metrics]
        if not any(st.n for _, st in stats):
            continue  # its one row says so
        by_count: dict[str, list[str]] = {}
        for metric, st in stats:
            if st.left_out:
                by_count.setdefault(f"{st.left_out}/{st.left_out + st.n}", []).append(metric)
        if not by_count:
            continue
        if len(by_count) == 1 and len(next(iter(by_count.values()))) == len(stats):
            listed = f"{next(iter(by_count))} images in every metric"
        else:
            listed = "; ".join(f"{count} in {', '.join(names)}" for count, names in by_count.items())
        out.append(f"{name} vs {base}: left out (no finite value on one side): {listed}")
    return out


def notes(sm: Summary, best_in: str = "column") -> list[str]:
    """Footnotes: conventions, NaN counts, metric errors, skipped metrics, input problems.

    ``best_in`` says where ``*`` compares: "column" (methods as rows), "row" (:func:`turned_rows`).
    """
    res = sm.result
    devices = sorted({mp.device for mp in res.plan.methods if mp.device}) or [str(res.plan.device)]
    precisions = sorted({mp.precision for mp in res.plan.methods})
    out = [f"* best in {best_in}. Runtime: mean ms per image, warm-up call excluded; device {'; '.join(devices)}; "
           f"precision {', '.join(precisions)}."]
    if any(not s.deterministic for s in sm.methods):
        out.append("Stochastic methods: mean ± std (population) over seeds of the per-seed mean over images.")
    for m in sm.active_metrics:
        counts = [f"{s.name} {s.metrics[m.name].nan}/{s.metrics[m.name].nan + s.metrics[m.name].n}"
                  for s in sm.methods if s.metrics[m.name].nan]
        if counts:
            out.append(f"{m.name}: {m.nan_label}: {', '.join(counts)} (left out of the mean)")
        errs = [f"{s.name} {s.metric_errors[m.name]}" for s in sm.methods if m.name in s.metric_errors]
        if errs:
            out.append(f"{m.name}: could not be computed for some images: {', '.join(errs)}")
    for m in res.plan.metrics:
        if m.status != "ok":
            out.append(f"metric {m.name} skipped: {m.reason}")
    if res.unmatched:
        out.append(f"{len(res.unmatched)} file(s) without a partner of the same stem were left out: "
                   f"{', '.join(res.unmatched[:8])}{' …' if len(res.unmatched) > 8 else ''}")
    return out


def failure_lines(sm: Summary) -> list[str]:
    """One line per (method, error): which images failed and why."""
    lines = [f"input {f['image']}: {f['error']}" for f in sm.result.inputs.failures]
    for s in sm.methods:
        for err, imgs in failure_groups(s):
            shown = ", ".join(imgs[:10]) + (f" … (+{len(imgs) - 10})" if len(imgs) > 10 else "")
            lines.append(f"{s.name} failed on {len(imgs)} image(s) [{shown}]: {err}")
    return lines


def print_table(sm: Summary, console: Console | None = None) -> None:
    """The comparison table on the terminal (best per metric bold and starred), then "vs BASELINE".

    Methods are rows and metrics columns when that fits the console's width; otherwise the table is
    turned (:func:`turned_rows`), split into as few tables as needed, so that no name or number is cut.
    """
    console = console or Console(width=None if Console().is_terminal else 200)
    res = sm.result
    title = (f"restorekit compare ×{res.plan.config.scale} — {len(res.inputs.pairs)} images, "
             f"{res.inputs.source}")
    tables, wide = summary_tables(sm, console, title)
    for t in tables:
        console.print(t)
    _print_notes(console, notes(sm, best_in="column" if wide else "row" if len(tables) == 1 else
                                "row, over all the tables"))
    if sm.paired is not None:
        _print_rich(console, PAIRED_TITLE.format(base=sm.paired.baseline), *paired_rows(sm), paired_notes(sm),
                    heads=True, left=(0, 5))


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
            t.title = title
            if len(chunks) == 1 and cell_len(title) <= width:  # widen a lone table to keep its title on one line
                t.min_width = cell_len(title)
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
    t = Table(title=title)
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
                heads: bool = False, left: tuple[int, ...] = (0,)) -> None:
    """:func:`_rich_table` on the console, then ``lines`` (dim). With ``heads`` only the last column
    wraps (at a space) when the terminal is narrow: names and numbers stay whole."""
    console.print(_rich_table(title, header, groups, heads=heads, left=left))
    _print_notes(console, lines)


def _print_notes(console: Console, lines: list[str]) -> None:
    """Footnotes under a table, dim."""
    for line in lines:
        console.print(Text(line, style="dim"))


# --------------------------------------------------------------------------------------------
# Files


def _csv_num(v: float | None) -> str:
    if v is None or math.isnan(v):
        return ""
    return repr(float(v)) if not math.isinf(v) else ("inf" if v > 0 else "-inf")


def write_csv(sm: Summary, out: Path) -> tuple[Path, Path]:
    """``results.csv`` (per image) and ``summary.csv`` (per method)."""
    names = [m.name for m in sm.active_metrics]
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["method", "image", "seed", "status", "ms", "warmup", "peak_mem_mb", *names, "output", "error"])
    for r in sm.result.records:
        w.writerow([r.method, r.image, "" if r.seed is None else r.seed, r.status, _csv_num(r.ms),
                    int(r.warmup), _csv_num(r.peak_mem_mb),
                    *[_csv_num((r.metrics or {}).get(n)) for n in names], r.output or "", r.error or ""])
    per_image = out / "results.csv"
    atomic_write_bytes(per_image, buf.getvalue().encode())

    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    head = ["method", "deterministic", "seeds", "images", "ok", "failed"]
    for n in names:
        head += [f"{n}_mean", f"{n}_std", f"{n}_nan"]
    w.writerow(head + ["ms_per_image", "warmup_ms", "peak_mem_mb", "device", "precision", "backend"])
    plans = {mp.name: mp for mp in sm.result.plan.methods}
    for s in sm.methods:
        row: list[Any] = [s.name, int(s.deterministic), " ".join("-" if x is None else str(x) for x in s.seeds),
                          s.images, s.ok, s.failed]
        for n in names:
            st = s.metrics[n]
            row += [_csv_num(st.mean), _csv_num(st.std), st.nan]
        row += [_csv_num(s.runtime_ms.mean), _csv_num(s.warmup_ms), _csv_num(s.peak_mem_mb),
                plans[s.name].device, plans[s.name].precision, plans[s.name].backend]
        w.writerow(row)
    summary = out / "summary.csv"
    atomic_write_bytes(summary, buf.getvalue().encode())
    return per_image, summary


PAIRED_FIELDS = ("n", "left_out", "better", "ties", "worse", "win", "diff", "ci_low", "ci_high", "p")


def write_paired_csv(sm: Summary, out: Path) -> Path | None:
    """``paired.csv``: one row per (method, metric) against the baseline; removed when there is none."""
    p = out / "paired.csv"
    if sm.paired is None:
        p.unlink(missing_ok=True)  # not one of this run's reports
        return None
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["method", "baseline", "metric", "higher_is_better", *PAIRED_FIELDS])
    for name, per in sm.paired.stats.items():
        for m in sm.active_metrics:
            st: PairedStat = per[m.name]
            values = [getattr(st, f) for f in PAIRED_FIELDS]
            w.writerow([name, sm.paired.baseline, m.name, int(m.higher_is_better),
                        *[_csv_num(v) if isinstance(v, float) else v for v in values]])
    atomic_write_bytes(p, buf.getvalue().encode())
    return p


def _method_doc(mp: MethodPlan, s: MethodSummary, best: dict[str, set[str]]) -> dict[str, Any]:
    info = mp.cls.info
    return {"name": mp.name, "plugin": mp.plugin, "distribution": mp.distribution, "version": mp.version,
            "summary": info.summary, "license": info.license, "paper": info.paper,
            "deterministic": info.deterministic, "options": mp.options.model_dump(mode="json"),
            "settings_hash": mp.settings_hash, "device": mp.device, "precision": mp.precision, "backend": mp.backend,
            "weights": mp.weights_info, "load_error": mp.load_error,
            "best_in": sorted(c for c, names in best.items() if mp.name in names),
            "aggregate": s.as_dict()}


def results_document(sm: Summary, *, include_images: bool = True) -> dict[str, Any]:
    """The content of ``results.json``."""
    res = sm.result
    cfg = res.plan.config
    doc: dict[str, Any] = {
        "restorekit": restorekit_version(),
        "created": res.started,
        "settings": {"methods": cfg.methods, "scale": cfg.scale, "data": cfg.data, "lr_dir": cfg.lr_dir,
                     "degradation": res.plan.degradation, "seeds": cfg.seeds, "limit": cfg.limit,
                     "metrics": cfg.metrics, "device": cfg.device, "opts": cfg.opts, "fresh": cfg.fresh,
                     "out": str(cfg.out),
                     "conventions": {"predictions": "rounded to 8 bits (as saved) before scoring",
                                     "degradation_seed": "crc32 of the image stem",
                                     "hr": "cropped bottom/right to a multiple of the scale"}},
        "device": str(res.plan.device),
        "backend": backend_info(res.plan.device),
        "plugins": plugin_versions(res.plan.registry),
        "inputs": {"source": res.inputs.source, "images": len(res.inputs.pairs),
                   "failures": res.inputs.failures, "unmatched": res.unmatched},
        "metrics": [{"name": m.name, "summary": m.cls.summary, "higher_is_better": m.higher_is_better,
                     "plugin": m.plugin, "distribution": m.distribution, "version": m.version,
                     "status": m.status, "reason": m.reason, "nan_label": m.nan_label}
                    for m in res.plan.metrics],
        "skipped_metrics": [{"name": m.name, "reason": m.reason} for m in res.plan.metrics if m.status != "ok"],
        "methods": [_method_doc(mp, s, sm.best) for mp, s in zip(res.plan.methods, sm.methods)],
        "best": {k: sorted(v) for k, v in sm.best.items()},
        "failures": [{"method": r.method, "image": r.image, "seed": r.seed, "error": r.error}
                     for r in res.failures],
        "notes": notes(sm),
        "wall_s": res.wall_s,
        "timings_s": res.timings,
        "exit_code": res.exit_code,
        "files": {"results_csv": "results.csv", "summary_csv": "summary.csv", "html": "report.html",
                  "outputs": "outputs/", "store": "results/"},
    }
    if res.processes > 1:  # a torchrun job: same numbers, more processes
        doc["processes"] = res.processes
    if sm.paired is not None:
        doc["paired"] = sm.paired.as_dict()
        doc["files"]["paired_csv"] = "paired.csv"
        doc["notes"] += paired_notes(sm)
    if include_images:
        doc["images"] = [{**r.to_json(), "reused": r.reused} for r in res.records]
    return doc


def write_json(sm: Summary, out: Path) -> Path:
    p = out / "results.json"
    atomic_write_bytes(p, dumps(results_document(sm), indent=1).encode())
    return p


# --------------------------------------------------------------------------------------------
# HTML

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px;color:#222;background:#fff}
h1{font-size:20px}h2{font-size:16px;margin-top:28px}
table.res{border-collapse:collapse;font-size:13px}
table.res th,table.res td{border:1px solid #ddd;padding:4px 8px;text-align:right}
table.res th:first-child,table.res td:first-child,table.res .l{text-align:left}
table.res tbody+tbody tr:first-child td{border-top:2px solid #999}
table.res td.head{font-weight:bold}table.res td.sub{padding-left:20px}
table.res th{background:#f3f3f3}
td.best{font-weight:bold;color:#0a6b2d;background:#eefbf1}
.notes{font-size:12px;color:#555}.fail{color:#a40000}
.grid{border-collapse:collapse}
.grid td,.grid th{padding:3px;vertical-align:top;text-align:center;font-size:11px}
.grid img{width:%(side)dpx;height:%(side)dpx;image-rendering:pixelated;display:block}
.missing{width:%(side)dpx;height:%(side)dpx;background:#eee;color:#a40000;display:flex;align-items:center;
justify-content:center;font-size:11px}
code{background:#f5f5f5;padding:1px 3px}
""" % {"side": CROP_SIDE * 3 // 2}


def _data_uri(x: torch.Tensor) -> str:
    return "data:image/png;base64," + base64.b64encode(png_bytes(x, compress_level=6)).decode("ascii")


def _crop_box(h: int, w: int, scale: int) -> tuple[int, int, int]:
    """A centred square (y0, x0, side) aligned to the scale grid, so the LR crop matches exactly."""
    side = max(scale, min(h, w, CROP_SIDE) // scale * scale)
    y0 = (h - side) // 2 // scale * scale
    x0 = (w - side) // 2 // scale * scale
    return y0, x0, side


def _html_table(header: list[str], groups: list[Rows], lines: list[str], *, heads: bool = False,
                left: tuple[int, ...] = (0,)) -> str:
    """The HTML of :func:`_print_rich`'s table: each row group in its own ``<tbody>``, ruled apart."""
    e = html.escape

    def cls(i: int, best: bool = False, head: bool = False, sub: bool = False) -> str:
        names = [n for n, on in (("l", 0 < i and i in left), ("best", best), ("head", head), ("sub", sub)) if on]
        return f" class='{' '.join(names)}'" if names else ""

    parts = ["<table class='res'><thead><tr>" + "".join(f"<th{cls(i)}>{e(h)}</th>" for i, h in enumerate(header))
             + "</tr></thead>"]
    for rows in groups:
        parts.append("<tbody>" + "".join(
            "<tr>" + "".join(f"<td{cls(i, b, heads and r == 0 and i == 0, heads and r > 0 and i == 0)}>{e(c)}</td>"
                             for i, (c, b) in enumerate(row)) + "</tr>"
            for r, row in enumerate(rows)) + "</tbody>")
    parts.append("</table><div class='notes'>" + "".join(f"<p>{e(n)}</p>" for n in lines) + "</div>")
    return "\n".join(parts)


def write_html(sm: Summary, out: Path) -> Path:
    """A self-contained ``report.html`` (no external resources)."""
    res = sm.result
    cfg = res.plan.config
    e = html.escape
    parts = [f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>restorekit compare ×{cfg.scale}</title>"
             f"<style>{CSS}</style></head><body>"]
    parts.append(f"<h1>restorekit compare ×{cfg.scale}: {len(res.inputs.pairs)} images ({e(res.inputs.source)})</h1>")
    parts.append(f"<p class='notes'>restorekit {e(restorekit_version())} · device {e(str(res.plan.device))} · "
                 f"{e(res.started)} · seeds {e(','.join(map(str, cfg.seeds)))}</p>")
    header, rows = table_rows(sm)
    parts.append(_html_table(header, [rows], notes(sm)))
    if sm.paired is not None:
        parts.append(f"<h2>{e(PAIRED_TITLE.format(base=sm.paired.baseline))}</h2>")
        parts.append(_html_table(*paired_rows(sm), paired_notes(sm), heads=True, left=(0, 5)))
    fails = failure_lines(sm)
    if fails:
        parts.append("<h2>Failures</h2><ul class='fail'>" + "".join(f"<li>{e(f)}</li>" for f in fails) + "</ul>")

    parts.append("<h2>Methods</h2><table class='res'><tr><th>method</th><th>plugin</th><th>version</th>"
                 "<th>license</th><th>options</th><th>weights</th><th>precision</th></tr>")
    for mp in res.plan.methods:
        weights = "; ".join(f"{k}: {v}" for k, v in (mp.weights_info or {}).items()) or "—"
        opts = ", ".join(f"{k}={v}" for k, v in mp.options.model_dump(mode="json").items()) or "—"
        parts.append(f"<tr><td>{e(mp.name)}</td><td>{e(mp.distribution)}</td><td>{e(mp.version)}</td>"
                     f"<td>{e(mp.cls.info.license)}</td><td>{e(opts)}</td><td>{e(weights)}</td>"
                     f"<td>{e(mp.precision)}</td></tr>")
    parts.append("</table>")

    # Image grid: LR | methods | HR, the same crop of each; first seed of stochastic methods.
    first: dict[tuple[str, str], Record] = {}
    for r in res.records:
        key = (r.method, r.image)
        if key not in first or (r.seed is not None and (first[key].seed or 0) > r.seed):
            first[key] = r
    shown = res.inputs.pairs[:HTML_MAX_IMAGES]
    parts.append(f"<h2>Crops ({len(shown)} of {len(res.inputs.pairs)} images, centre {CROP_SIDE}px of HR; "
                 f"LR shown with nearest-neighbour)</h2><table class='grid'><tr><th>image</th><th>LR</th>"
                 + "".join(f"<th>{e(mp.name)}</th>" for mp in res.plan.methods) + "<th>HR</th></tr>")
    first_metric = sm.active_metrics[0] if sm.active_metrics else None
    for pair in shown:
        try:
            lr, hr = res.inputs.load(pair)
        except Exception as exc:  # a report must still be written
            parts.append(f"<tr><td>{e(pair.stem)}</td><td colspan='99' class='fail'>{e(str(exc))}</td></tr>")
            continue
        s = cfg.scale
        y0, x0, side = _crop_box(hr.shape[-2], hr.shape[-1], s)
        hr_c = hr[..., y0:y0 + side, x0:x0 + side]
        lr_c = lr[..., y0 // s:(y0 + side) // s, x0 // s:(x0 + side) // s]
        lr_up = torch.nn.functional.interpolate(lr_c, size=(side, side), mode="nearest")
        cells = [f"<td>{e(pair.stem)}</td>", f"<td><img src='{_data_uri(lr_up)}' alt='LR'></td>"]
        for mp in res.plan.methods:
            rec = first.get((mp.name, pair.stem))
            if rec is None or rec.status != "ok" or not rec.output:
                why = "failed" if rec is None or not rec.error else rec.error[:80]
                cells.append(f"<td><div class='missing' title='{e(rec.error or '') if rec else ''}'>{e(why)}</div></td>")
                continue
            try:
                pred = read_image(cfg.out / rec.output, max_pixels=cfg.max_output_pixels)[..., y0:y0 + side,
                                                                                          x0:x0 + side]
            except Exception as exc:
                cells.append(f"<td><div class='missing'>{e(str(exc)[:80])}</div></td>")
                continue
            caption = ""
            if first_metric is not None and rec.metrics and first_metric.name in rec.metrics:
                caption = f"{first_metric.name} {fmt_number(rec.metrics[first_metric.name], first_metric.fmt)}"
            cells.append(f"<td><img src='{_data_uri(pred)}' alt='{e(mp.name)}'>{e(caption)}</td>")
        cells.append(f"<td><img src='{_data_uri(hr_c)}' alt='HR'></td>")
        parts.append("<tr>" + "".join(cells) + "</tr>")
    parts.append("</table>")
    parts.append("<h2>Plugins</h2><ul class='notes'>" + "".join(
        f"<li>{e(p['name'])}: {e(p['distribution'])} {e(p['version'])} ({e(p['status'])})</li>"
        for p in plugin_versions(res.plan.registry)) + "</ul>")
    parts.append("<h2>Metrics</h2><ul class='notes'>" + "".join(
        f"<li><b>{e(m.name)}</b> {ARROW[m.higher_is_better]} — {e(m.cls.summary)}"
        f"{' — skipped: ' + e(m.reason or '') if m.status != 'ok' else ''}</li>" for m in res.plan.metrics) + "</ul>")
    parts.append("</body></html>")
    p = out / "report.html"
    atomic_write_bytes(p, "\n".join(parts).encode("utf-8"))
    return p


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
