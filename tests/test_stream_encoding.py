"""A stdout that cannot encode the tables' signs (Windows' cp1252 when redirected) still gets the table."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def test_compare_table_reaches_a_cp1252_stdout(hr_folder: Path, tmp_path: Path) -> None:
    env = dict(os.environ, PYTHONIOENCODING="cp1252")
    r = subprocess.run([sys.executable, "-m", "restorekit", "compare", "--methods", "bicubic,bicubic@b",
                        "--scale", "4", "--data", str(hr_folder), "--out", str(tmp_path / "out"),
                        "--metrics", "psnr_rgb,lr_consistency", "--device", "cpu"],
                       capture_output=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr.decode("cp1252", "replace")
    table = r.stdout.decode("cp1252")
    # The arrows cp1252 lacks come escaped; the rest of the table is there.
    assert "psnr_rgb \\u2191" in table and "lr_consistency \\u2193" in table
    assert "bicubic@b" in table and "4/4" in table
