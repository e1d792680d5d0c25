"""An installed distribution with a malformed ``entry_points.txt`` (a line without ``=``), anyone's:
importing torch (and pydantic) parses every distribution's entry points and fails on it. The
command runs beside it where torch loses nothing by not looking (no distribution declares a torch
device backend), naming it in one warning; otherwise it ends with one line naming the
distribution, the file and the line, instead of an unexplained ``unexpected TypeError``."""

from __future__ import annotations

import importlib.metadata
import os
import subprocess
import sys
from pathlib import Path

import pytest

from restorekit.cli import metadata_failure
from restorekit.entry_points import scan_entry_points

BAD_LINE = "noequals line"


def _dist_info(site: Path, name: str, entry_points: str) -> Path:
    info = site / f"{name.replace('-', '_')}-1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n", encoding="utf-8")
    (info / "entry_points.txt").write_text(entry_points, encoding="utf-8")
    return info / "entry_points.txt"


def _bad(site: Path) -> Path:
    return _dist_info(site, "thirdparty-badeps", f"# a comment\n[console_scripts]\nok = mod:main\n{BAD_LINE}\n")


def _torch_backend(site: Path) -> Path:
    """A well-formed distribution declaring a torch device backend whose loader leaves a marker."""
    (site / "thirdparty_tb.py").write_text(
        "import os, pathlib\n\ndef load():\n    pathlib.Path(os.environ['TB_MARKER']).write_text('loaded')\n",
        encoding="utf-8")
    return _dist_info(site, "thirdparty-tb", "[torch.backends]\ntb = thirdparty_tb:load\n")


def _restorekit(site: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("TORCH_DEVICE_BACKEND_AUTOLOAD", "PYDANTIC_DISABLE_PLUGINS", "RESTOREKIT_DEBUG")}
    env.update(PYTHONPATH=str(site), TB_MARKER=str(site / "marker"), COLUMNS="200")
    return subprocess.run([sys.executable, "-m", "restorekit", *args], capture_output=True, text=True,
                          encoding="utf-8", env=env, timeout=120)


def test_scan_names_the_file_the_line_and_the_sections(tmp_path, monkeypatch):
    path = _bad(tmp_path)
    _torch_backend(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    scan = scan_entry_points()
    [bad] = [m for m in scan.malformed if m.dist == "thirdparty-badeps"]
    assert (bad.path, bad.line_no, bad.line) == (str(path), 4, BAD_LINE)
    assert bad.problem_at() == f"{path} line 4: '{BAD_LINE}' has no '='"
    assert bad.sections == {"console_scripts"}
    assert {"torch.backends", "console_scripts"} <= scan.groups

    with pytest.raises(Exception) as caught:  # what torch and pydantic call when they are imported
        importlib.metadata.entry_points(group="torch.backends")
    line = metadata_failure(caught.value)
    assert line is not None and "thirdparty-badeps" in line and str(path) in line and BAD_LINE in line
    assert metadata_failure(TypeError("Pair.__new__() missing 1 required positional argument")) is None


def test_a_command_runs_beside_it_and_names_it_where_torch_loses_nothing(tmp_path):
    path = _bad(tmp_path)
    _dist_info(tmp_path, "thirdparty-fine", "[console_scripts]\nfine = thirdparty_fine:main\n")
    r = _restorekit(tmp_path, "plugins")
    assert r.returncode == 0, r.stderr
    assert "psp_sr" in r.stdout and "baselines" in r.stdout
    [warning] = r.stderr.strip().splitlines()
    assert warning.startswith("warning: ignoring the installed distribution thirdparty-badeps:")
    assert f"{path} line 4: '{BAD_LINE}' has no '='" in warning and "uninstall thirdparty-badeps" in warning
    assert "thirdparty-fine" not in warning


def test_where_torch_must_read_entry_points_the_command_fails_with_one_line(tmp_path):
    path = _bad(tmp_path)
    _torch_backend(tmp_path)
    r = _restorekit(tmp_path, "plugins")
    assert r.returncode == 2, r.stderr
    [line] = r.stderr.strip().splitlines()
    assert line.startswith("error: the installed distribution thirdparty-badeps has a malformed entry_points.txt")
    assert f"{path} line 4: '{BAD_LINE}' has no '='" in line
    assert "torch reads every installed distribution's entry points when it is imported" in line
    assert "uninstall thirdparty-badeps" in line and "unexpected" not in line
    assert not (tmp_path / "marker").exists()

    (path.parent / "entry_points.txt").write_text("[console_scripts]\nok = mod:main\n", encoding="utf-8")
    r = _restorekit(tmp_path, "--version")  # well-formed: torch loads the backend, nothing is said
    assert r.returncode == 0 and r.stderr == "", r.stderr
    assert (tmp_path / "marker").read_text(encoding="utf-8") == "loaded"


def test_a_file_that_is_not_utf8_is_named_with_its_sections(tmp_path, monkeypatch):
    path = _dist_info(tmp_path, "thirdparty-binary", "")
    path.write_bytes(b"[torch.backends]\nx = y\xff\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    scan = scan_entry_points()
    [bad] = [m for m in scan.malformed if m.dist == "thirdparty-binary"]
    assert bad.line_no is None and bad.problem.startswith("UnicodeDecodeError: ")
    assert bad.problem_at().startswith(f"{path}: UnicodeDecodeError: ")
    assert bad.fix() == "fix that file or uninstall thirdparty-binary"
    assert "torch.backends" in scan.groups  # so the command does not turn torch's backend loading off
