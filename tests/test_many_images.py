"""Folders of many images: what `run`, `degrade` and `compare` do per image beyond the method's
own work stays the same for each image, however many there are (each file's header read once, an
output folder resolved once, each output's record read once, the LR manifest's rewrites a bounded
share of the time), and the checks that work replaces give the same answers."""

from __future__ import annotations

import json
import os
from pathlib import Path
from types import SimpleNamespace

import pytest
from click.testing import CliRunner
from PIL import Image

import restorekit.batch as batch_mod
import restorekit.harness.inputs as inputs_mod
from restorekit.batch import process_files
from restorekit.cli import build_cli
from restorekit.degradations import parse_spec
from restorekit.images import list_inputs, read_image

from plugin_sources import GAMMA_PLUGIN

N = 100


def invoke(*args: object):
    return CliRunner().invoke(build_cli(), [str(a) for a in args], catch_exceptions=False)


def folder_of(path: Path, n: int = N, size: int = 4) -> Path:
    """``n`` tiny PNGs, each of its own colour."""
    path.mkdir()
    for i in range(n):
        Image.new("RGB", (size, size), (i % 256, (7 * i) % 256, 90)).save(path / f"img{i:04d}.png")
    return path


def test_run_reads_each_input_header_once(tmp_path, monkeypatch):
    """Before building the method, run asked whether any input was usable by reading every pending
    input's header, then process_files read each header again: two opens and parses per file."""
    src = folder_of(tmp_path / "in")
    probes: list[str] = []
    real = batch_mod.probe_size

    def probe(path, **kw):
        probes.append(Path(path).name)
        return real(path, **kw)

    monkeypatch.setattr(batch_mod, "probe_size", probe)
    r = invoke("run", "bicubic", "--scale", "2", "--input", src, "--output", tmp_path / "out", "-q", "--json")
    assert r.exit_code == 0, r.output
    assert len(json.loads(r.stdout)["written"]) == N
    assert len(probes) == N + 1 and len(set(probes)) == N  # each once, and the first once more: "any usable?"


def test_run_builds_no_method_when_no_output_fits_its_format(tmp_path, monkeypatch):
    """The check before building the method left out the output format's size limit (WebP: 16383
    px a side), so a run in which no input could succeed built the method all the same."""
    src = folder_of(tmp_path / "in", n=3, size=8)
    r = invoke("run", "bicubic", "--scale", "2100", "--ext", "webp", "--max-output-pixels", 10**9,
               "--input", src, "--output", tmp_path / "out", "-q", "--json")
    assert r.exit_code == 1, r.output
    doc = json.loads(r.stdout)
    assert doc["device"] is None  # said without building the method
    assert doc["written"] == [] and len(doc["failed"]) == 3
    assert all("larger than webp holds" in f["error"] for f in doc["failed"])


def _copy(image, item):
    return [(item.stem, image)]


def test_process_files_resolves_the_output_folder_once(tmp_path, monkeypatch):
    """Each output path was resolved twice (before and at its write): a system call per folder on
    the way, per output. The folder is resolved once; every output is still written."""
    items = list_inputs(folder_of(tmp_path / "in"))
    out = tmp_path / "a" / "b" / "out"
    out.mkdir(parents=True)
    resolved: list[Path] = []
    real = Path.resolve

    def resolve(self, *a, **kw):
        if out in (self, *self.parents):
            resolved.append(self)
        return real(self, *a, **kw)

    monkeypatch.setattr(Path, "resolve", resolve)
    result = process_files(items, out, _copy, max_pixels=10**6, quiet=True)
    assert len(result.written) == N and not result.failed
    assert resolved == [out]


def test_output_checks_give_the_same_answers_at_scale(tmp_path):
    """What was asked of each output path (does it lead to an input, is a folder there, does it
    exist) is answered as before: an output that is a link to an input, or a folder, fails its
    input; one that exists is skipped; the rest are written."""
    src = folder_of(tmp_path / "in")
    items = list_inputs(src)
    out = tmp_path / "out"
    out.mkdir()
    os.symlink(src / "img0003.png", out / "img0007.png")  # a link to an input where an output goes
    (out / "img0009.png").mkdir()
    Image.new("RGB", (8, 8)).save(out / "img0011.png")  # finished before
    os.symlink(out / "img0011.png", out / "img0013.png")  # a link to a finished output
    result = process_files(items, out, _copy, max_pixels=10**6, quiet=True)
    failed = {Path(f["path"]).name: f["error"] for f in result.failed}
    assert set(failed) == {"img0007.png", "img0009.png"}
    assert "is an input file; refusing to overwrite an input" in failed["img0007.png"]
    assert "is a folder, where the output goes" in failed["img0009.png"]
    assert sorted(Path(s["path"]).name for s in result.skipped) == ["img0011.png", "img0013.png"]
    assert len(result.written) == N - 4
    assert (src / "img0003.png").stat().st_size > 0 and (out / "img0007.png").is_symlink()  # untouched


