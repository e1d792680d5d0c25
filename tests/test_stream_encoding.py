"""A stdout that cannot encode the tables' signs (Windows' cp1252 when redirected, or ASCII) still gets
the table, with ASCII stand-ins for its signs, one character each, so that its columns line up."""

from __future__ import annotations

import codecs
import os
import subprocess
import sys
from pathlib import Path

import pytest

from restorekit.plain_signs import ONE_CELL, SIGNS, plain, register


@pytest.mark.parametrize("encoding", ["cp1252", "ascii"])
def test_compare_table_reaches_a_stdout_without_the_signs(hr_folder: Path, tmp_path: Path, encoding: str) -> None:
    env = dict(os.environ, PYTHONIOENCODING=encoding)
    r = subprocess.run([sys.executable, "-m", "restorekit", "compare", "--methods", "bicubic,bicubic@b",
                        "--baseline", "bicubic", "--scale", "4", "--data", str(hr_folder), "--out",
                        str(tmp_path / "out"), "--metrics", "psnr_rgb,lr_consistency", "--device", "cpu"],
                       capture_output=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr.decode(encoding, "replace")
    table = r.stdout.decode(encoding)
    # The arrows and Δ the encoding lacks come as ^, v and d, not escaped; the rest of the table is there.
    assert "psnr_rgb ^" in table and "lr_consistency v" in table and "d = method - bicubic" in table
    assert "\\u" not in table and "bicubic@b" in table and "4/4" in table
    # Every line of a table's box is as long as its top edge: no sign took more than its one cell.
    boxes = [line for line in table.splitlines() if line[:1] in "|+"]
    tops = [i for i, line in enumerate(boxes) if line.startswith("+-")]
    assert len(tops) >= 3  # the summary table's edges, and the paired table's
    for i, line in enumerate(boxes):
        edge = boxes[max(t for t in tops if t <= i)]
        assert len(line) == len(edge), table


def test_stand_ins() -> None:
    name = register()
    assert register() == name  # registering again is harmless
    assert all(len(v) == 1 and v.isascii() for v in ONE_CELL.values())
    assert all(v.isascii() for v in SIGNS.values())
    # Signs become their stand-ins; any other character a stream cannot encode is escaped, unambiguous.
    assert "×8 ≥ 0.2 → Δ−1 café".encode("ascii", name) == b"x8 >= 0.2 -> d-1 caf\\xe9"
    assert "↑ é".encode("cp1252", name) == "^ é".encode("cp1252")  # what the encoding has is kept
    assert plain("psnr ↑, ms ↓") == "psnr ^, ms v"
    with pytest.raises(UnicodeDecodeError):
        b"\xff".decode("utf-8", name)  # an encoding error handler only
    assert codecs.lookup_error(name)
