"""Fixes from the audit of compare's reports: the best mark compares methods on the images they
share, notes under "vs BASELINE" stay whole in a pipe, a face under two names is warned about, the
paired row says how many pairs Δ is over, and a p-value never rounds up to a threshold."""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from restorekit.harness.aggregate import best_per_column, metric_stat, shared_means, summarize
from restorekit.harness.paired import sign_test_p
from restorekit.harness.report_summary import Summary, fmt_p, summarize_result
from restorekit.harness.report_text import notes, paired_notes, paired_rows, table_rows
from restorekit.harness.store import Record
from restorekit.testing.data import smooth_image


def _rec(method: str, img: str, seed: int | None, v: float | None) -> Record:
    if v is None:
        return Record(method, img, seed, "h", "i", "failed", error="RuntimeError: boom")
    return Record(method, img, seed, "h", "i", "ok", ms=1.0, metrics={"x": v})


def _summary(records: list[Record], methods: dict[str, bool], *, hib: bool = True, fmt: str | None = ".2f",
             baseline: str | None = None) -> Summary:
    """A Summary of ``records`` (metric ``x``) without running anything: ``methods`` name → deterministic."""
    metric = SimpleNamespace(name="x", higher_is_better=hib, fmt=fmt, status="ok", nan_label="NaN values",
                             reason=None)
    plans = [SimpleNamespace(name=n, deterministic=d, seeds=[None] if d else [0, 1], device="cpu",
                             precision="fp32", backend="eager") for n, d in methods.items()]
    plan = SimpleNamespace(metrics=[metric], methods=plans, device=SimpleNamespace(type="cpu"),
                           degradation="bicubic:4", config=SimpleNamespace(baseline=baseline, scale=4))
    res = SimpleNamespace(plan=plan, records=records, unmatched=[],
                          inputs=SimpleNamespace(pairs=sorted({r.image for r in records}), failures=[]))
    return summarize_result(res)  # type: ignore[arg-type]


# --- 1. the best mark compares means over the same images ------------------------------------------

def test_a_method_that_failed_on_the_hard_image_is_not_best_for_it():
    # "hard" drags bicubic's mean down; pix failed there and is 1 lower on both other images.
    recs = [_rec("bic", "hard", None, 10.0), _rec("bic", "b", None, 30.0), _rec("bic", "c", None, 32.0),
            _rec("pix", "hard", None, None), _rec("pix", "b", None, 29.0), _rec("pix", "c", None, 31.0)]
    sm = _summary(recs, {"bic": True, "pix": True})
    assert sm.best["x"] == {"bic"}  # was {"pix"}: 30.00 > 24.00
    _, rows = table_rows(sm)
    assert [(r[1][0], r[1][1]) for r in rows] == [("24.00", True), ("30.00", False)]  # the means as they were
    assert "x: the means are over different images (bic 3, pix 2); * compares them on the 2 images all of them " \
           "have: bic 31.00, pix 30.00" in notes(sm)
    shared = shared_means(sm.methods, "x")
    assert shared is not None and (shared.images, shared.counts) == (2, {"bic": 3, "pix": 2})
    # Lower is better: the same comparison, the other way.
    assert _summary(recs, {"bic": True, "pix": True}, hib=False).best["x"] == {"pix"}
    # The same images everywhere: no note, and the means compare as they are.
    same = [r for r in recs if r.image != "hard"]
    assert shared_means(_summary(same, {"bic": True, "pix": True}).methods, "x") is None
    assert not any("different images" in line for line in notes(_summary(same, {"bic": True, "pix": True})))


def test_a_failed_seed_of_a_stochastic_method_is_compared_on_the_shared_images():
    # st: seed 1 failed on "hard", so st's mean is over b and c only (31 ± 1); bic is over all three.
    recs = [_rec("st", "hard", 0, 12.0), _rec("st", "b", 0, 29.0), _rec("st", "c", 0, 31.0),
            _rec("st", "hard", 1, None), _rec("st", "b", 1, 31.0), _rec("st", "c", 1, 33.0),
            _rec("bic", "hard", None, 14.0), _rec("bic", "b", None, 31.0), _rec("bic", "c", None, 32.0)]
    sm = _summary(recs, {"st": False, "bic": True})
    assert sm.best["x"] == {"bic"}  # 31.50 against 31.00 on b and c; was st (31.00 against 25.67)
    st = metric_stat([r for r in recs if r.method == "st"], "x", True)
    assert (st.mean, st.std, st.seed_left_out) == (31.0, 1.0, 1)
    assert st.per_image == {"b": 30.0, "c": 32.0}  # the mean over seeds, on the images every seed has
    assert any(line.startswith("x: the means are over different images (st 2, bic 3); * compares them on the "
                               "2 images all of them have: st 31.00, bic 31.50") for line in notes(sm))


