"""psp_pulse on a tiny saved pSp model: faithfulness, anchoring, eps stop, samples, conformance, CLI.

The LR inputs are downscaled images of the tiny generator itself, so a W+ that reproduces them
exists and the search has somewhere to go. PULSE runs through the registry on the same
generator (the pSp file's decoder, through the ``stylegan2`` factory's pSp path).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from restorekit.cli import build_cli
from restorekit.degradations import bicubic_resize
from restorekit.errors import WeightsMissing
from restorekit.images import save_image
from restorekit.networks.lpips_net import build_lpips
from restorekit.optim.latent import downscale_mse, geocross
from restorekit.plugins import registry
from restorekit.testing.conformance import check_method
from restorekit.testing.data import smooth_batch
from tiny_models import save_tiny
from restorekit_psp_sr import method as method_mod
from restorekit_psp_sr.method import PSPSR, PSPSROptions
from restorekit_psp_sr.plugin import PSP_DEFAULT_DECODER, build_stylegan2
from restorekit_psp_sr.psp import default_latent_mask
from restorekit_psp_sr.psp_pulse import PSPPulse, PSPPulseOptions, search_w_plus

STEPS = 12




@pytest.fixture(scope="module")
def model_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny(tmp_path_factory.mktemp("model") / "tiny.safetensors")


def generator_lr(model_file: Path, n: int = 1, size: int = 8, seed: int = 5) -> torch.Tensor:
    """Downscaled images of the model's own generator (W of random z): reachable targets."""
    model, _ = method_mod.load_psp_safetensors(model_file, impl="ref")
    g = model.decoder
    with torch.no_grad():
        w = g.map(torch.randn(n, g.z_dim, generator=torch.Generator().manual_seed(seed)))
        hr = g.synthesize(w[:, None].expand(-1, g.n_styles, -1)).clamp(0, 1)
    return bicubic_resize(hr, (size, size)).clamp(0, 1)


def make(model_file: Path, **opts: object) -> PSPPulse:
    base: dict[str, object] = {"weights": str(model_file), "impl": "ref", "steps": STEPS, "quiet": True}
    m = PSPPulse(PSPPulseOptions(**{**base, **opts}))
    m.load()
    return m


@pytest.fixture(scope="module")
def lr8(model_file: Path) -> torch.Tensor:
    return generator_lr(model_file)


@pytest.fixture(scope="module")
def anchored(model_file: Path, lr8: torch.Tensor) -> PSPPulse:
    """One psp_pulse run (eps 0: all steps) on ``lr8`` at ×4; its outputs in ``.out``."""
    m = make(model_file, eps=0.0)
    m.out = m.restore(lr8, 4)  # type: ignore[attr-defined]
    return m


def test_downscale_loss_falls_below_psp_sr(model_file: Path, lr8: torch.Tensor, anchored: PSPPulse) -> None:
    psp = PSPSR(PSPSROptions(weights=str(model_file), impl="ref"))
    base = psp.restore(lr8, 4)
    out = anchored.out  # type: ignore[attr-defined]
    assert out.shape == base.shape == (1, 3, 32, 32)
    mse_psp = downscale_mse(base, lr8).item()
    mse = downscale_mse(out, lr8).item()
    assert mse < 0.5 * mse_psp, (mse, mse_psp)
    rep = anchored.last_reports[0]
    assert rep["steps"] == STEPS and rep["eps_reached"] is False
    assert rep["downscale_mse"] == pytest.approx(mse, rel=1e-5)
    # The kept iterate is never worse than the start in the objective, hence in the data term.
    assert rep["downscale_mse_searched"] <= rep["downscale_mse_psp"]
    assert rep["weights"] == "tiny" and rep["weights_license"] == "CC0-1.0" and rep["lpips"] == "off"


def test_steps_zero_is_psp_sr(model_file: Path) -> None:
    lr = smooth_batch(2, 16, 16, seed=3)
    base = PSPSR(PSPSROptions(weights=str(model_file), impl="ref", consistency_steps=3)).restore(lr, 2)
    m = make(model_file, steps=0)  # psp_pulse's default 3 consistency steps: psp_sr's with the same
    torch.testing.assert_close(m.restore(lr, 2), base, rtol=0, atol=1e-5)
    assert [r["steps"] for r in m.last_reports] == [0, 0]
    assert m.last_w_plus is not None and torch.equal(m.last_w_plus, m.last_w_psp)


