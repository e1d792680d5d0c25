"""Issue #18's "done when" bars, checked on ``finish.sh``'s results, and the model card's tables.

    python scripts/gpu/check_bars.py runs/prior128_finish > bars.md
    python scripts/gpu/check_bars.py runs/prior128_finish --partial   # a rehearsal's EVAL_LIMIT runs

Reads from that folder: ``realism.json`` (``restorekit realism --json``; ``finish.sh`` adds the
``generator_sha256`` of the file it measured), ``shipped-generator.json`` where present, the
``compare`` runs ``eval_x8``, ``eval_x4`` (bicubic, pix2pixhd, psp_sr on the validation split,
``val.txt``) and ``eval_pulse_x8`` (psp_pulse, pulse, psp_sr, bicubic on its 47 faces,
``val_pulse.txt``), and ``val_ffhq.txt`` (which faces are FFHQ's); where present, the same runs
with 3 consistency steps for every learned method (``eval_x8_cs3``, ``eval_x4_cs3``,
``eval_pulse_x8_cs3``). Prints Markdown: the bars (measured, required, pass or fail), psp_pulse's
identity against the others when all are back-projected (not a bar: the issue's bar compares the
methods' defaults), then one table per run in the model card's layout.

What the figures were measured on is checked first, since a bar passed on other data proves
nothing: the realism figures must be of the shipped ``stylegan2-faces128`` (its registry sha256,
directly or through ``shipped-generator.json``'s ``source_sha256``), with a face share of at least
32 samples at truncation 0.7; every run must be whole (no failed image, exit code 0, every method
the bars read, no null mean) and, unless ``--partial``, hold every face of its list. "Closer to the
person than bicubic" counts per face over every face where either output's identity can be
measured (:func:`closer`), not the paired win share, which counts ties as half and drops the faces
where the method found no face. Exit status: 0 all bars pass, 1 some fail, 2 an input is missing
or unusable, 3 all pass on a partial evaluation (``--partial``: never 0, which would read as done).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tomllib
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
#: The shipped generator's registry entry: the realism figures must be of its file.
GENERATOR_ENTRY = Path(__file__).resolve().parents[2] / "registry" / "weights" / "stylegan2-faces128.toml"
#: The issue's generator bar: a face in >= 80% of this many samples at this truncation.
DETECT_N, DETECT_TRUNCATION = 32, 0.7
#: The methods each bar run must hold (check_bars reads their values).
BAR_METHODS = {"eval_x8": ("psp_sr", "bicubic"), "eval_pulse_x8": ("psp_pulse", "pulse", "psp_sr")}
#: Each run's list of faces (finish.sh's): a run must hold all of them unless --partial.
LISTS = {"eval_x8": "val.txt", "eval_x4": "val.txt", "eval_pulse_x8": "val_pulse.txt"}


class InputError(Exception):
    """An input the bars cannot be judged on (exit 2): missing, incomplete or of other data."""


class Run:
    """One ``compare`` run's results.json: per-method records and aggregates."""

    def __init__(self, folder: Path) -> None:
        path = folder / "results.json"
        if not path.is_file():
            raise InputError(f"{path}: missing (run finish.sh's evaluate stage)")
        doc = json.loads(path.read_text(encoding="utf-8"))
        self.folder = folder
        self.exit_code = int(doc.get("exit_code", 0))
        self.methods = [m["name"] for m in doc["methods"]]
        self.device = str(doc["methods"][0].get("device", "")) if doc["methods"] else ""
        self.aggregate = {m["name"]: m["aggregate"] for m in doc["methods"]}
        self.directions = {m["name"]: bool(m["higher_is_better"]) for m in doc["metrics"]}
        self.records: dict[str, list[Record]] = {}
        for row in doc["images"]:
            self.records.setdefault(row["method"], []).append(Record.from_json(row))
        self.faces = len({r.image for recs in self.records.values() for r in recs})

    def check_whole(self, needed: Iterable[str]) -> None:
        """Refuse a run missing one of ``needed`` methods, with failed images, or that did not exit 0:
        its figures would leave faces out without saying so."""
        for m in needed:
            if m not in self.aggregate:
                raise InputError(f"{self.folder}: no method {m} in results.json (the bars read it): "
                                 f"run finish.sh's evaluate stage")
        for m in self.methods:
            failed = int(self.aggregate[m].get("failed") or 0)
            if failed:
                raise InputError(f"{self.folder}: {m} failed on {failed} of {self.aggregate[m].get('images')} "
                                 f"faces (results.json exit_code {self.exit_code}): fix it and run compare again")
        if self.exit_code != 0:
            raise InputError(f"{self.folder}: compare exited {self.exit_code} (results.json): run it again")

    def values(self, method: str, metric: str, keep: Callable[[str], bool] = lambda _: True) -> dict[str, float]:
        return {k: v for k, v in image_values(self.records.get(method, []), metric).items() if keep(k)}

    def paired(self, method: str, baseline: str, metric: str) -> PairedStat:
        return paired_stat(self.values(method, metric), self.values(baseline, metric), self.directions[metric])

    def mean(self, method: str, metric: str) -> float:
        return self._number(self.aggregate[method]["metrics"].get(metric, {}).get("mean"), f"{method}'s mean {metric}")

    def ms(self, method: str) -> float:
        return self._number(self.aggregate[method]["runtime_ms"]["mean"], f"{method}'s mean runtime")

    def warmup_only(self, method: str) -> bool:
        """Whether ``method``'s runtime is its warm-up call (the run timed no other)."""
        return bool(self.aggregate[method].get("runtime_is_warmup", False))

    def _number(self, value: float | None, what: str) -> float:
        if value is None:
            raise InputError(f"{self.folder}: {what} is null (no value on any face): run compare again")
        return float(value)

    def common_means(self, methods: Iterable[str], metric: str) -> dict[str, float]:
        """Each method's mean of ``metric`` over the images where all of ``methods`` have a finite value."""
        vals = {m: self.values(m, metric) for m in methods}
        common = set.intersection(*({k for k, v in d.items() if math.isfinite(v)} for d in vals.values()))
        return {m: math.fsum(d[k] for k in common) / len(common) if common else math.nan for m, d in vals.items()}