def test_no_image_in_common_marks_none():
    recs = [_rec("a", "i", None, 1.0), _rec("a", "j", None, None), _rec("b", "i", None, None),
            _rec("b", "j", None, 2.0)]
    sm = _summary(recs, {"a": True, "b": True})
    assert sm.best["x"] == set()  # was {"b"}
    assert "x: the means are over different images (a 1, b 1); no image has a value from every one of them, " \
           "so none is marked best" in notes(sm)
    # Made without per-image values (by hand), Stats compare as before.
    rows = [summarize(n, True, [None], 1, [_rec(n, "i", None, v)], ["x"]) for n, v in (("a", 1.0), ("b", 2.0))]
    for s in rows:
        s.metrics["x"].per_image.clear()
    assert best_per_column(rows, {"x": True})["x"] == {"b"}


# --- 4 and 5. the paired row: pairs behind Δ, and p never rounded up to a threshold ----------------

def test_paired_row_counts_the_pairs_behind_delta_and_rounds_p_down():
    # 67 images: m better on 42, worse on 25 (p = 0.0498); one pair has an infinite value.
    recs = []
    for i in range(67):
        base = 20.0 + i % 5
        mine = math.inf if i == 0 else base + (0.5 if i < 42 else -0.5)
        recs += [_rec("base", f"i{i:02d}", None, base), _rec("m", f"i{i:02d}", None, mine)]
    sm = _summary(recs, {"base": True, "m": True}, baseline="base")
    assert sm.paired is not None
    st = sm.paired.stats["m"]["x"]
    assert (st.n, st.n_diff, st.better, st.worse) == (67, 66, 42, 25) and st.p == sign_test_p(42, 25)
    assert st.diff == pytest.approx((41 - 25) * 0.5 / 66, rel=1e-12)  # the 66 finite pairs
    _, groups = paired_rows(sm)
    assert [c for c, _ in groups[0][1]][:5] == ["x ↑", "67 (Δ over 66)", "62.7%", "0.049", "+0.12"]  # was 67, 0.05
    assert "rounded down to 2 significant digits" in paired_notes(sm)[0]
    assert '"n (Δ over K)" when only K of the n pairs are' in paired_notes(sm)[0]
    # Every pair finite: n alone.
    recs = [r for r in recs if r.image != "i00"]
    _, groups = paired_rows(_summary(recs, {"base": True, "m": True}, baseline="base"))
    assert groups[0][1][1][0] == "66"


def test_p_is_rounded_down_to_two_significant_digits():
    assert sign_test_p(42, 25) == pytest.approx(0.0498, abs=5e-5)
    assert (fmt_p(sign_test_p(42, 25)), fmt_p(0.00997), fmt_p(0.0996)) == ("0.049", "0.0099", "0.099")
    assert (fmt_p(0.05), fmt_p(0.031), fmt_p(1.0), fmt_p(0.75390625), fmt_p(2.2250738585072014e-308)) == \
        ("0.05", "0.031", "1", "0.75", "2.2e-308")
    assert fmt_p(math.nan) == "n/a"


# --- through compare: the star, the notes in a pipe, the duplicate warning, n (Δ over K) in HTML ---

PLUGIN = '''
from typing import ClassVar
from restorekit.degradations import upscale
from restorekit.hookspecs import hookimpl
from restorekit.interfaces import Method, MethodInfo


class BrightFails(Method):
    info: ClassVar[MethodInfo] = MethodInfo(name="brightfail3p", summary="bicubic, 1/255 brighter; fails at 48 px")

    def restore(self, lr, scale, *, seed=None, n_samples=1):
        if lr.shape[-1] * scale == 48:
            raise RuntimeError("cannot handle a 48-px-wide output")
        return (upscale(lr, scale) + 1 / 255).clamp(0, 1)


@hookimpl
def register_methods(register):
    register(BrightFails)
'''


@pytest.fixture
def audit_plugin(plugin_site):
    plugin_site("thirdparty-reportaudit", "thirdparty_reportaudit", PLUGIN)


