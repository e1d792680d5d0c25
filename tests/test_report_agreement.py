"""compare's outputs say the same thing: the terminal table, report.html, summary.csv and results.json
agree with each other and with a recomputation from the per-image rows of results.csv; and text that
comes from the run (paths, image names) is shown as it is."""

from __future__ import annotations

import csv
import io
import json
import math
import re
from html.parser import HTMLParser
from pathlib import Path
from types import SimpleNamespace

import pytest
from PIL import Image
from rich.console import Console

from restorekit.harness.report_console import print_table
from restorekit.harness.report_summary import summarize_result
from restorekit.harness.report_text import notes, table_rows
from restorekit.harness.store import Record
from restorekit.testing.data import smooth_image

# A method that is stochastic only for n_samples > 1 (psp_sr's kind: compare runs it once per
# image), and a stochastic one whose seed 1 fails on one image (that image is left out of its mean).
AGREE_PLUGIN = '''
from typing import ClassVar
import torch
from restorekit.hookspecs import hookimpl
from restorekit.interfaces import Method, MethodInfo


class OneSample(Method):
    info: ClassVar[MethodInfo] = MethodInfo(name="onesample3p", summary="nearest; samples beyond the first vary",
                                            deterministic=False, single_sample_deterministic=True)

    def restore(self, lr, scale, *, seed=None, n_samples=1):
        return torch.nn.functional.interpolate(lr, scale_factor=scale, mode="nearest")


class Flaky(Method):
    info: ClassVar[MethodInfo] = MethodInfo(name="flaky3p", summary="nearest plus seeded noise; seed 1 fails "
                                            "on 12-px-wide inputs", deterministic=False)

    def restore(self, lr, scale, *, seed=None, n_samples=1):
        if seed == 1 and lr.shape[-1] == 12:
            raise RuntimeError("cannot handle a 12-px-wide input")
        g = torch.Generator().manual_seed(seed)
        up = torch.nn.functional.interpolate(lr, scale_factor=scale, mode="nearest")
        return (up + 0.05 * torch.randn(up.shape, generator=g)).clamp(0, 1)


@hookimpl
def register_methods(register):
    register(OneSample)
    register(Flaky)
'''


class _Tables(HTMLParser):
    """The cells of report.html's ``table.res`` tables, a best cell ending in ``*`` as on the terminal."""

    def __init__(self) -> None:
        super().__init__()
        self.tables: list[list[list[str]]] = []
        self.captions: list[str] = []
        self._cell: list[str] | None = None
        self._best = False
        self._in = False
        self._grid = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "table":
            self._in, self._grid = a.get("class") == "res", a.get("class") == "grid"
            if self._in:
                self.tables.append([])
        elif self._in and tag == "tr":
            self.tables[-1].append([])
        elif self._in and tag in ("td", "th"):
            self._cell, self._best = [], "best" in (a.get("class") or "")
        elif self._grid and tag == "img":
            self._cell = []

    def handle_endtag(self, tag: str) -> None:
        if tag == "table":
            self._in = self._grid = False
        elif self._in and tag in ("td", "th") and self._cell is not None:
            self.tables[-1][-1].append("".join(self._cell) + ("*" if self._best else ""))
            self._cell = None
        elif self._grid and tag == "td" and self._cell is not None:
            self.captions.append("".join(self._cell))
            self._cell = None

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)


def _num(cell: str) -> float:
    return math.nan if cell == "" else float(cell)


