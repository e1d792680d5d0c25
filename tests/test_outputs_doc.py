"""docs/outputs.md lists every key and column of the machine-readable outputs: these tests make
the outputs with tiny runs and compare the page's tables with what was written, so a key added
or gone without the page changing fails here."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import pytest
from click.testing import CliRunner
from PIL import Image

from restorekit.cli import build_cli
from restorekit.harness.report_columns import METRIC_SUFFIXES
from restorekit.testing.data import smooth_image

DOC = Path(__file__).resolve().parents[1] / "docs" / "outputs.md"


def documented(heading: str) -> set[str]:
    """The `names` in the first column of the table under ``heading`` (a ## or ### line)."""
    text = DOC.read_text(encoding="utf-8")
    start = re.search(rf"^#+ {re.escape(heading)}\n", text, re.M)
    assert start is not None, heading
    section = re.split(r"^#+ ", text[start.end():], maxsplit=1, flags=re.M)[0]
    return set(re.findall(r"^\| `([^`]+)` \|", section, re.M))


def invoke(*args: object) -> dict:
    r = CliRunner().invoke(build_cli(), [str(a) for a in args])
    assert r.exit_code == 0, r.output
    return json.loads(r.stdout)


@pytest.fixture
def faces(tmp_path: Path) -> Path:
    d = tmp_path / "faces"
    d.mkdir()
    for i in range(4):
        Image.fromarray(smooth_image(40, 40, i)).save(d / f"img{i}.png")
    return d


def test_run_degrade_and_generate_keys(faces: Path, tmp_path: Path) -> None:
    keys = set(invoke("run", "bicubic", "--scale", "2", "--input", faces, "--output", tmp_path / "r", "--json"))
    keys |= set(invoke("run", "bicubic", "--scale", "2", "--faces", "detect", "--input", faces / "img0.png",
                       "--output", tmp_path / "f", "--json"))
    keys |= set(invoke("degrade", "--spec", "bicubic:2", "--input", faces, "--out", tmp_path / "d", "--json"))
    assert keys == documented("`run --json`, `degrade --json`")
    again = invoke("run", "bicubic", "--scale", "2", "--input", faces, "--output", tmp_path / "r", "--json")
    assert {k for s in again["skipped"] for k in s} == {"path", "input", "reason"}
    gen = ("generate", "--generator", "stylegan2", "--seeds", "0", "--out", tmp_path / "g", "--opt",
           "random_weights=true", "--opt", "resolution=32", "--opt", "style_dim=16", "--opt", "channel_max=16",
           "--json")
    assert set(invoke(*gen)) == documented("`generate --json`")
    assert {k for s in invoke(*gen)["skipped"] for k in s} == {"path", "reason"}


def test_train_summary_and_log_keys(faces: Path, tmp_path: Path) -> None:
    tiny = ("batch_size=2", "size=16", "ngf=4", "n_downsampling=2", "n_blocks=1", "ndf=4", "n_layers_d=2", "num_d=1",
            "allow_random_vgg=true", "data.factors=[2]", "log_every=1")
    run = tmp_path / "run"
    summary = invoke("train", "pix2pixhd", "--data", faces, "--out", run, "--steps", "2", "--device", "cpu", "-q",
                     "--json", *[a for kv in tiny for a in ("--set", kv)])
    assert set(summary) == documented("`train NAME --json`")
    lines = [json.loads(ln) for ln in (run / "log.jsonl").read_text().splitlines()]
    fixed = documented("Training logs: `log.jsonl`")  # (the loss and metric names are the run's own)
    for line in lines:
        assert line["kind"] in ("train", "val")
        own = set(summary["losses"]) if line["kind"] == "train" else set(summary["val"] or {})
        assert set(line) - own <= fixed and set(line) & own, line
    trained = {k for ln in lines if ln["kind"] == "train" for k in ln}
    assert fixed - {"kimg"} == trained - (set(summary["losses"]) - {"loss"})  # (kimg: train stylegan2's)


def test_compare_files(faces: Path, tmp_path: Path) -> None:
    out = tmp_path / "c"
    printed = invoke("compare", "--methods", "bicubic,bicubic@b", "--scale", "2", "--data", faces, "--out", out,
                     "--metrics", "psnr_rgb", "--baseline", "bicubic", "--json", "-q")
    written = json.loads((out / "results.json").read_text())
    conditional = {"processes"}  # (torchrun only)
    assert set(printed) | set(written) == documented("`compare`") - conditional
    assert set(written) - set(printed) == {"images"} and set(printed) - set(written) == {"results_json"}
    with open(out / "results.csv", newline="") as f:
        head = next(csv.reader(f))
    assert set(head) - {"psnr_rgb"} == documented("`results.csv`")
    with open(out / "summary.csv", newline="") as f:
        head = next(csv.reader(f))
    assert set(head) - {f"psnr_rgb_{s}" for s in METRIC_SUFFIXES} == documented("`summary.csv`")
    with open(out / "paired.csv", newline="") as f:
        head = next(csv.reader(f))
    section = DOC.read_text(encoding="utf-8").split("### `paired.csv`")[1]
    assert head == re.findall(r"`([a-z_]+)`", section.split("as README")[0])
