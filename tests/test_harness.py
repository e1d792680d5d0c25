"""`restorekit compare` end to end: plugins in the table, failures, skipped metrics, resume, reports."""

from __future__ import annotations

import csv
import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from PIL import Image

from restorekit.cli import build_cli
from restorekit.harness.aggregate import best_per_column, metric_stat, summarize
from restorekit.harness.runner import CompareConfig, plan
from restorekit.harness.store import Record, decode_float, encode_float
from restorekit.plugins import registry
from restorekit.testing.data import smooth_image
from plugin_sources import GOOD_PLUGIN

# A third-party plugin exercising the harness: a method that fails on one image size, a
# stochastic method, a metric whose weights are missing and a metric that can find no face.
HARNESS_PLUGIN = '''
import os
from typing import ClassVar
import torch
from restorekit.errors import WeightsMissing
from restorekit.hookspecs import hookimpl
from restorekit.interfaces import Method, MethodInfo, Metric


def _count(name):
    path = os.environ.get("RK_TEST_CALLS")
    if path:
        with open(path, "a") as f:
            f.write(name + "\\n")


class Flaky(Method):
    info: ClassVar[MethodInfo] = MethodInfo(name="flaky3p", summary="fails on 24-px-wide inputs")

    def restore(self, lr, scale, *, seed=None, n_samples=1):
        _count("flaky3p")
        if lr.shape[-1] == 24:
            raise RuntimeError("cannot handle a 24-px-wide input")
        return torch.nn.functional.interpolate(lr, scale_factor=scale, mode="nearest")


class Noisy(Method):
    info: ClassVar[MethodInfo] = MethodInfo(name="noisy3p", summary="nearest plus seeded noise",
                                            deterministic=False)
    precision = "float16-ish"

    def load(self):
        self.weights_info = {"noisy-net": {"sha256": "ab" * 32, "license": "MIT"}}

    def restore(self, lr, scale, *, seed=None, n_samples=1):
        _count("noisy3p")
        self.last_reports = [{"seed_used": seed}]
        g = torch.Generator().manual_seed(0 if seed is None else seed)
        up = torch.nn.functional.interpolate(lr, scale_factor=scale, mode="nearest")
        return (up + 0.02 * (seed + 1) * torch.randn(up.shape, generator=g)).clamp(0, 1)


class Mixer(Method):
    info: ClassVar[MethodInfo] = MethodInfo(name="mixer3p", summary="nearest; extra samples add seeded noise",
                                            deterministic=False, single_sample_deterministic=True)

    def restore(self, lr, scale, *, seed=None, n_samples=1):
        _count("mixer3p")
        up = torch.nn.functional.interpolate(lr, scale_factor=scale, mode="nearest").repeat_interleave(n_samples, 0)
        if n_samples > 1:
            g = torch.Generator().manual_seed(0 if seed is None else seed)
            up[1::n_samples] += 0.02 * torch.randn(up[1::n_samples].shape, generator=g)
        return up.clamp(0, 1)


class NeedsWeights(Metric):
    name: ClassVar[str] = "needs_weights_3p"
    higher_is_better: ClassVar[bool] = True

    def setup(self, device):
        raise WeightsMissing("fake-net-3p")

    def __call__(self, pred, target, *, lr, scale):
        raise AssertionError("never called")


class FaceScore(Metric):
    name: ClassVar[str] = "face_3p"
    higher_is_better: ClassVar[bool] = True
    nan_label: ClassVar[str] = "faces not found"

    def __call__(self, pred, target, *, lr, scale):
        # "No face" in dark images: NaN, like an identity metric without a detection.
        m = target.flatten(1).mean(1).double()
        return torch.where(m < 0.5, torch.full_like(m, float("nan")), m)


class Boom(Metric):
    name: ClassVar[str] = "boom_3p"
    higher_is_better: ClassVar[bool] = False

    def __call__(self, pred, target, *, lr, scale):
        if target.shape[-1] == 48:
            raise ValueError("cannot score 48-px-wide images")
        return (pred - target).abs().flatten(1).mean(1).double()


@hookimpl
def register_methods(register):
    register(Flaky)
    register(Noisy)
    register(Mixer)


@hookimpl
def register_metrics(register):
    register(NeedsWeights)
    register(FaceScore)
    register(Boom)
'''

CORE_METRICS = "psnr_y_crop,ssim_y_crop,psnr_rgb,ssim_rgb,lr_consistency"


def invoke(*args: str):
    return CliRunner().invoke(build_cli(), list(args), catch_exceptions=False)


def rk(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "restorekit", *args], capture_output=True, text=True,
                          env=dict(os.environ), timeout=180)


@pytest.fixture
def hr5(tmp_path: Path) -> Path:
    """Four 64×64 images and one 48-px-wide one (the one flaky3p fails on at ×2)."""
    d = tmp_path / "hr"
    d.mkdir()
    for i in range(4):
        Image.fromarray(smooth_image(64, 64, i)).save(d / f"img{i}.png")
    Image.fromarray(smooth_image(64, 48, 9)).save(d / "narrow.png")
    return d


@pytest.fixture
def harness_plugin(plugin_site, tmp_path, monkeypatch):
    calls = tmp_path / "calls.txt"
    monkeypatch.setenv("RK_TEST_CALLS", str(calls))
    plugin_site("thirdparty-harness", "thirdparty_harness", HARNESS_PLUGIN)
    return calls


def _calls(path: Path) -> list[str]:
    return path.read_text().split() if path.exists() else []


def _doc(out: Path) -> dict:
    return json.loads((out / "results.json").read_text())


def _method(doc: dict, name: str) -> dict:
    return next(m for m in doc["methods"] if m["name"] == name)