@dataclass
class Closer:
    """How often a method's output is closer to the person than the baseline's, face by face."""

    wins: int  # both measured and the method's distance lower (a tie is not a win)
    n: int  # faces where either output's identity was measured
    no_face: int  # the method's output has no value where the baseline's has one: counted, not closer
    baseline_only_missing: int  # the baseline's has none where the method's has one: counted, closer
    left_out: int  # neither has a value (e.g. no face found in the HR itself)

    @property
    def share(self) -> float:
        return self.wins / self.n if self.n else math.nan


def closer(run: Run, method: str, baseline: str, keep: Callable[[str], bool] = lambda _: True) -> Closer:
    """:class:`Closer` of ``method`` against ``baseline`` in dlib distance over the run's faces kept."""
    mine, base = run.values(method, DIST, keep), run.values(baseline, DIST, keep)
    wins = n = no_face = base_missing = left_out = 0
    for k in mine.keys() | base.keys():
        a, b = mine.get(k, math.nan), base.get(k, math.nan)
        if math.isnan(a) and math.isnan(b):
            left_out += 1
            continue
        n += 1
        no_face += math.isnan(a)
        base_missing += math.isnan(b) and not math.isnan(a)
        wins += math.isnan(b) or (not math.isnan(a) and a < b)
    return Closer(wins, n, no_face, base_missing, left_out)


