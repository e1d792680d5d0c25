"""Restoration at ×1 beyond compare: the page (methods of other scales unticked, lr_consistency and
the default degradation at ×1), psp_sr/psp_pulse's notes at ×1, the black-and-white convention's
wording, ``run`` without --scale, feature-space suggestions and ``weights list`` without a cache."""

from __future__ import annotations

import json
import pwd
from pathlib import Path
from typing import Any

import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from restorekit.cli import build_cli
from restorekit.errors import RestorekitError, UnknownNameError
from restorekit.harness.report_files import BLACK_AND_WHITE
from restorekit.harness.runner import SR_ONLY_AT_SCALE_ONE
from restorekit.interfaces import RESTORATION_TASKS
from restorekit.provenance import read_note
from restorekit.testing import error_line
from restorekit.testing.data import smooth_image
from test_scale_one import DENOISER_PLUGIN

DENOISER = "gauss_denoise_3p"


def invoke(*args: str) -> Any:
    return CliRunner().invoke(build_cli(), list(args), prog_name="restorekit", catch_exceptions=False)


@pytest.fixture
def denoiser(plugin_site: Any, rk_home: Path) -> str:
    plugin_site("gauss-denoise-3p", DENOISER, DENOISER_PLUGIN, DENOISER)
    return DENOISER


# ------------------------------------------------------------------------------------ serve at ×1


@pytest.fixture
def serve_state(denoiser: str, tmp_path: Path) -> Any:
    pytest.importorskip("starlette", reason="restorekit serve needs the web extra (starlette, uvicorn)")
    from restorekit.web.config import ServeConfig
    from restorekit.web.server import build_state

    state = build_state(ServeConfig(device="cpu", methods=["bicubic", denoiser], metrics=["psnr_rgb", "lr_consistency"],
                                    temp_parent=tmp_path))
    yield state
    state.close()


def _job(state: Any, **settings: Any) -> Any:
    from restorekit.web.jobs import Job, JobSettings

    pixels = torch.from_numpy(smooth_image(40, 40, 0)).permute(2, 0, 1)[None].contiguous()
    up = state.uploads.add(pixels, "face.png")
    s = JobSettings(upload=up.id, **settings)
    state.restorer.check(s, up)
    return Job("j1", s, upload=up)


def test_the_catalogue_says_each_methods_task_and_scales(serve_state: Any) -> None:
    rows = {m["name"]: m for m in serve_state.catalogue.public()["methods"]}
    assert (rows[DENOISER]["task"], rows[DENOISER]["scales"]) == ("denoising", [1])
    assert (rows["bicubic"]["task"], rows["bicubic"]["scales"]) == ("super-resolution", None)


def test_a_x1_job_that_degrades_needs_a_degradation(serve_state: Any) -> None:
    # As compare --scale 1: bicubic:1 would leave the upload undamaged, and doing nothing would score best.
    with pytest.raises(RestorekitError, match=r"^at ×1 degrading the upload needs a degradation \(e\.g\. noise:15"):
        _job(serve_state, methods=[DENOISER], scale=1, degrade=True)
    _job(serve_state, methods=[DENOISER], scale=1, degrade=True, degradation="noise:15")
    _job(serve_state, methods=["bicubic"], scale=2, degrade=True)  # bicubic:2 by default