def test_consistency_steps_follow_the_search(model_file: Path, lr8: torch.Tensor) -> None:
    from restorekit.consistency import back_project

    searched = make(model_file, eps=0.0, consistency_steps=0)
    plain = searched.restore(lr8, 4)
    m = make(model_file, eps=0.0)
    assert m.options.consistency_steps == 3  # the default
    out = m.restore(lr8, 4)
    torch.testing.assert_close(out, back_project(plain, lr8, steps=3), rtol=0, atol=1e-5)
    rep, rep0 = m.last_reports[0], searched.last_reports[0]
    assert rep["downscale_mse_searched"] == pytest.approx(rep0["downscale_mse_searched"], rel=1e-5)
    assert rep0["downscale_mse"] == pytest.approx(downscale_mse(plain, lr8).item(), rel=1e-5)
    assert rep["downscale_mse"] == pytest.approx(downscale_mse(out, lr8).item(), rel=1e-5)
    assert rep["downscale_mse"] < 0.2 * rep0["downscale_mse"]


def test_anchor_keeps_w_closer_to_psp_than_pulse(model_file: Path, lr8: torch.Tensor,
                                                  anchored: PSPPulse) -> None:
    """Same generator, same step count: PULSE (random start, spheres) ends far from w_pSp."""
    if "pulse" not in registry().names("methods"):
        pytest.skip("the pulse method (restorekit-baselines) is not installed")
    pulse_cls = registry().method("pulse")
    pulse = pulse_cls(pulse_cls.Options(generator="stylegan2", generator_weights=str(model_file),
                                        generator_options={"impl": "ref"}, steps=STEPS, eps=0.0, quiet=True,
                                        gaussian_fit_samples=4000))
    pulse.restore(lr8, 4, seed=0)
    assert anchored.w_std is not None and anchored.last_w_psp is not None and anchored.last_w_plus is not None
    std = anchored.w_std

    def rms(w: torch.Tensor) -> float:
        return float(((w - anchored.last_w_psp) / std).pow(2).mean().sqrt())

    ours, theirs = rms(anchored.last_w_plus), rms(pulse.last_w_plus)
    assert ours == pytest.approx(anchored.last_reports[0]["w_distance_rms_std"], rel=1e-4)
    assert 0 < ours < 0.5 * theirs, (ours, theirs)
    # A stronger anchor keeps it closer still.
    strong = make(model_file, eps=0.0, anchor_lambda=2.0)
    strong.restore(lr8, 4)
    assert strong.last_reports[0]["w_distance_rms_std"] < 0.8 * ours


def test_eps_stop_fires(model_file: Path, lr8: torch.Tensor, anchored: PSPPulse) -> None:
    rep = anchored.last_reports[0]
    eps = (rep["downscale_mse_psp"] + rep["downscale_mse_searched"]) / 2  # reached mid-run
    m = make(model_file, eps=eps)
    m.restore(lr8, 4)
    r = m.last_reports[0]
    assert r["eps_reached"] is True and 0 < r["steps"] < STEPS
    assert r["downscale_mse_searched"] < eps
    # Already within eps at the start: no step at all.
    m0 = make(model_file, eps=1.0)
    m0.restore(lr8, 4)
    assert m0.last_reports[0]["steps"] == 0 and m0.last_reports[0]["eps_reached"] is True


def test_search_history_stops_at_eps(model_file: Path, lr8: torch.Tensor) -> None:
    model, _ = method_mod.load_psp_safetensors(model_file, impl="ref")
    w0 = model.encode(bicubic_resize(lr8, (32, 32)).clamp(0, 1)).detach()
    std = torch.ones(w0.shape[-1])
    full = search_w_plus(model.decoder, lr8, w0, std, out_size=(32, 32), steps=6, eps=0.0, learning_rate=0.1)
    assert len(full.history) == 7 and full.reached == [False]
    eps = sorted(h[0] for h in full.history)[3]  # some later iterate goes below it
    first = next(k for k, h in enumerate(full.history) if h[0] < eps)
    stop = search_w_plus(model.decoder, lr8, w0, std, out_size=(32, 32), steps=6, eps=eps, learning_rate=0.1)
    assert stop.reached == [True] and stop.steps == [first] and len(stop.history) == first + 1
    assert stop.mse.item() == pytest.approx(full.history[first][0], rel=1e-5)
    assert all(p.grad is None for p in model.decoder.parameters())