def test_third_party_method_and_metric_appear_in_table(plugin_site, hr_folder, tmp_path):
    plugin_site("thirdparty-nearest", "thirdparty_nearest", GOOD_PLUGIN)
    out = tmp_path / "out"
    r = rk("compare", "--methods", "bicubic,nearest3p", "--scale", "2", "--data", str(hr_folder),
           "--out", str(out), "--device", "cpu", "--opt", "nearest3p.gain=1.0",
           "--metrics", "psnr_y_crop,ssim_y_crop,mean_abs_3p")
    assert r.returncode == 0, r.stderr
    header = next(line for line in r.stdout.splitlines() if "mean_abs_3p" in line)
    assert "psnr_y_crop ↑" in header and "mean_abs_3p ↓" in header
    assert re.search(r"nearest3p\s", r.stdout) and re.search(r"bicubic\s", r.stdout)
    doc = _doc(out)
    near = _method(doc, "nearest3p")
    assert near["distribution"] == "thirdparty-nearest" and near["version"] == "0.3.1"
    assert 0 < near["aggregate"]["metrics"]["mean_abs_3p"]["mean"] < 0.05
    assert {"name": "thirdparty_nearest", "distribution": "thirdparty-nearest", "version": "0.3.1",
            "status": "ok"} in doc["plugins"]
    # Bicubic beats nearest-neighbour on smooth images: best-per-column says so.
    assert doc["best"]["psnr_y_crop"] == ["bicubic"] and doc["best"]["mean_abs_3p"] == ["bicubic"]
    # Without --metrics, every registered metric is used: the plugin's included (core ones first).
    p = plan(CompareConfig(methods=["nearest3p"], scale=2, data=str(hr_folder), out=tmp_path / "o2"))
    names = [m.name for m in p.metrics]
    assert names[:5] == ["psnr_y_crop", "ssim_y_crop", "psnr_rgb", "ssim_rgb", "lr_consistency"]
    assert "mean_abs_3p" in names and p.metrics[names.index("mean_abs_3p")].distribution == "thirdparty-nearest"


def test_identical_prediction_gives_inf_psnr_and_unit_ssim(hr_folder, tmp_path):
    out = tmp_path / "out"
    # ×1 with bicubic:1 named (the identity): bicubic returns the HR exactly.
    r = invoke("compare", "--methods", "bicubic", "--scale", "1", "--degradation", "bicubic:1", "--data",
               str(hr_folder), "--out", str(out),
               "--metrics", CORE_METRICS, "--device", "cpu")
    assert r.exit_code == 0, r.output
    row = next(line for line in r.stdout.splitlines() if line.strip("│ ").startswith("bicubic"))
    assert row.count("inf") == 2  # psnr_y_crop and psnr_rgb
    doc = _doc(out)
    agg = _method(doc, "bicubic")["aggregate"]["metrics"]
    assert agg["psnr_y_crop"]["mean"] == "Infinity" and agg["psnr_rgb"]["mean"] == "Infinity"
    assert agg["ssim_y_crop"]["mean"] == pytest.approx(1.0) and agg["lr_consistency"]["mean"] == 0.0
    assert all(img["metrics"]["psnr_y_crop"] == "Infinity" for img in doc["images"])
    assert agg["psnr_y_crop"]["inf"] == 4 and agg["ssim_y_crop"]["inf"] == 0
    notes = " ".join(r.stdout.split())  # the footnote says how many values made the mean infinite
    assert "psnr_y_crop: infinite values (e.g. a perfect output's PSNR): bicubic 4/4" in notes
    assert "ssim_y_crop: infinite" not in notes
    text = (out / "results.json").read_text()
    def bad_constant(c: str) -> float:  # strict JSON: no bare NaN/Infinity tokens
        raise AssertionError(f"non-standard JSON constant {c}")

    json.loads(text, parse_constant=bad_constant)
    rows = list(csv.DictReader((out / "results.csv").open()))
    assert len(rows) == 4 and {r["psnr_rgb"] for r in rows} == {"inf"}
    assert math.isinf(float(rows[0]["psnr_y_crop"]))


def test_failure_on_one_image_keeps_other_rows(harness_plugin, hr5, tmp_path):
    out = tmp_path / "out"
    r = invoke("compare", "--methods", "bicubic,flaky3p", "--scale", "2", "--data", str(hr5), "--out", str(out),
               "--metrics", "psnr_y_crop,ssim_y_crop,boom_3p", "--device", "cpu")
    assert r.exit_code == 1
    assert "flaky3p failed on 1 image(s) [narrow]" in r.stderr and "24-px-wide" in r.stderr
    doc = _doc(out)
    assert doc["exit_code"] == 1
    assert doc["failures"] == [{"method": "flaky3p", "image": "narrow", "seed": None,
                                "error": "RuntimeError: cannot handle a 24-px-wide input"}]
    bic, flaky = _method(doc, "bicubic")["aggregate"], _method(doc, "flaky3p")["aggregate"]
    assert (bic["ok"], bic["failed"], flaky["ok"], flaky["failed"]) == (5, 0, 4, 1)
    assert flaky["metrics"]["psnr_y_crop"]["n"] == 4 and bic["metrics"]["psnr_y_crop"]["n"] == 5
    ok_rows = [img for img in doc["images"] if img["status"] == "ok"]
    assert len(ok_rows) == 9 and all(isinstance(img["metrics"]["psnr_y_crop"], float) for img in ok_rows)
    assert (out / "outputs/flaky3p/img3.png").exists() and not (out / "outputs/flaky3p/narrow.png").exists()
    # A metric raising on one image: NaN there, counted as an error (not as the metric's NaN), noted.
    boom = bic["metrics"]["boom_3p"]
    assert (boom["n"], boom["nan"], bic["metric_errors"]) == (4, 0, {"boom_3p": 1})
    narrow = next(img for img in doc["images"] if img["method"] == "bicubic" and img["image"] == "narrow")
    assert narrow["metrics"]["boom_3p"] is None and "48-px-wide" in narrow["metric_errors"]["boom_3p"]
    assert any("boom_3p: could not be computed for some images: bicubic 1 (first: narrow: ValueError: cannot score "
               "48-px-wide images)" in n for n in doc["notes"])  # the reason, not only in results.json


