"""Audit of the PULSE methods: eps and the kept iterate are the returned image's; pix2pixhd refuses
an ``input_size`` its weights cannot take before any work, and names it when it needs the memory.

The stand-in generator blends a flat grey face (0.7, in range) with a pixel checkerboard of 0.2
and 1.4 whose unclamped downscale is the input itself (0.8). PULSE's loss heads for the
checkerboard, whose pixels past 1 the returned image clamps: clamped it downscales to 0.6.
Along the search the unclamped downscale MSE falls below eps while the returned image's never
does (it is at least 0.0033 for every blend), the audit's case (0.00199 searched, 0.00288 returned).
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner
from torch import nn

from restorekit.cli import build_cli
from restorekit.consistency import back_project, downscale_error
from restorekit.degradations import bicubic_resize
from restorekit.images import save_image
from restorekit.interfaces import Generator
from restorekit.options import OptionError
from restorekit.plugins import Factory, registry
from restorekit_baselines.pix2pixhd import (
    GeneratorConfig, InputSizeError, Pix2PixHD, Pix2PixHDGenerator, save_generator,
)
from restorekit_baselines.pulse import Pulse, PulseOptions
from restorekit_baselines.spherical import OptimiseConfig, fit_gaussian, optimise_latents

OVERSHOOT = "overshoot-pulse-audit-test"
EPS = 2e-3


class OvershootGenerator(Generator):
    """``0.7 + t·(checkerboard − 0.7)``, ``t = sigmoid(3·mean_l(w_l·d) − 5)`` in (0, 1): the blend
    starts near the grey face (t ≈ 0.1–0.3) and the loss's gradient pushes it to the checkerboard."""

    def __init__(self, resolution: int = 16, dim: int = 8, n_styles: int = 2) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.resolution, self.z_dim, self.style_dim, self.n_styles = resolution, dim, dim, n_styles
        self.m1 = nn.Parameter(torch.randn(dim, dim, generator=g) / math.sqrt(dim))
        self.direction = nn.Parameter(torch.ones(dim) / math.sqrt(dim))
        idx = torch.arange(resolution)
        checker = ((idx[:, None] + idx[None, :]) % 2).float()
        self.register_buffer("checker", (0.2 + 1.2 * checker).expand(1, 3, resolution, resolution).clone())

    def map(self, z: torch.Tensor) -> torch.Tensor:
        return F.leaky_relu(z @ self.m1, 0.2) * math.sqrt(2)

    def noise_buffers(self) -> list[torch.Tensor]:
        return []

    def blend(self, w_plus: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(3 * (w_plus @ self.direction).mean(1) - 5)

    def synthesize(self, w_plus, *, noise_mode="const", noise=None):  # type: ignore[no-untyped-def]
        return 0.7 + self.blend(w_plus).view(-1, 1, 1, 1) * (self.checker - 0.7)


def _lr(gen: OvershootGenerator) -> torch.Tensor:
    """The checkerboard's downscale to 4×4: 0.8 ± 0.004, in range."""
    return bicubic_resize(gen.checker, (4, 4))


def _unclamped(img: torch.Tensor, lr: torch.Tensor) -> float:
    return float((bicubic_resize(img, tuple(lr.shape[-2:])) - lr).pow(2).mean())


@pytest.fixture
def overshoot() -> str:
    reg = registry()
    reg.add("generators", OVERSHOOT, Factory(OVERSHOOT, lambda **kw: OvershootGenerator(**kw), "test"), "tests")
    yield OVERSHOOT
    del reg.items["generators"][OVERSHOOT]
    del reg.owner["generators"][OVERSHOOT]


def test_the_search_judges_eps_and_its_best_iterate_on_the_clamped_image() -> None:
    gen = OvershootGenerator()
    lr = _lr(gen)
    assert 0.79 < float(lr.min()) and float(lr.max()) < 0.81
    fit = fit_gaussian(gen, 4000)
    seen: list[torch.Tensor] = []
    synth = gen.synthesize

    def recording(w_plus, **kw):  # type: ignore[no-untyped-def]
        out = synth(w_plus, **kw)
        seen.append(out.detach().clone())
        return out

    gen.synthesize = recording  # type: ignore[method-assign]
    res = optimise_latents(gen, lr, config=OptimiseConfig(steps=30, eps=EPS), fit=fit,
                           rng=torch.Generator().manual_seed(0))
    raw = [_unclamped(img, lr) for img in seen]
    clamped = [float(downscale_error(img.clamp(0, 1), lr)) for img in seen]
    # The audit's case: iterates whose unclamped MSE is below eps while the clamped one is not.
    assert any(r < EPS < c for r, c in zip(raw, clamped)), (raw, clamped)
    assert min(clamped) > 3e-3
    # Before: reached at the first such iterate, which came back at 0.012 against a reported 0.0013.
    assert res.reached == [False] and res.steps == [30] and len(seen) == 30
    assert [h[0] for h in res.history] == pytest.approx(clamped, rel=1e-6)
    best = min(range(len(seen)), key=clamped.__getitem__)
    assert best != min(range(len(seen)), key=raw.__getitem__)  # the two criteria keep different iterates
    torch.testing.assert_close(res.images, seen[best].clamp(0, 1), rtol=0, atol=0)
    assert float(res.mse) == pytest.approx(clamped[best], rel=1e-6)
    assert float(res.mse) == pytest.approx(float(downscale_error(res.images, lr)), rel=1e-6)
    with torch.no_grad():  # the kept W+ redraws the kept image
        torch.testing.assert_close(gen.synthesize(res.w_plus).clamp(0, 1), res.images)


def _pulse(**kw: object) -> Pulse:
    return Pulse(PulseOptions(**{"generator": OVERSHOOT, "steps": 30, "quiet": True, "gaussian_fit_samples": 4000,
                                 "eps": EPS, **kw}))


@pytest.mark.parametrize("seed", [0, 1])
def test_pulse_reports_eps_of_the_image_it_returns(overshoot: str, seed: int) -> None:
    """×8 from 4 px: the generator's 16-px face is resized to 32 px; the report's figures are the
    32-px output's, the one eps_reached is about."""
    lr = _lr(OvershootGenerator())
    m = _pulse()
    out = m.restore(lr, 8, seed=seed)
    rep = m.last_reports[0]
    assert out.shape == (1, 3, 32, 32)
    returned = float(downscale_error(out, lr))
    assert rep["eps_reached"] is False  # was True, with the written image at 0.012
    assert rep["downscale_mse"] == pytest.approx(returned, rel=1e-6)
    assert rep["downscale_mse_searched"] == pytest.approx(returned, rel=1e-6)  # no projection: the same image
    assert returned > 3e-3
    # The kept W+ redraws, as returned, the image written.
    assert m.generator is not None and m.last_w_plus is not None
    with torch.no_grad():
        again = bicubic_resize(m.generator.synthesize(m.last_w_plus).clamp(0, 1), (32, 32)).clamp(0, 1)
    torch.testing.assert_close(again, out, rtol=0, atol=1e-6)
    # With back-projection, the searched figure stays the searched face's and downscale_mse is the output's.
    p = _pulse(consistency_steps=2)
    projected = p.restore(lr, 8, seed=seed)
    torch.testing.assert_close(projected, back_project(out, lr, steps=2), rtol=0, atol=1e-6)
    prep = p.last_reports[0]
    assert prep["downscale_mse_searched"] == pytest.approx(returned, rel=1e-6)
    assert prep["downscale_mse"] == pytest.approx(float(downscale_error(projected, lr)), rel=1e-6)
    assert prep["downscale_mse"] < 0.5 * returned
    # An eps the clamped face can meet (blends t ≈ 0.3–0.45 score 0.0043–0.005): reached means the
    # output meets it.
    loose = _pulse(eps=5e-3)
    met = loose.restore(lr, 8, seed=seed)
    lrep = loose.last_reports[0]
    assert lrep["downscale_mse"] == pytest.approx(float(downscale_error(met, lr)), rel=1e-6)
    assert lrep["eps_reached"] is True and lrep["downscale_mse"] < 5e-3


def test_run_json_reports_the_written_outputs_figures(overshoot: str, tmp_path: Path) -> None:
    """The audit's command, `run pulse --json`, on the stand-in generator: eps_reached is false and
    both figures are the output's, which the written PNG (8 bits) keeps to within 1e-4."""
    import json

    from restorekit.images import read_image

    src, out = tmp_path / "in", tmp_path / "out"
    save_image(_lr(OvershootGenerator()), src / "face.png")
    res = CliRunner().invoke(build_cli(), ["run", "pulse", "--scale", "8", "--seed", "1", "--input", str(src),
                                           "--output", str(out), "-q", "--json", "--opt", f"generator={overshoot}",
                                           "--opt", "steps=30", "--opt", "gaussian_fit_samples=4000"])
    assert res.exit_code == 0, res.output
    (rep,) = json.loads(res.output)["reports"][str(src / "face.png")]
    assert rep["eps_reached"] is False and rep["eps"] == EPS  # was true
    assert rep["downscale_mse_searched"] == pytest.approx(rep["downscale_mse"], rel=1e-6)
    written = float(downscale_error(read_image(out / "face.png"), read_image(src / "face.png")))
    assert written == pytest.approx(rep["downscale_mse"], abs=1e-4) and written > 3e-3


# -- pix2pixhd: input_size -------------------------------------------------------------------
TINY_G = GeneratorConfig(ngf=4, n_downsampling=2, n_blocks=1, n_local_enhancers=0)  # stride 4


@pytest.fixture
def tiny_weights(tmp_path: Path) -> Path:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return save_generator(Pix2PixHDGenerator(TINY_G), tmp_path / "tiny.safetensors", factors=[2], input_size=32)


def _inputs(tmp_path: Path) -> Path:
    src = tmp_path / "in"
    for k in range(2):
        save_image(torch.rand(1, 3, 8, 8, generator=torch.Generator().manual_seed(k)), src / f"f{k}.png")
    return src


def test_pix2pixhd_refuses_an_input_size_off_its_stride_before_any_image(tiny_weights: Path, tmp_path: Path) -> None:
    src, out = _inputs(tmp_path), tmp_path / "out"
    res = CliRunner().invoke(build_cli(), ["run", "pix2pixhd", "--opt", f"weights={tiny_weights}", "--opt",
                                           "input_size=18", "--scale", "4", "--input", str(src), "--output",
                                           str(out), "--quiet"])
    # Before: exit 1, one "pix2pixhd: ValueError: …" line per image.
    assert res.exit_code == 2, res.output
    assert res.output.strip().splitlines() == [
        "error: pix2pixhd: input_size must be a multiple of 4 for these weights, got 18 (nearest: 16 or 20)"]
    assert not list(out.glob("*.png"))
    # From Python: refused by load (the weights' stride is known there), as an option error and a ValueError.
    m = Pix2PixHD(Pix2PixHD.Options(weights=str(tiny_weights), input_size=18))
    with pytest.raises(InputSizeError, match="multiple of 4") as info:
        m.load()
    assert isinstance(info.value, OptionError) and isinstance(info.value, ValueError)
    with pytest.raises(ValueError, match="got 18"):  # and again by restore, load having set the generator
        m.restore(torch.rand(1, 3, 8, 8), 4)
    with pytest.raises(InputSizeError, match=r"got 10 \(nearest: 8 or 12\)"):
        Pix2PixHD(Pix2PixHD.Options(weights=str(tiny_weights), input_size=10)).load()
    res = CliRunner().invoke(build_cli(), ["run", "pix2pixhd", "--opt", f"weights={tiny_weights}", "--opt",
                                           "input_size=16", "--scale", "4", "--input", str(src), "--output",
                                           str(out), "--quiet"])
    assert res.exit_code == 0, res.output
    assert sorted(p.name for p in out.glob("*.png")) == ["f0.png", "f1.png"]


def test_pix2pixhd_memory_refusal_names_input_size_when_it_is_the_cause(
        tiny_weights: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import restorekit.device_memory as device_memory

    per_px = 15 * TINY_G.ngf + 24
    budget = 64 * 64 * (per_px + 12)  # a 32-px output and the 32-px network fit; a 1024-px network does not
    monkeypatch.setattr(device_memory, "available_memory", lambda device: budget)
    src, out = _inputs(tmp_path), tmp_path / "out"
    res = CliRunner().invoke(build_cli(), ["run", "pix2pixhd", "--opt", f"weights={tiny_weights}", "--opt",
                                           "input_size=1024", "--scale", "4", "--input", str(src), "--output",
                                           str(out), "--quiet"])
    assert res.exit_code == 1, res.output
    line = f"{src / 'f0.png'}: pix2pixhd at input_size=1024 (its network runs on 1024×1024 images) needs about 88 MB"
    assert line in res.output
    assert "(lower --opt input_size to the 32 px these weights were trained on, or use a machine with more memory)" \
        in res.output
    assert "--scale" not in res.output  # before: "pix2pixhd at ×4 (32×32) … lower --scale"
    # Without input_size the network runs at the output's size, which fits.
    res = CliRunner().invoke(build_cli(), ["run", "pix2pixhd", "--opt", f"weights={tiny_weights}", "--scale", "4",
                                           "--input", str(src), "--output", str(out), "--quiet"])
    assert res.exit_code == 0, res.output
