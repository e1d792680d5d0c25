"""The data files of ``compare``: ``results.csv``, ``summary.csv``, ``paired.csv`` and ``results.json``
(their contents are described in :mod:`.reports`)."""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path
from typing import Any

from ..images import atomic_write_bytes
from ..interfaces import RESTORATION_TASKS
from .aggregate import MethodSummary
from .paired import PairedStat
from .report_columns import METRIC_SUFFIXES, RESULTS_HEAD, RESULTS_TAIL, SUMMARY_HEAD, SUMMARY_TAIL
from .report_summary import Summary, report_bytes
from .report_text import notes, paired_notes
from .runner import MethodPlan, backend_info, plugin_versions, restorekit_version
from .store import dumps


def _csv_num(v: float | None) -> str:
    if v is None or math.isnan(v):
        return ""
    return repr(float(v)) if not math.isinf(v) else ("inf" if v > 0 else "-inf")


#: What a spreadsheet reads as a formula at the start of a text cell (OWASP's list).
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def _csv_text(v: object) -> str:
    """A text cell that a spreadsheet shows as text: a leading ``'`` when it would start a formula
    (an image named ``=HYPERLINK(…).png`` must not become a live link when results.csv is opened)."""
    s = "" if v is None else str(v)
    return "'" + s if s.startswith(_FORMULA_START) else s


#: results.json ``settings.conventions``: rules that change what is scored or what a metric compares.
BLACK_AND_WHITE = ("the output of a method whose task restores without changing colours (RESTORATION_TASKS: "
                   f"{', '.join(sorted(RESTORATION_TASKS))}) for a black-and-white LR input (channels within 1/255 "
                   "of each other everywhere) is replaced by its BT.601 luma before saving and scoring; methods of "
                   "another task (colourisation) keep their colours")
LR_CONSISTENCY = ("lr_consistency compares the LR input with the output downscaled by antialiased bicubic "
                  "(PIL convention), whatever degradation or --lr-dir made the LR images")


def write_csv(sm: Summary, out: Path) -> tuple[Path, Path]:
    """``results.csv`` (per image) and ``summary.csv`` (per method)."""
    names = [m.name for m in sm.active_metrics]
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow([*RESULTS_HEAD, *names, *RESULTS_TAIL])
    for r in sm.result.records:
        errors = {n: r.metric_errors[n] for n in names if r.metric_errors and n in r.metric_errors}
        w.writerow([_csv_text(r.method), _csv_text(r.image), "" if r.seed is None else r.seed, r.status,
                    _csv_num(r.ms), int(r.warmup), _csv_num(r.peak_mem_mb),
                    *[_csv_num((r.metrics or {}).get(n)) for n in names], _csv_text(r.output or ""),
                    _csv_text(r.error or ""),
                    _csv_text(json.dumps(errors, ensure_ascii=False) if errors else "")])
    per_image = out / "results.csv"
    atomic_write_bytes(per_image, report_bytes(buf.getvalue()))

    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    head = list(SUMMARY_HEAD)
    for n in names:
        head += [f"{n}_{suffix}" for suffix in METRIC_SUFFIXES]
    w.writerow(head + list(SUMMARY_TAIL))
    plans = {mp.name: mp for mp in sm.result.plan.methods}
    for s in sm.methods:
        row: list[Any] = [_csv_text(s.name), int(s.deterministic), " ".join("-" if x is None else str(x) for x in s.seeds),
                          s.images, s.ok, s.failed]
        for n in names:
            st = s.metrics[n]
            row += [_csv_num(st.mean), _csv_num(st.std), st.nan, st.n, st.inf, s.metric_errors.get(n, 0),
                    st.seed_left_out]
        row += [_csv_num(s.runtime_ms.mean), _csv_num(s.runtime_ms.std), int(s.runtime_is_warmup),
                _csv_num(s.warmup_ms), _csv_num(s.peak_mem_mb),
                *map(_csv_text, (plans[s.name].device, plans[s.name].precision, plans[s.name].backend))]
        w.writerow(row)
    summary = out / "summary.csv"
    atomic_write_bytes(summary, report_bytes(buf.getvalue()))
    return per_image, summary


PAIRED_FIELDS = ("n", "left_out", "better", "ties", "worse", "win", "diff", "ci_low", "ci_high", "p", "n_diff")


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
            w.writerow([_csv_text(name), _csv_text(sm.paired.baseline), _csv_text(m.name), int(m.higher_is_better),
                        *[_csv_num(v) if isinstance(v, float) else v for v in values]])
    atomic_write_bytes(p, report_bytes(buf.getvalue()))
    return p


def _method_doc(mp: MethodPlan, s: MethodSummary, best: dict[str, set[str]]) -> dict[str, Any]:
    info = mp.cls.info
    # "deterministic": as this run treated the method (one sample per image: psp_sr, whose samples
    # beyond the first draw from the seed, ran once), as summary.csv and "aggregate" say it.
    return {"name": mp.name, "plugin": mp.plugin, "distribution": mp.distribution, "version": mp.version,
            "summary": info.summary, "license": info.license, "paper": info.paper,
            "deterministic": mp.deterministic, "options": mp.options.model_dump(mode="json"),
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
                     "out": str(cfg.out), "faces": cfg.faces,
                     **({"detector": cfg.detector, "paste_mask": res.plan.paste_mask} if cfg.faces == "detect"
                        else {}),
                     "conventions": {"predictions": "rounded to 8 bits (as saved) before scoring",
                                     "degradation_seed": "sha256 of the decoded HR pixels, mixed (splitmix64)",
                                     "hr": "cropped bottom/right to a multiple of the scale",
                                     "black_and_white": BLACK_AND_WHITE,
                                     "lr_consistency": LR_CONSISTENCY}},
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
