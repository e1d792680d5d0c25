"""File-system errors (cache, outputs, reports) as one line with the path and the fix; no traceback
without --debug; commands that change several things check everything first."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from restorekit.cli import build_cli
from restorekit.testing import error_line

DATA = b"restorekit test weights\n"


def invoke(*args: object):
    return CliRunner().invoke(build_cli(), [str(a) for a in args], catch_exceptions=False)


def rk(*args: object, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "restorekit", *map(str, args)], capture_output=True, text=True,
                          env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}, timeout=300)


@pytest.fixture
def test_registry(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A registry with ``test-a``/``test-b`` (a file we have) and ``test-url`` (an unreachable mirror)."""
    root = tmp_path / "registry"
    (root / "weights").mkdir(parents=True)
    sha = hashlib.sha256(DATA).hexdigest()
    for name in ("test-a", "test-b"):
        (root / "weights" / f"{name}.toml").write_text(
            f'name = "{name}"\nkind = "weights"\narchitecture = "test"\nplugin = "test"\nlicense = "MIT"\n'
            f'[[files]]\nfilename = "w.bin"\nsize = {len(DATA)}\nsha256 = "{sha}"\n')
    (root / "weights" / "test-url.toml").write_text(
        'name = "test-url"\nkind = "weights"\narchitecture = "test"\nplugin = "test"\nlicense = "MIT"\n'
        f'[[files]]\nfilename = "w.bin"\nsize = {len(DATA)}\nsha256 = "{sha}"\nurls = ["http://127.0.0.1:9/w.bin"]\n')
    monkeypatch.setenv("RESTOREKIT_REGISTRY", str(root))
    return root


@pytest.fixture
def weights_file(tmp_path: Path) -> Path:
    p = tmp_path / "w.bin"
    p.write_bytes(DATA)
    return p


@pytest.mark.parametrize("where", ["home", "weights"])
def test_cache_that_is_a_file_is_one_line_with_the_fix(test_registry, weights_file, tmp_path, monkeypatch, where):
    home = tmp_path / "home"
    if where == "home":  # RESTOREKIT_HOME itself is a file
        home.write_text("not a folder")
    else:  # a file stands where the cache's weights/ folder goes
        home.mkdir()
        (home / "weights").write_text("not a folder")
    monkeypatch.setenv("RESTOREKIT_HOME", str(home))
    for args in (["weights", "import", "test-a", weights_file], ["weights", "pull", "test-url"]):
        r = invoke(*args)
        assert r.exit_code == 2, (args, r.output)
        line = error_line(r.stderr)
        assert f"the restorekit cache cannot be written at {home}" in line
        assert "a file stands where a cache folder is needed" in line
        assert f"RESTOREKIT_HOME is {home}: set RESTOREKIT_HOME to a writable folder" in line
    assert (home if where == "home" else home / "weights").read_text() == "not a folder"


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes anywhere")
def test_cache_without_write_permission(test_registry, weights_file, tmp_path, monkeypatch):
    home = tmp_path / "home"
    home.mkdir()
    home.chmod(0o500)
    monkeypatch.setenv("RESTOREKIT_HOME", str(home))
    try:
        r = invoke("weights", "import", "test-a", weights_file)
    finally:
        home.chmod(0o700)
    assert r.exit_code == 2 and "Permission denied" in r.stderr and "RESTOREKIT_HOME" in r.stderr


def test_report_file_in_the_way_iserror_line(hr_folder, tmp_path):
    out = tmp_path / "cmp"
    (out / "report.html").mkdir(parents=True)  # a folder where the report goes
    r = invoke("compare", "--methods", "bicubic", "--scale", "2", "--data", hr_folder, "--out", out,
               "--metrics", "psnr_rgb", "--device", "cpu", "-q")
    assert r.exit_code == 2
    line = error_line(r.stderr)
    assert f"cannot write {out / 'report.html'}" in line and "a folder stands where a file is needed" in line
    assert not list(out.glob(".report.html.*"))  # no temporary file left behind


@pytest.mark.parametrize("command", ["compare", "run"])
def test_an_output_folder_that_is_a_file_is_one_line_with_the_fix(hr_folder, tmp_path, command):
    """compare had printed click's three-line usage block, and neither said what to do."""
    afile = tmp_path / "afile"
    afile.write_text("mine")
    args = (["compare", "--methods", "bicubic", "--scale", "2", "--data", hr_folder, "--out", afile,
             "--metrics", "psnr_rgb", "--device", "cpu", "-q"] if command == "compare" else
            ["run", "bicubic", "--scale", "2", "--input", hr_folder, "--output", afile, "-q"])
    r = invoke(*args)
    assert r.exit_code == 2 and "Usage:" not in r.output
    assert error_line(r.stderr) == (f"error: {afile}: output folder cannot be written (File exists); a file is in "
                                    "the way: choose another folder")
    assert afile.read_text() == "mine"


def test_output_file_in_the_way_fails_that_input_only(hr_folder, tmp_path):
    out = tmp_path / "o"
    (out / "img1.png").mkdir(parents=True)
    r = invoke("run", "bicubic", "--scale", "2", "--input", hr_folder, "--output", out, "--overwrite", "--json", "-q")
    assert r.exit_code == 1
    doc = json.loads(r.stdout)
    assert [Path(f["path"]).name for f in doc["failed"]] == ["img1.png"]
    assert f"{out / 'img1.png'}: is a folder, where the output goes" in doc["failed"][0]["error"]  # before the work
    assert sorted(Path(p).name for p in doc["written"]) == ["img0.png", "img2.png", "img3.png"]