def test_an_output_folder_link_pointed_at_the_inputs_midway_is_noticed(tmp_path):
    """The output folder is resolved once, and again when the folder it leads to changes: a link
    re-pointed at the input folder during the run makes the later outputs inputs, refused."""
    src = folder_of(tmp_path / "in", n=20)
    items = list_inputs(src)
    first = tmp_path / "first"
    first.mkdir()
    out = tmp_path / "out"
    out.symlink_to(first)

    def fn(image, item):
        if item.stem == "img0009":  # its output (and every later one) is checked after the switch
            out.unlink()
            out.symlink_to(src)
        return _copy(image, item)

    result = process_files(items, out, fn, max_pixels=10**6, quiet=True)
    assert len(result.written) == 9
    assert [Path(f["path"]).name for f in result.failed] == [f"img{i:04d}.png" for i in range(9, 20)]
    assert all("is an input file" in f["error"] for f in result.failed)
    assert sorted(p.name for p in first.iterdir()) == [f"img{i:04d}.png" for i in range(9)]
    assert sorted(p.name for p in src.iterdir()) == [f"img{i:04d}.png" for i in range(20)]


def test_degrade_rerun_reads_each_output_record_once(tmp_path, monkeypatch, plugin_site):
    """With a step from a plugin, a rerun read every output's record twice: once to compare the
    spec and seed, once more to compare the plugin's code."""
    import restorekit.run_record as record_mod
    from restorekit import plugins
    from restorekit.harness.runner import code_fingerprint

    code_fingerprint.cache_clear()
    plugin_site("thirdparty-gamma", "thirdparty_gamma", GAMMA_PLUGIN)
    try:
        src = folder_of(tmp_path / "in", size=8)
        args = ["degrade", "--spec", "gamma3p:2+bicubic:2", "--input", src, "--output", tmp_path / "lr", "-q"]
        assert invoke(*args).exit_code == 0
        reads: list[str] = []
        real = record_mod.read_note

        def read_note(path):
            reads.append(Path(path).name)
            return real(path)

        monkeypatch.setattr(record_mod, "read_note", read_note)  # (degrade reads records through run_record)
        r = invoke(*args, "--json")
        assert r.exit_code == 0, r.output
        assert len(json.loads(r.stdout)["skipped"]) == N
        assert len(reads) == N and len(set(reads)) == N
    finally:
        code_fingerprint.cache_clear()
        plugins.reset()


def test_compare_decodes_each_hr_file_from_the_bytes_it_hashed(tmp_path, monkeypatch):
    """Each HR file was read three times to make its LR (header, bytes for the hash, then opened
    again to decode): the decode now takes the bytes already read and hashed, so the LR is made
    from exactly the content the manifest records."""
    hr = folder_of(tmp_path / "hr", n=20, size=8)
    reads: list[str] = []

    def read_image_counted(path, **kw):
        reads.append(Path(path).name)
        return read_image(path, **kw)

    monkeypatch.setattr(inputs_mod, "read_image", read_image_counted)
    made = inputs_mod.from_degradation(str(hr), parse_spec("bicubic:2"), 2, tmp_path / "out")
    assert len(made.pairs) == 20 and not made.failures
    assert reads == []
    manifest = json.loads((made.manifest or Path()).read_text())["images"]
    for pair in made.pairs:  # the LR made from those bytes is the one of the file
        lr, hr_t = made.load(pair)
        assert tuple(hr_t.shape[-2:]) == (8, 8) and tuple(lr.shape[-2:]) == (4, 4)
        assert (hr_t == read_image(pair.hr_path)).all()
        assert manifest[pair.stem]["hr"] == str(pair.hr_path)


