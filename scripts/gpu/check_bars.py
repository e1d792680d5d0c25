"""Issue #18's "done when" bars, checked on ``finish.sh``'s results, and the model card's tables.

    python scripts/gpu/check_bars.py runs/prior128_finish > bars.md

Reads from that folder: ``realism.json`` (``restorekit realism --json``), the ``compare`` runs
``eval_x8``, ``eval_x4`` (bicubic, pix2pixhd, psp_sr on the validation split) and ``eval_pulse_x8``
(psp_pulse, pulse, psp_sr, bicubic on 47 of its faces), and ``val_ffhq.txt`` (which faces are
FFHQ's); where present, the same runs with 3 consistency steps for every learned method
(``eval_x8_cs3``, ``eval_x4_cs3``, ``eval_pulse_x8_cs3``). Prints Markdown: the bars (measured,
required, pass or fail), psp_pulse's identity against the others when all are back-projected
(not a bar: the issue's bar compares the methods' defaults), then one table per run in the model
card's layout. Per-source win shares are the same paired statistic as ``compare
--baseline`` (``restorekit.harness.paired``) over that source's faces of the one run. Exit status:
0 all bars pass, 1 some fail, 2 an input is missing.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from restorekit.harness.paired import PairedStat, image_values, paired_stat
from restorekit.harness.store import Record

DIST = "identity_dlib_dist"
LPIPS = "lpips_alex_v0.1"
LRC = "lr_consistency"
#: The card's columns: metric, header, format.
COLUMNS = [("psnr_y_crop", "PSNR-Y ↑", "{:.2f}"), ("ssim_y_crop", "SSIM-Y ↑", "{:.3f}"),
           (LPIPS, "LPIPS-alex ↓", "{:.3f}"), (DIST, "dlib distance ↓", "{:.3f}"), (LRC, "LR-consistency ↓", "{:.1e}")]


class Run:
    """One ``compare`` run's results.json: per-method records and aggregates."""

    def __init__(self, folder: Path) -> None:
        path = folder / "results.json"
        if not path.is_file():
            raise FileNotFoundError(f"{path}: missing (run finish.sh's evaluate stage)")
        doc = json.loads(path.read_text(encoding="utf-8"))
        self.folder = folder
        self.methods = [m["name"] for m in doc["methods"]]
        self.device = str(doc["methods"][0].get("device", "")) if doc["methods"] else ""
        self.aggregate = {m["name"]: m["aggregate"] for m in doc["methods"]}
        self.directions = {m["name"]: bool(m["higher_is_better"]) for m in doc["metrics"]}
        self.records: dict[str, list[Record]] = {}
        for row in doc["images"]:
            self.records.setdefault(row["method"], []).append(Record.from_json(row))

    def values(self, method: str, metric: str, keep: Callable[[str], bool] = lambda _: True) -> dict[str, float]:
        return {k: v for k, v in image_values(self.records.get(method, []), metric).items() if keep(k)}

    def paired(self, method: str, baseline: str, metric: str, keep: Callable[[str], bool] = lambda _: True) -> PairedStat:
        return paired_stat(self.values(method, metric, keep), self.values(baseline, metric, keep),
                           self.directions[metric])

    def mean(self, method: str, metric: str) -> float:
        return float(self.aggregate[method]["metrics"].get(metric, {}).get("mean", math.nan))

    def ms(self, method: str) -> float:
        return float(self.aggregate[method]["runtime_ms"]["mean"])

    def common_means(self, methods: Iterable[str], metric: str) -> dict[str, float]:
        """Each method's mean of ``metric`` over the images where all of ``methods`` have a finite value."""
        vals = {m: self.values(m, metric) for m in methods}
        common = set.intersection(*({k for k, v in d.items() if math.isfinite(v)} for d in vals.values()))
        return {m: math.fsum(d[k] for k in common) / len(common) if common else math.nan for m, d in vals.items()}


@dataclass
class Bar:
    what: str
    measured: str
    required: str
    ok: bool


def fmt(v: float, spec: str = "{:.3f}") -> str:
    return "–" if v is None or (isinstance(v, float) and math.isnan(v)) else spec.format(v)


def stems(list_file: Path) -> set[str]:
    return {Path(line.strip()).stem for line in list_file.read_text(encoding="utf-8").splitlines() if line.strip()}