def test_every_output_agrees_with_the_per_image_rows(rk_cli, plugin_site, tmp_path: Path):
    plugin_site("thirdparty-agree", "thirdparty_agree", AGREE_PLUGIN)
    data = tmp_path / "hr"
    data.mkdir()
    for i, (h, w) in enumerate([(16, 16), (16, 24), (20, 16)]):
        Image.fromarray(smooth_image(h, w, i)).save(data / f"im{i}.png")
    out = tmp_path / "out"
    r = rk_cli("compare", "--methods", "bicubic,onesample3p,flaky3p", "--scale", "2", "--data", data, "--out", out,
               "--metrics", "psnr_rgb,lr_consistency", "--seeds", "0,1", "--device", "cpu")
    assert r.exit_code == 1, r.output  # flaky3p's seed 1 on the 24-px-wide image
    doc = json.loads((out / "results.json").read_text())
    rows = list(csv.DictReader((out / "results.csv").open(encoding="utf-8", newline="")))
    summary = {row["method"]: row for row in csv.DictReader((out / "summary.csv").open(encoding="utf-8", newline=""))}
    methods = {m["name"]: m for m in doc["methods"]}

    # Whether a method ran once per image: one answer in summary.csv, results.json and its aggregate.
    for name, det in (("bicubic", True), ("onesample3p", True), ("flaky3p", False)):
        assert methods[name]["deterministic"] is det  # was False for onesample3p (its catalogue flag)
        assert methods[name]["aggregate"]["deterministic"] is det
        assert summary[name]["deterministic"] == str(int(det))
    assert sum(row["method"] == "onesample3p" for row in rows) == 3  # once per image, seed ignored

    # Recomputed from results.csv: per seed the mean over the images every seed has, then mean ± std.
    fmts = {"psnr_rgb": ".2f", "lr_consistency": ".3e"}
    expected: dict[str, list[str]] = {}
    for name in ("bicubic", "onesample3p", "flaky3p"):
        mine = [row for row in rows if row["method"] == name and row["status"] == "ok"]
        cells = []
        for metric, f in fmts.items():
            by_seed: dict[str, dict[str, float]] = {}
            for row in mine:
                by_seed.setdefault(row["seed"], {})[row["image"]] = _num(row[metric])
            common = set.intersection(*(set(v) for v in by_seed.values()))
            means = [sum(v[i] for i in common) / len(common) for v in by_seed.values()]
            mean = sum(means) / len(means)
            left_out = len(set.union(*(set(v) for v in by_seed.values())) - common)
            agg = methods[name]["aggregate"]["metrics"][metric]
            assert agg["mean"] == pytest.approx(mean, rel=1e-12)
            assert float(summary[name][f"{metric}_mean"]) == pytest.approx(mean, rel=1e-12)
            assert int(summary[name][f"{metric}_n"]) == agg["n"] == len(common) * len(by_seed)
            # The images a stochastic mean leaves out: in summary.csv as in results.json (was missing).
            assert int(summary[name][f"{metric}_seed_left_out"]) == agg["seed_left_out"] == left_out
            text = format(mean, f)
            if len(means) > 1:
                std = math.sqrt(sum((m - mean) ** 2 for m in means) / len(means))
                text += f" ± {format(std, f)}"
            cells.append(text)
        expected[name] = cells
    assert [int(summary[n]["psnr_rgb_seed_left_out"]) for n in expected] == [0, 0, 1]

    # The same cells, and the same best marks, on the terminal and in report.html.
    page = _Tables()
    page.feed((out / "report.html").read_text(encoding="utf-8"))
    html_rows = {row[0]: row for row in page.tables[0][1:]}
    console_rows = {}
    for line in r.stdout.splitlines():
        parts = [c.strip() for c in line.strip("│ ").split("│")]
        if line.startswith("│") and parts[0].split(" ")[0] in expected:
            console_rows[parts[0].split(" ")[0]] = parts
    for name, cells in expected.items():
        for i, metric in enumerate(fmts):
            best = name in doc["best"][metric]
            want = cells[i] + ("*" if best else "")
            assert html_rows[next(k for k in html_rows if k.startswith(name))][1 + i] == want
            assert console_rows[name][1 + i] == want
    # A stochastic method's crop caption is its first seed's value, and says so.
    flaky_im0 = next(row for row in rows if row["method"] == "flaky3p" and row["image"] == "im0" and row["seed"] == "0")
    assert f"psnr_rgb {format(float(flaky_im0['psnr_rgb']), '.2f')} (seed 0)" in page.captions
    bicubic_im0 = next(row for row in rows if row["method"] == "bicubic" and row["image"] == "im0")
    assert f"psnr_rgb {format(float(bicubic_im0['psnr_rgb']), '.2f')}" in page.captions