def test_the_lr_manifest_rewrites_take_a_bounded_share_of_the_time(tmp_path, monkeypatch):
    """The manifest (every LR file made so far) was rewritten every 15 s: with a write's cost
    growing with the set, a large set spent a growing share of its time (quadratic in its size)
    rewriting it. On a simulated clock (1 s per image, a write 0.05 s per entry), the writes made
    part-way now take a bounded share, and the manifest is still written part-way."""
    hr = folder_of(tmp_path / "hr", size=8)
    clock = SimpleNamespace(t=0.0)
    monkeypatch.setattr(inputs_mod, "time", SimpleNamespace(monotonic=lambda: clock.t, perf_counter=lambda: clock.t))
    writes: list[int] = []
    real_write, real_degrade = inputs_mod._write_manifest, inputs_mod.degrade_hr

    def write(path, spec, scale, images, *a, **kw):
        writes.append(len(images))
        clock.t += 0.05 * len(images)
        return real_write(path, spec, scale, images, *a, **kw)

    def degrade(*a, **kw):
        clock.t += 1.0
        return real_degrade(*a, **kw)

    monkeypatch.setattr(inputs_mod, "_write_manifest", write)
    monkeypatch.setattr(inputs_mod, "degrade_hr", degrade)
    made = inputs_mod.from_degradation(str(hr), parse_spec("bicubic:2"), 2, tmp_path / "out")
    assert len(made.pairs) == N
    part_way, last = writes[:-1], writes[-1]
    assert last == N and part_way  # the whole list at the end, and some part-way (a stopped run resumes)
    assert sum(0.05 * n for n in part_way) <= 0.1 * N  # (every 15 s: 6 writes, 16 s of the 100 s)
    assert part_way == sorted(part_way)
    assert json.loads((made.manifest or Path()).read_text())["images"].keys() == {p.stem for p in made.pairs}


@pytest.mark.parametrize("n_samples", [1, 3])
def test_a_rerun_over_a_finished_folder_reads_no_input(tmp_path, monkeypatch, n_samples):
    """A rerun over N finished inputs (each with its samples) reads no input file: each is skipped
    from its outputs alone."""
    src = folder_of(tmp_path / "in", n=50)
    out = tmp_path / "out"
    args = ["run", "bicubic", "--scale", "2", "--n-samples", n_samples, "--input", src, "--output", out, "-q"]
    assert invoke(*args).exit_code == 0
    opened: list[str] = []
    real = batch_mod.probe_size

    def probe(path, **kw):
        opened.append(str(path))
        return real(path, **kw)

    monkeypatch.setattr(batch_mod, "probe_size", probe)
    monkeypatch.setattr(batch_mod, "read_image", lambda *a, **kw: pytest.fail("an input was read"))
    r = invoke(*args, "--json")
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert doc["written"] == [] and len(doc["skipped"]) == 50 * n_samples and opened == []


def test_each_stored_record_is_made_json_once(tmp_path, monkeypatch):
    """Each record appended to (and compacted into) compare's result store was made strict-JSON
    twice (by Record.to_json, then again by dumps). Its line is the same."""
    import math

    import restorekit.harness.store as store_mod
    from restorekit.harness.store import Record, ResultStore

    records = [Record("bicubic", f"img{i:04d}", None, "s" * 16, "h" * 16, "ok", ms=1.5, output=f"outputs/b/{i}.png",
                      output_sha256="0" * 64, metrics={"psnr_rgb": math.inf if i == 3 else 30.0 + i,
                                                       "ssim_rgb": math.nan if i == 4 else 0.9})
               for i in range(N)]
    walked: list[str] = []
    real = store_mod.jsonable

    def jsonable(obj):
        if isinstance(obj, dict) and "settings" in obj and "image" in obj:
            walked.append(obj["image"])
        return real(obj)

    monkeypatch.setattr(store_mod, "jsonable", jsonable)
    store = ResultStore(tmp_path)
    for rec in records:
        store.append(rec)
    store.close()
    assert len(walked) == N
    lines = store.path("bicubic").read_text().splitlines()
    assert lines == [store_mod.dumps(real(r.to_json())) for r in records]  # as before
    assert '"psnr_rgb": "Infinity"' in lines[3] and '"ssim_rgb": null' in lines[4]
    walked.clear()
    store.compact("bicubic", records)
    assert len(walked) == N
    assert store.path("bicubic").read_text().splitlines() == lines
    assert set(store.load("bicubic")) == {r.key for r in records}
