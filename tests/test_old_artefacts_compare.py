"""compare --out folders written by earlier restorekit versions, built by hand as those versions
wrote them: what compare reuses of them is only what this code would have made; the rest is made
again or refused in one line."""

from __future__ import annotations

import hashlib
import json
import math
import zlib
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from restorekit.cli import build_cli
from restorekit.degradations import crop_to_multiple, parse_spec
from restorekit.harness.inputs import degrade_hr, lr_folder_key, png_bytes
from restorekit.harness.store import Record, ResultStore
from restorekit.images import read_image, to_pil

SPEC = "noise:10+bicubic:2"


def _compare(data: Path, out: Path, *extra: object):
    args = ["compare", "--methods", "bicubic", "--scale", "2", "--data", data, "--out", out, "--degradation", SPEC,
            "--metrics", "psnr_rgb", "--device", "cpu", "-q", *extra]
    return CliRunner().invoke(build_cli(), [str(a) for a in args], catch_exceptions=False)


def _old_lr_folder(hr: Path, out: Path) -> Path:
    """``inputs/<sha256(spec|scale)[:12]>/`` as compare wrote it before the noise was seeded from
    the pixels: each image's noise drawn with the CRC-32 of its stem, recorded as ``seed``."""
    folder = out / "inputs" / hashlib.sha256(f"{SPEC}|2".encode()).hexdigest()[:12]
    folder.mkdir(parents=True)
    images = {}
    for p in sorted(hr.glob("*.png")):
        seed = zlib.crc32(p.stem.encode())
        lr = parse_spec(SPEC)(crop_to_multiple(read_image(p), 2), generator=torch.Generator().manual_seed(seed))
        data = png_bytes(to_pil(lr.clamp(0, 1)))
        (folder / f"{p.stem}.png").write_bytes(data)
        images[p.stem] = {"hr": str(p), "hr_sha256": hashlib.sha256(p.read_bytes()).hexdigest(),
                          "lr_sha256": hashlib.sha256(data).hexdigest(), "seed": str(seed)}
    (folder / "manifest.json").write_text(json.dumps({"degradation": SPEC, "scale": 2, "images": images}, indent=1))
    return folder


def _this_codes_lr(hr: Path) -> dict[str, bytes]:
    return {f"{p.stem}.png": png_bytes(to_pil(degrade_hr(read_image(p), parse_spec(SPEC), 2, where=p)[1]))
            for p in sorted(hr.glob("*.png"))}


def _pngs(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.glob("*.png"))}


def _psnr(out: Path) -> dict[str, float]:
    doc = json.loads((out / "results.json").read_text())
    return {i["image"]: i["metrics"]["psnr_rgb"] for i in doc["images"]}


def test_the_lr_key_is_still_the_one_earlier_versions_used():
    """(What makes the old LR folder a trap: built-in specs keep the key of ``spec|scale``.)"""
    assert lr_folder_key(SPEC, 2) == hashlib.sha256(f"{SPEC}|2".encode()).hexdigest()[:12]


def test_a_folder_from_before_compare_json_is_refused_and_fresh_remakes_its_lr_files(hr_folder, tmp_path):
    """A folder an earlier compare filled (stem-seeded LR files, a result file, outputs; no
    compare.json) was accepted and its LR files reused: its numbers differed from a new folder's."""
    out = tmp_path / "old"
    lr = _old_lr_folder(hr_folder, out)
    (out / "outputs" / "bicubic").mkdir(parents=True)
    (out / "outputs" / "bicubic" / "img0.png").write_bytes(b"old output")
    (out / "results").mkdir()
    (out / "results" / "bicubic.jsonl").write_text(json.dumps({
        "method": "bicubic", "image": "img0", "seed": None, "settings": "0123456789abcdef", "input": "fedcba9876543210",
        "status": "ok", "ms": 1.0, "output": "outputs/bicubic/img0.png", "output_sha256": "0" * 64,
        "metrics": {"psnr_rgb": 99.0}}) + "\n")
    (out / "results.json").write_text("{}")
    old_lr = _pngs(lr)
    assert old_lr != _this_codes_lr(hr_folder)  # other noise under the same names

    r = _compare(hr_folder, out)
    assert r.exit_code == 2
    line = r.stderr.strip()
    assert "\n" not in line and "Traceback" not in r.output
    assert line.startswith(f"error: {out} holds what an earlier restorekit's compare wrote (results of bicubic")
    assert "compare.json" in line and "--fresh" in line
    assert _pngs(lr) == old_lr and (out / "outputs" / "bicubic" / "img0.png").read_bytes() == b"old output"

    r = _compare(hr_folder, out, "--fresh")
    assert r.exit_code == 0, r.output
    assert _pngs(lr) == _this_codes_lr(hr_folder)  # made by this code
    assert "0123456789abcdef" not in (out / "results" / "bicubic.jsonl").read_text()  # the old record went
    assert not any(i["reused"] for i in json.loads((out / "results.json").read_text())["images"])


