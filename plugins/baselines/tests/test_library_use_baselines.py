"""bicubic, pix2pixhd and pulse from Python: inputs checked before any work, float32 results without a
graph, integer-like scales, weights given as paths, and a load that leaves the caller's RNG alone."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from restorekit.methods import build_method
from restorekit.options import validate
from restorekit_baselines.bicubic import Bicubic
from restorekit_baselines.pix2pixhd import GeneratorConfig, Pix2PixHD, Pix2PixHDGenerator, save_generator
from restorekit_baselines.pulse import Pulse, PulseOptions

TINY_G = GeneratorConfig(ngf=4, n_downsampling=2, n_blocks=1, n_local_enhancers=0)
LR = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))


@pytest.fixture
def tiny_weights(tmp_path: Path) -> Path:
    g = torch.Generator().manual_seed(0)
    gen = Pix2PixHDGenerator(TINY_G)
    with torch.no_grad():
        for p in gen.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    return save_generator(gen, tmp_path / "tiny.safetensors", factors=[2], input_size=32)


BAD = [
    ("uint8", (LR * 255).to(torch.uint8), "torch.uint8"),
    ("0-255", LR * 255, "not 0-255"),
    ("3xHxW", LR[0], "x[None]"),
    ("NxHxWx3", LR.permute(0, 2, 3, 1), "permute"),
    ("numpy", LR.numpy(), "numpy.ndarray"),
    ("empty", LR[:0], "empty"),
]


@pytest.mark.parametrize("cls", [Bicubic, Pix2PixHD, Pulse], ids=lambda c: c.info.name)
def test_restore_checks_its_input_first(cls: type, monkeypatch: pytest.MonkeyPatch) -> None:
    m, name = cls(), cls.info.name
    # Before any weights are loaded: a wrong batch costs nothing and says what to do.
    monkeypatch.setattr(m, "load", lambda: pytest.fail("restore loaded before checking its input"))
    for what, x, words in BAD:
        with pytest.raises(ValueError, match=f"^{name}: lr") as info:
            m.restore(x, 2)  # type: ignore[arg-type]
        assert words in str(info.value) and "\n" not in str(info.value), (what, str(info.value))


@pytest.mark.parametrize("dtype", [torch.float16, torch.float64])
def test_bicubic_returns_float32_for_any_float_input(dtype: torch.dtype) -> None:
    m = Bicubic()
    want = m.restore(LR, 4)
    out = m.restore(LR.to(dtype), 4)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, want, rtol=0, atol=2e-3 if dtype == torch.float16 else 1e-6)


def test_bicubic_keeps_no_graph_for_an_input_that_requires_grad() -> None:
    out = Bicubic().restore(LR.clone().requires_grad_(True), 2)
    assert not out.requires_grad and out.grad_fn is None


@pytest.mark.parametrize("scale", [np.int64(2), torch.tensor(2)])
def test_integer_like_scales(scale: object, tiny_weights: Path) -> None:
    assert Bicubic().restore(LR, scale).shape == (2, 3, 16, 16)  # type: ignore[arg-type]
    m = Pix2PixHD(Pix2PixHD.Options(weights=str(tiny_weights)))
    out = m.restore(LR, scale)  # type: ignore[arg-type]
    assert out.shape == (2, 3, 16, 16)
    torch.testing.assert_close(out, m.restore(LR, 2), rtol=0, atol=0)


def test_pix2pixhd_load_leaves_the_global_rng_alone(tiny_weights: Path) -> None:
    torch.manual_seed(0)
    want = torch.rand(4)
    torch.manual_seed(0)
    build_method("pix2pixhd", {"weights": str(tiny_weights)}).load()
    assert torch.equal(torch.rand(4), want), "building the method moved the caller's torch RNG"


def test_pix2pixhd_takes_a_path_and_float16_input(tiny_weights: Path) -> None:
    m = build_method("pix2pixhd", {"weights": tiny_weights})  # a pathlib.Path, as a notebook has it
    assert m.options.weights == str(tiny_weights)
    out = m.restore(LR.half(), 2)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, m.restore(LR, 2), rtol=0, atol=5e-3)


def test_pulse_takes_a_path_for_its_generator_weights(tmp_path: Path) -> None:
    f = tmp_path / "g.pt"
    assert PulseOptions(generator_weights=f).generator_weights == str(f)
    assert PulseOptions(weights=f).generator_weights == str(f)  # the alias `run pulse --weights` sets
    assert validate(Pulse.Options, {"weights": f}, label="pulse").generator_weights == str(f)


def test_pulse_load_leaves_the_global_rng_alone() -> None:
    from restorekit.plugins import registry

    if "stylegan2" not in registry().names("generators"):
        pytest.skip("no stylegan2 generator registered (restorekit-psp-sr not installed)")
    opts = PulseOptions(random_generator=True, gaussian_fit_samples=64,
                        generator_options={"resolution": 32, "style_dim": 16, "n_mlp": 2, "channel_max": 16,
                                           "impl": "ref"})
    torch.manual_seed(0)
    want = torch.rand(4)
    torch.manual_seed(0)
    m = Pulse(opts)
    m.load()
    assert m.generator is not None and m.generator.resolution == 32
    assert torch.equal(torch.rand(4), want), "loading pulse moved the caller's torch RNG"


def test_methods_show_still_reads_the_weights_options_as_strings() -> None:
    from restorekit.commands.info import options_schema

    types = {cls.info.name: {o["name"]: o["type"] for o in options_schema(cls)} for cls in (Pix2PixHD, Pulse)}
    assert types["pix2pixhd"]["weights"] == "str | None"
    assert types["pulse"]["generator_weights"] == "str | None"
