"""`compare --baseline`: paired statistics (harness.paired) and how compare reports them."""

from __future__ import annotations

import csv
import json
import math
import random
import re
from decimal import ROUND_DOWN, Decimal
from fractions import Fraction
from pathlib import Path

import pytest
from PIL import Image

from restorekit.harness import paired
from restorekit.harness.paired import (bootstrap_ci, compare_to_baseline, image_values, paired_stat,
                                       sign_test_p)
from restorekit.harness.store import Record
from restorekit.testing.data import smooth_image

# A deterministic method a little worse than bicubic on some images, a stochastic one whose
# noise grows with the seed, and a metric that has no value on dark images (as an identity
# metric has none where no face is found).
PAIRED_PLUGIN = '''
from typing import ClassVar
import torch
from restorekit.hookspecs import hookimpl
from restorekit.interfaces import Method, MethodInfo, Metric


class Blocky(Method):
    info: ClassVar[MethodInfo] = MethodInfo(name="blocky3p", summary="nearest-neighbour; fails on 48-px inputs")

    def restore(self, lr, scale, *, seed=None, n_samples=1):
        if lr.shape[-1] * scale == 48:
            raise RuntimeError("cannot handle a 48-px-wide output")
        return torch.nn.functional.interpolate(lr, scale_factor=scale, mode="nearest")


class Broken(Method):
    info: ClassVar[MethodInfo] = MethodInfo(name="broken3p", summary="fails on every image")

    def restore(self, lr, scale, *, seed=None, n_samples=1):
        raise RuntimeError("no weights")


class Jitter(Method):
    info: ClassVar[MethodInfo] = MethodInfo(name="jitter3p", summary="nearest plus seeded noise",
                                            deterministic=False)

    def restore(self, lr, scale, *, seed=None, n_samples=1):
        g = torch.Generator().manual_seed(0 if seed is None else seed)
        up = torch.nn.functional.interpolate(lr, scale_factor=scale, mode="nearest")
        return (up + 0.03 * (seed + 1) * torch.randn(up.shape, generator=g)).clamp(0, 1)


class Bright(Metric):
    name: ClassVar[str] = "bright_3p"
    higher_is_better: ClassVar[bool] = True
    nan_label: ClassVar[str] = "too dark"

    def __call__(self, pred, target, *, lr, scale):
        t = target.flatten(1).mean(1).double()
        return torch.where(t < 0.3, torch.full_like(t, float("nan")), pred.flatten(1).mean(1).double())


@hookimpl
def register_methods(register):
    register(Blocky)
    register(Broken)
    register(Jitter)


@hookimpl
def register_metrics(register):
    register(Bright)
'''


def rec(method: str, image: str, seed: int | None, value: float, status: str = "ok",
        error: str | None = None) -> Record:
    return Record(method, image, seed, "h", "i", status, metrics={"x": value} if status == "ok" else None,
                  metric_errors={"x": error} if error else None)


def exact_sign_p(k: int, n: int) -> float:
    """Independent reference: 2·P[X ≤ k], X ~ Binomial(n, ½), in fractions, capped at 1. The terms
    run down from ``math.comb(n, k)`` by C(n, i−1) = C(n, i)·i/(n−i+1), exactly (the code under
    test sums upwards from C(n, 0)); a ``math.comb`` per term took seconds at n = 10 000."""
    term = total = math.comb(n, k)
    for i in range(k, 0, -1):
        term = term * i // (n - i + 1)
        total += term
    return float(min(Fraction(1), 2 * Fraction(total, 2**n)))


def signed(v: float, f: str) -> str:
    """A difference as the paired table writes it: with its sign, in the metric's format."""
    return format(v, "+" + f)


def row_cells(metric: str, higher_is_better: bool, st: dict, f: str) -> list[str]:
    """The "vs BASELINE" table's cells for one method and metric, from the JSON, independently of reports.py."""
    exact = Decimal(repr(st["p"]))  # two significant digits, rounded down (0.0498 reads 0.049, never 0.05)
    p = format(float(exact.quantize(Decimal(1).scaleb(exact.adjusted() - 1), rounding=ROUND_DOWN)), ".2g")
    return [f"{metric} {'↑' if higher_is_better else '↓'}", str(st["n"]), f"{100 * st['win']:.1f}%", p,
            signed(st["diff"], f), f"[{signed(st['ci_low'], f)}, {signed(st['ci_high'], f)}]"]


