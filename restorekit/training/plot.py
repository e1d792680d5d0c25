"""A run's JSON-lines logs (``log.jsonl``, a snapshot's ``metrics.jsonl``) read back, and loss
curves drawn from ``log.jsonl``: matplotlib when installed, else a small pillow drawing.

The logs are strict JSON, a number that is not finite written as results.json writes it
(``"Infinity"``, ``"-Infinity"``, NaN as ``null``: :func:`~restorekit.training.trainer.log_line`);
a log written before that holds bare ``Infinity``/``NaN``, and a resumed run appends to it:
:func:`read_record` reads both.
"""

from __future__ import annotations

import io
import json
import math
from pathlib import Path
from typing import Any

Series = dict[str, list[tuple[int, float]]]
COLORS = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
          (140, 86, 75), (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207)]
SKIP = {"step", "time", "lr", "epoch", "kind", "images_per_s", "samples"}


def _read_text(log_path: str | Path) -> str:
    """The log's text, read without following a symbolic link or opening a FIFO (which would hang
    the end of a run): those, like a missing file, read as empty."""
    from ..safe_open import read_plain

    try:
        data = read_plain(log_path)
    except OSError:
        return ""
    return "" if data is None else data.decode("utf-8", errors="replace")


def _number(value: Any) -> float | None:
    """``value`` as a finite float (an int too large for one, a bool, a string: None)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    try:
        x = float(value)
    except OverflowError:
        return None
    return x if math.isfinite(x) else None


def _step(value: Any) -> int | None:
    """A record's step: a whole number (written as a float too) that a plot can place, else None."""
    x = _number(value)
    return int(x) if x is not None and x.is_integer() and abs(x) <= 2**53 else None


def _decoded(value: Any) -> Any:
    """``value`` read back: the strings of an infinity as floats (results.json's rule:
    :func:`~restorekit.harness.store.decode_float`), an older log's bare NaN as ``None``."""
    from ..harness.store import decode_float

    if isinstance(value, str):
        return decode_float(value) if value in ("Infinity", "-Infinity") else value
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, list):
        return [_decoded(v) for v in value]
    if isinstance(value, dict):
        return {k: _decoded(v) for k, v in value.items()}
    return value


def read_record(line: str) -> dict[str, Any] | None:
    """One line of a run's log as a dict, or ``None`` when it is no JSON object (a line cut short by
    a kill, say). Infinities come back as floats, whether written as now (``"Infinity"``,
    ``"-Infinity"``) or bare, as older logs have them; NaN as ``None``, written ``null`` now and a
    bare ``NaN`` before: a line reads the same whichever way it was written."""
    try:
        rec = json.loads(line)
    except ValueError:
        return None
    return _decoded(rec) if isinstance(rec, dict) else None


def read_records(log_path: str | Path) -> list[dict[str, Any]]:
    """The records of a run's JSON-lines log, oldest first (:func:`read_record`; lines that are no
    record left out). A missing file, a symbolic link or a FIFO reads as no records."""
    records = (read_record(line) for line in _read_text(log_path).splitlines() if line.strip())
    return [rec for rec in records if rec is not None]


def read_series(log_path: str | Path, kind: str = "train") -> Series:
    """``{loss name: [(step, value), …]}`` from the JSONL lines of ``kind``; a line that is not a
    record (one cut short by a kill, say) or has no whole-number step is skipped, and so is a value
    that is not a finite number."""
    out: Series = {}
    for rec in read_records(log_path):
        if rec.get("kind", "train") != kind:
            continue
        step = _step(rec.get("step"))
        if step is None:
            continue
        for k, v in rec.items():
            if k not in SKIP and (x := _number(v)) is not None:
                out.setdefault(k, []).append((step, x))
    return out


def plot_losses(log_path: str | Path, png_path: str | Path, *, root: Path | None = None) -> Path | None:
    """Draw the training losses of ``log_path`` to ``png_path`` (log y when all positive).

    Written whole, through a temp file and a rename (never by opening ``png_path``, which in a
    shared run folder could be a link to any file); ``root``: as
    :func:`~restorekit.images.atomic_write_bytes`'s (the folders below it are not followed when links)."""
    series = read_series(log_path)
    if not any(series.values()):
        return None
    png = Path(png_path)
    try:
        import matplotlib  # type: ignore[import-not-found]

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt  # type: ignore[import-not-found]
    except ImportError:
        return _plot_pil(series, png, root)
    fig, ax = plt.subplots(figsize=(8, 4), dpi=100)
    for name, pts in sorted(series.items()):
        ax.plot([p[0] for p in pts], [p[1] for p in pts], label=name)
    if all(v > 0 for pts in series.values() for _, v in pts):
        ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    from ..images import atomic_write_bytes

    atomic_write_bytes(png, buf.getvalue(), root=root)
    return png


def _plot_pil(series: Series, png: Path, root: Path | None = None) -> Path:
    from PIL import Image, ImageDraw

    w, h, ml, mr, mt, mb = 800, 400, 70, 150, 20, 40
    img = Image.new("RGB", (w, h), "white")
    d = ImageDraw.Draw(img)
    steps = [s for pts in series.values() for s, _ in pts]
    vals = [v for pts in series.values() for _, v in pts]
    log = all(v > 0 for v in vals)
    f = (lambda v: math.log10(v)) if log else (lambda v: v)
    x0, x1 = min(steps), max(steps)
    y0, y1 = min(f(v) for v in vals), max(f(v) for v in vals)
    x1 = x1 if x1 > x0 else x0 + 1
    y1 = y1 if y1 > y0 else y0 + 1e-6

    def px(s: float, v: float) -> tuple[float, float]:
        return (ml + (s - x0) / (x1 - x0) * (w - ml - mr), h - mb - (f(v) - y0) / (y1 - y0) * (h - mt - mb))

    d.rectangle([ml, mt, w - mr, h - mb], outline=(0, 0, 0))
    for i in range(5):
        yv = y0 + (y1 - y0) * i / 4
        yy = h - mb - (yv - y0) / (y1 - y0) * (h - mt - mb)
        d.line([ml - 4, yy, ml, yy], fill=(0, 0, 0))
        d.text((4, yy - 6), f"{10 ** yv:.3g}" if log else f"{yv:.3g}", fill=(0, 0, 0))
    d.text((ml, h - mb + 6), str(x0), fill=(0, 0, 0))
    d.text((w - mr - 40, h - mb + 6), str(x1), fill=(0, 0, 0))
    d.text(((w - mr + ml) // 2 - 10, h - mb + 20), "step", fill=(0, 0, 0))
    for i, (name, pts) in enumerate(sorted(series.items())):
        c = COLORS[i % len(COLORS)]
        line = [px(s, v) for s, v in pts]
        if len(line) > 1:
            d.line(line, fill=c, width=2)
        else:
            x, y = line[0]
            d.ellipse([x - 2, y - 2, x + 2, y + 2], fill=c)
        d.line([w - mr + 10, mt + 10 + 16 * i, w - mr + 30, mt + 10 + 16 * i], fill=c, width=3)
        d.text((w - mr + 35, mt + 4 + 16 * i), name, fill=(0, 0, 0))
    from ..images import atomic_write_bytes

    buf = io.BytesIO()
    img.save(buf, "PNG")
    atomic_write_bytes(png, buf.getvalue(), root=root)
    return png
