"""File names chosen to attack what restorekit prints and writes: terminal escape sequences
never reach stderr raw, and CSV cells never start a spreadsheet formula."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

from click.testing import CliRunner
from PIL import Image

from restorekit.cli import build_cli, shown
from restorekit.testing.data import smooth_image

CLEAR_AND_RETITLE = "x\x1b[2J\x1b]0;OWNED\x07y"


def test_shown_escapes_control_characters_and_keeps_the_rest() -> None:
    assert shown("faces/café 01.png") == "faces/café 01.png"
    assert shown(CLEAR_AND_RETITLE) == "x\\x1b[2J\\x1b]0;OWNED\\x07y"
    # One line: line breaks escaped too (a file name could otherwise forge a line of its own).
    assert shown("a\nb\u2028c\rd") == "a\\nb\\u2028c\\rd"


def test_error_lines_never_carry_escape_sequences(tmp_path: Path) -> None:
    src = tmp_path / "in"
    src.mkdir()
    (src / f"{CLEAR_AND_RETITLE}.png").write_bytes(b"not an image")
    Image.fromarray(smooth_image(8, 8, 0)).save(src / "ok.png")
    r = subprocess.run([sys.executable, "-m", "restorekit", "run", "bicubic", "--scale", "2", "--input", str(src),
                        "--output", str(tmp_path / "out")], capture_output=True, text=True, timeout=120)
    assert r.returncode == 1, r.stderr  # one input failed
    assert "\x1b" not in r.stderr and "\x07" not in r.stderr
    assert "x\\x1b[2J\\x1b]0;OWNED\\x07y.png: not a readable image" in r.stderr


def test_compare_csv_cells_never_start_a_formula(tmp_path: Path) -> None:
    data = tmp_path / "hr"
    data.mkdir()
    names = ['=HYPERLINK("http:evil.example","x")', "-1+2", "@SUM(A1)", "plain"]
    for i, name in enumerate(names):
        Image.fromarray(smooth_image(32, 32, i)).save(data / f"{name}.png")
    out = tmp_path / "out"
    args = ["compare", "--methods", "bicubic,pix2pixhd", "--scale", "2", "--data", str(data), "--out", str(out),
            "--metrics", "psnr_y_crop", "--baseline", "bicubic", "-q"]
    r = CliRunner().invoke(build_cli(), args, catch_exceptions=False)
    assert r.exit_code == 0, r.output
    rows = list(csv.DictReader((out / "results.csv").open(newline="")))
    assert sorted(row["image"] for row in rows) == sorted(2 * (["'" + n for n in names[:3]] + ["plain"]))
    assert all(float(row["psnr_y_crop"]) > 10 for row in rows)  # numbers stay numbers
    for f in ("results.csv", "summary.csv", "paired.csv"):
        for row in csv.reader((out / f).open(newline="")):
            assert not any(cell.startswith(("=", "+", "@", "\t", "\r")) for cell in row), (f, row)
            assert not any(cell.startswith("-") and cell != "-" and not _number(cell) for cell in row), (f, row)
    # results.json keeps the names as they are.
    doc = json.loads((out / "results.json").read_text())
    assert sorted(img["image"] for img in doc["images"]) == sorted(2 * names)


def _number(cell: str) -> bool:
    try:
        float(cell)
    except ValueError:
        return False
    return True