def html_row(metric: str, higher_is_better: bool, st: dict, f: str) -> str:
    c = row_cells(metric, higher_is_better, st, f)
    return (f"<tr><td class='sub'>{c[0]}</td>" + "".join(f"<td>{x}</td>" for x in c[1:5])
            + f"<td class='l'>{c[5]}</td></tr>")


ANSI = re.compile(r"\x1b\[[0-9;]*m")


def table_groups(stdout: str, title: str) -> list[list[list[str]]]:
    """The rich table under ``title``: its header, then each row group (rules apart), rows as stripped cells."""
    text = ANSI.sub("", stdout)
    lines = text[text.index(title):].splitlines()
    groups: list[list[list[str]]] = [[]]
    for line in lines[2:]:
        if line.startswith(("┡", "├")):
            groups.append([])
        elif line.startswith(("┃", "│")):
            groups[-1].append([c.strip() for c in line.strip().strip(line[0]).split(line[0])])
        elif line.startswith("└"):
            break
    return groups


# --------------------------------------------------------------------------------------------
# The statistics


def test_win_share_counts_ties_half_and_follows_the_direction():
    a = {"i1": 3.0, "i2": 2.0, "i3": 1.0, "i4": 5.0, "i5": 7.0}
    b = {"i1": 1.0, "i2": 2.0, "i3": 4.0, "i4": 5.0, "i5": 6.0}
    up = paired_stat(a, b, higher_is_better=True)
    # Better on i1 and i5, worse on i3, ties on i2 and i4: (2 + 0.5·2) / 5.
    assert (up.n, up.better, up.ties, up.worse, up.left_out) == (5, 2, 2, 1, 0)
    assert up.win == pytest.approx(0.6, abs=1e-15)
    assert up.diff == pytest.approx((2 + 0 - 3 + 0 + 1) / 5, abs=1e-15)
    assert up.p == 1.0  # 2 against 1: 2·P[X ≤ 1] = 2·4/8 ≥ 1
    down = paired_stat(a, b, higher_is_better=False)
    assert (down.better, down.worse) == (1, 2) and down.win == pytest.approx(0.4, abs=1e-15)
    assert down.diff == up.diff  # the difference keeps the metric's sign; the direction only says who wins


@pytest.mark.parametrize("better,worse,p", [
    (9, 1, 0.021484375), (1, 9, 0.021484375), (10, 0, 0.001953125), (0, 0, 1.0), (5, 5, 1.0),
    (6, 4, 0.75390625), (15, 5, 0.041389465332031250),
])
def test_sign_test_known_values(better, worse, p):
    assert sign_test_p(better, worse) == p
    assert sign_test_p(better, worse) == exact_sign_p(min(better, worse), better + worse)


def test_sign_test_in_log_space_agrees_with_the_exact_sum(monkeypatch):
    cases = [(120, 80), (700, 600), (5020, 4980), (2990, 3010), (300, 0)]
    exact = [sign_test_p(b, w) for b, w in cases]
    assert exact == [exact_sign_p(min(b, w), b + w) for b, w in cases]
    monkeypatch.setattr(paired, "EXACT_SIGN_TEST_MAX_N", 0)  # every case through the log-space sum
    for (b, w), p in zip(cases, exact):
        assert sign_test_p(b, w) == pytest.approx(p, rel=1e-9, abs=1e-300)
    # Far above the exact limit: finite, a probability, and symmetric.
    big = sign_test_p(50_500, 49_500)
    assert 0 < big < 0.01 and big == sign_test_p(49_500, 50_500)
    assert sign_test_p(50_000, 50_000) == 1.0


def test_all_ties_give_p_one_and_half_wins():
    s = paired_stat({"a": 1.0, "b": 2.0}, {"a": 1.0, "b": 2.0}, higher_is_better=True)
    assert (s.n, s.ties, s.win, s.diff, s.p, s.ci_low, s.ci_high) == (2, 2, 0.5, 0.0, 1.0, 0.0, 0.0)


