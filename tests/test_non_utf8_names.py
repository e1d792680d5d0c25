"""A file name that is not UTF-8 (Linux names are bytes: an old photo named in Latin-1, b'b\\xff.png')
reaches Python as a str holding surrogate escapes. Every command that listed inputs stopped on the
first such name with "unexpected UnicodeEncodeError" (exit 1, nothing written): the name's length,
the temp file's name, the CSV and HTML reports encoded it as strict UTF-8. It is an input like any
other now: its output keeps its bytes, and text reports show it escaped (``\\udcff``), as JSON does."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from click.testing import CliRunner
from PIL import Image

from restorekit.cli import build_cli
from restorekit.images import MAX_QUALIFIED_BYTES, output_names, temp_prefix
from restorekit.testing.data import smooth_image

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
