"""The words and numbers the reports show, as plain text: the cells of the summary and "vs BASELINE"
tables, their notes and the failure lines. The terminal and report.html render them; results.json
carries the notes."""

from __future__ import annotations

import math
import re
from dataclasses import replace

from .aggregate import MethodSummary, SharedImages, failure_groups, shared_means
from .paired import BOOTSTRAP_RESAMPLES, BOOTSTRAP_SEED, CI_LEVEL, T_INTERVAL_BELOW
from .report_summary import RUNTIME_FMT, Summary, fmt_number, fmt_p, fmt_signed, fmt_stat, magnitude_fmt
from .runner import MetricState, _output_rel

ARROW = {True: "↑", False: "↓"}
Rows = list[list[tuple[str, bool]]]  # a table's rows of cells: (text, is-best)


def _runtime_cell(s: MethodSummary) -> str:
    text = fmt_number(s.runtime_ms.mean, RUNTIME_FMT)
    return text + " (warm-up)" if s.runtime_is_warmup else text


def _device_kinds(description: str) -> set[str]:
    """The device types a method's device description names: ``cuda:0 (…)`` → {cuda}; a torchrun
    job's ``cuda (…), cpu (…) (8 processes)`` → {cuda, cpu}."""
    return set(re.findall(r"(?:^|\), )([a-z]+)\b", description))


def runtime_device(sm: Summary) -> str | None:
    """The device type every method ran on (the ``ms/img`` header's), or None when they differ (an
    onnxruntime graph that fell back to the CPU beside methods on CUDA)."""
    kinds = set().union(*(_device_kinds(mp.device) for mp in sm.result.plan.methods if mp.device))
    if not kinds:
        return str(sm.result.plan.device.type)
    return kinds.pop() if len(kinds) == 1 else None


def table_rows(sm: Summary) -> tuple[list[str], Rows]:
    """Header and rows (cell text, is-best) shared by the terminal and HTML tables."""
    metrics = sm.active_metrics
    dev = runtime_device(sm)
    header = (["method"] + [f"{m.name} {ARROW[m.higher_is_better]}" for m in metrics]
              + [f"ms/img ({dev}) ↓" if dev else "ms/img ↓", "peak MiB", "ok"])
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
    return "no value on one side"


def paired_rows(sm: Summary) -> tuple[list[str], list[Rows]]:
    """Header and, per method, the rows of the "vs BASELINE" table (terminal and HTML).

    A method's group starts with a row naming it, then one row per metric: ``n``, ``win``, ``p``,
    ``Δ`` and its CI (``n`` says ``4 (Δ over 3)`` when an infinite value leaves a pair out of Δ). A
    method with no image paired on any metric gets only its first row, saying why. Its width does not
    grow with the number of metrics.
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
                n = str(st.n) if st.n_diff == st.n else f"{st.n} (Δ over {st.n_diff})"
                cells = [n, f"{100 * st.win:.1f}%", fmt_p(st.p), fmt_signed(st.diff, f),
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
    out = [f"Paired with {base} image by image, over the images where both have a value (stochastic "
           f"methods: the mean over seeds per image). n: images paired; win: share of them where the method "
           f"is better (ties count half; an infinite value, e.g. the PSNR of a perfect output, counts); p: "
           f"two-sided exact sign test, ties dropped, rounded down to 2 significant digits. Δ: mean of "
           f"method − {base} over the pairs of finite values (\"n (Δ over K)\" when only K of the n pairs "
           f"are), with a {CI_LEVEL:.0%} CI: Student's t below {T_INTERVAL_BELOW} differences, from "
           f"{T_INTERVAL_BELOW} on the percentile bootstrap ({BOOTSTRAP_RESAMPLES} resamples, seed "
           f"{BOOTSTRAP_SEED}); none from one difference."]
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
        out.append(f"{name} vs {base}: left out (no value on one side): {listed}")
    return out


def notes(sm: Summary, best_in: str = "column") -> list[str]:
    """Footnotes: conventions, NaN counts, metric errors, skipped metrics, input problems.

    ``best_in`` says where ``*`` compares: "column" (methods as rows), "row" (:func:`turned_rows`).
    """
    res = sm.result
    devices = sorted({mp.device for mp in res.plan.methods if mp.device}) or [str(res.plan.device)]
    if runtime_device(sm) is None:  # methods on different devices: say which ran where
        devices = [f"{d}: {', '.join(mp.name for mp in res.plan.methods if mp.device == d)}" for d in devices]
    precisions = sorted({mp.precision for mp in res.plan.methods})
    out = [f"* best in {best_in}. Runtime: mean ms per image, warm-up call excluded; device {'; '.join(devices)}; "
           f"precision {', '.join(precisions)}."]
    if any(not s.deterministic for s in sm.methods):
        out.append("Stochastic methods: mean ± std (population) over seeds of the per-seed mean over the "
                   "images every seed has a value for.")
    for m in sm.active_metrics:
        shared = shared_means(sm.methods, m.name)
        if shared is not None:
            out.append(_shared_note(m, shared))
        counts = [f"{s.name} {s.metrics[m.name].nan}/{_scored(sm, s.name, m.name)}"
                  for s in sm.methods if s.metrics[m.name].nan]
        if counts:
            out.append(f"{m.name}: {m.nan_label}: {', '.join(counts)} (left out of the mean)")
        dropped = [f"{s.name} {k} image{'s' if k > 1 else ''}" for s in sm.methods
                   if (k := s.metrics[m.name].seed_left_out)]
        if dropped:
            out.append(f"{m.name}: left out of the mean ± std because not every seed has a value there (the seeds "
                       f"are compared on the same images): {', '.join(dropped)}")
        infs = [f"{s.name} {s.metrics[m.name].inf}/{s.metrics[m.name].n}" for s in sm.methods if s.metrics[m.name].inf]
        if infs:
            out.append(f"{m.name}: infinite values (e.g. a perfect output's PSNR): {', '.join(infs)} — such a mean "
                       "is infinite whatever the other images hold")
        errs = [f"{s.name} {s.metric_errors[m.name]}" for s in sm.methods if m.name in s.metric_errors]
        if errs:
            first = next(((r.image, r.metric_errors[m.name]) for r in res.records
                          if r.metric_errors and m.name in r.metric_errors), None)
            why = f" (first: {first[0]}: {first[1]})" if first else ""
            out.append(f"{m.name}: could not be computed for some images: {', '.join(errs)}{why}")
    lr_note = _lr_consistency_note(sm)
    if lr_note:
        out.append(lr_note)
    for m in res.plan.metrics:
        if m.status != "ok":
            out.append(f"metric {m.name} skipped: {m.reason}")
    if res.unmatched:
        out.append(f"{len(res.unmatched)} file(s) without a partner of the same stem were left out: "
                   f"{', '.join(res.unmatched[:8])}{' …' if len(res.unmatched) > 8 else ''}")
    return out


def _shared_note(m: MetricState, shared: SharedImages) -> str:
    """Why ``*`` in ``m``'s column may not mark the highest number: the means are over different images."""
    counts = ", ".join(f"{name} {k}" for name, k in shared.counts.items())
    head = f"{m.name}: the means are over different images ({counts})"
    if not shared.images:
        return f"{head}; no image has a value from every one of them, so none is marked best"
    means = ", ".join(f"{name} {fmt_number(v, m.fmt)}" for name, v in shared.means.items())
    return (f"{head}; * compares them on the {shared.images} image{'s' if shared.images > 1 else ''} all of "
            f"them have: {means}")