def closer_text(c: Closer, method: str) -> str:
    """``c`` as the bar states it: the share and what was counted or left out."""
    notes = [f"{c.no_face} without a face in {method}'s output count as not closer"] if c.no_face else []
    if c.baseline_only_missing:
        notes.append(f"{c.baseline_only_missing} without one in bicubic's only count as closer")
    notes += [f"{c.left_out} left out: no value for either"]
    return f"{fmt(c.share, '{:.0%}')} ({c.wins} of {c.n} faces; {'; '.join(notes)})"


@dataclass
class Bar:
    what: str
    measured: str
    required: str
    ok: bool


def fmt(v: float | None, spec: str = "{:.3f}") -> str:
    return "–" if v is None or (isinstance(v, float) and math.isnan(v)) else spec.format(v)


def stems(list_file: Path) -> set[str]:
    return {Path(line.strip()).stem for line in list_file.read_text(encoding="utf-8").splitlines() if line.strip()}


def shipped_generator_sha256() -> str:
    entry = tomllib.loads(GENERATOR_ENTRY.read_text(encoding="utf-8"))
    return str(entry["files"][0]["sha256"])


def check_realism(w: Path) -> dict:
    """realism.json's face figures, refused unless they are of the shipped generator, on at least
    32 samples at truncation 0.7 (the issue's bar)."""
    path = w / "realism.json"
    if not path.is_file():
        raise InputError(f"{path}: missing (run finish.sh's realism stage)")
    realism = json.loads(path.read_text(encoding="utf-8"))
    faces = realism.get("faces")
    if not isinstance(faces, dict) or faces.get("share") is None or faces.get("n") is None:
        raise InputError(f"{path}: no face share (\"faces\": {json.dumps(faces)}; measured without a detector?): "
                         f"run finish.sh's realism stage")
    if int(faces["n"]) < DETECT_N or faces.get("truncation") is None \
            or abs(float(faces["truncation"]) - DETECT_TRUNCATION) > 1e-9:
        raise InputError(f"{path}: faces counted on {faces['n']} samples at truncation {faces.get('truncation')}, "
                         f"the bar needs {DETECT_N} at {DETECT_TRUNCATION}: run finish.sh's realism stage")
    measured, shipped = realism.get("generator_sha256"), shipped_generator_sha256()
    if measured is None:
        raise InputError(f"{path}: no generator_sha256 (which file it measured): run finish.sh's realism stage again")
    record = w / "shipped-generator.json"
    via = json.loads(record.read_text(encoding="utf-8")) if record.is_file() else {}
    if measured != shipped and not (via.get("source_sha256") == measured and via.get("sha256") == shipped):
        raise InputError(f"{path}: measured the generator with sha256 {measured}, not the shipped stylegan2-faces128 "
                         f"({shipped}, {GENERATOR_ENTRY.name}) nor the file shipped as it: run finish.sh's "
                         f"realism and ship-generator stages")
    return faces


def check_size(run: Run, list_file: Path, partial: bool) -> str:
    """The run against its list: "" when it holds every face; under ``partial`` (a rehearsal's
    EVAL_LIMIT) " (partial: N of M faces)", for each bar line; refused otherwise."""
    if not list_file.is_file():
        raise InputError(f"{list_file}: missing (finish.sh writes it)")
    total = len([line for line in list_file.read_text(encoding="utf-8").splitlines() if line.strip()])
    if partial and run.faces <= total:
        return f" (partial: {run.faces} of {total} faces)"
    if run.faces == total:
        return ""
    raise InputError(f"{run.folder}: {run.faces} faces, but {list_file.name} lists {total} (an EVAL_LIMIT rehearsal's "
                     f"run? run finish.sh's evaluate stage without it, or pass --partial)")