def test_a_x1_job_leaves_lr_consistency_out_unless_named(denoiser: str, serve_state: Any, tmp_path: Path) -> None:
    from restorekit.web.config import ServeConfig
    from restorekit.web.server import build_state

    # The page's default metrics (serve without --metrics): lr_consistency is listed skipped, not scored.
    (tmp_path / "default").mkdir()
    state = build_state(ServeConfig(device="cpu", methods=["bicubic", denoiser], temp_parent=tmp_path / "default"))
    try:
        job = _job(state, methods=[denoiser, "bicubic"], scale=1, degrade=True, degradation="noise:15")
        state.restorer.run(job)
    finally:
        state.close()
    listed = {m["name"]: (m["status"], m["reason"]) for m in job.result["metrics"]}
    assert listed["lr_consistency"] == ("skipped", SR_ONLY_AT_SCALE_ONE) and listed["psnr_y_crop"] == ("ok", None)
    rows = {r["name"]: r for r in job.result["methods"]}
    assert "psnr_y_crop" in rows[denoiser]["metrics"] and "lr_consistency" not in rows[denoiser]["metrics"]
    assert "lr_consistency" not in job.result["best"]
    # The denoiser beats doing nothing (bicubic at ×1 returns the noisy input).
    assert rows[denoiser]["metrics"]["psnr_y_crop"]["mean"] > rows["bicubic"]["metrics"]["psnr_y_crop"]["mean"] + 3
    # Named by the operator (serve --metrics psnr_rgb,lr_consistency), it is scored at ×1.
    job = _job(serve_state, methods=[denoiser, "bicubic"], scale=1, degrade=True, degradation="noise:15")
    serve_state.restorer.run(job)
    rows = {r["name"]: r for r in job.result["methods"]}
    assert rows["bicubic"]["metrics"]["lr_consistency"]["mean"] == 0.0
    assert rows[denoiser]["metrics"]["lr_consistency"]["mean"] > 1e-4
    # At ×2 it is scored whatever the list.
    from restorekit.web.work import scored_metrics

    assert [m["status"] for m in scored_metrics(serve_state.catalogue, 2, None)] == ["ok", "ok"]


def test_the_page_unticks_and_disables_methods_that_do_not_serve_the_scale(denoiser: str, tmp_path: Path) -> None:
    """The page ticked a ×1-only method at its default ×4, and Restore then failed ('supports --scale 1')."""
    pytest.importorskip("starlette", reason="restorekit serve needs the web extra (starlette, uvicorn)")
    pytest.importorskip("uvicorn", reason="restorekit serve needs the web extra (starlette, uvicorn)")
    from serve_helpers import chromium_driver, find_chromium, get_json

    from restorekit.web.config import ServeConfig
    from restorekit.web.server import start

    srv = start(ServeConfig(port=0, device="cpu", methods=["bicubic", denoiser], metrics=["psnr_rgb"],
                            temp_parent=tmp_path))
    driver: Any = None
    try:
        status, info = get_json(srv.url, "/api/info")  # what the page reads
        assert status == 200 and [(m["name"], m["scales"]) for m in info["methods"]] == [
            ("bicubic", None), (DENOISER, [1])]
        found = find_chromium()
        if isinstance(found, str):
            pytest.skip(found)
        from selenium.webdriver.support.ui import WebDriverWait

        driver = chromium_driver(*found, profile=tmp_path / "profile")
        driver.get(srv.url + "/")
        WebDriverWait(driver, 20, poll_frequency=0.05).until(
            lambda d: d.execute_script("return document.querySelectorAll('#methods .method').length === 2"))

        def boxes() -> dict[str, list[bool]]:  # name: [ticked, disabled]
            return driver.execute_script(
                "return Object.fromEntries([...document.querySelectorAll('#methods input[type=checkbox]')]"
                ".map(b => [b.value, [b.checked, b.disabled]]))")

        def do(js: str) -> Any:
            return driver.execute_script(js + "; refresh(); return [document.getElementById('run').disabled, "
                                              "document.getElementById('run-why').textContent];")

        assert driver.execute_script("return document.getElementById('scale').value") == "4"
        assert boxes() == {"bicubic": [True, False], DENOISER: [False, True]}
        assert "(only ×1)" in driver.execute_script(
            f"return document.querySelector('label[for=m-{DENOISER}]').textContent")
        do("document.getElementById('scale').value = '1'")
        assert boxes() == {"bicubic": [True, False], DENOISER: [True, False]}
        # Degrading at ×1 needs a degradation named: Restore says so until one is given.
        disabled, why = do("state.upload = {id: 'x'}; document.getElementById('degrade').checked = true")
        assert disabled is True and why.startswith("at ×1, name a degradation (e.g. noise:15)")
        assert do("document.getElementById('degradation').value = 'noise:15'") == [False, ""]
        # Unticked by the user, it stays unticked when ×1 comes back; a scale only it was ticked for says so.
        do(f"document.getElementById('m-{DENOISER}').checked = false; document.getElementById('scale').value = '2'")
        do("document.getElementById('scale').value = '1'")
        assert boxes()[DENOISER] == [False, False]
        do("document.getElementById('m-bicubic').checked = false")
        assert do("document.getElementById('scale').value = '3'") == [True, "choose a method first"]
        assert boxes() == {"bicubic": [False, False], DENOISER: [False, True]}
    finally:
        if driver is not None:
            driver.quit()
        srv.stop()