def test_reproducible_and_samples_distinct(model_file: Path, lr8: torch.Tensor) -> None:
    m = make(model_file, steps=4, eps=0.0)
    a = m.restore(lr8, 4, seed=3, n_samples=3)
    b = m.restore(lr8, 4, seed=3, n_samples=3)
    assert a.shape == (3, 3, 32, 32) and torch.equal(a, b)
    for i in range(3):
        for j in range(i + 1, 3):
            assert (a[i] - a[j]).abs().mean() > 1e-3, (i, j)
    c = m.restore(lr8, 4, seed=4, n_samples=3)
    assert (a - c).abs().mean() > 1e-3
    assert [(r["image"], r["sample"], r["seed"]) for r in m.last_reports] == [(0, k, 4) for k in range(3)]
    # Each sample starts from (and is anchored to) pSp's code with its fine styles mixed: after the
    # search the fine styles are still far from pSp's, the coarse ones close.
    assert m.last_w_plus is not None and m.last_w_psp is not None and m.w_std is not None
    assert torch.equal(m.last_w_psp[0], m.last_w_psp[2])
    dev = ((m.last_w_plus - m.last_w_psp) / m.w_std).pow(2).mean((0, 2)).sqrt()
    fine = default_latent_mask(dev.shape[0])
    assert dev[fine].min() > 2 * dev[: fine[0]].max(), dev
    # One sample does not depend on the seed.
    assert torch.equal(m.restore(lr8, 4, seed=1), m.restore(lr8, 4, seed=2))


def test_optimised_noise_stays_on_its_sphere(model_file: Path, lr8: torch.Tensor) -> None:
    model, _ = method_mod.load_psp_safetensors(model_file, impl="ref")
    dec = model.decoder
    for layer in [dec.conv1, *dec.convs]:  # noise strengths start at 0: give the noise an effect
        layer.noise.weight.data.fill_(0.3)
    w0 = model.encode(bicubic_resize(lr8, (32, 32)).clamp(0, 1)).detach()
    res = search_w_plus(dec, lr8, w0, torch.ones(w0.shape[-1]), out_size=(32, 32), steps=4, eps=0.0,
                        learning_rate=0.1, optimise_noise=True, noise_layers=2)
    bufs = dec.noise_buffers()
    assert res.noise is not None and len(res.noise) == len(bufs)
    for i, (t, b) in enumerate(zip(res.noise, bufs)):
        assert torch.allclose(t.flatten(1).norm(dim=1), b.flatten(1).norm(dim=1), rtol=1e-4)
        assert torch.equal(t, b.expand_as(t)) == (i >= 2)  # only the two lowest maps moved
    with torch.no_grad():
        again = dec.synthesize(res.w_plus, noise=res.noise)
    torch.testing.assert_close(again, res.images, rtol=0, atol=1e-5)


def test_geocross_term_pulls_layers_together(model_file: Path, lr8: torch.Tensor) -> None:
    from restorekit.optim.latent import fit_gaussian

    model, _ = method_mod.load_psp_safetensors(model_file, impl="ref")
    fit = fit_gaussian(model.decoder, 4000)
    w0 = model.encode(bicubic_resize(lr8, (32, 32)).clamp(0, 1)).detach()
    kw = dict(out_size=(32, 32), steps=5, eps=0.0, learning_rate=0.2, fit=fit)
    plain = search_w_plus(model.decoder, lr8, w0, torch.ones(16), **kw)  # type: ignore[arg-type]
    pulled = search_w_plus(model.decoder, lr8, w0, torch.ones(16), geocross_lambda=1.0, **kw)  # type: ignore[arg-type]
    g0, g1 = geocross(fit.from_w(plain.w_plus)).item(), geocross(fit.from_w(pulled.w_plus)).item()
    assert g1 < 0.9 * g0, (g0, g1)
    with pytest.raises(ValueError, match="GaussianFit"):
        search_w_plus(model.decoder, lr8, w0, torch.ones(16), out_size=(32, 32), steps=1, eps=0.0,
                      learning_rate=0.1, geocross_lambda=1.0)