def bars(faces: dict, x8: Run, pulse: Run, partial_x8: str = "", partial_pulse: str = "") -> list[Bar]:
    out: list[Bar] = []
    out.append(Bar(f"generator: samples with a face ({faces['detector']}, truncation {faces['truncation']})",
                   f"{faces['found']}/{faces['n']} = {faces['share']:.0%}", "≥ 80%", faces["share"] >= 0.8))
    d = x8.paired("psp_sr", "bicubic", DIST)
    out.append(Bar("×8 psp_sr vs bicubic: mean dlib distance (paired faces)",
                   f"{fmt(d.diff, '{:+.3f}')} [{fmt(d.ci_low, '{:+.3f}')}, {fmt(d.ci_high, '{:+.3f}')}], n {d.n}"
                   + partial_x8, "< 0", d.diff < 0))
    c = closer(x8, "psp_sr", "bicubic")
    out.append(Bar("×8 psp_sr closer to the person than bicubic", closer_text(c, "psp_sr") + partial_x8,
                   "≥ 50%", c.share >= 0.5))
    lp = x8.paired("psp_sr", "bicubic", LPIPS)
    out.append(Bar("×8 psp_sr vs bicubic: LPIPS-alex", f"{fmt(lp.diff, '{:+.3f}')} [{fmt(lp.ci_low, '{:+.3f}')}, "
                   f"{fmt(lp.ci_high, '{:+.3f}')}], n {lp.n}" + partial_x8, "≤ −0.200", lp.diff <= -0.2))
    ident = pulse.common_means(["psp_pulse", "psp_sr", "pulse"], DIST)
    out.append(Bar("×8 psp_pulse identity better than psp_sr's and PULSE's (mean dlib distance, common faces)",
                   f"{fmt(ident['psp_pulse'])} vs {fmt(ident['psp_sr'])} / {fmt(ident['pulse'])}" + partial_pulse,
                   "lowest", ident["psp_pulse"] < min(ident["psp_sr"], ident["pulse"])))
    lrc = pulse.common_means(["psp_pulse", "pulse"], LRC)
    ratio = lrc["psp_pulse"] / lrc["pulse"] if lrc["pulse"] else math.nan
    out.append(Bar("×8 psp_pulse LR-consistency / PULSE's", f"{fmt(ratio, '{:.2f}×')} "
                   f"({fmt(lrc['psp_pulse'], '{:.1e}')} vs {fmt(lrc['pulse'], '{:.1e}')})" + partial_pulse,
                   "≤ 1.5×", ratio <= 1.5))
    warm = "; the warm-up call only" if any(pulse.warmup_only(m) for m in ("psp_pulse", "pulse", "psp_sr")) else ""
    t = pulse.ms("psp_pulse") / pulse.ms("pulse")
    out.append(Bar("×8 psp_pulse time / PULSE's", f"{t:.0%} ({pulse.ms('psp_pulse') / 1000:.2f} s vs "
                   f"{pulse.ms('pulse') / 1000:.2f} s a face{warm})" + partial_pulse, "≤ 50%", t <= 0.5))
    speed = pulse.ms("pulse") / pulse.ms("psp_sr")
    out.append(Bar("psp_sr speed / PULSE's, per face", f"{speed:.0f}× ({pulse.ms('psp_sr'):.0f} ms vs "
                   f"{pulse.ms('pulse') / 1000:.2f} s{warm})" + partial_pulse, "≥ 100×", speed >= 100))
    return out


def even_identity(pulse_cs: Run) -> str:
    """psp_pulse's identity against psp_sr's and PULSE's when every one of them is back-projected."""
    ident = pulse_cs.common_means(["psp_pulse", "psp_sr", "pulse"], DIST)
    d = pulse_cs.paired("psp_pulse", "psp_sr", DIST)
    c = closer(pulse_cs, "psp_pulse", "psp_sr")
    return (f"With 3 consistency steps for psp_sr and PULSE too (``eval_pulse_x8_cs3``), mean dlib distance: "
            f"psp_pulse {fmt(ident['psp_pulse'])}, psp_sr {fmt(ident['psp_sr'])}, PULSE {fmt(ident['pulse'])}; "
            f"psp_pulse − psp_sr {fmt(d.diff, '{:+.3f}')} [{fmt(d.ci_low, '{:+.3f}')}, {fmt(d.ci_high, '{:+.3f}')}], "
            f"closer on {fmt(c.share, '{:.0%}')} of {c.n} faces (p {fmt(d.p, '{:.2g}')}).")


