"""Restoration at the input's own size (×1): a third-party denoiser through run, degrade, compare
(degradation and LR pairs), the conformance kit and ONNX export; what the core does at ×1
(bicubic:1, lr_consistency, back-projection, black-and-white outputs)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from restorekit.cli import build_cli
from restorekit.consistency import back_project, downscale_error
from restorekit.degradations import downscale, parse_spec
from restorekit.harness.runner import CompareConfig, SR_ONLY_AT_SCALE_ONE, plan, scale_metrics
from restorekit.interfaces import Method, MethodInfo
from restorekit.methods import keep_black_and_white
from restorekit.testing import error_line, run_conformance
from restorekit.testing.data import smooth_image

# A denoiser as a third party would publish it: a Gaussian filter in torch, output size = input
# size, declared with task="denoising" and scales=(1,), exportable to ONNX.
DENOISER_PLUGIN = '''
from typing import ClassVar
import torch
import torch.nn.functional as F
from pydantic import Field
from restorekit.hookspecs import hookimpl
from restorekit.interfaces import Method, MethodInfo, Options


class GaussOptions(Options):
    sigma: float = Field(1.0, gt=0, le=10, description="standard deviation of the filter in pixels")


class GaussNet(torch.nn.Module):
    def __init__(self, sigma):
        super().__init__()
        r = max(1, int(3 * sigma + 0.999))
        t = torch.arange(-r, r + 1, dtype=torch.float64)
        k = torch.exp(-0.5 * (t / sigma) ** 2)
        k = (k / k.sum()).float()
        self.r = r
        self.register_buffer("kh", k.view(1, 1, 1, -1).repeat(3, 1, 1, 1))
        self.register_buffer("kv", k.view(1, 1, -1, 1).repeat(3, 1, 1, 1))

    def forward(self, x):
        x = F.pad(x, (self.r, self.r, self.r, self.r), mode="replicate")
        return F.conv2d(F.conv2d(x, self.kh, groups=3), self.kv, groups=3).clamp(0, 1)


class GaussDenoise(Method):
    info: ClassVar[MethodInfo] = MethodInfo(
        name="gauss_denoise_3p", summary="Gaussian-filter denoiser (output size = input size)",
        task="denoising", license="MIT", deterministic=True, scales=(1,))
    Options = GaussOptions

    def load(self):
        self.net = GaussNet(self.options.sigma).to(self.device)

    @torch.no_grad()
    def restore(self, lr, scale, *, seed=None, n_samples=1):
        self.check_input(lr)
        self.check_scale(scale)
        self.check_sampling(seed, n_samples)
        if not hasattr(self, "net"):
            self.load()
        return self.net(lr.to(self.device, torch.float32)).repeat_interleave(int(n_samples), 0)

    def export_module(self):
        from restorekit.onnx_export import ExportSpec
        if not hasattr(self, "net"):
            self.load()
        return ExportSpec(module=self.net, example=torch.rand(1, 3, 16, 16), dynamic_spatial=True,
                          metadata={"method": "gauss_denoise_3p", "weights": None, "weights_file": None,
                                    "weights_sha256": None, "license": "MIT",
                                    "graph": {"sigma": self.options.sigma}})


@hookimpl
def register_methods(register):
    register(GaussDenoise)
'''

FAST_METRICS = "psnr_y_crop,psnr_rgb,ssim_rgb"


def invoke(*args: str):
    return CliRunner().invoke(build_cli(), list(args), prog_name="restorekit", catch_exceptions=False)


@pytest.fixture
def denoiser(plugin_site, rk_home):
    plugin_site("gauss-denoise-3p", "gauss_denoise_3p", DENOISER_PLUGIN, "gauss_denoise_3p")
    return "gauss_denoise_3p"


@pytest.fixture
def hr(tmp_path: Path) -> Path:
    d = tmp_path / "hr"
    d.mkdir()
    for i in range(2):
        Image.fromarray(smooth_image(40, 40, i)).save(d / f"img{i}.png")
    return d


def _read(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"), dtype=np.float64)


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    return float(10 * np.log10(255.0**2 / np.mean((a - b) ** 2)))


def _summary(out: Path) -> dict[str, dict[str, float]]:
    doc = json.loads((out / "results.json").read_text())
    return {m["name"]: {k: v["mean"] for k, v in m["aggregate"]["metrics"].items()} for m in doc["methods"]}


def test_a_scale_one_denoiser_runs_at_x1_and_refuses_other_scales(denoiser, hr, tmp_path):
    noisy = tmp_path / "noisy"
    r = invoke("degrade", "--spec", "noise:15", "--input", str(hr), "--output", str(noisy), "-q")
    assert r.exit_code == 0, r.output
    out = tmp_path / "den"
    r = invoke("run", denoiser, "--scale", "1", "--input", str(noisy), "--output", str(out), "-q")
    assert r.exit_code == 0, r.output
    for i in range(2):
        got, clean, dirty = _read(out / f"img{i}.png"), _read(hr / f"img{i}.png"), _read(noisy / f"img{i}.png")
        assert got.shape == clean.shape == (40, 40, 3)
        assert _psnr(got, clean) > _psnr(dirty, clean) + 5  # noise:15 is ~25 dB; the filter gains > 5 dB
    r = invoke("run", denoiser, "--scale", "2", "--input", str(noisy), "--output", str(tmp_path / "x2"))
    assert r.exit_code == 2
    assert "gauss_denoise_3p supports --scale 1; got 2" in error_line(r.stderr)
    # The plugin kit checks a ×1-only method at ×1 and that it refuses ×2.
    (case,) = run_conformance("gauss_denoise_3p")
    assert case.status == "ok", case.detail


def test_compare_at_x1_by_degradation_and_by_lr_pairs(denoiser, hr, tmp_path):
    by_spec = tmp_path / "spec"
    r = invoke("compare", "--methods", f"{denoiser},bicubic", "--scale", "1", "--data", str(hr), "--degradation",
               "noise:15", "--out", str(by_spec), "--metrics", f"{FAST_METRICS},lr_consistency", "--device", "cpu")
    assert r.exit_code == 0, r.output
    spec = _summary(by_spec)
    # bicubic at ×1 returns its input: its row scores the noisy input itself (the "no restoration" line).
    noisy = [_read(p) for p in sorted((by_spec / "inputs").rglob("*.png"))]
    want = np.mean([_psnr(n, _read(hr / f"img{i}.png")) for i, n in enumerate(noisy)])
    assert spec["bicubic"]["psnr_rgb"] == pytest.approx(want, abs=1e-6)
    assert spec[denoiser]["psnr_rgb"] > spec["bicubic"]["psnr_rgb"] + 5
    # Named in --metrics, lr_consistency is computed at ×1: the identity's distance to its input is 0.
    assert spec["bicubic"]["lr_consistency"] == 0.0 and spec[denoiser]["lr_consistency"] > 1e-3
    # The same LR files made by `degrade` and given as pairs score the same.
    lr = tmp_path / "lr"
    assert invoke("degrade", "--spec", "noise:15", "--input", str(hr), "--output", str(lr), "-q").exit_code == 0
    by_pairs = tmp_path / "pairs"
    r = invoke("compare", "--methods", f"{denoiser},bicubic", "--scale", "1", "--data", str(hr), "--lr-dir", str(lr),
               "--out", str(by_pairs), "--metrics", FAST_METRICS, "--device", "cpu")
    assert r.exit_code == 0, r.output
    pairs = _summary(by_pairs)
    for m in (denoiser, "bicubic"):
        assert pairs[m]["psnr_rgb"] == pytest.approx(spec[m]["psnr_rgb"], abs=1e-9)


def test_compare_x1_leaves_lr_consistency_out_unless_named(denoiser, hr, tmp_path):
    cfg = CompareConfig(methods=[denoiser, "bicubic"], scale=1, data=str(hr), out=tmp_path / "o",
                        degradation="noise:15", device="cpu")
    p = plan(cfg)
    kept = scale_metrics(p.metrics, 1, None)
    lrc = next(m for m in p.metrics if m.name == "lr_consistency")
    assert lrc not in kept and (lrc.status, lrc.reason) == ("skipped", SR_ONLY_AT_SCALE_ONE)
    assert {"psnr_y_crop", "ssim_rgb"} <= {m.name for m in kept}
    # Named, or at ×2, it stays.
    assert any(m.name == "lr_consistency" for m in scale_metrics(plan(cfg).metrics, 1, ["lr_consistency"]))
    assert any(m.name == "lr_consistency" for m in scale_metrics(plan(cfg).metrics, 2, None))
    # End to end: the column is absent and the report says why.
    r = invoke("compare", "--methods", f"{denoiser},bicubic", "--scale", "1", "--data", str(hr), "--degradation",
               "noise:15", "--out", str(tmp_path / "cmp"), "--device", "cpu")
    assert r.exit_code == 0, r.output
    doc = json.loads((tmp_path / "cmp" / "results.json").read_text())
    skipped = {m["name"]: m["reason"] for m in doc["metrics"] if m["status"] == "skipped"}
    assert skipped["lr_consistency"] == SR_ONLY_AT_SCALE_ONE
    assert "lr_consistency" not in doc["methods"][0]["aggregate"]["metrics"]
    assert "metric lr_consistency skipped: at ×1" in " ".join(r.stdout.split())


def test_compare_x1_without_a_degradation_is_refused(hr, tmp_path):
    r = invoke("compare", "--methods", "bicubic", "--scale", "1", "--data", str(hr), "--out", str(tmp_path / "o"))
    assert r.exit_code == 2
    line = error_line(r.stderr)
    assert "--scale 1 needs --degradation" in line and "noise:15" in line
    assert not (tmp_path / "o").exists()
    # Named explicitly, the identity still runs (bicubic:1: the inputs are the HR images).
    r = invoke("compare", "--methods", "bicubic", "--scale", "1", "--data", str(hr), "--degradation", "bicubic:1",
               "--out", str(tmp_path / "o"), "--metrics", "psnr_rgb", "--device", "cpu")
    assert r.exit_code == 0, r.output


def test_export_and_onnxruntime_at_x1(denoiser, hr, tmp_path):
    pytest.importorskip("onnxruntime")
    graph = tmp_path / "d.onnx"
    r = invoke("export", denoiser, "--out", str(graph), "--opt", "sigma=1.5", "-q")
    assert r.exit_code == 0, r.output
    runs = {}
    for backend in ("torch", "onnxruntime"):
        extra = ["--onnx", str(graph)] if backend == "onnxruntime" else []
        r = invoke("run", denoiser, "--scale", "1", "--opt", "sigma=1.5", "--input", str(hr), "--output",
                   str(tmp_path / backend), "--backend", backend, *extra, "-q")
        assert r.exit_code == 0, r.output
        runs[backend] = _read(tmp_path / backend / "img0.png")
    assert runs["torch"].shape == (40, 40, 3)
    assert np.abs(runs["torch"] - runs["onnxruntime"]).max() <= 1


def test_back_projection_at_x1_keeps_the_output():
    g = torch.Generator().manual_seed(0)
    lr = torch.rand(2, 3, 12, 10, generator=g)
    out = (lr + 0.1 * torch.randn(2, 3, 12, 10, generator=g)).clamp(0, 1)
    # At ×1 the only image that "downscales" to the input is the input: projecting would erase the
    # method's work, so the output is kept (before: lr bit for bit).
    assert back_project(out, lr, steps=3) is out
    assert back_project(out, lr, steps=3, clamp=False) is out
    assert float(downscale_error(out, lr).min()) > 1e-4
    # ×2 still projects.
    big = torch.rand(2, 3, 24, 20, generator=g)
    assert bool((downscale_error(back_project(big, lr, steps=3), lr) < 0.1 * downscale_error(big, lr)).all())


class _Tint(Method):
    """Adds a red cast: what a colour model can do to a grey input."""

    info: ClassVar[MethodInfo] = MethodInfo(name="tint", summary="tints", task="denoising", scales=(1,))

    def restore(self, lr, scale, *, seed=None, n_samples=1):
        return (lr + torch.tensor([0.1, 0.0, 0.0]).view(1, 3, 1, 1)).clamp(0, 1)


class _Colorize(_Tint):
    info: ClassVar[MethodInfo] = MethodInfo(name="colorize", summary="colours", task="colorization", scales=(1,))


def test_black_and_white_inputs_stay_black_and_white_for_restoration_tasks():
    grey = torch.rand(1, 1, 8, 8).expand(1, 3, 8, 8).contiguous() * 0.8
    for task in ("denoising", "deblurring", "artifact-removal", "restoration"):
        m = _Tint()
        m.info = MethodInfo(name="tint", summary="tints", task=task, scales=(1,))
        out = keep_black_and_white(m, grey, m.restore(grey, 1))
        assert bool((out[:, 0] == out[:, 1]).all() and (out[:, 1] == out[:, 2]).all()), task
    # Colourisation keeps the colours it makes.
    c = _Colorize()
    assert float((keep_black_and_white(c, grey, c.restore(grey, 1))[:, 0] - grey[:, 1]).abs().max()) > 0.05


def test_bicubic_one_is_the_identity_clamped():
    x = torch.tensor([-0.2, 0.3, 1.25]).view(1, 1, 1, 3).expand(1, 3, 2, 3)
    chain = parse_spec("bicubic:1")
    assert chain.scale == 1
    y = chain(x)
    assert y is not x and float(y.min()) == 0.0 and float(y.max()) == 1.0
    torch.testing.assert_close(downscale(x, 1)[..., 1], x[..., 1])
    assert parse_spec("noise:15+jpeg:30").scale == 1 and parse_spec("blur:1.5").scale == 1


def test_lr_pairs_of_another_scale_name_the_scale_they_fit(hr, tmp_path):
    lr = tmp_path / "lr"
    lr.mkdir()
    for i in range(2):
        Image.open(hr / f"img{i}.png").resize((10, 10), Image.BICUBIC).save(lr / f"img{i}.png")
    r = invoke("compare", "--methods", "bicubic", "--scale", "1", "--data", str(hr), "--lr-dir", str(lr),
               "--out", str(tmp_path / "o"), "--metrics", "psnr_rgb", "--device", "cpu", "-q")
    assert r.exit_code == 1
    assert "HR 40×40 is not the size of its LR 10×10 (--scale 1); the LR fits --scale 4" in r.stderr
