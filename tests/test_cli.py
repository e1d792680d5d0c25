"""The `restorekit` command end to end: run, degrade, methods, plugins, bad input, exit codes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from restorekit.cli import build_cli
from restorekit.images import read_image
from plugin_sources import BROKEN_PLUGIN, GOOD_PLUGIN


def invoke(*args: str):
    return CliRunner().invoke(build_cli(), list(args), catch_exceptions=False)


def rk(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """The installed command in a fresh process (plugin discovery included)."""
    return subprocess.run([sys.executable, "-m", "restorekit", *args], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=120)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float(10 * np.log10(255.0**2 / mse))


def test_degrade_then_bicubic_round_trip(hr_folder, tmp_path):
    lr_dir, sr_dir = tmp_path / "lr", tmp_path / "sr"
    r = invoke("degrade", "--spec", "bicubic:8", "--input", str(hr_folder), "--output", str(lr_dir), "-q")
    assert r.exit_code == 0, r.output
    assert Image.open(lr_dir / "img0.png").size == (8, 8)
    r = invoke("run", "bicubic", "--scale", "8", "--input", str(lr_dir), "--output", str(sr_dir), "--json")
    assert r.exit_code == 0, r.output
    summary = json.loads(r.output)
    assert len(summary["written"]) == 4 and summary["failed"] == []
    values = []
    for i in range(4):
        hr = np.asarray(Image.open(hr_folder / f"img{i}.png"))
        sr = np.asarray(Image.open(sr_dir / f"img{i}.png"))
        assert sr.shape == hr.shape
        values.append(psnr(sr, hr))
    print(f"bicubic x8 round trip PSNR (RGB, dB): {['%.2f' % v for v in values]}")
    # Smooth images survive ×8 bicubic well; white noise would not.
    assert min(values) > 22.0


def test_degrade_with_seed_0_writes_compares_lr(hr_folder, tmp_path):
    """degrade and compare make an LR by one rule (crop, per-image seed, checks): with --seed 0 the
    noisy LR files are the same bytes as compare's; another seed changes the noise."""
    spec = "blur:1.0+bicubic:4+noise:8"
    for seed in ("0", "1"):
        r = invoke("degrade", "--spec", spec, "--input", str(hr_folder), "--output", str(tmp_path / f"lr{seed}"),
                   "--seed", seed, "-q")
        assert r.exit_code == 0, r.output
    r = invoke("compare", "--methods", "bicubic", "--scale", "4", "--data", str(hr_folder), "--degradation", spec,
               "--metrics", "psnr_rgb", "--out", str(tmp_path / "report"), "-q")
    assert r.exit_code == 0, r.output
    [made] = (tmp_path / "report" / "inputs").iterdir()
    for i in range(4):
        lr0, lr1 = (np.asarray(Image.open(tmp_path / d / f"img{i}.png")) for d in ("lr0", "lr1"))
        assert np.array_equal(np.asarray(Image.open(made / f"img{i}.png")), lr0)  # same pixels (PNG levels differ)
        assert not np.array_equal(lr0, lr1)