def test_bootstrap_ci_contains_the_mean_is_reproducible_and_shrinks_with_n():
    rng = random.Random(3)
    small = [rng.gauss(0.5, 2.0) for _ in range(20)]
    large = [rng.gauss(0.5, 2.0) for _ in range(2000)]
    lo, hi = bootstrap_ci(small)
    assert lo < sum(small) / len(small) < hi
    assert bootstrap_ci(small) == (lo, hi)  # fixed seed: the same interval every time
    lo2, hi2 = bootstrap_ci(large)
    assert lo2 < sum(large) / len(large) < hi2
    assert (hi2 - lo2) < (hi - lo) / 5  # ~1/sqrt(n): 10× narrower for 100× the images
    assert bootstrap_ci([1.5]) == (1.5, 1.5)
    assert all(math.isnan(v) for v in bootstrap_ci([]))
    # A 95% interval of the mean of N(0.5, 2²) samples is about ±1.96·2/√n around it.
    assert (hi2 - lo2) == pytest.approx(2 * 1.96 * 2.0 / math.sqrt(2000), rel=0.15)


def test_stochastic_method_is_averaged_over_seeds_before_pairing():
    recs = [
        # jitter: per image a: (1 + 5)/2 = 3, b: (4 + 0)/2 = 2, c: (2 + 2)/2 = 2.
        rec("jitter", "a", 0, 1.0), rec("jitter", "a", 1, 5.0),
        rec("jitter", "b", 0, 4.0), rec("jitter", "b", 1, 0.0),
        rec("jitter", "c", 0, 2.0), rec("jitter", "c", 1, 2.0),
        rec("base", "a", None, 2.5), rec("base", "b", None, 3.0), rec("base", "c", None, 2.0),
    ]
    assert image_values([r for r in recs if r.method == "jitter"], "x") == {"a": 3.0, "b": 2.0, "c": 2.0}
    cmp = compare_to_baseline(recs, "base", ["jitter", "base"], {"x": True})
    assert list(cmp.stats) == ["jitter"]
    s = cmp.stats["jitter"]["x"]
    # Per seed, seed 0 would lose on a and seed 1 on b; the means win on a, lose on b, tie on c.
    assert (s.n, s.better, s.worse, s.ties, s.win) == (3, 1, 1, 1, 0.5)
    assert s.diff == pytest.approx((0.5 - 1.0 + 0.0) / 3, abs=1e-15)


def test_images_without_a_value_on_either_side_are_left_out_and_counted():
    recs = [
        rec("m", "a", None, 1.0), rec("m", "b", None, 2.0), rec("m", "c", None, math.nan),
        rec("m", "d", None, 0.0, status="failed"), rec("m", "e", None, math.nan, error="ValueError: boom"),
        rec("m", "f", None, 4.0), rec("m", "g", None, math.inf),
        rec("base", "a", None, 0.0), rec("base", "b", None, math.nan), rec("base", "c", None, 1.0),
        rec("base", "d", None, 1.0), rec("base", "e", None, 1.0), rec("base", "f", None, 5.0),
        rec("base", "g", None, 1.0),
    ]
    s = compare_to_baseline(recs, "base", ["m"], {"x": False}).stats["m"]["x"]
    # Paired: a (worse: higher where lower is better), f (better) and g (+inf: worse, though it cannot
    # be differenced). Left out: b (baseline NaN), c (NaN), d (failed), e (metric error).
    assert (s.n, s.left_out, s.better, s.worse, s.win) == (3, 4, 1, 2, pytest.approx(1 / 3))
    assert s.n_diff == 2 and s.diff == pytest.approx((1.0 - 1.0) / 2, abs=1e-15)
    assert s.p == sign_test_p(1, 2)
    # A seed without a value is left out of that image's mean; a ±inf seed makes the mean ±inf, both NaN.
    vals = image_values([rec("m", "a", 0, math.nan), rec("m", "a", 1, 4.0),
                         rec("m", "b", 0, 1.0), rec("m", "b", 1, math.inf),
                         rec("m", "c", 0, math.inf), rec("m", "c", 1, -math.inf)], "x")
    assert vals["a"] == 4.0 and vals["b"] == math.inf and math.isnan(vals["c"])
    # Nothing paired: every statistic NaN, the images still counted.
    none = paired_stat({"a": math.nan}, {"a": 1.0, "b": 2.0}, higher_is_better=True)
    assert (none.n, none.left_out) == (0, 2) and all(math.isnan(v) for v in (none.win, none.diff, none.p))