def _noise(h: int, w: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def test_compare_stars_on_shared_images_keeps_notes_whole_and_warns_of_a_copy(rk_cli, audit_plugin, tmp_path):
    data = tmp_path / "hr"
    data.mkdir()
    for i in range(3):
        Image.fromarray(smooth_image(64, 64, i)).save(data / f"img{i}.png")
    Image.fromarray(_noise(64, 48, 0)).save(data / "noise.png")  # hard, and brightfail3p fails on it
    (data / "zcopy.png").write_bytes((data / "img1.png").read_bytes())  # the same face, another name
    out = tmp_path / "out"
    r = rk_cli("compare", "--methods", "brightfail3p,bicubic", "--baseline", "bicubic", "--scale", "2",
               "--data", data, "--out", out, "--metrics", "psnr_rgb", "--device", "cpu")
    assert r.exit_code == 1, r.output  # brightfail3p failed on one image
    doc = json.loads((out / "results.json").read_text())
    agg = {m["name"]: m["aggregate"]["metrics"]["psnr_rgb"] for m in doc["methods"]}
    # Its mean over the easy images beats bicubic's over all of them, yet on the shared ones it is worse.
    assert agg["brightfail3p"]["mean"] > agg["bicubic"]["mean"]
    assert doc["paired"]["methods"]["brightfail3p"]["psnr_rgb"]["diff"] < 0
    assert doc["best"]["psnr_rgb"] == ["bicubic"]  # was ["brightfail3p"]
    [note] = [n for n in doc["notes"] if "different images" in n]
    assert note.startswith("psnr_rgb: the means are over different images (brightfail3p 4, bicubic 5); "
                           "* compares them on the 4 images all of them have: ")
    # The copy is scored (5 images) and named once on stderr, with the file it copies.
    assert len({row["image"] for row in doc["images"]}) == 5
    warned = [ln for ln in r.stderr.splitlines() if "the same content as" in ln]
    assert warned == [f"warning: {data / 'zcopy.png'}: the same content as {data / 'img1.png'} (a copy under "
                      "another name); both are scored, so this image counts twice"]
    # In a pipe every note is one line, those under "vs bicubic" too (they were cut at 200 columns).
    lines = r.stdout.splitlines()
    [paired_note] = [ln for ln in lines if ln.startswith("Paired with bicubic")]
    assert paired_note.rstrip().endswith("none from one difference.") and len(paired_note) > 200
    assert any(ln.startswith("brightfail3p vs bicubic: left out (no value on one side): 1/5 images")
               for ln in lines)
    assert any(ln.startswith("psnr_rgb: the means are over different images") and ln.rstrip().endswith(
        note.rsplit(": ", 1)[1]) for ln in lines)


def test_compare_shows_the_pairs_behind_delta_in_the_terminal_and_html(rk_cli, audit_plugin, tmp_path):
    hr, lr = tmp_path / "hr", tmp_path / "lr"
    hr.mkdir()
    lr.mkdir()
    for i in range(4):
        img = smooth_image(32, 32, i)
        Image.fromarray(img).save(hr / f"img{i}.png")
        noisy = img if i == 0 else np.clip(img.astype(int) + _noise(32, 32, i) // 16 - 8, 0, 255).astype(np.uint8)
        Image.fromarray(noisy).save(lr / f"img{i}.png")  # img0's LR is its HR: bicubic ×1 scores +inf
    out = tmp_path / "out"
    r = rk_cli("compare", "--methods", "brightfail3p,bicubic", "--baseline", "brightfail3p", "--scale", "1",
               "--data", hr, "--lr-dir", lr, "--out", out, "--metrics", "psnr_rgb", "--device", "cpu")
    assert r.exit_code == 0, r.output
    st = json.loads((out / "results.json").read_text())["paired"]["methods"]["bicubic"]["psnr_rgb"]
    assert (st["n"], st["n_diff"]) == (4, 3)
    [row] = [ln for ln in r.stdout.splitlines() if ln.startswith("│ psnr_rgb ↑")]  # (under "vs brightfail3p")
    cells = [c.strip() for c in row.strip("│ ").split("│")]
    win = f"{100 * st['win']:.1f}%"
    assert cells[:3] == ["psnr_rgb ↑", "4 (Δ over 3)", win]
    assert f"<td class='sub'>psnr_rgb ↑</td><td>4 (Δ over 3)</td><td>{win}</td>" in (out / "report.html").read_text()


def test_a_copy_is_found_by_its_hr_file_with_lr_files_of_its_own(tmp_path):
    """With --lr-dir, each LR file records the name of its input, so the pairs' hashes differed and
    a face given twice under two names counted twice without a word."""
    from restorekit.harness.inputs import Pair, duplicate_lines

    face = tmp_path / "a.png"
    Image.new("RGB", (16, 16), (10, 200, 30)).save(face)
    (tmp_path / "b.png").write_bytes(face.read_bytes())
    Image.new("RGB", (16, 16), (10, 200, 31)).save(tmp_path / "c.png")  # same size, other content
    (tmp_path / "d.png").write_bytes(face.read_bytes() + b"x")
    pairs = [Pair(n, tmp_path / f"{n}.png", tmp_path / "lr" / f"{n}.png", input_hash=n) for n in "abcd"]
    assert duplicate_lines(pairs) == [f"{tmp_path / 'b.png'}: the same content as {tmp_path / 'a.png'} (a copy "
                                      "under another name); both are scored, so this image counts twice"]
