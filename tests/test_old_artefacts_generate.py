"""generate folders written by earlier restorekit versions, built by hand as they were written:
images are kept only when this code would draw the same ones; otherwise the run is refused in one
line (exit 2) naming --overwrite."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

import restorekit.commands.generate as generate
from restorekit.cli import build_cli
from generator_stand_ins import OneColourGenerator, use_stand_in

pytest.importorskip("restorekit_psp_sr")  # (its registered name 'stylegan2'; a tiny stand-in draws)


@pytest.fixture
def tiny(monkeypatch: pytest.MonkeyPatch) -> None:
    use_stand_in(monkeypatch, OneColourGenerator)


def _gen(out: Path, *args: str):
    return CliRunner().invoke(build_cli(), ["generate", "--generator", "stylegan2", "--seeds", "0-1", "--output",
                                            str(out), "--device", "cpu", "--json", *args])


def _old_folder(out: Path) -> dict[str, bytes]:
    """generate.json as restorekit wrote it before it recorded the generator's code (format 1:
    generator, truncation, weights_state_sha256), with its images."""
    out.mkdir()
    settings = {"generator": "stylegan2", "truncation": 0.7,
                "weights_state_sha256": generate._state_sha256(OneColourGenerator())}
    (out / "generate.json").write_text(json.dumps({"format": "restorekit.generate/1", "settings": settings,
                                                   "images": ["seed0000.png", "seed0001.png"]}, indent=2))
    images = {f"seed000{i}.png": f"drawn by earlier code {i}".encode() for i in range(2)}
    for name, data in images.items():
        (out / name).write_bytes(data)
    return images


def test_images_of_an_earlier_version_are_not_kept_as_this_codes(tiny, tmp_path: Path) -> None:
    """A manifest of the same generator, weights and truncation but earlier code: its images were
    skipped as this run's (exit 0, written: [])."""
    out = tmp_path / "gen"
    images = _old_folder(out)
    r = _gen(out)
    assert r.exit_code == 2, r.output
    [line] = [ln for ln in r.output.splitlines() if str(out) in ln]
    assert line.startswith(f"Error: {out}: holds images made with other settings (")
    assert "made by an earlier restorekit, which did not record the generator's code" in line
    assert "--overwrite" in line
    assert {n: (out / n).read_bytes() for n in images} == images
    r = _gen(out, "--overwrite")
    assert r.exit_code == 0 and len(json.loads(r.stdout)["written"]) == 2, r.output
    assert json.loads((out / "generate.json").read_text())["settings"]["code"]
    r = _gen(out)  # this code's images: kept
    assert r.exit_code == 0 and json.loads(r.stdout)["written"] == [] and len(json.loads(r.stdout)["skipped"]) == 2


def test_images_of_other_generator_code_are_named_so(tiny, tmp_path: Path) -> None:
    out = tmp_path / "gen"
    assert _gen(out).exit_code == 0
    doc = json.loads((out / "generate.json").read_text())
    doc["settings"]["code"] = "0123456789abcdef"
    (out / "generate.json").write_text(json.dumps(doc))
    r = _gen(out)
    assert r.exit_code == 2 and "the generator's code changed (its plugin upgraded or edited)" in r.output


def test_a_manifest_of_another_shape_with_a_journal_is_one_line(tiny, tmp_path: Path) -> None:
    """Names that are not strings (a foreign or damaged generate.json) beside a killed run's journal
    ended in a TypeError traceback."""
    out = tmp_path / "gen"
    out.mkdir()
    (out / "generate.json").write_text(json.dumps({"format": "restorekit.generate/1", "settings": {},
                                                   "images": [["seed0000.png"]]}))
    (out / ".generate.journal").write_text(json.dumps({"format": "restorekit.generate-journal/1", "settings": {}})
                                           + "\n" + json.dumps("seed0001.png") + "\n")
    r = _gen(out)
    assert r.exit_code == 2 and isinstance(r.exception, SystemExit), r.output
    assert f"{out / 'generate.json'}: not a restorekit.generate/1 manifest" in r.output
    assert (out / ".generate.journal").is_file()
