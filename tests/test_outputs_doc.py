"""docs/outputs.md lists every key and column of the machine-readable outputs: these tests make
the outputs with tiny runs and compare the page's tables with what was written, so a key added
or gone without the page changing fails here."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

from click.testing import CliRunner

from restorekit.cli import build_cli
from restorekit.harness.report_columns import METRIC_SUFFIXES
from restorekit.provenance import read_note

DOC = Path(__file__).resolve().parents[1] / "docs" / "outputs.md"


def section(heading: str) -> str:
    """The text under ``heading`` (a #… line, without the #s) up to the next heading of any level."""
    text = DOC.read_text(encoding="utf-8")
    start = re.search(rf"^#+ {re.escape(heading)}\n", text, re.M)
    assert start is not None, heading
    return re.split(r"^#+ ", text[start.end():], maxsplit=1, flags=re.M)[0]


def documented(heading: str) -> set[str]:
    """The `names` in the first column of the table under ``heading`` (a row may name several)."""
    cells = re.findall(r"^\| ([^|]*) \|", section(heading), re.M)
    return {name for cell in cells for name in re.findall(r"`([^`]+)`", cell)}


def invoke(*args: object, code: int = 0) -> dict:
    """The JSON a command prints on stdout, checking its exit code."""
    r = CliRunner().invoke(build_cli(), [str(a) for a in args])
    assert r.exit_code == code, r.output
    return json.loads(r.stdout)


def csv_head(path: Path) -> list[str]:
    with open(path, newline="") as f:
        return next(csv.reader(f))


def test_run_degrade_and_generate_keys(hr_folder: Path, tmp_path: Path) -> None:
    run = invoke("run", "bicubic", "--scale", "2", "--input", hr_folder, "--output", tmp_path / "r", "--json")
    detect = invoke("run", "bicubic", "--scale", "2", "--faces", "detect", "--input", hr_folder / "img0.png",
                    "--output", tmp_path / "f", "--json")
    degrade = invoke("degrade", "--spec", "bicubic:2", "--input", hr_folder, "--out", tmp_path / "d", "--json")
    assert set(run) | set(detect) | set(degrade) == documented("`run --json`, `degrade --json`")
    again = invoke("run", "bicubic", "--scale", "2", "--input", hr_folder, "--output", tmp_path / "r", "--json")
    assert {k for s in again["skipped"] for k in s} == {"path", "input", "reason"}
    # The note inside each output; the seed, pins and colour matching are absent for bicubic on no face.
    notes = [read_note(tmp_path / d / "img0.png") for d in ("r", "f", "d")]
    assert {k for n in notes if n for k in n} == documented("The note inside each output of `run` and `degrade`") \
        - {"seed", "default_weights", "option_files", "colour_match"}
    sidecar = json.loads((tmp_path / "f" / "img0.png.json").read_text())
    assert sidecar == detect["reports"][str(hr_folder / "img0.png")] and sidecar["faces"] == []
    assert set(sidecar) == documented("`run --faces detect`: the photo's sidecar") \
        - {"seed", "default_weights", "option_files", "grey"}
    gen = ("generate", "--generator", "stylegan2", "--seeds", "0", "--out", tmp_path / "g", "--opt",
           "random_weights=true", "--opt", "resolution=32", "--opt", "style_dim=16", "--opt", "channel_max=16",
           "--json")
    assert set(invoke(*gen)) == documented("`generate --json`")
    assert {k for s in invoke(*gen)["skipped"] for k in s} == {"path", "reason"}
    manifest = json.loads((tmp_path / "g" / "generate.json").read_text())
    assert set(manifest) == documented("`OUT/generate.json`")
    row = next(ln for ln in section("`OUT/generate.json`").splitlines() if ln.startswith("| `settings` |"))
    assert set(manifest["settings"]) == set(re.findall(r"`([a-z_0-9]+)`", row)) - {"settings"}


def test_train_summary_and_log_keys(hr_folder: Path, tmp_path: Path) -> None:
    tiny = ("batch_size=2", "size=16", "ngf=4", "n_downsampling=2", "n_blocks=1", "ndf=4", "n_layers_d=2", "num_d=1",
            "allow_random_vgg=true", "data.factors=[2]", "log_every=1")
    sets = [a for kv in tiny for a in ("--set", kv)]
    run = tmp_path / "run"
    summary = invoke("train", "pix2pixhd", "--data", hr_folder, "--out", run, "--steps", "2", "--device", "cpu", "-q",
                     "--json", *sets)
    assert set(summary) == documented("`train NAME --json`")
    diverged = invoke("train", "pix2pixhd", "--data", hr_folder, "--out", tmp_path / "nan", "--steps", "2", "--device",
                      "cpu", "-q", "--json", *sets, "--set", "lr=1e30", code=1)
    assert diverged["diverged"] is True and set(diverged) == set(summary)
    lines = [json.loads(ln) for ln in (run / "log.jsonl").read_text().splitlines()]
    fixed = documented("Training logs: `log.jsonl`")  # (the loss and metric names are the run's own)
    for line in lines:
        assert line["kind"] in ("train", "val")
        own = set(summary["losses"]) if line["kind"] == "train" else set(summary["val"] or {})
        assert set(line) - own <= fixed and set(line) & own, line
    trained = {k for ln in lines if ln["kind"] == "train" for k in ln}
    assert fixed - {"kimg", "s_per_kimg"} == trained - (set(summary["losses"]) - {"loss"})  # (train stylegan2's)


def test_compare_files(hr_folder: Path, tmp_path: Path) -> None:
    out = tmp_path / "c"
    printed = invoke("compare", "--methods", "bicubic,bicubic@b", "--scale", "2", "--data", hr_folder, "--out", out,
                     "--metrics", "psnr_rgb", "--baseline", "bicubic", "--json", "-q")
    listed = {name.split("/")[0] for name in documented("`compare`")}
    assert {p.name for p in out.iterdir()} == listed
    assert set(json.loads((out / "compare.json").read_text())) == documented("`compare.json`")
    written = json.loads((out / "results.json").read_text())
    conditional = {"processes"}  # (torchrun only)
    assert set(printed) | set(written) == documented("`results.json`") - conditional
    assert set(written) - set(printed) == {"images"} and set(printed) - set(written) == {"results_json"}
    assert {k for m in written["metrics"] for k in m} == documented("`metrics[]`")
    assert {k for m in written["methods"] for k in m} == documented("`methods[]`")
    assert {k for r in written["images"] for k in r} == documented("`images[]`")
    stored = [json.loads(ln) for ln in (out / "results" / "bicubic.jsonl").read_text().splitlines()]
    assert {k for r in stored for k in r} == documented("`images[]`") - {"reused"}
    assert set(csv_head(out / "results.csv")) - {"psnr_rgb"} == documented("`results.csv`")
    assert set(csv_head(out / "summary.csv")) - {f"psnr_rgb_{s}" for s in METRIC_SUFFIXES} \
        == documented("`summary.csv`")
    paired = section("`paired.csv`")
    assert csv_head(out / "paired.csv") == re.findall(r"`([a-z_]+)`", paired.split("as README")[0])


def test_bench_keys() -> None:
    method = invoke("bench", "method", "bicubic", "--size", "8", "--batch", "1", "--repeat", "1", "--warmup", "0",
                    "--compare-to", "bicubic", "--compare-repeat", "1", "--device", "cpu", "--json")
    # (--resolution's, and --backend torch,onnxruntime's)
    absent = {"resolution", "backend_ratio", "backend_ratio_range", "backend_memory_ratio", "backend_memory_note"}
    assert set(method) == documented("`bench method NAME --json`") - absent
    rows = method["results"] + method["compare_results"]
    assert {k for r in rows for k in r} == documented("`results[]`")
    generator = invoke("bench", "generator", "--resolution", "32", "--channel-max", "8", "--channel-multiplier", "1",
                       "--repeats", "1", "--json")
    assert set(generator) == documented("`bench generator --json`")