def test_a_perfect_output_counts_in_the_win_share_but_not_in_the_difference():
    """PSNR is +inf where an output equals the HR: it beats any finite value and ties with itself,
    so the sign statistics count it; the mean difference and its interval cannot, and one finite
    difference has no interval."""
    inf = math.inf
    s = paired_stat({"a": inf, "b": inf, "c": 20.0}, {"a": 30.0, "b": 30.0, "c": 25.0}, higher_is_better=True)
    assert (s.n, s.better, s.worse, s.ties, s.left_out) == (3, 2, 1, 0, 0)
    assert s.win == pytest.approx(2 / 3) and s.p == sign_test_p(2, 1)
    assert s.n_diff == 1 and s.diff == -5.0 and math.isnan(s.ci_low) and math.isnan(s.ci_high)
    both = paired_stat({"a": inf, "b": 21.0, "c": 22.0}, {"a": inf, "b": 20.0, "c": 20.0}, higher_is_better=True)
    assert (both.n, both.better, both.ties, both.n_diff) == (3, 2, 1, 2) and both.diff == pytest.approx(1.5)
    assert both.ci_low <= 1.5 <= both.ci_high and both.as_dict()["n_diff"] == 2
    lower = paired_stat({"a": 0.1}, {"a": 0.3}, higher_is_better=False)  # lower is better: a win
    assert (lower.better, lower.n_diff) == (1, 1) and math.isnan(lower.ci_low)


# --------------------------------------------------------------------------------------------
# compare --baseline


@pytest.fixture
def data(tmp_path: Path) -> Path:
    """Six 64×64 images, two of them dark (bright_3p has no value there), and one 48 px wide."""
    d = tmp_path / "hr"
    d.mkdir()
    for i in range(6):
        img = smooth_image(64, 64, i)
        if i in (1, 4):
            img = img // 4
        Image.fromarray(img).save(d / f"img{i}.png")
    Image.fromarray(smooth_image(64, 48, 9)).save(d / "narrow.png")
    return d


@pytest.fixture
def paired_plugin(plugin_site):
    plugin_site("thirdparty-paired", "thirdparty_paired", PAIRED_PLUGIN)


def _per_image(doc: dict, method: str, metric: str) -> dict[str, float]:
    """Independently of harness.paired: per image, the mean over seeds of the finite values."""
    vals: dict[str, list[float]] = {}
    for row in doc["images"]:
        if row["method"] == method and row["status"] == "ok":
            v = row["metrics"].get(metric)
            if isinstance(v, float) and math.isfinite(v):
                vals.setdefault(row["image"], []).append(v)
    return {k: sum(v) / len(v) for k, v in vals.items()}


