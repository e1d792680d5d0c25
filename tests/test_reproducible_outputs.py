"""The same command on the same inputs writes the same bytes: `run`, `degrade` (noise, JPEG, WebP)
and `generate` twice, with torch's global RNG moved in between (as another process's would be), and
PULSE's untrained generator, which is the same whatever the caller's RNG."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import torch
from PIL import Image

from restorekit.plugins import registry
from restorekit.testing.data import smooth_image


def _images(folder: Path, n: int, size: int) -> Path:
    folder.mkdir()
    for i in range(n):
        Image.fromarray(smooth_image(size, size, i)).save(folder / f"img{i}.png")
    return folder


def _digests(folder: Path) -> dict[str, str]:
    """sha256 of every image in ``folder`` (the run's bookkeeping files left out)."""
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())
            if p.suffix in (".png", ".jpg", ".webp")}


def _twice(rk_cli, tmp_path: Path, *args: str) -> tuple[dict[str, str], dict[str, str]]:
    """Run ``args --output OUT`` into two folders, torch's global RNG at other states each time."""
    got = []
    for k, global_seed in enumerate((1, 2)):
        torch.manual_seed(global_seed)  # what a fresh process, or other work before, leaves there
        out = tmp_path / f"out{k}"
        r = rk_cli(*args, "--output", out, "-q")
        assert r.exit_code == 0, r.output
        got.append(_digests(out))
    return got[0], got[1]


@pytest.mark.parametrize("ext", ["png", "webp"])
def test_run_writes_the_same_bytes_twice(rk_cli, tmp_path: Path, ext: str) -> None:
    if "bicubic" not in registry().names("methods"):
        pytest.skip("bicubic not installed (restorekit-baselines)")
    lr = _images(tmp_path / "lr", 2, 12)
    a, b = _twice(rk_cli, tmp_path, "run", "bicubic", "--scale", "2", "--input", lr, "--ext", ext)
    assert sorted(a) == [f"img0.{ext}", f"img1.{ext}"]
    assert a == b  # pixels and the record of what made them (no time, no process id, no folder)


@pytest.mark.parametrize("ext", ["png", "webp", "jpg"])
def test_degrade_with_noise_and_jpeg_writes_the_same_bytes_twice_and_follows_its_seed(rk_cli, tmp_path: Path,
                                                                                     ext: str) -> None:
    hr = _images(tmp_path / "hr", 2, 16)
    spec = "noise:8+jpeg:50+bicubic:2"
    a, b = _twice(rk_cli, tmp_path, "degrade", "--spec", spec, "--input", hr, "--ext", ext, "--seed", "3")
    assert len(a) == 2 and a == b
    torch.manual_seed(1)
    r = rk_cli("degrade", "--spec", spec, "--input", hr, "--ext", ext, "--seed", "4", "--output", tmp_path / "s4", "-q")
    assert r.exit_code == 0, r.output
    other = _digests(tmp_path / "s4")
    assert all(other[name] != a[name] for name in a)  # the noise is --seed's, not a constant


def test_generate_writes_the_same_bytes_twice(rk_cli, tmp_path: Path) -> None:
    if "stylegan2" not in registry().names("generators"):
        pytest.skip("no stylegan2 generator registered (restorekit-psp-sr not installed)")
    from restorekit_psp_sr.stylegan2 import StyleGAN2Generator
    from restorekit_psp_sr.train import save_stylegan2_safetensors

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        g = StyleGAN2Generator(32, 16, n_mlp=2, channel_multiplier=1, channel_max=16, impl="ref")
    weights = save_stylegan2_safetensors(g, tmp_path / "g.safetensors")
    args = ("generate", "--generator", "stylegan2", "--weights", weights, "--seeds", "0,5", "--truncation", "0.7")
    a, b = _twice(rk_cli, tmp_path, *args)
    assert sorted(a) == ["seed0000.png", "seed0005.png"] and a == b
    assert a["seed0000.png"] != a["seed0005.png"]


def test_pulse_untrained_generator_is_the_same_whatever_the_callers_rng() -> None:
    """``random_generator=true`` (tests, benchmarks): its layers do not come from the caller's RNG
    state, so two processes — or a run and its resume — search the same generator."""
    if "stylegan2" not in registry().names("generators") or "pulse" not in registry().names("methods"):
        pytest.skip("needs pulse (restorekit-baselines) and stylegan2 (restorekit-psp-sr)")
    from restorekit_baselines.pulse import Pulse, PulseOptions

    opts = PulseOptions(random_generator=True, gaussian_fit_samples=64, quiet=True,
                        generator_options={"resolution": 32, "style_dim": 16, "n_mlp": 2, "channel_max": 16,
                                           "impl": "ref"})
    states = []
    for global_seed in (1, 2):
        torch.manual_seed(global_seed)
        m = Pulse(opts)
        m.load()
        assert m.generator is not None and m.fit is not None
        states.append(({k: v.clone() for k, v in m.generator.state_dict().items()}, m.fit.mean.clone()))
    (sd0, mean0), (sd1, mean1) = states
    assert sd0.keys() == sd1.keys()
    assert all(torch.equal(sd0[k], sd1[k]) for k in sd0)
    assert torch.equal(mean0, mean1)  # the W gaussianisation, fitted on that generator