def test_unreadable_hr_file_is_listed_and_the_rest_run(hr_folder, tmp_path):
    (hr_folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    out = tmp_path / "out"
    r = invoke("compare", "--methods", "bicubic", "--scale", "2", "--data", str(hr_folder), "--out", str(out),
               "--metrics", "psnr_rgb", "--device", "cpu", "--json")
    assert r.exit_code == 1
    assert "input broken" in r.stderr and "broken.png" in r.stderr
    doc = _doc(out)
    assert [f["image"] for f in doc["inputs"]["failures"]] == ["broken"]
    assert _method(doc, "bicubic")["aggregate"]["ok"] == 4


def test_metric_with_missing_weights_is_skipped_and_named(harness_plugin, hr_folder, tmp_path):
    out = tmp_path / "out"
    r = invoke("compare", "--methods", "bicubic", "--scale", "2", "--data", str(hr_folder), "--out", str(out),
               "--metrics", "psnr_y_crop,needs_weights_3p,face_3p", "--device", "cpu")
    assert r.exit_code == 0, r.output
    # Named once, in the table's footnotes, with the commands that get the weights.
    msg = " ".join(r.stdout.split())
    assert msg.count("metric needs_weights_3p skipped") == 1 and "needs_weights_3p" not in r.stderr
    assert "restorekit weights pull fake-net-3p" in msg and "restorekit weights import fake-net-3p" in msg
    assert "needs_weights_3p" not in next(line for line in r.stdout.splitlines() if "psnr_y_crop" in line)
    doc = _doc(out)
    [skipped] = doc["skipped_metrics"]
    assert skipped["name"] == "needs_weights_3p" and "weights pull fake-net-3p" in skipped["reason"]
    assert all("needs_weights_3p" not in img["metrics"] for img in doc["images"])
    # The NaN-returning metric: NaNs named by its nan_label and counted, not averaged.
    face = _method(doc, "bicubic")["aggregate"]["metrics"]["face_3p"]
    dark = sum(smooth_image(64, 64, i).mean() / 255 < 0.5 for i in range(4))
    assert face["nan"] == dark and face["n"] == 4 - dark and 0 < dark < 4
    assert any(f"face_3p: faces not found: bicubic {dark}/4" in n for n in doc["notes"])
    assert f"faces not found: bicubic {dark}/4" in " ".join(r.stdout.split())
    # Without the table (--json), stderr names it, and stdout holds only the JSON.
    r = invoke("compare", "--methods", "bicubic", "--scale", "2", "--data", str(hr_folder), "--out", str(out),
               "--metrics", "psnr_y_crop,needs_weights_3p", "--device", "cpu", "--json")
    assert r.exit_code == 0, r.output
    assert "metric needs_weights_3p skipped" in " ".join(r.stderr.split())
    assert json.loads(r.stdout)["skipped_metrics"][0]["name"] == "needs_weights_3p"


def test_results_of_changed_method_code_are_not_reused(harness_plugin, hr5, tmp_path):
    """Same version, other code (an editable install, a re-shipped model): the folder's results are
    stale, so the run is refused naming the change, and --fresh recomputes every image."""
    from restorekit.harness.runner import code_fingerprint

    out = tmp_path / "out"
    args = ["compare", "--methods", "noisy3p", "--scale", "2", "--data", str(hr5), "--out", str(out),
            "--seeds", "0", "--metrics", "psnr_y_crop", "--device", "cpu", "-q"]
    assert invoke(*args).exit_code == 0
    before = code_fingerprint("thirdparty_harness")
    assert len(before) == 16 and _method(_doc(out), "noisy3p")
    source = tmp_path / "site" / "thirdparty_harness.py"
    source.write_text(source.read_text() + "\n# a fix\n")
    code_fingerprint.cache_clear()  # a new process reads the files again
    assert code_fingerprint("thirdparty_harness") != before
    harness_plugin.unlink()
    r = invoke(*args)
    assert r.exit_code == 2 and "the code of noisy3p changed" in r.output, r.output
    assert _calls(harness_plugin) == []
    r = invoke(*args, "--fresh")
    assert r.exit_code == 0 and _calls(harness_plugin).count("noisy3p") == 5
    assert sum(img["reused"] for img in _doc(out)["images"]) == 0


def test_results_are_not_reused_after_the_default_weights_are_reshipped(harness_plugin, hr5, tmp_path,
                                                                         monkeypatch):
    """A method's default weights may ship in another package (pulse's face prior is psp_sr's) and be
    re-shipped while the method's code stays the same: their registry sha256 is in its settings."""
    from dataclasses import replace
    from types import SimpleNamespace

    from restorekit.harness import runner
    from restorekit.plugins import registry

    cls = registry().method("noisy3p")
    monkeypatch.setattr(cls, "info", replace(cls.info, default_weights="prior3p"))
    pinned = {"sha": "a" * 64}
    monkeypatch.setattr(runner, "get_spec", lambda name: SimpleNamespace(
        files=[SimpleNamespace(sha256=pinned["sha"])]) if name == "prior3p" else None)
    assert runner.default_weights_pin(cls) == {"prior3p": ["a" * 64]}
    out = tmp_path / "out"
    args = ["compare", "--methods", "noisy3p", "--scale", "2", "--data", str(hr5), "--out", str(out),
            "--seeds", "0", "--metrics", "psnr_y_crop", "--device", "cpu", "-q"]
    assert invoke(*args).exit_code == 0
    assert invoke(*args).exit_code == 0 and _calls(harness_plugin).count("noisy3p") == 5  # reused
    pinned["sha"] = "b" * 64  # the default re-shipped
    r = invoke(*args)
    assert r.exit_code == 2 and "noisy3p.default_weights" in r.output, r.output
    assert _calls(harness_plugin).count("noisy3p") == 5


def test_values_of_another_metric_version_are_scored_again(harness_plugin, hr5, tmp_path, monkeypatch):
    """A stored metric value counts only for the version of the metric that scored it (code, version,
    weights): after a fix, a rerun scores every stored output again — the methods do not run — instead
    of averaging old values with new ones."""
    from restorekit.harness import metrics as M
    from restorekit.harness import runner

    out = tmp_path / "out"
    args = ["compare", "--methods", "noisy3p", "--scale", "2", "--data", str(hr5), "--out", str(out),
            "--seeds", "0", "--metrics", "psnr_y_crop,psnr_rgb", "--device", "cpu", "-q"]
    assert invoke(*args).exit_code == 0
    before = {img["image"]: img["metrics"] for img in _doc(out)["images"]}
    assert len(before) == len(_doc(out)["images"]) == 5  # hr5: five images, one method, one seed
    versions = {img["image"]: img["metric_versions"] for img in _doc(out)["images"]}
    assert all(set(v) == {"psnr_y_crop", "psnr_rgb"} and len(v["psnr_y_crop"]) == 16 for v in versions.values())
    fixed = M.PsnrYCrop.__call__
    monkeypatch.setattr(M.PsnrYCrop, "__call__", lambda self, p, t, **k: fixed(self, p, t, **k) + 1.0)
    harness_plugin.unlink()
    assert invoke(*args).exit_code == 0  # the same version: stored values stand
    assert {img["image"]: img["metrics"] for img in _doc(out)["images"]} == before
    real = runner.metric_fingerprint
    monkeypatch.setattr(runner, "metric_fingerprint",
                        lambda cls, d, v: real(cls, d, v) + ("-fixed" if cls is M.PsnrYCrop else ""))
    assert invoke(*args).exit_code == 0
    assert _calls(harness_plugin) == []  # outputs rescored, methods not run
    doc = _doc(out)
    assert sorted(img["image"] for img in doc["images"]) == sorted(before)  # every image rescored, once
    assert all(img["reused"] for img in doc["images"])
    for img in doc["images"]:
        assert img["metrics"]["psnr_y_crop"] == pytest.approx(before[img["image"]]["psnr_y_crop"] + 1.0, abs=1e-9)
        assert img["metrics"]["psnr_rgb"] == before[img["image"]]["psnr_rgb"]
        assert img["metric_versions"]["psnr_y_crop"].endswith("-fixed")


def test_single_sample_deterministic_runs_once(harness_plugin, hr5, tmp_path):
    """A method whose one sample ignores the seed (pSp-style mixing) runs once per image, not per seed."""
    out = tmp_path / "out"
    r = invoke("compare", "--methods", "mixer3p,noisy3p", "--scale", "2", "--data", str(hr5), "--out", str(out),
               "--seeds", "0,1,2", "--metrics", "psnr_y_crop", "--device", "cpu")
    assert r.exit_code == 0, r.output
    calls = _calls(harness_plugin)
    assert calls.count("mixer3p") == 5 and calls.count("noisy3p") == 15
    doc = _doc(out)
    assert {img["seed"] for img in doc["images"] if img["method"] == "mixer3p"} == {None}
    assert "mixer3p (" not in r.output and "noisy3p (3 seeds)" in r.output


def test_resume_reuses_results_and_fresh_recomputes(harness_plugin, hr5, tmp_path):
    out = tmp_path / "out"
    args = ["compare", "--methods", "flaky3p,noisy3p", "--scale", "2", "--data", str(hr5), "--out", str(out),
            "--seeds", "0,1,2", "--metrics", "psnr_y_crop", "--device", "cpu", "-q"]
    r = invoke(*args)
    assert r.exit_code == 1  # flaky3p fails on one image
    first = _calls(harness_plugin)
    assert first.count("flaky3p") == 5 and first.count("noisy3p") == 15  # deterministic once, stochastic per seed
    doc1 = _doc(out)

    harness_plugin.unlink()
    r = invoke(*args)
    # Only the failed (method, image) is retried; everything else comes from the store.
    assert _calls(harness_plugin) == ["flaky3p"]
    doc2 = _doc(out)
    assert sum(img["reused"] for img in doc2["images"]) == 19
    # noisy3p was not even built this time: its device, precision and weights come from the store.
    for d in (doc1, doc2):
        noisy = _method(d, "noisy3p")
        assert noisy["weights"] == {"noisy-net": {"sha256": "ab" * 32, "license": "MIT"}}
        assert noisy["precision"] == "float16-ish" and noisy["device"].startswith("cpu")
    strip = ("ms", "warmup", "peak_mem_mb", "reused")
    same = [{k: v for k, v in img.items() if k not in strip} for img in doc1["images"]]
    assert same == [{k: v for k, v in img.items() if k not in strip} for img in doc2["images"]]

    # A metric asked for later is computed from the stored outputs, without running methods.
    harness_plugin.unlink()
    r = invoke(*args[:-5], "--metrics", "psnr_y_crop,ssim_rgb", "--device", "cpu", "-q")
    assert _calls(harness_plugin) == ["flaky3p"]
    assert all("ssim_rgb" in img["metrics"] for img in _doc(out)["images"] if img["status"] == "ok")

    harness_plugin.unlink()
    r = invoke(*args, "--fresh")
    assert len(_calls(harness_plugin)) == 20
    doc3 = _doc(out)
    assert not any(img["reused"] for img in doc3["images"])
    # Deterministic: recomputing gives the same numbers.
    assert [img["metrics"] for img in doc3["images"]] == [img["metrics"] for img in doc1["images"]]


PICKY_PLUGIN = '''
from typing import ClassVar
from restorekit.errors import RestorekitError
from restorekit.hookspecs import hookimpl
from restorekit.interfaces import Method, MethodInfo, Options
import torch


class PickyOptions(Options):
    weights: str = "good.pt"


class Picky(Method):
    info: ClassVar[MethodInfo] = MethodInfo(name="picky3p", summary="nearest, with a weights file that may be missing")
    Options = PickyOptions

    def load(self):
        if self.options.weights != "good.pt":
            raise RestorekitError(f"{self.options.weights}: no such file")

    def restore(self, lr, scale, *, seed=None, n_samples=1):
        return torch.nn.functional.interpolate(lr, scale_factor=scale, mode="nearest").repeat_interleave(n_samples, 0)


@hookimpl
def register_methods(register):
    register(Picky)
'''


def test_a_run_that_wrote_nothing_does_not_block_the_corrected_one(plugin_site, hr_folder, tmp_path):
    """A typo must not lock --out: a run stopped by its inputs records no configuration, and a
    method that failed on every image (a weights file that does not exist) has no outputs to
    protect, so its corrected settings are taken — while a method with outputs is still refused."""
    plugin_site("thirdparty-picky", "thirdparty_picky", PICKY_PLUGIN)
    out = tmp_path / "out"
    base = ["compare", "--scale", "2", "--data", str(hr_folder), "--out", str(out), "--metrics", "psnr_rgb",
            "--device", "cpu", "-q"]
    r = invoke(*base, "--methods", "bicubic", "--lr-dir", str(tmp_path / "nope"))
    assert r.exit_code == 2 and "nope" in r.stderr
    assert not (out / "compare.json").exists()
    r = invoke(*base, "--methods", "bicubic,picky3p", "--opt", "picky3p.weights=typo.pt")
    assert r.exit_code == 1 and "typo.pt: no such file" in r.output
    assert json.loads((out / "compare.json").read_text())["methods"]["picky3p"]["options"]["weights"] == "typo.pt"
    r = invoke(*base, "--methods", "bicubic,picky3p")
    assert r.exit_code == 0, r.output
    doc = _doc(out)
    assert _method(doc, "picky3p")["aggregate"]["ok"] == 4
    assert all(img["reused"] for img in doc["images"] if img["method"] == "bicubic")
    assert json.loads((out / "compare.json").read_text())["methods"]["picky3p"]["options"]["weights"] == "good.pt"
    r = invoke(*base, "--methods", "picky3p", "--opt", "picky3p.weights=typo.pt")  # now it has outputs
    assert r.exit_code == 2 and "picky3p.options.weights: good.pt → typo.pt" in r.stderr


def test_changed_options_are_refused_unless_fresh(plugin_site, hr_folder, tmp_path):
    plugin_site("thirdparty-nearest", "thirdparty_nearest", GOOD_PLUGIN)
    out = tmp_path / "out"
    base = ["compare", "--methods", "nearest3p", "--scale", "2", "--data", str(hr_folder), "--out", str(out),
            "--metrics", "psnr_rgb", "--device", "cpu", "-q"]
    invoke(*base, "--opt", "nearest3p.gain=1.0")
    a = _method(_doc(out), "nearest3p")["aggregate"]["metrics"]["psnr_rgb"]["mean"]
    # Outputs are named by method and image only: other options in the same folder are refused.
    r = invoke(*base, "--opt", "nearest3p.gain=0.5")
    assert r.exit_code == 2 and "nearest3p.options.gain: 1.0 → 0.5" in r.stderr and "--fresh" in r.stderr
    assert _method(_doc(out), "nearest3p")["aggregate"]["metrics"]["psnr_rgb"]["mean"] == a
    invoke(*base, "--opt", "nearest3p.gain=0.5", "--fresh")
    doc = _doc(out)
    b = _method(doc, "nearest3p")["aggregate"]["metrics"]["psnr_rgb"]["mean"]
    assert not any(img["reused"] for img in doc["images"]) and b < a - 3
    invoke(*base, "--opt", "nearest3p.gain=1.0", "--fresh")  # recomputed, same numbers
    doc = _doc(out)
    assert not any(img["reused"] for img in doc["images"])
    assert _method(doc, "nearest3p")["aggregate"]["metrics"]["psnr_rgb"]["mean"] == a


def test_method_variants_run_side_by_side_with_their_own_options(plugin_site, hr_folder, tmp_path):
    plugin_site("thirdparty-nearest", "thirdparty_nearest", GOOD_PLUGIN)
    out = tmp_path / "out"
    args = ["compare", "--methods", "nearest3p,nearest3p@half", "--baseline", "nearest3p", "--scale", "2",
            "--data", str(hr_folder), "--out", str(out), "--metrics", "psnr_rgb", "--device", "cpu", "-q"]
    r = invoke(*args, "--opt", "nearest3p@half.gain=0.5")
    assert r.exit_code == 0, r.stderr
    doc = _doc(out)
    plain, half = _method(doc, "nearest3p"), _method(doc, "nearest3p@half")
    assert half["distribution"] == plain["distribution"] == "thirdparty-nearest"
    assert half["aggregate"]["metrics"]["psnr_rgb"]["mean"] < plain["aggregate"]["metrics"]["psnr_rgb"]["mean"] - 3
    # Each column keeps its own outputs and store, and is paired with the other image by image.
    stems = {p.stem for p in hr_folder.iterdir()}
    assert {p.stem for p in (out / "outputs" / "nearest3p@half").iterdir()} == stems
    assert (out / "results" / "nearest3p@half.jsonl").is_file()
    pair = doc["paired"]["methods"]["nearest3p@half"]["psnr_rgb"]
    assert doc["paired"]["baseline"] == "nearest3p" and pair["n"] == len(stems) and pair["win"] == 0.0
    # The variant's options are its own: changing them is refused in the same folder, as for any method.
    r = invoke(*args, "--opt", "nearest3p@half.gain=0.25")
    assert r.exit_code == 2 and "nearest3p@half.options.gain: 0.5 → 0.25" in r.stderr
    for bad, msg in (("nearest3p@", "a variant is METHOD@LABEL"), ("nearest3p@a.b", "a variant is METHOD@LABEL"),
                     ("nearst3p@x", "did you mean 'nearest3p'")):
        r = invoke("compare", "--methods", bad, "--scale", "2", "--data", str(hr_folder), "--out",
                   str(tmp_path / "o"))
        assert r.exit_code == 2 and msg in " ".join((r.output + r.stderr).split()), (bad, r.stderr)


def test_stochastic_mean_std_over_seeds(harness_plugin, hr_folder, tmp_path):
    out = tmp_path / "out"
    r = invoke("compare", "--methods", "noisy3p,bicubic", "--scale", "2", "--data", str(hr_folder), "--out",
               str(out), "--seeds", "0,1,2", "--metrics", "psnr_rgb", "--device", "cpu")
    assert r.exit_code == 0, r.output
    doc = _doc(out)
    noisy = _method(doc, "noisy3p")
    recs = [img for img in doc["images"] if img["method"] == "noisy3p"]
    assert sorted({img["seed"] for img in recs}) == [0, 1, 2] and len(recs) == 12
    assert {img["report"]["seed_used"] for img in recs} == {0, 1, 2}
    per_seed = [sum(img["metrics"]["psnr_rgb"] for img in recs if img["seed"] == s) / 4 for s in (0, 1, 2)]
    mean = sum(per_seed) / 3
    std = math.sqrt(sum((x - mean) ** 2 for x in per_seed) / 3)
    agg = noisy["aggregate"]["metrics"]["psnr_rgb"]
    assert agg["mean"] == pytest.approx(mean, abs=1e-9) and agg["std"] == pytest.approx(std, abs=1e-9)
    assert std > 1.0  # noise grows with the seed in this plugin
    assert _method(doc, "bicubic")["aggregate"]["metrics"]["psnr_rgb"]["std"] is None
    assert len([img for img in doc["images"] if img["method"] == "bicubic"]) == 4
    assert re.search(r"noisy3p \(3 seeds\).*\d ± \d", r.stdout)
    # Runtime: warm-up left out and recorded separately.
    assert sum(img["warmup"] for img in recs) == 1
    assert noisy["aggregate"]["runtime_ms"]["n"] == 11 and noisy["aggregate"]["warmup_ms"] is not None


def test_reports_written_and_self_contained(hr_folder, tmp_path):
    out = tmp_path / "out"
    r = invoke("compare", "--methods", "bicubic", "--scale", "4", "--data", str(hr_folder), "--out", str(out),
               "--metrics", CORE_METRICS, "--device", "cpu", "--json")
    assert r.exit_code == 0, r.output
    summary = json.loads(r.stdout)
    assert "images" not in summary and summary["results_json"].endswith("results.json")
    doc = _doc(out)
    psnr = _method(doc, "bicubic")["aggregate"]["metrics"]["psnr_y_crop"]["mean"]
    assert 25 < psnr < 60
    rows = list(csv.DictReader((out / "results.csv").open()))
    assert len(rows) == 4
    mean_csv = sum(float(r["psnr_y_crop"]) for r in rows) / 4
    assert mean_csv == pytest.approx(psnr, abs=1e-9)
    summ = list(csv.DictReader((out / "summary.csv").open()))
    assert float(summ[0]["psnr_y_crop_mean"]) == pytest.approx(psnr, abs=1e-9)
    page = (out / "report.html").read_text()
    assert f"{psnr:.2f}" in page and "bicubic" in page
    srcs = re.findall(r"""(?:src|href)\s*=\s*['"]([^'"]*)""", page, flags=re.I)
    assert srcs and all(s.startswith("data:image/png;base64,") for s in srcs)
    assert len(srcs) == 4 * 3  # LR | bicubic | HR per image
    assert "<link" not in page and "@import" not in page and "url(" not in page
    assert doc["backend"]["torch"] and doc["restorekit"] and doc["device"] == "cpu"
    assert {"distribution": "restorekit-baselines"}.items() <= _method(doc, "bicubic").items()


def test_lr_dir_pairs_match_generated_inputs(hr_folder, tmp_path):
    out = tmp_path / "out"
    invoke("compare", "--methods", "bicubic", "--scale", "4", "--data", str(hr_folder), "--out", str(out),
           "--metrics", "psnr_y_crop", "--device", "cpu", "-q")
    [lr_dir] = [p for p in (out / "inputs").iterdir() if p.is_dir()]
    out2 = tmp_path / "out2"
    r = invoke("compare", "--methods", "bicubic", "--scale", "4", "--data", str(hr_folder), "--lr-dir",
               str(lr_dir), "--out", str(out2), "--metrics", "psnr_y_crop", "--device", "cpu", "-q")
    assert r.exit_code == 0, r.output
    a = [img["metrics"] for img in _doc(out)["images"]]
    assert a == [img["metrics"] for img in _doc(out2)["images"]]
    # The LR cache is what `restorekit degrade` makes with the same spec (same per-image seed rule).
    deg = tmp_path / "deg"
    invoke("degrade", "--spec", "bicubic:4", "--input", str(hr_folder), "--output", str(deg), "-q")
    assert (deg / "img1.png").read_bytes() != b"" and \
        Image.open(deg / "img1.png").tobytes() == Image.open(lr_dir / "img1.png").tobytes()


@pytest.mark.parametrize("args,msg", [
    (["--methods", "bicubik"], "did you mean 'bicubic'"),
    (["--methods", "bicubic", "--metrics", "psnr_y_crp"], "did you mean 'psnr_y_crop'"),
    (["--methods", "bicubic", "--opt", "bicubc.clamp=none"], "not in --methods (did you mean 'bicubic'"),
    (["--methods", "bicubic", "--opt", "bicubic.antialis=1"], "unknown option 'antialis'"),
    (["--methods", "bicubic", "--opt", "clamp=none"], "expected METHOD.KEY=VALUE"),
    (["--methods", "bicubic", "--degradation", "bicubic:4"], "downsizes by 4, but --scale is 2"),
    (["--methods", "bicubic", "--degradation", "blurr:1"], "did you mean 'blur'"),
    (["--methods", "bicubic", "--seeds", "0,x"], "'x' is not a seed or a range like 0-7"),
])
def test_usage_errors_exit_2(hr_folder, tmp_path, args, msg):
    r = invoke("compare", "--scale", "2", "--data", str(hr_folder), "--out", str(tmp_path / "o"), *args)
    assert r.exit_code == 2
    assert msg in " ".join((r.output + r.stderr).split())


def test_missing_data_is_usage_error(tmp_path):
    r = invoke("compare", "--methods", "bicubic", "--scale", "2", "--data", str(tmp_path / "nope"),
               "--out", str(tmp_path / "o"))
    assert r.exit_code == 2 and "no such file or folder" in r.stderr
    assert not (tmp_path / "o").exists()  # nothing created on a usage error


def test_aggregation_rules():
    def rec(img: str, seed, v: float, ms: float = 1.0, warm: bool = False) -> Record:
        return Record("m", img, seed, "h", "i", "ok", ms=ms, warmup=warm, metrics={"x": v})

    # Deterministic: plain mean; inf wins; NaN counted and left out.
    assert metric_stat([rec("a", None, 1.0), rec("b", None, 3.0)], "x", False).mean == 2.0
    s = metric_stat([rec("a", None, math.inf), rec("b", None, 3.0)], "x", False)
    assert (s.mean, s.n, s.inf) == (math.inf, 2, 1)
    s = metric_stat([rec("a", None, math.nan), rec("b", None, 3.0)], "x", False)
    assert (s.mean, s.n, s.nan) == (3.0, 1, 1)
    # Stochastic: per-seed means 2 and 4 → 3 ± 1.
    s = metric_stat([rec("a", 0, 1.0), rec("b", 0, 3.0), rec("a", 1, 3.0), rec("b", 1, 5.0)], "x", True)
    assert (s.mean, s.std) == (3.0, 1.0)
    # Runtime excludes warm-up; falls back to it (flagged) when it is all there is.
    row = summarize("m", True, [None], 2, [rec("a", None, 1, 100.0, True), rec("b", None, 1, 4.0)], ["x"])
    assert row.runtime_ms.mean == 4.0 and row.warmup_ms == 100.0 and not row.runtime_is_warmup
    row = summarize("m", True, [None], 1, [rec("a", None, 1, 100.0, True)], ["x"])
    assert row.runtime_ms.mean == 100.0 and row.runtime_is_warmup
    # Best per column respects direction, ties, and needs two contenders.
    a = summarize("a", True, [None], 1, [rec("i", None, 2.0, 5.0)], ["x"])
    b = summarize("b", True, [None], 1, [Record("b", "i", None, "h", "i", "ok", ms=3.0, metrics={"x": 2.0})], ["x"])
    assert best_per_column([a, b], {"x": True}) == {"x": {"a", "b"}, "runtime": {"b"}}
    assert best_per_column([a], {"x": False}) == {"x": set(), "runtime": set()}


def test_json_float_encoding_round_trips():
    for v in (1.5, math.inf, -math.inf, 0.0):
        assert decode_float(encode_float(v)) == v
    assert encode_float(math.nan) is None and math.isnan(decode_float(None))


def test_bench_harness_reports_cost_per_image_next_to_the_method(harness_plugin):
    r = invoke("bench", "harness", "--n", "3", "--size", "32", "--scale", "2", "--metrics", "psnr_y_crop",
               "--standin-ms", "150", "--json")  # far above bicubic's 32-px cost, even on a loaded machine
    assert r.exit_code == 0, r.output
    data = json.loads(r.stdout)
    real, standin = data["runs"]
    assert (real["method"], standin["method"]) == ("bicubic", "bench_standin")
    for run in (real, standin):
        assert run["failures"] == 0 and run["metrics"] == ["psnr_y_crop"]
        ms = run["ms_per_image"]
        assert set(ms) == {"reading", "degrading", "metrics", "writing", "report", "set-up", "other"}
        assert all(v >= 0 for v in ms.values()) and ms["reading"] > 0 and ms["writing"] > 0 and ms["report"] > 0
        assert run["harness_ms_per_image"] == pytest.approx(sum(ms.values()))
        assert run["harness_to_method"] == pytest.approx(run["harness_ms_per_image"] / run["method_ms_per_image"])
        # every stage, the method and its loading add up to the wall time
        total_ms = run["harness_ms_per_image"] + run["method_ms_per_image"] + run["method_load_s"] * 1000 / 3
        assert total_ms == pytest.approx(run["wall_s"] * 1000 / 3, rel=1e-6)
    assert 150 <= standin["method_ms_per_image"] < 400  # the stand-in takes its time, and no more than it must
    assert real["method_ms_per_image"] < standin["method_ms_per_image"]
    assert real["harness_to_method"] > standin["harness_to_method"]
    assert "bench_standin" not in registry().names("methods")  # registered for the bench only
    r = invoke("bench", "harness", "--n", "2", "--size", "32", "--scale", "2", "--metrics", "psnr_y_crop")
    assert r.exit_code == 0 and "harness/method" in r.stdout and "stand-in 50 ms" in r.stdout
    # An LR of no pixel, or a method failing on the images: an error, not a table of zeros.
    r = invoke("bench", "harness", "--n", "2", "--size", "16", "--scale", "32", "--metrics", "psnr_y_crop")
    assert r.exit_code == 2 and "--size 16 is smaller than --scale 32" in r.stderr
    r = invoke("bench", "harness", "--n", "2", "--size", "48", "--scale", "2", "--method", "flaky3p",
               "--metrics", "psnr_y_crop")  # flaky3p fails on 24-px-wide inputs
    assert r.exit_code == 2 and "bench harness: flaky3p failed on 2/2 images" in r.stderr, r.output


def test_lr_dir_size_mismatch_fails_that_image_only(hr_folder, tmp_path):
    lr = tmp_path / "lr"
    lr.mkdir()
    for i in range(4):
        side = 32 if i != 2 else 30  # img2's LR is not HR / 2
        Image.open(hr_folder / f"img{i}.png").resize((side, side), Image.BICUBIC).save(lr / f"img{i}.png")
    (lr / "extra.png").write_bytes((lr / "img0.png").read_bytes())
    out = tmp_path / "out"
    r = invoke("compare", "--methods", "bicubic", "--scale", "2", "--data", str(hr_folder), "--lr-dir", str(lr),
               "--out", str(out), "--metrics", "psnr_rgb", "--device", "cpu", "-q")
    assert r.exit_code == 1
    assert "bicubic failed on 1 image(s) [img2]" in r.stderr and "is not 2× its LR 30×30" in r.stderr
    doc = _doc(out)
    assert _method(doc, "bicubic")["aggregate"]["ok"] == 3 and doc["inputs"]["unmatched"] == ["extra"]
    assert any("without a partner" in n and "extra" in n for n in doc["notes"])


def test_metrics_are_scored_in_full_float32_and_the_flags_restored():
    """TensorFloat-32 (cuDNN's default on CUDA) would move network metrics by more than the
    differences they are read for: score() turns it off around each metric, and back after."""
    import torch

    from restorekit.harness.runner import MetricState, score
    from restorekit.interfaces import Metric

    seen = []

    class Flags(Metric):
        name = "flags_3p"
        higher_is_better = True

        def __call__(self, pred, target, *, lr, scale):
            seen.append((torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32))
            return torch.ones(1, dtype=torch.float64)

    before = (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = True
    try:
        m = MetricState("flags_3p", Flags, "tests", "tests", "0", instance=Flags())
        x = torch.rand(1, 3, 8, 8)
        assert score([m], x, x, x[..., ::2, ::2], 2, torch.device("cpu")) == ({"flags_3p": 1.0}, {})
        assert seen == [(False, False)]
        assert (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32) == (True, True)
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = before


SPOILER_PLUGIN = '''
from typing import ClassVar
import torch
from restorekit.hookspecs import hookimpl
from restorekit.interfaces import Method, MethodInfo


class Spoiler(Method):
    info: ClassVar[MethodInfo] = MethodInfo(name="spoiler3p", summary="zeroes its input in place (a bug)")

    def restore(self, lr, scale, *, seed=None, n_samples=1):
        lr.mul_(0.0)
        return torch.nn.functional.interpolate(lr, scale_factor=scale, mode="nearest")


@hookimpl
def register_methods(register):
    register(Spoiler)
'''


def test_a_method_that_changes_its_input_in_place_spoils_no_other_methods_scores(plugin_site, hr_folder,
                                                                                 tmp_path):
    """compare handed every method the cached LR itself: bicubic after such a method scored
    PSNR 5.75 instead of 23.39 and an LR-consistency of 0, silently."""
    plugin_site("thirdparty-spoiler", "thirdparty_spoiler", SPOILER_PLUGIN)
    scores = {}
    for methods in ("spoiler3p,bicubic", "bicubic"):
        out = tmp_path / methods.replace(",", "_")
        r = invoke("compare", "--methods", methods, "--scale", "2", "--data", str(hr_folder), "--out", str(out),
                   "--device", "cpu", "--metrics", "psnr_rgb,lr_consistency", "-q")
        assert r.exit_code == 0, r.output
        scores[methods] = _method(_doc(out), "bicubic")["aggregate"]["metrics"]
    assert scores["spoiler3p,bicubic"] == scores["bicubic"]


BROKEN_LOAD_PLUGIN = '''
from typing import ClassVar
from restorekit.hookspecs import hookimpl
from restorekit.interfaces import Method, MethodInfo


class NeedsLib(Method):
    info: ClassVar[MethodInfo] = MethodInfo(name="needslib3p", summary="imports a library at load")

    def load(self):
        import not_installed_lib_3p  # noqa: F401

    def restore(self, lr, scale, *, seed=None, n_samples=1):
        return lr


@hookimpl
def register_methods(register):
    register(NeedsLib)
'''


def test_run_names_the_method_and_plugin_whose_load_fails(plugin_site, hr_folder, tmp_path):
    """run said 'unexpected ModuleNotFoundError … report it' (a restorekit bug, no method named);
    compare already said 'could not load needslib3p: …'."""
    plugin_site("thirdparty-needslib", "thirdparty_needslib", BROKEN_LOAD_PLUGIN)
    r = CliRunner().invoke(build_cli(), ["run", "needslib3p", "--scale", "2", "--input", str(hr_folder),
                                         "--output", str(tmp_path / "o")])
    assert r.exit_code == 2, r.output
    assert r.output.strip() == ("error: could not load needslib3p (plugin 'thirdparty_needslib'): "
                                "ModuleNotFoundError: No module named 'not_installed_lib_3p'"), r.output
