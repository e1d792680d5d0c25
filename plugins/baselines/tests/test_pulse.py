"""PULSE: spherical optimiser, GEOCROSS, schedules, eps stop, reproducibility, conformance.

A tiny ``Generator`` defined here keeps these tests independent of the psp_sr plugin; when a
``stylegan2`` generator factory is registered, one more test runs PULSE through it.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from restorekit.degradations import bicubic_resize
from restorekit.errors import RestorekitError, UnknownNameError
from restorekit.interfaces import Generator
from restorekit.plugins import Factory, registry
from restorekit.testing import check_method
from restorekit_baselines.pulse import Pulse, PulseOptions
from restorekit_baselines.spherical import (
    GaussianFit, OptimiseConfig, SphericalOptimizer, fit_gaussian, geocross, lr_factor, optimise_latents,
    project_to_sphere,
)

TINY = "tiny-pulse-test"


class TinyGenerator(Generator):
    """A 2-layer mapping (leaky ReLU 0.2 ×√2, like StyleGAN2's) and a smooth nonlinear decoder."""

    def __init__(self, resolution: int = 16, dim: int = 8, n_styles: int = 4, seed: int = 0) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.resolution, self.z_dim, self.style_dim, self.n_styles = resolution, dim, dim, n_styles
        self.m1 = nn.Parameter(torch.randn(dim, dim, generator=g) / math.sqrt(dim))
        self.m2 = nn.Parameter(torch.randn(dim, dim, generator=g) / math.sqrt(dim))
        coarse = torch.randn(n_styles * dim, 3, 4, 4, generator=g)
        fine = F.interpolate(coarse, size=(resolution, resolution), mode="bilinear", align_corners=False)
        self.basis = nn.Parameter(fine.view(n_styles, dim, 3, resolution, resolution))
        self.register_buffer("noise_0", torch.randn(1, 1, 4, 4, generator=g))
        self.register_buffer("noise_1", torch.randn(1, 1, 8, 8, generator=g))

    def map(self, z: torch.Tensor) -> torch.Tensor:
        h = F.leaky_relu(z @ self.m1, 0.2) * math.sqrt(2)
        return F.leaky_relu(h @ self.m2, 0.2) * math.sqrt(2)

    def noise_buffers(self) -> list[torch.Tensor]:
        return [self.noise_0, self.noise_1]

    def synthesize(self, w_plus, *, noise_mode="const", noise=None):  # type: ignore[no-untyped-def]
        x = torch.einsum("nld,ldchw->nchw", w_plus, self.basis) / math.sqrt(self.n_styles * self.style_dim)
        for nz in (self.noise_buffers() if noise is None else noise):
            x = x + 0.05 * F.interpolate(nz, size=x.shape[-2:], mode="bilinear", align_corners=False)
        return 0.5 + 0.5 * torch.tanh(x)


@pytest.fixture(scope="module")
def gen() -> TinyGenerator:
    return TinyGenerator().eval()


@pytest.fixture(scope="module")
def fit(gen: TinyGenerator) -> GaussianFit:
    return fit_gaussian(gen, 20_000)


@pytest.fixture
def tiny_registered():
    """Register the tiny generator under a factory name, as a plugin would; removed afterwards."""
    reg = registry()
    reg.add("generators", TINY, Factory(TINY, lambda **kw: TinyGenerator(**kw), "test"), "tests")
    yield TINY
    del reg.items["generators"][TINY]
    del reg.owner["generators"][TINY]


def _target(gen: TinyGenerator, fit: GaussianFit, seed: int, n: int = 1, size: int = 4) -> torch.Tensor:
    """The downscale of a generator image from a random gaussianised W+ latent."""
    u = torch.randn(n, gen.n_styles, gen.style_dim, generator=torch.Generator().manual_seed(1000 + seed))
    with torch.no_grad():
        return bicubic_resize(gen.synthesize(fit.to_w(u)), (size, size))


# -- building blocks ------------------------------------------------------------------------
def test_gaussian_fit_inverts_and_whitens(gen: TinyGenerator, fit: GaussianFit) -> None:
    u = torch.randn(64, 8)
    assert torch.allclose(fit.from_w(fit.to_w(u)), u, atol=1e-5)
    z = torch.randn(20_000, 8, generator=torch.Generator().manual_seed(7))
    white = fit.from_w(gen.map(z).detach())
    assert white.mean(0).abs().max() < 0.05
    assert (white.std(0) - 1).abs().max() < 0.05


def test_geocross_values() -> None:
    same = torch.randn(2, 1, 8).expand(2, 5, 8)
    assert torch.allclose(geocross(same), torch.zeros(2), atol=1e-3)
    e = torch.eye(8)[:2].unsqueeze(0) * 3.0  # two orthogonal layers, radius 3
    # mean over the 2×2 ordered pairs of angle²: (π/2)²·2/4, times D/8 = 1.
    assert geocross(e).item() == pytest.approx((math.pi / 2) ** 2 / 2, rel=1e-5)
    assert geocross(torch.randn(3, 1, 8)).abs().max() == 0


def test_lr_schedules() -> None:
    assert lr_factor("fixed", 37, 100) == 1.0
    assert lr_factor("linear1cycle", 0, 100) == pytest.approx(0.1)
    assert lr_factor("linear1cycle", 50, 100) == pytest.approx(1.0)
    assert lr_factor("linear1cycle", 75, 100) == pytest.approx(0.55)
    assert lr_factor("linear1cycledrop", 45, 100) == pytest.approx(1.0)
    assert lr_factor("linear1cycledrop", 90, 100) == pytest.approx(0.1)
    assert lr_factor("linear1cycledrop", 99, 100) == pytest.approx(0.1 + 0.9 * (0.001 - 0.1))
    with pytest.raises(ValueError, match="unknown learning-rate schedule"):
        lr_factor("cosine", 1, 10)  # type: ignore[arg-type]


def test_spherical_optimizer_keeps_radii() -> None:
    g = torch.Generator().manual_seed(0)  # (unseeded, about 1 draw in 50 missed the direction bound)
    x = project_to_sphere(torch.randn(3, 4, 16, generator=g), 4.0).requires_grad_(True)
    noise = torch.randn(3, 1, 5, 5, generator=g).requires_grad_(True)
    radius_noise = noise.detach().flatten(2).norm(dim=-1)
    opt = SphericalOptimizer([x, noise], lr=0.5)
    target = torch.randn(3, 4, 16, generator=g)
    for _ in range(10):
        opt.zero_grad()
        ((x - target).pow(2).sum() + noise.pow(3).sum()).backward()
        opt.step()
        assert torch.allclose(x.detach().norm(dim=-1), torch.full((3, 4), 4.0), rtol=1e-5)
        assert torch.allclose(noise.detach().flatten(2).norm(dim=-1), radius_noise, rtol=1e-5)
    # It moved towards the target's direction, not merely stayed put.
    cos = F.cosine_similarity(x.detach(), target, dim=-1)
    assert cos.mean() > 0.9


# -- the optimisation -----------------------------------------------------------------------
def test_downscale_error_falls_and_latents_stay_on_sphere(gen: TinyGenerator, fit: GaussianFit) -> None:
    lr = _target(gen, fit, 0, n=2)
    cfg = OptimiseConfig(steps=40, stop_at_eps=False, eps=0.0)
    res = optimise_latents(gen, lr, config=cfg, fit=fit, rng=torch.Generator().manual_seed(3),
                           record_latents=True)
    first = torch.tensor(res.history[:3]).mean(0)
    last = torch.tensor(res.history[-3:]).mean(0)
    assert (last < 0.1 * first).all(), (first, last)
    assert len(res.history) == 40 and res.steps == [40, 40] and res.reached == [False, False]
    for lat in res.latents:
        norms = lat.norm(dim=-1)
        assert torch.allclose(norms, torch.full_like(norms, math.sqrt(8)), rtol=1e-5)
    # The returned image is the best iterate and its downscale has the reported MSE.
    got = (bicubic_resize(res.images, (4, 4)) - lr).pow(2).mean((1, 2, 3))
    assert torch.allclose(got, res.mse, rtol=1e-3, atol=1e-6)
    assert torch.allclose(res.mse, torch.tensor(res.history).min(0).values, rtol=1e-6)


def test_the_search_leaves_a_trainable_generator_as_it_was(gen: TinyGenerator, fit: GaussianFit) -> None:
    """The search switched the generator's parameters off and back on: on a generator shared with
    another thread, or being trained, two searches at once left them frozen. It now takes its
    gradients for its own latents and noise alone; the generator's parameters get no .grad."""
    trainable = TinyGenerator().eval()
    trainable.load_state_dict(gen.state_dict())
    assert all(p.requires_grad for p in trainable.parameters())
    seen: list[bool] = []
    real_synth = trainable.synthesize

    def synth(*a, **kw):  # the parameters as the search sees them
        seen.append(all(p.requires_grad for p in trainable.parameters()))
        return real_synth(*a, **kw)

    trainable.synthesize = synth  # type: ignore[method-assign]
    cfg = OptimiseConfig(steps=5, stop_at_eps=False, eps=0.0)
    res = optimise_latents(trainable, _target(gen, fit, 0), config=cfg, fit=fit, rng=torch.Generator().manual_seed(3))
    same = optimise_latents(gen.requires_grad_(False), _target(gen, fit, 0), config=cfg, fit=fit,
                            rng=torch.Generator().manual_seed(3))
    gen.requires_grad_(True)
    assert seen == [True] * 5 and all(p.requires_grad and p.grad is None for p in trainable.parameters())
    assert torch.equal(res.images, same.images)  # the same search as on a frozen generator


def test_eps_stop_fires(gen: TinyGenerator, fit: GaussianFit) -> None:
    lr = _target(gen, fit, 1)
    rng = torch.Generator().manual_seed(0)
    res = optimise_latents(gen, lr, config=OptimiseConfig(steps=200, eps=2e-2), fit=fit, rng=rng)
    assert res.reached == [True]
    assert len(res.history) == res.steps[0] < 200
    assert res.history[-1][0] < 2e-2 <= res.history[-2][0]
    # eps = 0 is never reached: all steps run.
    res0 = optimise_latents(gen, lr, config=OptimiseConfig(steps=7, eps=0.0), fit=fit)
    assert res0.reached == [False] and len(res0.history) == 7


def test_finished_samples_stay_frozen(gen: TinyGenerator, fit: GaussianFit) -> None:
    """A sample that reached eps stops moving while the others continue."""
    easy = _target(gen, fit, 2)
    hard = torch.full_like(easy, 0.5) + 0.4 * (torch.arange(16.0).view(1, 1, 4, 4) % 2 - 0.5)
    res = optimise_latents(gen, torch.cat([easy, hard]), config=OptimiseConfig(steps=150, eps=5e-3),
                           fit=fit, rng=torch.Generator().manual_seed(1), record_latents=True)
    assert res.reached == [True, False] and len(res.latents) == 150
    k = res.steps[0]
    assert k < 100
    assert torch.equal(res.latents[k - 1][0], res.latents[-1][0])
    assert not torch.equal(res.latents[k - 1][1], res.latents[-1][1])


@pytest.mark.parametrize("seed", range(4))
def test_generator_images_reach_eps(gen: TinyGenerator, fit: GaussianFit, seed: int) -> None:
    """Property: when the target IS a downscaled generator image, PULSE reaches eps (2e-3)."""
    lr = _target(gen, fit, 10 + seed)
    start = optimise_latents(gen, lr, config=OptimiseConfig(steps=1, eps=0.0), fit=fit,
                             rng=torch.Generator().manual_seed(seed))
    assert start.mse.item() > 1e-2  # the start is far from the target
    res = optimise_latents(gen, lr, config=OptimiseConfig(steps=150), fit=fit,
                           rng=torch.Generator().manual_seed(seed))
    assert res.reached == [True], res.mse
    assert res.mse.item() < 2e-3


@pytest.mark.parametrize("mode", ["trainable", "fixed", "const", "zero"])
def test_noise_modes_reproduce_the_image(gen: TinyGenerator, fit: GaussianFit, mode: str) -> None:
    """The returned W+ and noise regenerate the returned image; trainable noise keeps its norms."""
    lr = _target(gen, fit, 11, n=2)
    rng = torch.Generator().manual_seed(5)
    cfg = OptimiseConfig(steps=15, eps=0.0, noise=mode, trainable_noise_layers=1)  # type: ignore[arg-type]
    res = optimise_latents(gen, lr, config=cfg, fit=fit, rng=rng)
    assert res.noise is not None and [t.shape for t in res.noise] == [(2, 1, 4, 4), (2, 1, 8, 8)]
    with torch.no_grad():
        again = gen.synthesize(res.w_plus, noise=res.noise).clamp(0, 1)
    assert torch.allclose(again, res.images, atol=1e-5)
    replay = torch.Generator().manual_seed(5)
    torch.randn(2, 4, 8, generator=replay)  # the start latents are drawn first, then the noise maps
    first_noise = torch.randn(2, 1, 4, 4, generator=replay)
    if mode == "zero":
        assert all(t.abs().max() == 0 for t in res.noise)
    elif mode == "const":
        assert torch.equal(res.noise[1], gen.noise_1.expand(2, 1, 8, 8))
    elif mode == "fixed":
        assert torch.equal(res.noise[0], first_noise)
    else:  # the first layer was optimised on its sphere, the second stays fixed
        assert not torch.equal(res.noise[0], first_noise)
        assert torch.allclose(res.noise[0].flatten(1).norm(dim=1), first_noise.flatten(1).norm(dim=1), rtol=1e-5)


def test_z_space_and_tiled_latent(gen: TinyGenerator, fit: GaussianFit) -> None:
    lr = _target(gen, fit, 3)
    z = optimise_latents(gen, lr, config=OptimiseConfig(latent="z", steps=30, eps=0.0, stop_at_eps=False),
                         record_latents=True)
    assert z.latents[-1].shape == (1, 4, 8)
    assert torch.allclose(z.latents[-1].norm(dim=-1), torch.full((1, 4), math.sqrt(8)), rtol=1e-5)
    assert z.history[-1][0] < z.history[0][0]
    tiled = optimise_latents(gen, lr, config=OptimiseConfig(tile_latent=True, steps=5, eps=0.0), fit=fit,
                             record_latents=True)
    assert tiled.latents[0].shape == (1, 1, 8)
    assert torch.allclose(tiled.w_plus[:, 0], tiled.w_plus[:, 3])


def test_init_w_plus_keeps_its_radius(gen: TinyGenerator, fit: GaussianFit) -> None:
    lr = _target(gen, fit, 4)
    w0 = fit.to_w(0.5 * torch.randn(1, 4, 8, generator=torch.Generator().manual_seed(9)))
    res = optimise_latents(gen, lr, w0, config=OptimiseConfig(steps=5, eps=0.0), fit=fit, record_latents=True)
    radius = fit.from_w(w0).norm(dim=-1)
    assert torch.allclose(res.latents[0], fit.from_w(w0), atol=1e-5)
    assert torch.allclose(res.latents[-1].norm(dim=-1), radius, rtol=1e-5)
    with pytest.raises(ValueError, match="init_w_plus"):
        optimise_latents(gen, lr, w0, config=OptimiseConfig(latent="z", steps=1))


def test_generator_parameters_untouched(gen: TinyGenerator, fit: GaussianFit) -> None:
    before = {k: v.clone() for k, v in gen.state_dict().items()}
    optimise_latents(gen, _target(gen, fit, 5), config=OptimiseConfig(steps=5), fit=fit)
    assert all(torch.equal(before[k], v) for k, v in gen.state_dict().items())
    assert all(p.grad is None for p in gen.parameters())
    assert all(p.requires_grad for p in gen.parameters())


# -- the method -----------------------------------------------------------------------------
def _opts(**kw) -> PulseOptions:  # type: ignore[no-untyped-def]
    base = {"generator": TINY, "steps": 60, "quiet": True, "gaussian_fit_samples": 4000}
    return PulseOptions(**{**base, **kw})


def test_conformance(tiny_registered: str) -> None:
    check_method(Pulse, options=_opts(steps=4).model_dump())


def test_method_reproducible_and_seeded(tiny_registered: str, gen: TinyGenerator, fit: GaussianFit) -> None:
    m = Pulse(_opts(), device="cpu")
    m.load()
    lr = _target(gen, fit, 6, n=2)
    a = m.restore(lr, 4, seed=3, n_samples=2)
    b = m.restore(lr, 4, seed=3, n_samples=2)
    assert a.shape == (4, 3, 16, 16)
    assert torch.equal(a, b)
    c = m.restore(lr, 4, seed=4, n_samples=2)
    assert not torch.allclose(a, c, atol=1e-3)
    # The two samples of one image are different faces with the same downscale.
    assert (a[0] - a[1]).abs().max() > 1e-2
    reps = m.last_reports
    assert [(r["image"], r["sample"]) for r in reps] == [(0, 0), (0, 1), (1, 0), (1, 1)]
    for r, img in zip(reps, c):
        assert r["seed"] == 4 and r["tries"] == 1
        mse = (bicubic_resize(img[None], (4, 4)) - lr[r["image"]][None]).pow(2).mean().item()
        assert mse == pytest.approx(r["downscale_mse"], rel=1e-3, abs=1e-6)
        assert r["eps_reached"] == (r["downscale_mse_searched"] < 2e-3)
        assert r["downscale_mse"] == pytest.approx(r["downscale_mse_searched"], rel=1e-4, abs=1e-7)  # no projection
        assert 1 <= r["steps"] <= 60


def test_tries_restart_until_eps(tiny_registered: str, gen: TinyGenerator, fit: GaussianFit) -> None:
    lr = _target(gen, fit, 7)
    one = Pulse(_opts(steps=3, tries=1))
    one.restore(lr, 4, seed=0)
    assert one.last_reports[0]["tries"] == 1 and not one.last_reports[0]["eps_reached"]
    many = Pulse(_opts(steps=3, tries=3))
    many.restore(lr, 4, seed=0)
    rep = many.last_reports[0]
    assert rep["tries"] == 3 and rep["total_steps"] == 9
    assert rep["downscale_mse_searched"] <= one.last_reports[0]["downscale_mse_searched"] + 1e-9


def test_output_resized_to_scale_times_input(tiny_registered: str, gen: TinyGenerator,
                                             fit: GaussianFit, capsys: pytest.CaptureFixture[str]) -> None:
    m = Pulse(_opts(steps=3, quiet=False))
    lr = _target(gen, fit, 8, size=8)  # 8 px input, ×4 → 32 px; the generator makes 16 px
    out = m.restore(lr, 4)
    m.restore(lr, 4)
    assert out.shape == (1, 3, 32, 32)
    assert capsys.readouterr().err.count("resizing the generator's 16×16 output to 32×32") == 1
    native = Pulse(_opts(steps=3, keep_native_size=True))
    assert native.restore(lr, 4).shape == (1, 3, 16, 16)


def test_consistency_steps_project_the_searched_face(tiny_registered: str, gen: TinyGenerator,
                                                    fit: GaussianFit) -> None:
    from restorekit.consistency import back_project, downscale_error

    lr = _target(gen, fit, 8, size=8)
    plain = Pulse(_opts(steps=3)).restore(lr, 4, n_samples=2)
    m = Pulse(_opts(steps=3, consistency_steps=3))
    out = m.restore(lr, 4, n_samples=2)
    torch.testing.assert_close(out, back_project(plain, lr, steps=3), rtol=0, atol=1e-6)
    assert bool((downscale_error(out, lr) < 0.1 * downscale_error(plain, lr)).all())
    # The report's figure is the returned output's, as psp_pulse's; the search's own (the searched
    # face before the projection) is beside it.
    rep = m.last_reports[0]
    # (1 %: the search measures the face before the output's clamp to [0, 1])
    assert rep["downscale_mse_searched"] == pytest.approx(float(downscale_error(plain[:1], lr)), rel=1e-2)
    assert rep["downscale_mse"] == pytest.approx(float(downscale_error(out[:1], lr)), rel=1e-5)
    assert rep["downscale_mse"] < 0.1 * rep["downscale_mse_searched"]


def test_runs_under_inference_mode(tiny_registered: str, gen: TinyGenerator, fit: GaussianFit) -> None:
    m = Pulse(_opts(steps=20))
    m.load()
    lr = _target(gen, fit, 9)
    with torch.inference_mode():
        out = m.restore(lr, 4, seed=1)
    assert m.last_reports[0]["downscale_mse"] < (torch.full_like(lr, 0.5) - lr).pow(2).mean().item()
    assert out.shape == (1, 3, 16, 16)


def test_unknown_generator_and_bad_weights_option(tiny_registered: str) -> None:
    with pytest.raises(UnknownNameError, match="tiny-pulse-test"):
        Pulse(_opts(generator="tiny-pulse-tset")).load()
    with pytest.raises(RestorekitError, match="weights"):
        Pulse(_opts(generator_weights="x.pt")).load()


def test_stylegan2_defaults_to_the_shipped_prior(rk_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without generator_weights, stylegan2 uses its own default, the prior shipped in restorekit-psp-sr;
    an installation without it says so (never random weights). The shipped case: psp_sr's test_ship.py."""
    if "stylegan2" not in registry().names("generators"):
        pytest.skip("no 'stylegan2' generator registered (psp_sr plugin not installed)")
    from restorekit.errors import WeightsMissing
    from restorekit_psp_sr import method as psp_method

    assert Pulse.info.default_weights == "stylegan2-faces128" and not Pulse.info.requires_weights
    monkeypatch.setattr(psp_method, "WEIGHTS_DIR", rk_home / "no-weights")
    with pytest.raises(WeightsMissing, match=r"'stylegan2-faces128' are not available: stylegan2: no weights given.*"
                                             r"pass --weights NAME\|PATH"):
        Pulse(PulseOptions(quiet=True)).load()
    with pytest.raises(RestorekitError, match="exclude each other"):
        Pulse(PulseOptions(random_generator=True, generator_weights="x.pt")).load()


def test_registered_as_plugin_method() -> None:
    assert registry().method("pulse") is Pulse
    assert not Pulse.info.deterministic


def test_through_stylegan2_factory() -> None:
    """PULSE on a tiny StyleGAN2 built by the registered `stylegan2` factory (when installed)."""
    if "stylegan2" not in registry().names("generators"):
        pytest.skip("no 'stylegan2' generator registered (psp_sr plugin not installed)")
    opts = {"resolution": 32, "style_dim": 32, "n_mlp": 2, "channel_max": 16}
    m = Pulse(PulseOptions(generator="stylegan2", generator_options=opts, steps=30, eps=0.0, quiet=True,
                           gaussian_fit_samples=4000, random_generator=True))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)  # the factory's random init
        m.load()
    g = m.generator
    assert g is not None and g.resolution == 32
    with torch.no_grad():
        u = torch.randn(1, g.n_styles, g.style_dim, generator=torch.Generator().manual_seed(1))
        assert m.fit is not None
        lr = bicubic_resize(g.synthesize(m.fit.to_w(u)), (8, 8)).clamp(0, 1)
    m.restore(lr, 4, seed=0)
    rep = m.last_reports[0]
    start = optimise_latents(g, lr, config=OptimiseConfig(steps=1, eps=0.0), fit=m.fit,
                             rng=torch.Generator().manual_seed(0))
    assert start.mse.item() > 0.05
    assert rep["downscale_mse_searched"] < 0.25 * start.mse.item()


def test_photo_crops_are_searched_at_the_generators_own_size(tiny_registered: str) -> None:
    """--faces detect hands PULSE aligned crops of resolution ÷ scale px (the tiny generator makes
    16 px faces): at ×2 an 8-px crop, whose ×2 output is the generator's face as it is; where that
    does not divide or would be tiny, the pipeline's default (256-px restored crops)."""
    from restorekit.faces.pipeline import face_input_size

    m = Pulse(_opts(steps=3))
    assert face_input_size(m, 2) == 8
    assert face_input_size(m, 3) == 256 // 3
    assert face_input_size(m, 4) == 64  # 16 ÷ 4 = 4 px is below MIN_FACE_CROP


def test_generator_options_unlike_its_weights_are_a_usage_error(rk_home: Path, tmp_path: Path) -> None:
    """A generator config its weights do not match (the factory's ValueError) is one line naming the
    options and the fix, exit 2 from `run` — as `generate` says it — not an 'unexpected' error."""
    if "stylegan2" not in registry().names("generators"):
        pytest.skip("no 'stylegan2' generator registered (psp_sr plugin not installed)")
    from click.testing import CliRunner
    from PIL import Image

    from restorekit.cli import build_cli

    (tmp_path / "in").mkdir()
    Image.new("RGB", (16, 16), (120, 90, 60)).save(tmp_path / "in" / "f.png")
    r = CliRunner().invoke(build_cli(), ["run", "pulse", "--scale", "8", "--input", str(tmp_path / "in" / "f.png"),
                                         "--output", str(tmp_path / "out"),
                                         "--opt", 'generator_options={"resolution":64}'], catch_exceptions=False)
    assert r.exit_code == 2, r.output
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert lines == ["error: pulse: generator 'stylegan2' rejected its options ['resolution']: stylegan2 weights "
                     "'stylegan2-faces128' do not match the requested config: resolution=64 (file has 128) "
                     "(change --opt generator_options, or pick generator_weights that match them)"]
    assert not (tmp_path / "out").exists()


def test_a_sample_does_not_depend_on_n_samples(tiny_registered: str, gen: TinyGenerator, fit: GaussianFit) -> None:
    """Each sample draws its start and noise from its own generator (seed, try, sample index): sample
    k is the same face whether 1, 2 or 4 were asked for."""
    m = Pulse(_opts(), device="cpu")
    m.load()
    lr = _target(gen, fit, 6)
    one = m.restore(lr, 4, seed=3, n_samples=1)
    two = m.restore(lr, 4, seed=3, n_samples=2)
    four = m.restore(lr, 4, seed=3, n_samples=4)
    torch.testing.assert_close(two[0], one[0], atol=1e-5, rtol=0)
    torch.testing.assert_close(four[:2], two, atol=1e-5, rtol=0)


@pytest.mark.parametrize("inside, said", [
    ({"random_weights": True}, "set random_generator=true as pulse's own option"),
    ({"weights": "other.safetensors"}, "set the generator's weights with pulse's own generator_weights (run --weights)"),
])
def test_what_pulse_records_cannot_be_set_inside_generator_options(inside, said) -> None:
    """An untrained generator (or other weights) asked for inside generator_options reached the
    generator while the run's record pinned the shipped default weights as what made the output."""
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match=re.escape(said)):
        PulseOptions(generator="stylegan2", generator_options=inside)
    assert PulseOptions(generator="stylegan2", generator_options={"resolution": 128}).generator_options == {
        "resolution": 128}
