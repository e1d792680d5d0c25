"""`compare --out`: one configuration per folder (recorded, refused when different, cleared by
--fresh), and reports written so that results.json never names a file that is not there."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from click.testing import CliRunner
from PIL import Image

from restorekit.cli import build_cli
from restorekit.harness import reports
from restorekit.testing.data import smooth_image


def invoke(*args: object):
    return CliRunner().invoke(build_cli(), [str(a) for a in args], catch_exceptions=False)


def _files(out: Path) -> dict[str, str]:
    """Every file under ``out`` with its sha256 (to prove a refused run touched nothing)."""
    return {str(p.relative_to(out)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(out.rglob("*")) if p.is_file()}


def _compare(data: Path, out: Path, *extra: object):
    return invoke("compare", "--methods", "bicubic", "--scale", "2", "--data", data, "--out", out,
                  "--metrics", "psnr_rgb", "--device", "cpu", "-q", *extra)


@pytest.fixture
def other_data(tmp_path: Path) -> Path:
    d = tmp_path / "other"
    d.mkdir()
    for i in range(2):
        Image.fromarray(smooth_image(64, 64, 50 + i)).save(d / f"img{i}.png")
    return d


def test_out_records_its_configuration(hr_folder, tmp_path):
    out = tmp_path / "cmp"
    assert _compare(hr_folder, out).exit_code == 0
    rec = json.loads((out / "compare.json").read_text())
    from restorekit.harness.runner import code_fingerprint

    assert rec["inputs"] == {"data": str(hr_folder), "scale": 2, "source": "degradation:bicubic:2",
                             "core_code": code_fingerprint("restorekit")}
    assert rec["methods"]["bicubic"]["options"]["antialias"] is True
    assert rec["methods"]["bicubic"]["device"] == "cpu"


@pytest.mark.parametrize("change,why", [
    (["--scale", "4"], "scale: 2 → 4"),
    (["--degradation", "blur:1+bicubic:2"], "source: degradation:bicubic:2 → degradation:blur:1+bicubic:2"),
    (["--opt", "bicubic.antialias=false"], "bicubic.options.antialias: True → False"),
    (["--data", "OTHER"], "data: "),
])
def test_another_configuration_is_refused_and_changes_nothing(hr_folder, other_data, tmp_path, change, why):
    out = tmp_path / "cmp"
    assert _compare(hr_folder, out).exit_code == 0
    before = _files(out)
    change = [str(other_data) if c == "OTHER" else c for c in change]
    args = ["compare", "--methods", "bicubic", "--scale", "2", "--data", hr_folder, "--out", out,
            "--metrics", "psnr_rgb", "--device", "cpu", "-q"]
    for flag in ("--scale", "--data"):  # a changed value replaces the base one
        if flag in change:
            i = args.index(flag)
            del args[i:i + 2]
    r = invoke(*args, *change)
    assert r.exit_code == 2
    err = r.stderr.replace("\n", " ")
    assert f"{out} holds the results of another configuration (" in err and why in err
    assert "use another --out, or add --fresh to discard them and start over" in err
    assert _files(out) == before


def test_extending_a_folder_is_allowed(hr_folder, tmp_path, plugin_site):
    from plugin_sources import GOOD_PLUGIN

    plugin_site("thirdparty-nearest", "thirdparty_nearest", GOOD_PLUGIN)
    out = tmp_path / "cmp"
    assert _compare(hr_folder, out, "--limit", "2").exit_code == 0
    # More images, another method, another metric: the same configuration, grown.
    r = invoke("compare", "--methods", "bicubic,nearest3p", "--scale", "2", "--data", hr_folder, "--out", out,
               "--metrics", "psnr_rgb,ssim_rgb", "--device", "cpu", "-q")
    assert r.exit_code == 0, r.output
    doc = json.loads((out / "results.json").read_text())
    assert sum(i["reused"] for i in doc["images"]) == 2 and len(doc["images"]) == 8
    assert sorted(json.loads((out / "compare.json").read_text())["methods"]) == ["bicubic", "nearest3p"]
    # A method recorded earlier keeps its settings even when a run leaves it out.
    r = invoke("compare", "--methods", "nearest3p", "--scale", "2", "--data", hr_folder, "--out", out,
               "--metrics", "psnr_rgb", "--device", "cpu", "-q", "--opt", "nearest3p.gain=0.5")
    assert r.exit_code == 2 and "nearest3p.options.gain: 1.0 → 0.5" in r.stderr


def test_fresh_clears_what_compare_wrote_and_only_that(hr_folder, other_data, tmp_path):
    out = tmp_path / "cmp"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    assert _compare(hr_folder, out).exit_code == 0
    assert len(list((out / "outputs" / "bicubic").iterdir())) == 4
    r = _compare(other_data, out, "--fresh")
    assert r.exit_code == 0, r.output
    assert sorted(p.name for p in (out / "outputs" / "bicubic").iterdir()) == ["img0.png", "img1.png"]
    assert len(list((out / "inputs").glob("*/*.png"))) == 2
    doc = json.loads((out / "results.json").read_text())
    assert len(doc["images"]) == 2 and not any(i["reused"] for i in doc["images"])
    assert json.loads((out / "compare.json").read_text())["inputs"]["data"] == str(other_data)
    assert (out / "notes.txt").read_text() == "mine"


def test_fresh_keeps_what_users_keep_in_compares_folders_and_never_removes_its_own_input(hr_folder, tmp_path):
    """--fresh had removed the whole inputs/, outputs/ and results/ folders: files a user kept there
    and, with --data inputs/hr inside --out, the HR images of the run itself (gone for good)."""
    import shutil

    out = tmp_path / "cmp"
    data = out / "inputs" / "hr"
    shutil.copytree(hr_folder, data)
    (out / "outputs").mkdir()
    (out / "outputs" / "mine.txt").write_text("kept")
    (out / "results").mkdir()
    (out / "results" / "keep.txt").write_text("kept")
    assert _compare(data, out).exit_code == 0
    r = invoke("compare", "--methods", "bicubic", "--scale", "4", "--data", data, "--out", out,
               "--metrics", "psnr_rgb", "--device", "cpu", "-q", "--fresh")
    assert r.exit_code == 0, r.output
    assert sorted(p.name for p in data.iterdir()) == sorted(p.name for p in hr_folder.iterdir())
    assert (out / "outputs" / "mine.txt").read_text() == "kept" and (out / "results" / "keep.txt").read_text() == "kept"
    [lr] = [d for d in (out / "inputs").iterdir() if d.name != "hr"]  # the ×2 LR folder went, the ×4 one came
    assert json.loads((lr / "manifest.json").read_text()) and json.loads((out / "compare.json").read_text())[
        "inputs"]["scale"] == 4
    # An input inside what --fresh would remove (compare's own outputs as the HR of a new run): refused.
    before = _files(out)
    r = invoke("compare", "--methods", "bicubic", "--scale", "2", "--data", out / "outputs" / "bicubic", "--out", out,
               "--metrics", "psnr_rgb", "--device", "cpu", "-q", "--fresh")
    assert r.exit_code == 2 and f"which holds this run's input {out / 'outputs' / 'bicubic'}" in r.output, r.output
    assert _files(out) == before


def _index_is_consistent(out: Path) -> None:
    """results.json, when present, names only files that exist (and no temporary file is left)."""
    assert not list(out.glob(".*.part"))
    if not (out / "results.json").exists():
        return
    doc = json.loads((out / "results.json").read_text())
    for rel in doc["files"].values():
        assert (out / rel).exists(), rel
    for img in doc["images"]:
        if img["output"]:
            assert (out / img["output"]).is_file()


class _Crash(Exception):
    """Stands for anything that stops report writing half-way."""


def test_results_json_is_written_last(hr_folder, tmp_path, monkeypatch):
    out = tmp_path / "cmp"
    assert _compare(hr_folder, out).exit_code == 0
    assert (out / "results.json").is_file()
    _index_is_consistent(out)
    for stage in ("write_html", "write_csv", "write_json"):
        for p in (out / "report.html", out / "results.json"):
            p.unlink(missing_ok=True)

        def interrupted(*args: object, **kwargs: object) -> None:
            raise _Crash(stage)

        with monkeypatch.context() as m:
            m.setattr(reports, stage, interrupted)
            with pytest.raises(_Crash):
                _compare(hr_folder, out)
        assert not (out / "results.json").exists(), stage
        _index_is_consistent(out)
    assert _compare(hr_folder, out).exit_code == 0
    assert (out / "results.json").is_file()
    _index_is_consistent(out)


def test_sigterm_while_writing_the_report(hr_folder, tmp_path):
    out = tmp_path / "cmp"
    driver = textwrap.dedent(f"""
        import os, signal, sys, time
        real = os.replace

        def replace(src, dst, **kw):
            if str(dst).endswith("report.html"):
                os.kill(os.getpid(), signal.SIGTERM)  # the report's temp file is written, not yet renamed
                time.sleep(30)
            return real(src, dst, **kw)

        os.replace = replace
        from restorekit.cli import main
        sys.argv = ["restorekit", "compare", "--methods", "bicubic", "--scale", "2", "--data", {str(hr_folder)!r},
                    "--out", {str(out)!r}, "--metrics", "psnr_rgb", "--device", "cpu", "-q"]
        main()
    """)
    r = subprocess.run([sys.executable, "-c", driver], capture_output=True, text=True, timeout=300,
                       env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 128 + signal.SIGTERM, (r.returncode, r.stderr)
    assert "Traceback" not in r.stderr
    assert not (out / "report.html").exists() and not (out / "results.json").exists()
    _index_is_consistent(out)
    # The run's results were stored: the next run reuses them and writes a consistent report.
    r = _compare(hr_folder, out)
    assert r.exit_code == 0
    doc = json.loads((out / "results.json").read_text())
    assert all(i["reused"] for i in doc["images"]) and len(doc["images"]) == 4
    _index_is_consistent(out)


def test_a_second_compare_into_a_folder_in_use_is_refused_at_once(hr_folder, tmp_path):
    """Two runs with different settings had both been accepted (each checked the folder before the
    other recorded its configuration) and mixed their outputs and results in one folder."""
    import fcntl

    out = tmp_path / "cmp"
    out.mkdir()
    with open(out / ".compare.lock", "w") as held:  # what a running compare holds
        fcntl.flock(held, fcntl.LOCK_EX)
        r = _compare(hr_folder, out)
        assert r.exit_code == 2, r.output
        assert f"{out}: another compare is writing into this folder" in r.output
        assert not (out / "compare.json").exists() and not (out / "outputs").exists()
    r = _compare(hr_folder, out)  # released: it runs
    assert r.exit_code == 0, r.output


def test_the_default_weights_named_explicitly_reuse_the_results_of_no_option(tmp_path: Path,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """`--opt pix2pixhd.weights=pix2pixhd-faces128` (the default, by name or by its file) was filed
    as another setting: compare ran pix2pixhd again, while `run` took it for the same weights."""
    pytest.importorskip("restorekit_baselines")
    from restorekit.harness import runner
    from restorekit.weights import resolve

    data = tmp_path / "hr"
    data.mkdir()
    for i in range(2):
        Image.fromarray(smooth_image(32, 32, seed=i)).save(data / f"f{i}.png")
    run = ["compare", "--methods", "pix2pixhd", "--scale", "4", "--data", data, "--out", tmp_path / "o",
           "--metrics", "psnr_rgb", "--device", "cpu", "-q"]
    assert invoke(*run).exit_code == 0
    first = json.loads((tmp_path / "o" / "results.json").read_text())["methods"][0]["settings_hash"]

    def no_build(*args: object, **kwargs: object) -> None:
        raise AssertionError("pix2pixhd was built again: its stored results were not reused")

    monkeypatch.setattr(runner, "_build", no_build)
    for value in ("pix2pixhd-faces128", str(resolve("pix2pixhd-faces128"))):
        r = invoke(*run, "--opt", f"pix2pixhd.weights={value}")
        assert r.exit_code == 0, r.output
        assert json.loads((tmp_path / "o" / "results.json").read_text())["methods"][0]["settings_hash"] == first
    other = tmp_path / "other.safetensors"
    other.write_bytes(resolve("pix2pixhd-faces128").read_bytes())
    monkeypatch.undo()
    assert invoke(*run, "--opt", f"pix2pixhd.weights={other}").exit_code == 0  # the same bytes: the same weights