def bars(w: Path, x8: Run, pulse: Run) -> list[Bar]:
    out: list[Bar] = []
    realism = json.loads((w / "realism.json").read_text(encoding="utf-8"))
    faces = realism["faces"]
    out.append(Bar(f"generator: samples with a face ({faces['detector']}, truncation {faces['truncation']})",
                   f"{faces['found']}/{faces['n']} = {faces['share']:.0%}", "≥ 80%", faces["share"] >= 0.8))
    d = x8.paired("psp_sr", "bicubic", DIST)
    out.append(Bar("×8 psp_sr vs bicubic: mean dlib distance (paired faces)",
                   f"{fmt(d.diff, '{:+.3f}')} [{fmt(d.ci_low, '{:+.3f}')}, {fmt(d.ci_high, '{:+.3f}')}], n {d.n}",
                   "< 0", d.diff < 0))
    out.append(Bar("×8 psp_sr closer to the person than bicubic", f"{fmt(d.win, '{:.0%}')} (p {fmt(d.p, '{:.2g}')})",
                   "≥ 50%", d.win >= 0.5))
    lp = x8.paired("psp_sr", "bicubic", LPIPS)
    out.append(Bar("×8 psp_sr vs bicubic: LPIPS-alex", f"{fmt(lp.diff, '{:+.3f}')} [{fmt(lp.ci_low, '{:+.3f}')}, "
                   f"{fmt(lp.ci_high, '{:+.3f}')}]", "≤ −0.200", lp.diff <= -0.2))
    ident = pulse.common_means(["psp_pulse", "psp_sr", "pulse"], DIST)
    out.append(Bar("×8 psp_pulse identity better than psp_sr's and PULSE's (mean dlib distance, common faces)",
                   f"{fmt(ident['psp_pulse'])} vs {fmt(ident['psp_sr'])} / {fmt(ident['pulse'])}", "lowest",
                   ident["psp_pulse"] < min(ident["psp_sr"], ident["pulse"])))
    lrc = pulse.common_means(["psp_pulse", "pulse"], LRC)
    ratio = lrc["psp_pulse"] / lrc["pulse"]
    out.append(Bar("×8 psp_pulse LR-consistency / PULSE's", f"{ratio:.2f}× ({fmt(lrc['psp_pulse'], '{:.1e}')} vs "
                   f"{fmt(lrc['pulse'], '{:.1e}')})", "≤ 1.5×", ratio <= 1.5))
    t = pulse.ms("psp_pulse") / pulse.ms("pulse")
    out.append(Bar("×8 psp_pulse time / PULSE's", f"{t:.0%} ({pulse.ms('psp_pulse') / 1000:.2f} s vs "
                   f"{pulse.ms('pulse') / 1000:.2f} s a face)", "≤ 50%", t <= 0.5))
    speed = pulse.ms("pulse") / pulse.ms("psp_sr")
    out.append(Bar("psp_sr speed / PULSE's, per face", f"{speed:.0f}× ({pulse.ms('psp_sr'):.0f} ms vs "
                   f"{pulse.ms('pulse') / 1000:.2f} s)", "≥ 100×", speed >= 100))
    return out


def even_identity(pulse_cs: Run) -> str:
    """psp_pulse's identity against psp_sr's and PULSE's when every one of them is back-projected."""
    ident = pulse_cs.common_means(["psp_pulse", "psp_sr", "pulse"], DIST)
    d = pulse_cs.paired("psp_pulse", "psp_sr", DIST)
    return (f"With 3 consistency steps for psp_sr and PULSE too (``eval_pulse_x8_cs3``), mean dlib distance: "
            f"psp_pulse {fmt(ident['psp_pulse'])}, psp_sr {fmt(ident['psp_sr'])}, PULSE {fmt(ident['pulse'])}; "
            f"psp_pulse − psp_sr {fmt(d.diff, '{:+.3f}')} [{fmt(d.ci_low, '{:+.3f}')}, {fmt(d.ci_high, '{:+.3f}')}], "
            f"closer on {fmt(d.win, '{:.0%}')} of {d.n} faces (p {fmt(d.p, '{:.2g}')}).")


def card_table(run: Run, title: str, ffhq: set[str]) -> list[str]:
    # As the card: the win column before LR-consistency.
    before, after = [c for c in COLUMNS if c[0] != LRC], [c for c in COLUMNS if c[0] == LRC]
    head = [title] + [h for _, h, _ in before] + ["win vs bicubic (all / FFHQ / AAF)"] + [h for _, h, _ in after] \
        + ["ms/face"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for m in run.methods:
        cells = [f"**{m}**" if m == "psp_sr" else m]
        cells += [fmt(run.mean(m, metric), spec) for metric, _, spec in before]
        if m == "bicubic" or "bicubic" not in run.methods:
            cells.append("–")
        else:
            wins = [run.paired(m, "bicubic", DIST, keep).win for keep in
                    (lambda _: True, lambda k: k in ffhq, lambda k: k not in ffhq)]
            cells.append(" / ".join(fmt(x, "{:.0%}") for x in wins))
        cells += [fmt(run.mean(m, metric), spec) for metric, _, spec in after]
        cells.append(fmt(run.ms(m), "{:.1f}" if run.ms(m) < 100 else "{:.0f}"))
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("folder", type=Path, help="finish.sh's work folder (W)")
    args = ap.parse_args(argv)
    w: Path = args.folder
    try:
        x8, x4, pulse = Run(w / "eval_x8"), Run(w / "eval_x4"), Run(w / "eval_pulse_x8")
        ffhq = stems(w / "val_ffhq.txt")
        checked = bars(w, x8, pulse)
    except (FileNotFoundError, KeyError) as exc:
        print(f"check_bars: {exc}", file=sys.stderr)
        return 2
    print("| bar | measured | required | |\n|---|---|---|---|")
    for b in checked:
        print(f"| {b.what} | {b.measured} | {b.required} | {'pass' if b.ok else '**FAIL**'} |")
    runs = [(x8, "×8 (16 → 128 px)"), (x4, "×4 (32 → 128 px)"), (pulse, "×8, 47 faces")]
    evened = [(w / f"{r.folder.name}_cs3", f"{title}, 3 consistency steps") for r, title in runs]
    runs += [(Run(folder), title) for folder, title in evened if (folder / "results.json").is_file()]
    pulse_cs = next((run for run, _ in runs if run.folder.name == "eval_pulse_x8_cs3"), None)
    if pulse_cs is not None:
        print("\n" + even_identity(pulse_cs))
    for run, title in runs:
        print()
        print("\n".join(card_table(run, title, ffhq)))
    print(f"\nms/face: mean per call, warm-up left out, batch 1, {x8.device}.")
    return 0 if all(b.ok for b in checked) else 1


if __name__ == "__main__":
    sys.exit(main())