def card_table(run: Run, title: str, ffhq: set[str]) -> list[str]:
    """The run as the card's table; the win column is :func:`closer`'s share (all / FFHQ / AAF), and a
    runtime that is the warm-up call alone is marked so."""
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
            wins = [closer(run, m, "bicubic", keep).share for keep in
                    (lambda _: True, lambda k: k in ffhq, lambda k: k not in ffhq)]
            cells.append(" / ".join(fmt(x, "{:.0%}") for x in wins))
        cells += [fmt(run.mean(m, metric), spec) for metric, _, spec in after]
        ms = run.ms(m)
        cells.append(fmt(ms, "{:.1f}" if ms < 100 else "{:.0f}") + (" (warm-up)" if run.warmup_only(m) else ""))
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def report(w: Path, partial: bool) -> tuple[list[str], list[Bar]]:
    """Every input checked, then the bars and the tables as Markdown lines (nothing printed before
    all is read: a refused input leaves no half-written bars.md)."""
    x8, x4, pulse = Run(w / "eval_x8"), Run(w / "eval_x4"), Run(w / "eval_pulse_x8")
    faces = check_realism(w)
    evened = [Run(w / f"{name}_cs3") for name in LISTS if (w / f"{name}_cs3" / "results.json").is_file()]
    sizes = {}
    for run in [x8, x4, pulse, *evened]:
        run.check_whole(BAR_METHODS.get(run.folder.name, ()))
        sizes[run] = check_size(run, w / LISTS[run.folder.name.removesuffix("_cs3")], partial)
    ffhq = stems(w / "val_ffhq.txt")
    checked = bars(faces, x8, pulse, sizes[x8], sizes[pulse])
    lines = ["| bar | measured | required | |", "|---|---|---|---|"]
    lines += [f"| {b.what} | {b.measured} | {b.required} | {'pass' if b.ok else '**FAIL**'} |" for b in checked]
    titles = {"eval_x8": "×8 (16 → 128 px)", "eval_x4": "×4 (32 → 128 px)", "eval_pulse_x8": "×8"}
    pulse_cs = next((run for run in evened if run.folder.name == "eval_pulse_x8_cs3"), None)
    if pulse_cs is not None:
        lines += ["", even_identity(pulse_cs)]
    for run in [x8, x4, pulse, *evened]:
        title = f"{titles[run.folder.name.removesuffix('_cs3')]}, {run.faces} face{'s' * (run.faces != 1)}{sizes[run]}"
        lines += ["", *card_table(run, title + (", 3 consistency steps" if run in evened else ""), ffhq)]
    warm = any(run.warmup_only(m) for run in [x8, x4, pulse, *evened] for m in run.methods)
    marked = " (where marked, the only call: the warm-up)" if warm else ""
    lines += ["", f"ms/face: mean per call, warm-up left out{marked}, batch 1, {x8.device}."]
    return lines, checked


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("folder", type=Path, help="finish.sh's work folder (W)")
    ap.add_argument("--partial", action="store_true",
                    help="accept runs of the first faces of each list (EVAL_LIMIT); exit 3, not 0, when all pass")
    args = ap.parse_args(argv)
    w: Path = args.folder
    try:
        lines, checked = report(w, args.partial)
    except InputError as exc:
        print(f"check_bars: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # an unreadable input (bad JSON, a field missing or of another type): one line
        print(f"check_bars: {w}: cannot read the inputs ({type(exc).__name__}: {exc})", file=sys.stderr)
        return 2
    print("\n".join(lines))
    if not all(b.ok for b in checked):
        return 1
    return 3 if args.partial else 0


if __name__ == "__main__":
    sys.exit(main())