# ------------------------------------------------------------------------------ psp_sr at ×1


def _tiny_psp(path: Path) -> Path:
    from restorekit_psp_sr.encoder import GradualStyleEncoder
    from restorekit_psp_sr.method import save_psp_safetensors
    from restorekit_psp_sr.psp import PSP
    from restorekit_psp_sr.stylegan2 import StyleGAN2Generator

    torch.manual_seed(0)
    g = StyleGAN2Generator(32, style_dim=16, n_mlp=2, channel_multiplier=1, channel_max=16, impl="ref")
    enc = GradualStyleEncoder(g.n_styles, 16, backbone="ir_se_light", input_size=32, head_channels=16)
    save_psp_safetensors(PSP(enc, g, g.mean_latent(256)).eval(), path, factors=[1, 2, 4], license="CC0-1.0",
                         name="tiny")
    return path


def test_psp_sr_and_psp_pulse_at_x1_say_consistency_steps_do_nothing(tmp_path: Path,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("restorekit_psp_sr")
    from restorekit_psp_sr.method import PSPSR, PSPSROptions
    from restorekit_psp_sr.psp_pulse import PSPPulse

    model = _tiny_psp(tmp_path / "tiny.safetensors")
    lr = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    m = PSPSR(PSPSROptions(weights=str(model), impl="ref"))
    out = m.restore(lr, 1)
    m.restore(lr, 1)
    err = capsys.readouterr().err
    # Before: "16-px inputs show more than the prior keeps … --opt consistency_steps=3 projects the output
    # onto the input", which does nothing at ×1.
    assert "consistency_steps=3" not in err and err.count("psp_sr: at ×1 psp_sr re-draws the face through its "
                                                          "prior (pSp's ×1") == 1
    assert "consistency_steps has no effect at ×1" in err
    assert torch.equal(PSPSR(PSPSROptions(weights=str(model), impl="ref", consistency_steps=3, quiet=True))
                       .restore(lr, 1), out)  # indeed none
    m.restore(lr, 2)  # at ×2 the note that names back-projection stays
    assert "16-px inputs show more than the prior keeps" in capsys.readouterr().err
    p = PSPPulse(PSPPulse.Options(weights=str(model), impl="ref", steps=1, gaussian_fit_samples=2))
    p.restore(lr, 1)
    assert any(n.startswith("psp_pulse: at ×1 psp_pulse re-draws the face through its prior") and
               "consistency_steps has no effect at ×1" in n for n in p.notes)
    assert any(n.endswith("3 back-projection steps onto the input (none at ×1)") for n in p.notes)


def test_at_x1_a_native_size_output_is_back_projected_and_the_notes_say_so(tmp_path: Path,
                                                                         capsys: pytest.CaptureFixture[str]) -> None:
    """keep_native_size (Python) keeps the generator's size: a ×1 output of a smaller input is then
    projected onto it as at any scale, and no note may say consistency_steps does nothing."""
    pytest.importorskip("restorekit_psp_sr")
    from restorekit_psp_sr.method import PSPSR, PSPSROptions
    from restorekit_psp_sr.psp_pulse import PSPPulse

    model = _tiny_psp(tmp_path / "tiny.safetensors")
    lr = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    plain = PSPSR(PSPSROptions(weights=str(model), impl="ref", keep_native_size=True)).restore(lr, 1)
    err = capsys.readouterr().err
    projected = PSPSR(PSPSROptions(weights=str(model), impl="ref", keep_native_size=True, consistency_steps=3,
                                   quiet=True)).restore(lr, 1)
    assert plain.shape[-1] > lr.shape[-1] and (projected - plain).abs().max() > 1e-3
    assert "at ×1 psp_sr re-draws the face" in err and "no effect" not in err
    p = PSPPulse(PSPPulse.Options(weights=str(model), impl="ref", steps=1, gaussian_fit_samples=2,
                                  keep_native_size=True))
    p.restore(lr, 1)
    assert any("at ×1 psp_pulse re-draws the face" in n for n in p.notes)
    assert not any("no effect" in n or n.endswith("(none at ×1)") for n in p.notes), p.notes
    assert any(n.endswith("back-projection steps onto the input (none at ×1 to an input of the generator's size)")
               for n in p.notes), p.notes  # where the output already has the input's size, it says so


# ----------------------------------------------------------------------- small conventions and CLI


def test_the_black_and_white_convention_names_every_restoration_task() -> None:
    assert "a method whose task restores without changing colours (RESTORATION_TASKS" in BLACK_AND_WHITE
    assert "super-resolution method" not in BLACK_AND_WHITE
    assert all(task in BLACK_AND_WHITE for task in RESTORATION_TASKS)


def test_run_defaults_scale_to_a_methods_only_scale(denoiser: str, tmp_path: Path) -> None:
    src = tmp_path / "in"
    src.mkdir()
    Image.fromarray(smooth_image(20, 16, 0)).save(src / "a.png")
    r = invoke("run", denoiser, "--input", str(src), "--output", str(tmp_path / "out"), "-q")
    assert r.exit_code == 0, r.output
    out = tmp_path / "out" / "a.png"
    assert Image.open(out).size == (16, 20) and read_note(out)["scale"] == 1
    # A method of any scale still needs it, in one usage line saying why.
    r = invoke("run", "bicubic", "--input", str(src), "--output", str(tmp_path / "b"))
    assert r.exit_code == 2 and not (tmp_path / "b").exists()
    assert error_line(r.stderr) == ("Error: Missing option '--scale': bicubic supports any scale (output size = scale × "
                                    "input size)")
    r = invoke("run", "bicubc", "--input", str(src), "--output", str(tmp_path / "b"))
    assert r.exit_code == 2 and "did you mean 'bicubic'" in error_line(r.stderr)
    assert "unless METHOD declares a single scale" in " ".join(invoke("run", "--help").output.split())


def test_a_misspelt_feature_space_alias_gets_a_suggestion() -> None:
    from restorekit.harness.realism.spaces import canonical_space

    for typo, meant in (("alexx", "alex"), ("vgx", "vgg"), ("dlb", "dlib"), ("alex_conv6", "alex_conv5")):
        with pytest.raises(UnknownNameError, match=rf"unknown feature space '{typo}' \(did you mean '{meant}'\?\)"):
            canonical_space(typo)


def test_weights_list_without_a_cache_folder_lists_the_registry(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("HOME", "RESTOREKIT_HOME", "XDG_CACHE_HOME"):
        monkeypatch.delenv(name, raising=False)

    def no_entry(uid: int) -> pwd.struct_passwd:
        raise KeyError(f"getpwuid(): uid not found: {uid}")

    monkeypatch.setattr(pwd, "getpwuid", no_entry)
    from restorekit import weights as W

    r = invoke("weights", "list", "--json")
    assert r.exit_code == 0, r.output
    (warning,) = r.stderr.strip().splitlines()
    assert warning.startswith("warning: restorekit has no folder for its cache") and "RESTOREKIT_HOME" in warning
    rows = {row["name"]: row for row in json.loads(r.stdout)}
    specs = W.all_specs()
    assert set(rows) == set(specs) and "unknown" in {row["state"] for row in rows.values()}
    for name, spec in specs.items():
        shipped = all(wf.bundled for wf in spec.files)
        assert rows[name]["state"] == ("shipped" if shipped else "unknown"), name
        assert rows[name]["cached"] == "unknown"
    r = invoke("weights", "list")
    assert r.exit_code == 0 and r.stdout.startswith("weights (cache: none usable)")
    # Anything else that needs the cache still says why, in one line (exit 2).
    r = invoke("weights", "path", "ir-se50")
    assert r.exit_code == 2 and "RESTOREKIT_HOME" in r.stderr


def test_serve_metrics_named_as_the_default_list_still_count_as_named() -> None:
    """`serve --metrics` spelling out the default list names its metrics all the same (at ×1 a named
    lr_consistency is scored); without --metrics the page's default list names none."""
    pytest.importorskip("starlette", reason="restorekit serve needs the web extra (starlette, uvicorn)")
    from restorekit.web.config import DEFAULT_METRICS, ServeConfig
    from restorekit.web.work import named_metrics

    assert named_metrics(ServeConfig()) is None
    assert named_metrics(ServeConfig(metrics=list(DEFAULT_METRICS), metrics_named=True)) == list(DEFAULT_METRICS)
    assert named_metrics(ServeConfig(metrics=["psnr_rgb"])) == ["psnr_rgb"]