def test_compare_baseline_writes_consistent_paired_reports(rk_cli, paired_plugin, data, tmp_path):
    out = tmp_path / "out"
    r = rk_cli("compare", "--methods", "blocky3p,jitter3p,bicubic", "--baseline", "bicubic", "--scale", "2",
               "--data", data, "--out", out, "--metrics", "psnr_rgb,bright_3p,lr_consistency", "--seeds", "0,1",
               "--device", "cpu", "--json")
    assert r.exit_code == 1, r.output  # blocky3p fails on the narrow image
    printed = json.loads(r.stdout)
    doc = json.loads((out / "results.json").read_text())
    sec = doc["paired"]
    assert printed["paired"] == sec
    assert sec["baseline"] == "bicubic" and list(sec["methods"]) == ["blocky3p", "jitter3p"]
    assert sec["bootstrap"] == {"resamples": 2000, "seed": 0, "level": 0.95}
    assert doc["files"]["paired_csv"] == "paired.csv"
    rows = list(csv.DictReader((out / "paired.csv").open()))
    assert len(rows) == 2 * 3
    directions = {"psnr_rgb": True, "bright_3p": True, "lr_consistency": False}
    for row in rows:
        method, metric = row["method"], row["metric"]
        st = sec["methods"][method][metric]
        a, b = _per_image(doc, method, metric), _per_image(doc, "bicubic", metric)
        common = sorted(set(a) & set(b))
        diffs = [a[k] - b[k] for k in common]
        sign = 1 if directions[metric] else -1
        better = sum(1 for d in diffs if sign * d > 0)
        worse = sum(1 for d in diffs if sign * d < 0)
        assert st["n"] == len(common) and st["left_out"] == 7 - len(common)
        assert (st["better"], st["worse"]) == (better, worse)
        assert st["win"] == pytest.approx((better + 0.5 * (len(common) - better - worse)) / len(common), abs=1e-12)
        assert st["diff"] == pytest.approx(sum(diffs) / len(diffs), rel=1e-12, abs=1e-15)
        assert st["p"] == exact_sign_p(min(better, worse), better + worse)
        assert st["ci_low"] <= st["diff"] <= st["ci_high"]
        assert row["baseline"] == "bicubic" and row["higher_is_better"] == str(int(directions[metric]))
        for key in ("n", "left_out", "better", "ties", "worse"):
            assert int(row[key]) == st[key]
        for key in ("win", "diff", "ci_low", "ci_high", "p"):
            assert float(row[key]) == st[key]
    m = sec["methods"]
    # blocky3p failed on the narrow image; bright_3p has no value on the two dark ones.
    assert m["blocky3p"]["psnr_rgb"]["n"] == 6 and m["jitter3p"]["psnr_rgb"]["n"] == 7
    assert m["blocky3p"]["bright_3p"]["n"] == 4 and m["jitter3p"]["bright_3p"]["n"] == 5
    # Bicubic beats nearest-neighbour and noise on every smooth image in PSNR.
    assert m["blocky3p"]["psnr_rgb"]["win"] == 0.0 and m["blocky3p"]["psnr_rgb"]["p"] == 0.03125
    assert m["jitter3p"]["psnr_rgb"]["win"] == 0.0 and m["jitter3p"]["psnr_rgb"]["ci_high"] < 0
    # The per-image values of the stochastic method are means over both seeds.
    seeds = {row["seed"] for row in doc["images"] if row["method"] == "jitter3p"}
    assert seeds == {0, 1}
    # report.html: one row per (method, metric) under a row naming the method, numbers as in the JSON.
    page = (out / "report.html").read_text()
    assert "<h2>vs bicubic: Δ = method − bicubic</h2>" in page
    assert "<th>method, metric</th><th>n</th><th>win</th><th>p</th><th>Δ</th><th class='l'>95% CI</th>" in page
    fmts = {"psnr_rgb": ".2f", "bright_3p": ".4f", "lr_consistency": ".3e"}  # bright_3p: as its means (~0.4)
    for method in ("blocky3p", "jitter3p"):
        assert f"<tbody><tr><td class='head'>{method}</td>" in page
        for metric, f in fmts.items():
            assert html_row(metric, directions[metric], m[method][metric], f) in page
    assert "<td class='sub'>psnr_rgb ↑</td><td>6</td><td>0.0%</td><td>0.031</td>" in page


def test_console_table_and_no_baseline_leaves_reports_as_they_were(rk_cli, paired_plugin, data, tmp_path):
    out = tmp_path / "out"
    base = ["compare", "--methods", "jitter3p,bicubic", "--scale", "2", "--data", data, "--out", out,
            "--metrics", "psnr_rgb", "--device", "cpu"]
    r = rk_cli(*base, "--baseline", "bicubic")
    assert r.exit_code == 0, r.output
    assert "vs bicubic: Δ = method − bicubic" in r.stdout
    sec = json.loads((out / "results.json").read_text())["paired"]["methods"]["jitter3p"]["psnr_rgb"]
    groups = table_groups(r.stdout, "vs bicubic")
    assert groups[0][0] == ["method, metric", "n", "win", "p", "Δ", "95% CI"]
    assert groups[1] == [["jitter3p", "", "", "", "", ""], row_cells("psnr_rgb", True, sec, ".2f")]
    assert "2000 resamples" in " ".join(r.stdout.split())
    assert (out / "paired.csv").is_file()
    # The same --out without --baseline: everything reused, no paired section, no stale paired.csv.
    r = rk_cli(*base, "-q")
    assert r.exit_code == 0, r.output
    doc = json.loads((out / "results.json").read_text())
    assert "paired" not in doc and "paired_csv" not in doc["files"] and not (out / "paired.csv").exists()
    assert all(img["reused"] for img in doc["images"])
    assert "vs bicubic" not in (out / "report.html").read_text()