def test_lr_files_alone_from_an_earlier_version_are_refused(hr_folder, tmp_path):
    """A run of an earlier version stopped while making its LR files left only inputs/<key>/."""
    out = tmp_path / "old"
    _old_lr_folder(hr_folder, out)
    r = _compare(hr_folder, out)
    assert r.exit_code == 2 and "LR files made by other degradation code (inputs/" in r.stderr, r.output
    assert not (out / "compare.json").exists()


def test_lr_files_of_a_run_of_this_code_stopped_early_are_still_reused(hr_folder, tmp_path):
    """This code's LR folder without compare.json (a run stopped before recording it) resumes."""
    out = tmp_path / "cmp"
    assert _compare(hr_folder, out).exit_code == 0
    for name in ("compare.json", "results.json", "results.csv", "summary.csv", "report.html"):
        (out / name).unlink(missing_ok=True)
    for f in (out / "results").iterdir():
        f.unlink()
    for f in (out / "outputs" / "bicubic").iterdir():
        f.unlink()
    lr = out / "inputs" / lr_folder_key(SPEC, 2)
    stamps = {p.name: p.stat().st_mtime_ns for p in lr.iterdir()}
    r = _compare(hr_folder, out)
    assert r.exit_code == 0, r.output
    assert {p.name: p.stat().st_mtime_ns for p in lr.iterdir()} == stamps  # not made again


def test_a_compare_json_from_before_core_code_was_recorded_is_refused(hr_folder, tmp_path):
    """compare.json of 2026-12-04 (no core_code in its inputs, no code fingerprints): other code."""
    out = tmp_path / "cmp"
    assert _compare(hr_folder, out).exit_code == 0
    doc = json.loads((out / "compare.json").read_text())
    del doc["inputs"]["core_code"]
    for settings in doc["methods"].values():
        for key in ("code", "core_code"):
            settings.pop(key, None)
    (out / "compare.json").write_text(json.dumps(doc))
    r = _compare(hr_folder, out)
    assert r.exit_code == 2 and "made by other restorekit code" in r.stderr, r.output
    r = _compare(hr_folder, out, "--fresh")
    assert r.exit_code == 0 and not any(i["reused"] for i in json.loads((out / "results.json").read_text())["images"])


def test_records_without_metric_versions_are_scored_again(hr_folder, tmp_path):
    """Store lines of 2026-11-28 (no metric_versions, no metric_errors): the outputs are reused, the
    numbers are not — every metric is scored again from the stored output."""
    out = tmp_path / "cmp"
    assert _compare(hr_folder, out).exit_code == 0
    want = _psnr(out)
    path = out / "results" / "bicubic.jsonl"
    lines = []
    for line in path.read_text().splitlines():
        d = json.loads(line)
        del d["metric_versions"], d["metric_errors"]
        d["metrics"] = {"psnr_rgb": 1.0}  # a stale number
        lines.append(json.dumps(d))
    path.write_text("\n".join(lines) + "\n")
    r = _compare(hr_folder, out)
    assert r.exit_code == 0, r.output
    doc = json.loads((out / "results.json").read_text())
    assert all(i["reused"] for i in doc["images"])
    assert _psnr(out) == pytest.approx(want) and all(math.isfinite(v) for v in want.values())
    assert all(rec.metric_versions for rec in ResultStore(out).load("bicubic").values())


def test_an_old_record_reads_back_with_defaults():
    """The first store line shape reads as a Record (fields added since take their defaults)."""
    rec = Record.from_json({"method": "m", "image": "a", "seed": 3, "settings": "s", "input": "i", "status": "ok",
                            "ms": 2.5, "output": "outputs/m/a_s3.png", "output_sha256": "ab",
                            "metrics": {"psnr": "Infinity"}, "report": {}})
    assert rec.metric_versions == {} and rec.metric_errors == {} and rec.metrics == {"psnr": math.inf}
