"""What the compare reports say a number is over: stochastic seeds compared on the same images, the
counts in summary.csv / results.csv, best marks as printed, and the conventions that change values."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from types import SimpleNamespace

import pytest
from click.testing import CliRunner

from restorekit.cli import build_cli
from restorekit.harness.aggregate import MethodSummary, Stat, best_per_column, metric_stat
from restorekit.harness.paired import image_values
from restorekit.harness.report_files import write_csv
from restorekit.harness.report_summary import Summary, fmt_stat, summarize_result
from restorekit.harness.report_text import notes, table_rows
from restorekit.harness.store import Record


def _rec(method: str, img: str, seed: int | None, v: float | None, *, errors: dict[str, str] | None = None,
         metric: str = "x") -> Record:
    if v is None:
        return Record(method, img, seed, "h", "i", "failed", error="RuntimeError: boom")
    return Record(method, img, seed, "h", "i", "ok", ms=1.0, metrics={metric: v}, metric_errors=errors)


# --- 1. stochastic methods: per-seed means over the images every seed has a value for -------------

def test_seeds_are_compared_on_the_images_every_seed_has():
    # seed 0: a = 30, b = 20; seed 1: a = 32 and it failed on b. Like for like: a only → 31 ± 1.
    recs = [_rec("st", "a", 0, 30.0), _rec("st", "b", 0, 20.0), _rec("st", "a", 1, 32.0), _rec("st", "b", 1, None)]
    st = metric_stat(recs, "x", True)
    assert (st.mean, st.std, st.n) == (31.0, 1.0, 2)  # was 28.5 ± 3.5 over 3 values
    assert st.seed_left_out == 1
    assert st.as_dict()["seed_left_out"] == 1
    # The same as the paired table's per-image pooling over those images.
    per_image = image_values(recs, "x")
    assert st.mean == per_image["a"]


@pytest.mark.parametrize("why", ["nan", "error"])
def test_an_image_without_a_value_in_one_seed_is_left_out_for_all(why):
    bad = (_rec("st", "b", 1, math.nan) if why == "nan"
           else _rec("st", "b", 1, 0.0, errors={"x": "ValueError: no"}))
    recs = [_rec("st", "a", 0, 1.0), _rec("st", "b", 0, 9.0), _rec("st", "a", 1, 3.0), bad]
    st = metric_stat(recs, "x", True)
    assert (st.mean, st.std, st.n) == (2.0, 1.0, 2)
    assert st.seed_left_out == 1
    assert st.nan == (why == "nan")


def test_seeds_on_the_same_images_and_one_seed_are_unchanged():
    recs = [_rec("st", "a", 0, 1.0), _rec("st", "b", 0, 3.0), _rec("st", "a", 1, 3.0), _rec("st", "b", 1, 5.0)]
    st = metric_stat(recs, "x", True)
    assert (st.mean, st.std, st.n, st.seed_left_out) == (3.0, 1.0, 4, 0)
    # NaN on the same image in every seed: that image has no value anywhere, counted as NaN only.
    recs += [_rec("st", "c", 0, math.nan), _rec("st", "c", 1, math.nan)]
    st = metric_stat(recs, "x", True)
    assert (st.mean, st.std, st.n, st.nan, st.seed_left_out) == (3.0, 1.0, 4, 2, 0)
    # One seed (or a seed that has no value at all): its images, as before.
    one = [_rec("st", "a", 0, 30.0), _rec("st", "b", 0, 20.0), _rec("st", "a", 1, None), _rec("st", "b", 1, None)]
    st = metric_stat(one, "x", True)
    assert (st.mean, st.std, st.n, st.seed_left_out) == (25.0, None, 2, 0)
    # Deterministic methods keep every image.
    st = metric_stat([_rec("d", "a", None, 30.0), _rec("d", "b", None, 20.0)], "x", False)
    assert (st.mean, st.n, st.seed_left_out) == (25.0, 2, 0)


def test_seeds_with_no_image_in_common_give_no_mean():
    st = metric_stat([_rec("st", "a", 0, 1.0), _rec("st", "b", 1, 2.0)], "x", True)
    assert math.isnan(st.mean) and st.std is None and (st.n, st.seed_left_out) == (0, 2)


def _metric(name: str, hib: bool = True, fmt: str | None = None) -> SimpleNamespace:
    return SimpleNamespace(name=name, higher_is_better=hib, fmt=fmt, status="ok", nan_label="NaN values",
                           reason=None)


def _summary(records: list[Record], methods: dict[str, bool], metrics: list[SimpleNamespace], *,
             degradation: str | None = "bicubic:4", seeds: list[int | None] | None = None) -> Summary:
    """A Summary of ``records`` without running anything: ``methods`` name → deterministic."""
    plans = [SimpleNamespace(name=n, deterministic=d, seeds=[None] if d else (seeds or [0, 1]), device="cpu",
                             precision="fp32", backend="eager") for n, d in methods.items()]
    images = sorted({r.image for r in records})
    plan = SimpleNamespace(metrics=metrics, methods=plans, device=SimpleNamespace(type="cpu"),
                           degradation=degradation, config=SimpleNamespace(baseline=None, scale=4))
    res = SimpleNamespace(plan=plan, records=records, inputs=SimpleNamespace(pairs=images, failures=[]),
                          unmatched=[])
    return summarize_result(res)  # type: ignore[arg-type]


def test_notes_name_the_images_a_stochastic_mean_left_out():
    recs = [_rec("st", "a", 0, 30.0), _rec("st", "b", 0, 20.0), _rec("st", "a", 1, 32.0), _rec("st", "b", 1, None),
            _rec("bic", "a", None, 25.0), _rec("bic", "b", None, 24.0)]
    sm = _summary(recs, {"st": False, "bic": True}, [_metric("x", fmt=".2f")])
    text = "\n".join(notes(sm))
    assert "x: left out of the mean ± std because not every seed has a value there" in text
    assert "st 1 image" in text and "bic" not in text.split("left out of the mean ± std")[1]
    _, rows = table_rows(sm)
    assert rows[0][1][0] == "31.00 ± 1.00"
    # Nothing left out: no such note.
    same = [_rec("st", i, s, 1.0 + s) for i in "ab" for s in (0, 1)]
    assert not any("not every seed" in line for line in notes(_summary(same, {"st": False}, [_metric("x")])))


def test_nan_note_counts_every_scored_value_when_images_are_left_out():
    recs = [_rec("st", "a", 0, 1.0), _rec("st", "b", 0, 9.0), _rec("st", "a", 1, 3.0), _rec("st", "b", 1, math.nan)]
    text = "\n".join(notes(_summary(recs, {"st": False}, [_metric("x")])))
    assert "x: NaN values: st 1/4 (left out of the mean)" in text


# --- 2. the CSV files say what a mean is over ---------------------------------------------------

def test_summary_csv_counts_and_results_csv_metric_errors(tmp_path):
    recs = [_rec("d", "a", None, math.inf, metric="x"), _rec("d", "b", None, 20.0),
            _rec("d", "c", None, math.nan), _rec("d", "e", None, 0.0, errors={"x": "ValueError: =bad"}),
            _rec("d", "f", None, None)]
    sm = _summary(recs, {"d": True}, [_metric("x")])
    per_image, summary = write_csv(sm, tmp_path)
    [row] = list(csv.DictReader(summary.open(newline="")))
    head = next(csv.reader(summary.open(newline="")))
    assert head[6:12] == ["x_mean", "x_std", "x_nan", "x_n", "x_inf", "x_errors"]
    assert (row["x_mean"], row["x_nan"], row["x_n"], row["x_inf"], row["x_errors"]) == ("inf", "1", "2", "1", "1")
    rows = list(csv.DictReader(per_image.open(newline="")))
    assert list(rows[0])[-3:] == ["output", "error", "metric_errors"]
    by_image = {r["image"]: r for r in rows}
    assert json.loads(by_image["e"]["metric_errors"]) == {"x": "ValueError: =bad"}
    assert by_image["c"]["x"] == "" and by_image["c"]["metric_errors"] == ""  # NaN by design: no error
    assert by_image["f"]["metric_errors"] == "" and by_image["f"]["error"] == "RuntimeError: boom"


# --- 3. best marks compare the numbers as printed -----------------------------------------------

def test_best_marks_every_method_that_prints_the_best_number():
    a = MethodSummary("A", True, [None], 2, 2, 0, metrics={"ssim": Stat(0.56494, None, 2, 0)},
                      runtime_ms=Stat(10.04, None, 2, 0))
    b = MethodSummary("B", True, [None], 2, 2, 0, metrics={"ssim": Stat(0.56486, None, 2, 0)},
                      runtime_ms=Stat(10.01, None, 2, 0))
    assert fmt_stat(a.metrics["ssim"], ".4f") == fmt_stat(b.metrics["ssim"], ".4f") == "0.5649"
    shown = lambda col, v: format(v, ".4f" if col == "ssim" else ".1f")  # noqa: E731
    assert best_per_column([a, b], {"ssim": True}, shown) == {"ssim": {"A", "B"}, "runtime": {"A", "B"}}
    assert best_per_column([a, b], {"ssim": True}) == {"ssim": {"A"}, "runtime": {"B"}}  # unrounded
    pytest.importorskip("starlette")
    from restorekit.web.work import page_text  # serve's page: as app.js prints (4 decimals below 10)

    assert (page_text("ssim", 0.56494), page_text("psnr", 23.456), page_text("x", 0.001234)) == \
        ("0.5649", "23.46", "1.23e-03")
    assert best_per_column([a, b], {"ssim": True}, page_text) == {"ssim": {"A", "B"}, "runtime": {"A", "B"}}
    # Through the report: both starred in the table, and a real difference still decides.
    recs = [_rec("A", "i", None, 0.56494), _rec("B", "i", None, 0.56486), _rec("C", "i", None, 0.5641)]
    sm = _summary(recs, {"A": True, "B": True, "C": True}, [_metric("x", fmt=".4f")])
    assert sm.best["x"] == {"A", "B"}
    assert [row[1][1] for row in table_rows(sm)[1]] == [True, True, False]
    # No format of its own: the magnitude-based one the table prints (0.5649 for both).
    sm = _summary(recs, {"A": True, "B": True, "C": True}, [_metric("x", hib=False)])
    assert sm.best["x"] == {"C"}
    sm = _summary(recs[:2], {"A": True, "B": True}, [_metric("x", hib=False)])
    assert sm.best["x"] == {"A", "B"}


# --- 4. conventions that change values, and what lr_consistency measures -------------------------

def test_lr_consistency_note_only_when_the_lr_is_not_plain_bicubic():
    recs = [_rec("d", "a", None, 0.001, metric="lr_consistency"), _rec("e", "a", None, 0.002, metric="lr_consistency")]
    metrics = [_metric("lr_consistency", hib=False, fmt=".3e")]
    for deg, expect in (("bicubic:4", None), ("blur:1.5+bicubic:4", "made by blur:1.5+bicubic:4"),
                        (None, "come from --lr-dir")):
        text = "\n".join(notes(_summary(recs, {"d": True, "e": True}, metrics, degradation=deg)))
        if expect is None:
            assert "lr_consistency:" not in text
        else:
            assert expect in text and "antialiased bicubic downscale (bicubic:4)" in text
            assert "not with the degradation that made the input" in text
    # Not among the metrics: no note.
    recs = [_rec("d", "a", None, 30.0), _rec("e", "a", None, 31.0)]
    assert "lr_consistency" not in "\n".join(notes(_summary(recs, {"d": True, "e": True}, [_metric("x")],
                                                            degradation=None)))


def _invoke(*args: str):
    return CliRunner().invoke(build_cli(), list(args))


def test_compare_files_carry_the_counts_and_the_conventions(hr_folder: Path, tmp_path: Path):
    out = tmp_path / "out"
    r = _invoke("compare", "--methods", "bicubic", "--scale", "2", "--data", str(hr_folder), "--out", str(out),
                "--degradation", "blur:1+bicubic:2", "--metrics", "psnr_rgb,lr_consistency", "--device", "cpu")
    assert r.exit_code == 0, r.output
    doc = json.loads((out / "results.json").read_text())
    conv = doc["settings"]["conventions"]
    assert "BT.601 luma" in conv["black_and_white"] and "1/255" in conv["black_and_white"]
    assert "antialiased bicubic" in conv["lr_consistency"]
    assert any("not with the degradation that made the input" in n for n in doc["notes"])
    assert "not with the degradation that made the input" in " ".join(r.stdout.split())
    [row] = list(csv.DictReader((out / "summary.csv").open(newline="")))
    assert (row["psnr_rgb_n"], row["psnr_rgb_inf"], row["psnr_rgb_errors"], row["psnr_rgb_nan"]) == ("4", "0", "0", "0")
    assert doc["methods"][0]["aggregate"]["metrics"]["psnr_rgb"]["seed_left_out"] == 0
    rows = list(csv.DictReader((out / "results.csv").open(newline="")))
    assert len(rows) == 4 and all(r["metric_errors"] == "" for r in rows)
    # Plain bicubic:K: no note.
    r = _invoke("compare", "--methods", "bicubic", "--scale", "2", "--data", str(hr_folder), "--out",
                str(tmp_path / "o2"), "--metrics", "lr_consistency", "--device", "cpu")
    assert r.exit_code == 0, r.output
    assert "not with the degradation" not in r.stdout