def test_long_layout_fits_the_terminal_whatever_the_number_of_metrics(rk_cli, paired_plugin, data, tmp_path, monkeypatch):
    """One row per (method, metric), one row for a method that failed everywhere, nothing cut at 100 columns."""
    out = tmp_path / "out"
    metrics = ["psnr_y_crop", "ssim_y_crop", "psnr_rgb", "ssim_rgb", "lr_consistency", "bright_3p"]
    fmts = {"psnr_y_crop": ".2f", "ssim_y_crop": ".4f", "psnr_rgb": ".2f", "ssim_rgb": ".4f",
            "lr_consistency": ".3e", "bright_3p": ".4f"}
    args = ["compare", "--methods", "bicubic,blocky3p,broken3p", "--baseline", "bicubic", "--scale", "2",
            "--data", data, "--out", out, "--metrics", ",".join(metrics), "--device", "cpu"]
    monkeypatch.setenv("TTY_COMPATIBLE", "1")  # rich sizes the table to COLUMNS, as in a terminal
    for width in (100, 80, 200):
        monkeypatch.setenv("COLUMNS", str(width))
        r = rk_cli(*args)
        assert r.exit_code == 1, r.output  # blocky3p fails on one image, broken3p on all
        text = ANSI.sub("", r.stdout)
        table = text[text.index("vs bicubic: Δ = method − bicubic"):text.index("Paired with bicubic")]
        assert "…" not in table and max(map(len, table.splitlines())) <= width
        if width == 80:  # only a CI may wrap, at its space: every metric still on its own row
            assert [ln.count("↑") + ln.count("↓") for ln in table.splitlines()].count(1) == len(metrics)
            continue
        doc = json.loads((out / "results.json").read_text())
        hib = {m["name"]: m["higher_is_better"] for m in doc["metrics"]}
        sec = doc["paired"]["methods"]
        header, blocky, broken = table_groups(r.stdout, "vs bicubic")
        assert header == [["method, metric", "n", "win", "p", "Δ", "95% CI"]]
        assert blocky == [["blocky3p", "", "", "", "", ""]] + [
            row_cells(m, hib[m], sec["blocky3p"][m], fmts[m]) for m in metrics]
        assert broken == [["broken3p", "0", "", "", "", "no image paired: failed on 7/7"]]
        assert all(sec["broken3p"][m]["n"] == 0 and sec["broken3p"][m]["left_out"] == 7 for m in metrics)
        # One "left out" line per method that has some paired images, metrics grouped by count.
        notes = " ".join(text[text.index("Paired with bicubic"):].split())
        assert notes.count("vs bicubic: left out") == 1 and "broken3p vs bicubic" not in notes
        assert ("blocky3p vs bicubic: left out (no value on one side): 1/7 in psnr_y_crop, ssim_y_crop, "
                "psnr_rgb, ssim_rgb, lr_consistency; 3/7 in bright_3p") in notes


@pytest.mark.parametrize("methods,baseline,msg", [
    ("bicubic,pix2pixhd", "bicubik", "--baseline 'bicubik' is not in --methods (did you mean 'bicubic'?)"),
    ("bicubic,pix2pixhd", "pulse", "--baseline 'pulse' is not in --methods"),
    ("bicubic", "bicubic", "--baseline 'bicubic': give --methods another method to compare with it"),
])
def test_bad_baseline_is_a_one_line_usage_error(rk_cli, hr_folder, tmp_path, methods, baseline, msg):
    r = rk_cli("compare", "--methods", methods, "--baseline", baseline, "--scale", "2", "--data", hr_folder,
               "--out", tmp_path / "o", "--device", "cpu")
    assert r.exit_code == 2
    errors = [line for line in r.stderr.splitlines() if line.startswith("Error:")]
    assert errors == [f"Error: {msg}"]
    assert not (tmp_path / "o").exists()
