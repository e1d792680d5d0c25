"""``report.html``: one self-contained page (inline CSS, images as base64 PNG) with the tables and,
per image, crops of the LR input, each method's output and the HR image at the same place."""

from __future__ import annotations

import base64
import html
from pathlib import Path

import torch

from ..images import atomic_write_bytes, read_image
from .inputs import png_bytes
from .report_summary import Summary, fmt_number, report_bytes
from .report_text import ARROW, PAIRED_TITLE, Rows, failure_lines, notes, paired_notes, paired_rows, table_rows
from .runner import plugin_versions, restorekit_version
from .store import Record

HTML_MAX_IMAGES = 24
CROP_SIDE = 128

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
    """The HTML of :func:`report_console._print_rich`'s table: each row group in its own ``<tbody>``, ruled apart."""
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
                if rec.seed is not None:  # this seed's value, not the table's mean over seeds
                    caption += f" (seed {rec.seed})"
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
    atomic_write_bytes(p, report_bytes("\n".join(parts)))
    return p
