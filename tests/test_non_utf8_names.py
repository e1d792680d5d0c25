"""A file name that is not UTF-8 (Linux names are bytes: an old photo named in Latin-1, b'b\\xff.png')
reaches Python as a str holding surrogate escapes. Every command that listed inputs stopped on the
first such name with "unexpected UnicodeEncodeError" (exit 1, nothing written): the name's length,
the temp file's name, the CSV and HTML reports encoded it as strict UTF-8. It is an input like any
other now: its output keeps its bytes, and text reports show it escaped (``\\udcff``), as JSON does.
So in realism, bench faces and face runs' sidecars; a damaged file of such a name fails alone."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from plugin_sources import one_face_plugin_source
from restorekit.cli import build_cli
from restorekit.images import MAX_QUALIFIED_BYTES, output_names, save_image, temp_prefix
from restorekit.testing.data import random_alexnet_file, smooth_image

BAD = os.fsdecode(b"b\xff")  # 'b\udcff'


def _strict(text: str) -> object:
    def refuse(name: str) -> None:
        raise ValueError(f"not strict JSON: {name}")

    return json.loads(text, parse_constant=refuse)


@pytest.fixture
def photos(tmp_path: Path) -> Path:
    d = tmp_path / "hr"
    d.mkdir()
    Image.fromarray(smooth_image(32, 32, 0)).save(d / "a.png")
    try:
        Image.fromarray(smooth_image(32, 32, 1)).save(d / f"{BAD}.png")
    except (OSError, UnicodeEncodeError):  # pragma: no cover - a file system that takes UTF-8 names only
        pytest.skip("this file system refuses names that are not UTF-8")
    return d


def invoke(*args: str):
    return CliRunner().invoke(build_cli(), list(args))


def test_run_and_degrade_take_a_name_that_is_not_utf8(photos: Path, tmp_path: Path) -> None:
    for command in (["run", "bicubic", "--scale", "2"], ["degrade", "--spec", "bicubic:2"]):
        out = tmp_path / command[0]
        r = invoke(*command, "--input", str(photos), "--output", str(out), "--json")
        assert r.exit_code == 0, r.output
        doc = _strict(r.stdout)
        assert doc["failed"] == [] and sorted(doc["written"]) == [str(out / "a.png"), str(out / f"{BAD}.png")]
        assert sorted(os.listdir(os.fsencode(out))) == [b"a.png", b"b\xff.png"]  # its bytes, not a changed name
        again = invoke(*command, "--input", str(photos), "--output", str(out), "--json")
        assert again.exit_code == 0 and len(_strict(again.stdout)["skipped"]) == 2, again.output


def test_compare_reports_show_the_name_escaped(photos: Path, tmp_path: Path) -> None:
    out = tmp_path / "c"
    r = invoke("compare", "--methods", "bicubic", "--scale", "2", "--data", str(photos), "--out", str(out),
               "--metrics", "psnr_rgb", "-q")
    assert r.exit_code == 0, r.output
    rows = (out / "results.csv").read_text(encoding="utf-8").splitlines()
    assert any(row.startswith("bicubic,b\\udcff,") for row in rows), rows
    assert "b\\udcff" in (out / "report.html").read_text(encoding="utf-8")
    doc = _strict((out / "results.json").read_text(encoding="utf-8"))
    assert BAD in json.dumps(doc, ensure_ascii=False, default=str).encode("utf-8", "surrogateescape").decode(
        "utf-8", "surrogateescape")


def test_long_names_and_temp_names_count_a_names_bytes() -> None:
    """Two inputs of one long stem in two folders are told apart by their folder; a name too long
    for that is hashed. Its length is counted in the bytes the file system stores."""
    long = "x" * (MAX_QUALIFIED_BYTES - 3) + BAD  # with 'a__' one byte over
    names = output_names([Path(f"/photos/a/{long}.png"), Path(f"/photos/b/{long}.png")])
    assert len(set(names)) == 2 and all(len(os.fsencode(n)) <= MAX_QUALIFIED_BYTES for n in names), names
    assert all(os.fsencode(n).endswith(b"xx" + b"b\xff.png") for n in names), names  # its bytes kept
    assert output_names([Path(f"/photos/{BAD}.png")]) == [BAD]
    assert temp_prefix(f"{BAD}.png") == f".{BAD}.png." and os.fsencode(temp_prefix(f"{BAD}.png")) == b".b\xff.png."


def test_a_training_split_records_names_that_are_not_utf8(tmp_path: Path) -> None:
    """The digest of the training names (kept in every checkpoint) encoded them as strict UTF-8."""
    import hashlib

    from restorekit.training.data import Split

    split = Split.of([tmp_path / "a.png", tmp_path / f"{BAD}.png"], [tmp_path / "v.png"], tmp_path)
    record = split.record()
    assert record["train_count"] == 2 and record["val"] == ["v.png"]
    assert record["train_sha256"] == hashlib.sha256(b"a.png\nb\xff.png").hexdigest()


DAMAGED = os.fsdecode(b"c\xfe")  # 'c\udcfe': a name that is not UTF-8 on a file that is no image


def test_such_a_name_is_an_input_alone_and_a_damaged_one_fails_alone(photos: Path, tmp_path: Path) -> None:
    """Given alone, the name is processed; a damaged file of such a name fails on its own line, named
    (escaped where it is text), and the other inputs are done — in run, degrade and compare."""
    alone = invoke("run", "bicubic", "--scale", "2", "--input", str(photos / f"{BAD}.png"),
                   "--output", str(tmp_path / "alone"), "--json")
    assert alone.exit_code == 0 and _strict(alone.stdout)["written"] == [str(tmp_path / "alone" / f"{BAD}.png")]
    damaged = photos / f"{DAMAGED}.png"
    damaged.write_bytes(b"not an image")
    for command in (["run", "bicubic", "--scale", "2"], ["degrade", "--spec", "bicubic:2"]):
        out = tmp_path / command[0]
        r = invoke(*command, "--input", str(photos), "--output", str(out), "--json")
        assert r.exit_code == 1, r.output
        doc = _strict(r.stdout)
        assert sorted(doc["written"]) == [str(out / "a.png"), str(out / f"{BAD}.png")]
        assert [f["path"] for f in doc["failed"]] == [str(damaged)]
        error = doc["failed"][0]["error"]
        assert error.startswith(f"{damaged}: not a readable image") and "\n" not in error
        assert f"{photos}/c\\udcfe.png: not a readable image" in r.stderr and DAMAGED not in r.stderr
    out = tmp_path / "c"
    r = invoke("compare", "--methods", "bicubic", "--scale", "2", "--data", str(photos), "--out", str(out),
               "--metrics", "psnr_rgb", "-q")
    assert r.exit_code == 1, r.output
    rows = (out / "results.csv").read_bytes().decode("utf-8").splitlines()  # strict UTF-8
    assert sorted(row.split(",")[1] for row in rows[1:]) == ["a", "b\\udcff"], rows
    html = (out / "report.html").read_bytes().decode("utf-8")
    assert f"input c\\udcfe: {photos}/c\\udcfe.png: not a readable image" in html
    doc = _strict((out / "results.json").read_bytes().decode("utf-8"))
    assert [(f["image"], f["path"]) for f in doc["inputs"]["failures"]] == [(DAMAGED, str(damaged))]
    assert sorted(rec["image"] for rec in doc["images"]) == ["a", BAD]


def test_realism_scores_a_set_with_such_a_name(photos: Path, tmp_path: Path) -> None:
    """realism reads such a name in --images and --data: its figures equal those of the same
    pixels under UTF-8 names, and a damaged one is left out, named in the JSON and escaped on stderr."""
    alex = random_alexnet_file(tmp_path / "alex.safetensors")
    plain = tmp_path / "plain"
    plain.mkdir()
    Image.fromarray(smooth_image(32, 32, 2)).save(photos / "z.png")
    for name, same in (("a.png", "a.png"), (f"{BAD}.png", "b.png"), ("z.png", "z.png")):  # the same pixels
        (plain / same).write_bytes((photos / name).read_bytes())
    base = ["--spaces", "alex", "--space-weights", f"alex={alex}", "--detector", "none", "--device", "cpu",
            "--cache", "none", "--json"]
    clean = invoke("realism", "--images", str(plain), "--data", str(plain), *base)
    r = invoke("realism", "--images", str(photos), "--data", str(photos), *base)
    assert r.exit_code == 0 and clean.exit_code == 0, r.output + clean.output
    assert _strict(r.stdout)["figures"][0]["n_samples"] == 3
    assert _strict(r.stdout)["figures"][0]["distance"] == pytest.approx(
        _strict(clean.stdout)["figures"][0]["distance"], abs=1e-9)
    damaged = photos / f"{DAMAGED}.png"
    damaged.write_bytes(b"not an image")
    r = invoke("realism", "--images", str(photos), "--data", str(plain), *base)
    assert r.exit_code == 1, r.output
    doc = _strict(r.stdout)
    assert [f["path"] for f in doc["failed"]] == [str(damaged)] and doc["figures"][0]["n_samples"] == 3
    assert "c\\udcfe.png: not a readable image" in r.stderr and DAMAGED not in r.stderr


FACES_PLUGIN = one_face_plugin_source("8u", input_size=64, x=160, y=100, d=36, min_width=200)


def test_faces_sidecars_record_names_as_they_are_and_a_rerun_takes_them(plugin_site, tmp_path: Path) -> None:
    """A face run's sidecar records a name that is not UTF-8, and one that spells a list of numbers
    (``shot [ 1, 2 ].png``, which compacting the number lists once rewrote), exactly: strict
    UTF-8 JSON naming the input, and a rerun with the same settings skips both photos as done."""
    plugin_site("thirdparty-nonutf8", "thirdparty_nonutf8", FACES_PLUGIN)
    folder = tmp_path / "photos"
    folder.mkdir()
    names = [f"{BAD}.png", "shot [ 1, 2 ].png"]
    for i, name in enumerate(names):
        save_image(torch.rand(1, 3, 240, 320, generator=torch.Generator().manual_seed(i)), folder / name)
    out = tmp_path / "out"
    args = ["run", "bright_face_8u", "--scale", "2", "--input", str(folder), "--output", str(out),
            "--faces", "detect", "--detector", "one_8u", "--json"]
    r = invoke(*args)
    assert r.exit_code == 0, r.output
    assert sorted(_strict(r.stdout)["written"]) == [str(out / name) for name in names]
    for name in names:
        side = _strict((out / f"{name}.json").read_bytes().decode("utf-8"))
        assert side["input"] == str(folder / name) and side["faces_restored"] == 1
    assert _strict(r.stdout)["reports"][str(folder / "shot [ 1, 2 ].png")]["input"] == str(folder / "shot [ 1, 2 ].png")
    again = invoke(*args)
    assert again.exit_code == 0, again.output
    doc = _strict(again.stdout)
    assert doc["written"] == [] and doc["failed"] == []
    assert sorted(s["input"] for s in doc["skipped"]) == [str(folder / name) for name in names]


def test_bench_faces_times_a_folder_with_such_a_name(plugin_site, photos: Path) -> None:
    """bench faces --input lists the folder (it stopped on the name) and times every photo."""
    plugin_site("thirdparty-nonutf8", "thirdparty_nonutf8", FACES_PLUGIN)
    r = invoke("bench", "faces", "--detector", "one_8u", "--input", str(photos), "--repeat", "1", "--json")
    assert r.exit_code == 0, r.output
    doc = _strict(r.stdout)
    assert doc["input"] == str(photos) and [row["images"] for row in doc["results"]] == [2]