CRASHING_PLUGIN = '''
from typing import ClassVar
from restorekit.hookspecs import hookimpl
from restorekit.interfaces import Method, MethodInfo


class Crash(Method):
    info: ClassVar[MethodInfo] = MethodInfo(name="crash3p", summary="has a bug")

    def restore(self, lr, scale, *, seed=None, n_samples=1):
        return None + lr  # a programming error, not an input problem


@hookimpl
def register_methods(register):
    register(Crash)
'''


def test_unexpected_errors_show_a_traceback_only_with_debug(plugin_site, hr_folder, tmp_path, monkeypatch):
    from restorekit import cli

    plugin_site("thirdparty-crash", "thirdparty_crash", CRASHING_PLUGIN)
    args = ["run", "crash3p", "--scale", "2", "--input", hr_folder / "img0.png", "--output", tmp_path / "o", "-q"]
    # A fresh process: nothing but the one line reaches the real stderr.
    r = rk(*args)
    assert r.returncode == 1
    line = error_line(r.stderr)
    # One image: that image's failure, its path first (as every per-image error), then the unexpected error.
    assert line.startswith(f"error: {hr_folder / 'img0.png'}: unexpected TypeError: unsupported operand")
    assert "--debug" in line
    monkeypatch.setattr(cli, "_DEBUG", False)  # --debug holds for the rest of a process: undone after the test
    r = invoke(*args)
    assert r.exit_code == 1 and "Traceback" not in r.stderr and "--debug" in error_line(r.stderr)
    r = invoke("--debug", *args)
    assert r.exit_code == 1 and "Traceback (most recent call last)" in r.stderr and "None + lr" in r.stderr
    monkeypatch.setattr(cli, "_DEBUG", False)
    monkeypatch.setenv("RESTOREKIT_DEBUG", "1")
    r = invoke(*args)
    assert r.exit_code == 1 and "Traceback (most recent call last)" in r.stderr


def test_a_methods_own_error_is_one_line_naming_the_method(plugin_site, hr_folder, tmp_path):
    plugin_site("thirdparty-refuse", "thirdparty_refuse", CRASHING_PLUGIN.replace(
        "return None + lr  # a programming error, not an input problem",
        'raise RuntimeError("kaboom\\nthe second line says why")').replace("crash3p", "refuse3p"))
    r = invoke("run", "refuse3p", "--scale", "2", "--input", hr_folder / "img0.png", "--output", tmp_path / "o", "-q")
    assert r.exit_code == 1
    assert error_line(r.stderr) == (f"error: {hr_folder / 'img0.png'}: refuse3p: RuntimeError: kaboom | "
                                    "the second line says why")


def _cached(home: Path, name: str) -> bool:
    return (home / "weights" / name / "w.bin").is_file()


def test_multi_name_weights_commands_check_every_name_first(test_registry, weights_file, tmp_path, monkeypatch):
    home = tmp_path / "home"
    monkeypatch.setenv("RESTOREKIT_HOME", str(home))
    for name in ("test-a", "test-b"):
        assert invoke("weights", "import", name, weights_file).exit_code == 0
    assert _cached(home, "test-a") and _cached(home, "test-b")

    r = invoke("weights", "rm", "test-a", "test-bogus", "test-b")
    assert r.exit_code == 2 and "unknown weights 'test-bogus'" in r.stderr
    assert r.stdout == "" and _cached(home, "test-a") and _cached(home, "test-b")  # nothing removed

    # pull: the unreachable mirror of test-url is not even tried before every name is known.
    r = invoke("weights", "pull", "test-url", "test-bogus")
    assert r.exit_code == 2 and "unknown weights 'test-bogus'" in r.stderr and "download" not in r.stderr
    assert not (home / "weights" / "test-url").exists()

    r = invoke("weights", "verify", "test-a", "test-bogus")
    assert r.exit_code == 2 and r.stdout == ""

    r = invoke("weights", "rm", "test-a", "test-b")
    assert r.exit_code == 0 and not _cached(home, "test-a") and not _cached(home, "test-b")


def test_bench_method_refuses_to_time_a_wrong_output(plugin_site, tmp_path):
    """A method whose output breaks the contract (here: half the size) has no time worth a figure."""
    plugin_site("thirdparty-halfsize", "thirdparty_halfsize", CRASHING_PLUGIN.replace(
        "return None + lr  # a programming error, not an input problem",
        "return torch.nn.functional.interpolate(lr, scale_factor=scale / 2)").replace(
        "from restorekit.interfaces import Method, MethodInfo", "import torch\nfrom restorekit.interfaces import Method, MethodInfo").replace(
        "crash3p", "halfsize3p"))
    r = invoke("bench", "method", "halfsize3p", "--scale", "4", "--batch", "1", "--repeat", "1", "--warmup", "0")
    assert r.exit_code == 2
    assert "halfsize3p: restore returned (1, 3, " in error_line(r.stderr) and "expected (1, 3, " in r.stderr


def test_compare_refuses_a_face_detector_it_cannot_build_before_any_work(hr_folder, tmp_path, rk_home):
    """As run does: before, every image of every face method was recorded as failed (exit 1)."""
    out = tmp_path / "cmp"
    r = invoke("compare", "--methods", "pix2pixhd,bicubic", "--scale", "2", "--data", hr_folder, "--out", out,
               "--metrics", "psnr_rgb", "--device", "cpu", "-q", "--faces", "detect", "--detector", "scrfd")
    assert r.exit_code == 2, r.output
    # (what scrfd lacks first: insightface where it is not installed, else its weights pack)
    assert ("--detector scrfd: detector 'scrfd' needs insightface" in r.output
            or "--detector scrfd: weights 'insightface-buffalo-l' are not available" in r.output), r.output
    assert not (out / "outputs").exists() and not (out / "compare.json").exists()