def test_one_bad_file_does_not_stop_the_rest(hr_folder, tmp_path):
    (hr_folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    (hr_folder / "empty.png").write_bytes(b"")
    out = tmp_path / "out"
    r = invoke("run", "bicubic", "--scale", "2", "--input", str(hr_folder), "--output", str(out), "--json")
    assert r.exit_code == 1
    summary = json.loads(r.stdout)
    assert len(summary["written"]) == 4
    assert sorted(Path(f["path"]).name for f in summary["failed"]) == ["broken.png", "empty.png"]
    assert "broken.png" in r.stderr and "empty.png" in r.stderr
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temp files left


def test_a_method_bug_on_one_image_does_not_stop_the_rest(hr_folder, tmp_path, monkeypatch):
    """Any exception from a method on one image is that image's failure (as in compare), named by type."""
    from restorekit_baselines.bicubic import Bicubic

    real = Bicubic.restore
    calls = []

    def flaky(self, lr, scale, **kw):
        calls.append(1)
        if len(calls) == 2:
            raise TypeError("unsupported operand type(s) for +: 'NoneType' and 'int'")
        return real(self, lr, scale, **kw)

    monkeypatch.setattr(Bicubic, "restore", flaky)
    out = tmp_path / "out"
    r = invoke("run", "bicubic", "--scale", "2", "--input", str(hr_folder), "--output", str(out), "--json")
    assert r.exit_code == 1
    summary = json.loads(r.stdout)
    assert len(summary["written"]) == 3 and len(summary["failed"]) == 1
    error = summary["failed"][0]["error"]
    assert error.startswith(summary["failed"][0]["path"]) and "unexpected TypeError: unsupported operand" in error
    assert "Traceback" not in r.stderr


def test_existing_outputs_skipped_unless_overwrite(hr_folder, tmp_path):
    out = tmp_path / "out"
    invoke("run", "bicubic", "--scale", "2", "--input", str(hr_folder), "--output", str(out), "-q")
    stamp = (out / "img0.png").stat().st_mtime_ns
    r = invoke("run", "bicubic", "--scale", "2", "--input", str(hr_folder), "--output", str(out), "--json")
    skipped = json.loads(r.output)["skipped"]
    assert sorted(s["path"] for s in skipped) == sorted(str(out / f"img{i}.png") for i in range(4))
    assert {s["reason"] for s in skipped} == {"exists (--overwrite replaces it)"}  # one shape for every skip
    assert (out / "img0.png").stat().st_mtime_ns == stamp
    r = invoke("run", "bicubic", "--scale", "2", "--input", str(hr_folder), "--output", str(out), "--json",
               "--overwrite")
    assert len(json.loads(r.output)["written"]) == 4
    # A folder where an output goes is not a finished output: that input fails, the others are done.
    (out / "img1.png").unlink()
    (out / "img1.png").mkdir()
    for extra in ([], ["--overwrite"]):
        r = invoke("run", "bicubic", "--scale", "2", "--input", str(hr_folder), "--output", str(out), "--json", *extra)
        assert r.exit_code == 1 and f"{out / 'img1.png'}: is a folder, where the output goes" in r.stderr
        doc = json.loads(r.stdout)
        assert [f["path"] for f in doc["failed"]] == [str(hr_folder / "img1.png")]
        assert len(doc["written"]) + len(doc["skipped"]) == 3


@pytest.mark.parametrize("ext,limit", [("jpg", 65500), ("webp", 16383)])
def test_an_output_larger_than_its_format_holds_fails_before_the_work(tmp_path, ext, limit):
    from PIL import Image

    Image.new("RGB", (700, 2), (90, 120, 150)).save(tmp_path / "wide.png")
    Image.new("RGB", (4, 4), (90, 120, 150)).save(tmp_path / "small.png")
    r = invoke("run", "bicubic", "--scale", "100", "--input", str(tmp_path), "--output", str(tmp_path / "o"),
               "--ext", ext, "--json")
    assert r.exit_code == 1
    msg = f"wide.png: its 70000×200 output is larger than {ext} holds ({limit} px a side); use --ext png"
    assert msg in r.stderr and r.stderr.count("\n") <= 2
    assert [p.name for p in (tmp_path / "o").iterdir()] == [f"small.{ext}"]


def _listed(folder: Path, tmp_path: Path) -> str:
    """``@list``: the folder's files named one by one (a list may name inputs in the output folder)."""
    listing = tmp_path / "inputs.txt"
    listing.write_text("".join(f"{p}\n" for p in sorted(folder.iterdir())))
    return f"@{listing}"


def test_inputs_are_never_overwritten(hr_folder, tmp_path):
    before = (hr_folder / "img0.png").read_bytes()
    r = invoke("run", "bicubic", "--scale", "2", "--input", _listed(hr_folder, tmp_path), "--output", str(hr_folder),
               "--overwrite", "--json")
    assert r.exit_code == 1 and "refusing to overwrite an input" in r.stderr
    assert (hr_folder / "img0.png").read_bytes() == before
    # The folder itself as both input and output is refused before any work (each rerun would take
    # the last run's outputs for new inputs).
    r = invoke("run", "bicubic", "--scale", "2", "--input", str(hr_folder), "--output", str(hr_folder))
    assert r.exit_code == 2 and (hr_folder / "img0.png").read_bytes() == before


@pytest.mark.parametrize("command", [["run", "bicubic", "--scale", "2"], ["degrade", "--spec", "bicubic:2"]])
def test_an_input_is_not_taken_for_its_own_finished_output(hr_folder, command, tmp_path):
    """Inputs listed from the output folder, without --overwrite: an output name that is an input
    file is that input's failure (exit 1), not 'skipped (exists)' with exit 0; others are written."""
    Image.open(hr_folder / "img3.png").save(hr_folder / "photo.jpg")
    before = (hr_folder / "img0.png").read_bytes()
    r = invoke(*command, "--input", _listed(hr_folder, tmp_path), "--output", str(hr_folder), "--json")
    assert r.exit_code == 1, r.output
    summary = json.loads(r.stdout)
    assert summary["skipped"] == []
    assert summary["written"] == [str(hr_folder / "photo.png")]
    assert sorted(Path(f["path"]).name for f in summary["failed"]) == [f"img{i}.png" for i in range(4)]
    assert all("refusing to overwrite an input" in f["error"] for f in summary["failed"])
    assert (hr_folder / "img0.png").read_bytes() == before


def test_n_samples_and_couple(hr_folder, tmp_path):
    out = tmp_path / "o"
    r = invoke("run", "bicubic", "--scale", "2", "--input", str(hr_folder / "img1.png"), "--output", str(out),
               "--n-samples", "2", "--couple", "-q")
    assert r.exit_code == 0
    assert sorted(p.name for p in out.iterdir()) == ["img1_s0.png", "img1_s1.png"]
    assert Image.open(out / "img1_s0.png").size == (256, 128)  # input (resized) | output


def test_pixel_limit_option(hr_folder, tmp_path):
    r = invoke("run", "bicubic", "--scale", "2", "--input", str(hr_folder / "img0.png"), "--output",
               str(tmp_path / "o"), "--max-pixels", "1000")
    assert r.exit_code == 1 and "exceeds the limit" in r.stderr


@pytest.mark.parametrize("args,msg", [
    (["run", "bicubik", "--scale", "2"], "did you mean 'bicubic'"),
    (["run", "bicubic", "--scale", "0"], "positive integer"),
    (["run", "bicubic", "--scale", "1.5"], "not a valid integer"),
    # (2 000 000 took 80 s and 2 GB to be refused over the output limit; 10**11 ran out of memory)
    (["run", "bicubic", "--scale", "2", "--n-samples", "100001"], "100001 is not in the range 1<=x<=100000"),
    (["run", "bicubic", "--scale", "2", "--n-samples", "0"], "0 is not in the range 1<=x<=100000"),
    (["run", "bicubic", "--scale", "2", "--opt", "antialis=true"], "unknown option 'antialis' (did you mean"),
    (["run", "bicubic", "--scale", "2", "--opt", "antialias=maybe"], "option 'antialias'"),
    (["run", "bicubic", "--scale", "2", "--opt", "novalue"], "expected key=value"),
])
def test_usage_errors_exit_2(hr_folder, tmp_path, args, msg):
    r = invoke(*args, "--input", str(hr_folder), "--output", str(tmp_path / "o"))
    assert r.exit_code == 2
    assert msg in r.output.replace("\n", " ") or msg in r.stderr.replace("\n", " ")


def test_unwritable_output_folder(hr_folder, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    r = invoke("run", "bicubic", "--scale", "2", "--input", str(hr_folder), "--output", str(blocker / "sub"))
    assert r.exit_code == 2 and "cannot be written" in r.stderr
    assert blocker.read_text() == "x"


def test_methods_show_lists_options_json():
    r = invoke("methods", "show", "bicubic", "--json")
    data = json.loads(r.output)
    assert data["name"] == "bicubic" and data["plugin"] == "baselines"
    assert {o["name"] for o in data["options"]} == {"antialias", "clamp"}
    assert data["weights_licenses"] == {} and "weights license" not in invoke("methods", "show", "bicubic").output
    r = invoke("methods", "--json")
    assert "bicubic" in [m["name"] for m in json.loads(r.output)]


def test_methods_show_names_the_licence_of_the_default_weights():
    """`license: Apache-2.0` (the code's) stood beside research-only default weights, unqualified."""
    pytest.importorskip("restorekit_baselines")
    data = json.loads(invoke("methods", "show", "pix2pixhd", "--json").output)
    assert data["license"] == "Apache-2.0"
    assert list(data["weights_licenses"]) == ["pix2pixhd-faces128"]
    assert data["weights_licenses"]["pix2pixhd-faces128"].startswith("LicenseRef-research-only (")
    lines = invoke("methods", "show", "pix2pixhd").output.splitlines()
    assert [ln.strip() for ln in lines if "weights license:" in ln] == [
        f"weights license: pix2pixhd-faces128: {data['weights_licenses']['pix2pixhd-faces128']}"]


def test_methods_show_pages_despite_an_unreadable_registry_entry(tmp_path, monkeypatch):
    """The weights-licence line read the whole registry for every method: one broken entry failed
    `methods show bicubic`, which has no weights."""
    import shutil

    reg = tmp_path / "reg"
    shutil.copytree(Path(__file__).resolve().parents[1] / "registry", reg)
    (reg / "weights" / "broken.toml").write_text('name = "broken\n')
    monkeypatch.setenv("RESTOREKIT_REGISTRY", str(reg))
    r = invoke("methods", "show", "bicubic")
    assert r.exit_code == 0 and "weights license" not in r.output, r.output
    pytest.importorskip("restorekit_baselines")
    lines = invoke("methods", "show", "pix2pixhd").output.splitlines()
    assert [ln.strip() for ln in lines if "weights license:" in ln] == [
        "weights license: pix2pixhd-faces128: unknown (the weights registry cannot be read)"]
    assert any(ln.strip().startswith("weights state: unknown (registry entry ") for ln in lines)


def test_methods_show_says_when_one_sample_is_deterministic():
    """pSp draws only when asked for several samples (style mixing): compare records it as
    deterministic and runs it once, while `methods show` said `deterministic: False` alone."""
    assert json.loads(invoke("methods", "show", "bicubic", "--json").output)["one_sample_ignores_seed"] is True
    pytest.importorskip("restorekit_psp_sr")
    r = invoke("methods", "show", "psp_sr")
    line = next(ln for ln in r.output.splitlines() if ln.strip().startswith("deterministic:"))
    assert line.split(": ", 1)[1] == "False, except for one sample per input (the same for every seed: compare runs it once)"
    data = json.loads(invoke("methods", "show", "psp_sr", "--json").output)
    assert data["deterministic"] is False and data["one_sample_ignores_seed"] is True
    assert json.loads(invoke("methods", "--json", "show", "psp_sr").output) == data  # the group's flag counts
    pulse = json.loads(invoke("methods", "show", "pulse", "--json").output)
    assert pulse["deterministic"] is False and pulse["one_sample_ignores_seed"] is False
    assert "deterministic: False\n" in invoke("methods", "show", "pulse").output


def test_methods_show_options_as_a_definition_list(monkeypatch):
    """Each option on its own line (name, type with a Literal's choices, default), the description
    in full beneath it — not squeezed into a table column at 80 characters."""
    monkeypatch.setenv("COLUMNS", "80")
    r = invoke("methods", "show", "pulse")
    assert r.exit_code == 0, r.output
    lines = r.output.splitlines()
    i = next(n for n, line in enumerate(lines) if line.split() and line.split()[0] == "schedule")
    assert lines[i].split(None, 1)[1] == "'fixed' | 'linear1cycle' | 'linear1cycledrop' = 'linear1cycledrop'"
    assert lines[i + 1] == "      learning-rate schedule over `steps` (PULSE's)"
    body = lines[lines.index("Options (--opt KEY=VALUE):"):]
    assert all(len(line) <= 80 for line in body if line.startswith(" " * 6))  # descriptions wrap at the width
    text = " ".join(line.strip() for line in body)
    assert "stop when the downscale MSE (in [0,1] units) is below this" in text  # whole, not cut
    r = invoke("methods", "show", "pulse", "--json")
    latent = next(o for o in json.loads(r.output)["options"] if o["name"] == "latent")
    assert latent["type"] == "'w+' | 'z'" and latent["default"] == "w+"


def test_plugins_json_lists_core_and_first_party():
    r = invoke("plugins", "--json")
    assert r.exit_code == 0, r.output
    recs = {p["distribution"]: p for p in json.loads(r.stdout)}
    assert recs["restorekit"]["registers"]["degradations"] == ["bicubic", "blur", "noise", "jpeg"]
    assert "bicubic" in recs["restorekit-baselines"]["registers"]["methods"]
    assert recs["restorekit-psp-sr"]["status"] == "ok"


def test_third_party_plugin_listed_and_runnable(plugin_site, hr_folder, tmp_path):
    plugin_site("thirdparty-nearest", "thirdparty_nearest", GOOD_PLUGIN)
    r = invoke("methods", "--json")
    assert "nearest3p" in [m["name"] for m in json.loads(r.stdout)]
    out = tmp_path / "o"
    # A fresh process finds it through its entry point (PYTHONPATH) and runs it with its option.
    r = rk("run", "nearest3p", "--scale", "3", "--input", str(hr_folder / "img2.png"), "--output", str(out),
           "--opt", "gain=0.5", "-q")
    assert r.returncode == 0, r.stderr
    x = read_image(out / "img2.png")
    src = read_image(hr_folder / "img2.png")
    assert x.shape[-2:] == (192, 192)
    assert abs(x[0, :, ::3, ::3].mean().item() - 0.5 * src.mean().item()) < 2 / 255


def test_broken_plugin_listed_while_bicubic_runs(plugin_site, hr_folder, tmp_path):
    plugin_site("thirdparty-broken", "thirdparty_broken", BROKEN_PLUGIN)
    r = invoke("plugins", "--json")
    status = {p["name"]: p["status"] for p in json.loads(r.stdout)}
    assert status["thirdparty_broken"].startswith("broken: ImportError")
    r = invoke("run", "bicubic", "--scale", "2", "--input", str(hr_folder), "--output", str(tmp_path / "o"), "-q")
    assert r.exit_code == 0, r.output
    assert sorted(p.name for p in (tmp_path / "o").iterdir()) == [f"img{i}.png" for i in range(4)]
    # A fresh process started strictly finds it too, and refuses to go on.
    r = rk("--strict", "plugins")
    assert r.returncode == 2 and "thirdparty_broken" in r.stderr


@pytest.mark.parametrize("seed", ["-1", str(2**64)])
def test_degrade_seed_out_of_range_is_usage_error(hr_folder, tmp_path, seed):
    """degrade --seed takes 0 … 2**64 − 1 like every other seed option; -1 and 2**64 used to wrap
    silently modulo 2**64 (and write files)."""
    out = tmp_path / "lr"
    r = invoke("degrade", "--spec", "bicubic:4+noise:8", "--input", str(hr_folder), "--output", str(out),
               "--seed", seed, "-q")
    assert r.exit_code == 2
    text = " ".join(r.output.split())
    assert f"Invalid value for '--seed': {seed} is not in the range 0<=x<={2**64 - 1}." in text
    assert not out.exists()


def test_degrade_takes_the_largest_seed(hr_folder, tmp_path):
    out = tmp_path / "lr"
    r = invoke("degrade", "--spec", "bicubic:4+noise:8", "--input", str(hr_folder), "--output", str(out),
               "--seed", str(2**64 - 1), "-q")
    assert r.exit_code == 0, r.output
    assert len(list(out.glob("*.png"))) == 4


def test_the_closed_stdout_check_uses_no_deprecated_click_name():
    """click.utils.PacifyFlushWrapper is a deprecated alias (DeprecationWarning on each use, removed in
    click 9): the broken-pipe path read it on every exit 1."""
    import warnings

    from restorekit import cli

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert cli._stdout_went_away() in (True, False)


def test_a_listing_title_is_one_line_in_a_pipe_whatever_the_table_width(capsys, monkeypatch):
    """An empty `restorekit methods` (RESTOREKIT_LOAD_PLUGINS naming no plugin) broke its title onto
    two lines even in a pipe: it was wrapped to the table's width."""
    from restorekit.cli import listing

    monkeypatch.delenv("COLUMNS", raising=False)
    title = "Methods (`restorekit methods show NAME` for one in full)"
    listing(title, ["name", "summary"], [], cut=("summary",))
    assert capsys.readouterr().out.splitlines() == [title, "name  summary"]
    listing(title, ["name", "summary"], [["a", "b"]], cut=("summary",))
    assert capsys.readouterr().out.splitlines() == [title, "name  summary", "a     b"]