def _scored(sm: Summary, method: str, metric: str) -> int:
    """How many of ``method``'s results have a value of ``metric`` (NaN included, errors not)."""
    return sum(1 for r in sm.result.records if r.method == method and r.status == "ok" and r.metrics
               and metric in r.metrics and not (r.metric_errors and metric in r.metric_errors))


def _lr_consistency_note(sm: Summary) -> str | None:
    """What ``lr_consistency`` measures when the LR images were not made by plain ``bicubic:K``."""
    if not any(m.name == "lr_consistency" for m in sm.active_metrics):
        return None
    scale, deg = sm.result.plan.config.scale, sm.result.plan.degradation
    if deg == f"bicubic:{scale}":
        return None
    made = "the LR images come from --lr-dir" if deg is None else f"the LR images were made by {deg}"
    return (f"lr_consistency: {made}; it measures agreement with an antialiased bicubic downscale "
            f"(bicubic:{scale}) of the output, not with the degradation that made the input.")


def _failure_groups(sm: Summary, s: MethodSummary) -> list[tuple[str, list[str]]]:
    """``s``'s failures grouped by error (:func:`~restorekit.harness.aggregate.failure_groups`), each
    image's own output path taken out of its error first: a write refused file by file names each
    image's file, which made one line per image. A group of several says the folder once
    (``cannot write each image's output in OUT/outputs/METHOD: …``); a lone error keeps its path."""
    out = sm.result.plan.config.out
    firsts: dict[str, str] = {}  # an error without its path → the first error so worded, path and all
    failures = []
    for f in s.failures:
        seed = f["seed"] if isinstance(f["seed"], int) else None
        own = out / _output_rel(s.name, str(f["image"]), seed)
        error = str(f["error"]).replace(str(own), f"each image's output in {own.parent}")
        firsts.setdefault(error, str(f["error"]))
        failures.append({**f, "error": error})
    return [(err if len(imgs) > 1 else firsts[err], imgs)
            for err, imgs in failure_groups(replace(s, failures=failures))]


def failure_lines(sm: Summary) -> list[str]:
    """One line per (method, error): which images failed and why."""
    lines = [f"input {f['image']}: {f['error']}" for f in sm.result.inputs.failures]
    for s in sm.methods:
        for err, imgs in _failure_groups(sm, s):
            shown = ", ".join(imgs[:10]) + (f" … (+{len(imgs) - 10})" if len(imgs) > 10 else "")
            lines.append(f"{s.name} failed on {len(imgs)} image(s) [{shown}]: {err}")
    return lines