def test_lpips_used_from_31_px_and_skipped_below(model_file: Path, lr8: torch.Tensor,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    m = make(model_file, steps=2, eps=0.0, quiet=False)
    m.options.lpips_lambda = 1.0  # the real network needs cached weights; a random one is enough here
    m.lpips = build_lpips("alex", allow_random=True)
    m.restore(lr8, 4)
    m.restore(lr8, 4)
    assert m.last_reports[0]["lpips"].startswith("skipped")
    assert capsys.readouterr().err.count("LPIPS(alex) needs inputs of at least 31 px") == 1
    big = generator_lr(model_file, size=32)
    m.restore(big, 1)
    assert m.last_reports[0]["lpips"] == "used"


def test_lpips_needs_its_weights(model_file: Path, rk_home: Path) -> None:
    from restorekit.errors import RestorekitError

    with pytest.raises(RestorekitError, match="lpips-alex"):
        make(model_file, lpips_lambda=0.5)


def test_runs_under_no_grad_and_inference_mode(model_file: Path, lr8: torch.Tensor) -> None:
    m = make(model_file, steps=3, eps=0.0)
    with torch.no_grad():
        a = m.restore(lr8, 4)
    with torch.inference_mode():
        b = m.restore(lr8, 4)
    assert torch.equal(a, b)
    assert m.last_reports[0]["downscale_mse"] < m.last_reports[0]["downscale_mse_psp"]


def test_conformance(model_file: Path) -> None:
    check_method(PSPPulse, options={"weights": str(model_file), "impl": "ref", "steps": 2, "quiet": True},
                 scale=2, lr=smooth_batch(2, 16, 16, seed=4))


def test_registered_with_both_papers() -> None:
    assert registry().method("psp_pulse") is PSPPulse
    info = PSPPulse.info
    assert "Encoding in Style" in info.paper and "PULSE" in info.paper and not info.deterministic


def test_stylegan2_factory_reads_psp_decoder(model_file: Path, tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    model, _ = method_mod.load_psp_safetensors(model_file, impl="ref")
    g = build_stylegan2(weights=str(model_file), impl="ref")
    ref = model.decoder.state_dict()
    assert all(torch.equal(v, ref[k]) for k, v in g.state_dict().items())
    with pytest.raises(ValueError, match="resolution=64"):
        build_stylegan2(weights=str(model_file), resolution=64)
    monkeypatch.setattr(method_mod, "WEIGHTS_DIR", tmp_path)
    with pytest.raises(WeightsMissing, match="psp_sr_faces128.safetensors is not in this installation"):
        build_stylegan2(weights=PSP_DEFAULT_DECODER)
    # A file dropped in its place is not the shipped model: without a registry entry pinning it, refused.
    # (The shipped case: test_ship.py.)
    (tmp_path / "empty-registry").mkdir()
    monkeypatch.setenv("RESTOREKIT_REGISTRY", str(tmp_path / "empty-registry"))
    shutil.copy(model_file, tmp_path / method_mod.DEFAULT_MODEL_FILE)
    with pytest.raises(WeightsMissing, match="no registry entry 'psp-sr-faces128' pins its sha256"):
        build_stylegan2(weights=PSP_DEFAULT_DECODER, impl="ref")


def test_compare_psp_sr_psp_pulse_pulse(model_file: Path, tmp_path: Path) -> None:
    names = registry().names("methods")
    methods = "psp_sr,psp_pulse" + (",pulse" if "pulse" in names else "")
    data = tmp_path / "hr"
    data.mkdir()
    hr = generator_lr(model_file, n=2, size=32)
    for i in range(2):
        save_image(hr[i], data / f"face{i}.png")
    out = tmp_path / "report"
    w = str(model_file)
    r = CliRunner().invoke(build_cli(), [
        "compare", "--methods", methods, "--scale", "4", "--data", str(data), "--out", str(out),
        "--device", "cpu", "--metrics", "psnr_rgb,lr_consistency", "--quiet",
        "--opt", f"psp_sr.weights={w}", "--opt", "psp_sr.impl=ref",
        "--opt", f"psp_pulse.weights={w}", "--opt", "psp_pulse.impl=ref", "--opt", "psp_pulse.steps=4",
        "--opt", "psp_pulse.quiet=true",
        "--opt", "pulse.generator=stylegan2", "--opt", f"pulse.generator_weights={w}", "--opt", "pulse.steps=4",
        "--opt", "pulse.quiet=true", "--opt", "pulse.gaussian_fit_samples=2000",
        "--opt", 'pulse.generator_options={"impl": "ref"}'])
    assert r.exit_code == 0, r.output
    doc = json.loads((out / "results.json").read_text())
    agg = {m["name"]: m["aggregate"]["metrics"] for m in doc["methods"]}
    assert set(agg) == set(methods.split(","))
    assert agg["psp_pulse"]["lr_consistency"]["mean"] < agg["psp_sr"]["lr_consistency"]["mean"]