# --- text from the run, on the terminal ----------------------------------------------------------

def _metric(name: str) -> SimpleNamespace:
    return SimpleNamespace(name=name, higher_is_better=True, fmt=".2f", status="ok", nan_label="NaN values",
                           reason=None)


def _summary(*, source: str = "degradation:bicubic:2", unmatched: list[str] | None = None,
             devices: dict[str, str] | None = None, plan_device: str = "cpu"):
    """A Summary of two deterministic methods on two images, built without running anything."""
    devices = devices or {"a": "cpu (x86_64, 2 threads)", "b": "cpu (x86_64, 2 threads)"}
    records = [Record(m, img, None, "h", "i", "ok", ms=1.0 + k, metrics={"x": 20.0 + k + j})
               for k, m in enumerate(devices) for j, img in enumerate(("p", "q"))]
    plans = [SimpleNamespace(name=n, deterministic=True, seeds=[None], device=d, precision="float32",
                             backend="torch") for n, d in devices.items()]
    plan = SimpleNamespace(metrics=[_metric("x")], methods=plans, device=SimpleNamespace(type=plan_device),
                           degradation="bicubic:2", config=SimpleNamespace(baseline=None, scale=2))
    res = SimpleNamespace(plan=plan, records=records,
                          inputs=SimpleNamespace(pairs=["p", "q"], failures=[], source=source),
                          unmatched=unmatched or [])
    return summarize_result(res)  # type: ignore[arg-type]


def _printed(sm) -> str:
    buf = io.StringIO()
    print_table(sm, Console(file=buf, width=200, color_system=None, force_terminal=False))
    return buf.getvalue()


def test_the_title_shows_the_lr_folder_as_it_is_named():
    # A folder name with brackets was read as rich markup: "[v2]" vanished from the title, and a
    # "[/]" stopped the report with a MarkupError after every method had run.
    text = _printed(_summary(source="lr-dir:/data/faces [v2]/x[/]y"))
    assert "lr-dir:/data/faces [v2]/x[/]y" in " ".join(text.split())  # (the title wraps over the table)
    assert "a*" not in text and "b " in text  # the table itself is still there


def test_notes_cannot_forge_lines_or_send_escape_sequences():
    evil = "evil\x1b[2J\nnote: all inputs verified"
    text = _printed(_summary(unmatched=[evil]))
    assert "\x1b" not in text
    assert not any(line.startswith("note: all inputs verified") for line in text.splitlines())
    assert "evil\\x1b[2J\\nnote: all inputs verified" in text
    # The notes themselves keep the name as it is (report.html escapes it; results.json keeps it).
    assert any(evil in line for line in notes(_summary(unmatched=[evil])))


def test_runtime_header_names_a_device_only_when_every_method_ran_there():
    sm = _summary()
    assert table_rows(sm)[0][-3] == "ms/img (cpu) ↓"
    # An onnxruntime graph that fell back to the CPU beside a method on CUDA: not "ms/img (cuda)".
    sm = _summary(devices={"a": "cuda:0 (NVIDIA H100 80GB HBM3)", "b": "cpu (x86_64, 16 threads)"},
                  plan_device="cuda")
    assert table_rows(sm)[0][-3] == "ms/img ↓"
    first = notes(sm)[0]
    assert "device cpu (x86_64, 16 threads): b; cuda:0 (NVIDIA H100 80GB HBM3): a;" in first
    # Every method on the GPU (a torchrun job's description included): the header says so.
    sm = _summary(devices={"a": "cuda:0 (NVIDIA H100 80GB HBM3)", "b": "cuda (NVIDIA H100 80GB HBM3) × 8 processes"},
                  plan_device="cuda")
    assert table_rows(sm)[0][-3] == "ms/img (cuda) ↓"
    assert re.search(r"device cuda \(NVIDIA H100 80GB HBM3\) × 8 processes; cuda:0", notes(sm)[0])
