"""psp_sr and psp_pulse from Python: inputs checked before any work, float32 results without a graph,
integer-like scales, weights given as paths, and a load that leaves the caller's RNG alone."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from restorekit.options import validate
from tiny_models import save_tiny
from restorekit_psp_sr.method import PSPSR, PSPSROptions
from restorekit_psp_sr.psp_pulse import PSPPulse, PSPPulseOptions

LR = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="module")
def model_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny(tmp_path_factory.mktemp("model") / "tiny.safetensors")


def make(model_file: Path | str, **opts: object) -> PSPSR:
    m = PSPSR(PSPSROptions(weights=model_file, impl="ref", **opts))  # type: ignore[arg-type]
    m.load()
    return m


@pytest.fixture(scope="module")
def loaded(model_file: Path) -> PSPSR:
    return make(str(model_file))


BAD = [
    ("uint8", (LR * 255).to(torch.uint8), "torch.uint8"),
    ("0-255", LR * 255, "not 0-255"),
    ("3xHxW", LR[0], "x[None]"),
    ("NxHxWx3", LR.permute(0, 2, 3, 1), "permute"),
    ("grey", LR[:, :1], "(2, 1, 16, 16)"),
    ("numpy", LR.numpy(), "numpy.ndarray"),
    ("empty", LR[:0], "empty"),
]


@pytest.mark.parametrize("cls", [PSPSR, PSPPulse], ids=lambda c: c.info.name)
def test_restore_checks_its_input_first(cls: type, monkeypatch: pytest.MonkeyPatch) -> None:
    m, name = cls(), cls.info.name
    # Before any weights are loaded: a wrong batch costs nothing and says what to do.
    monkeypatch.setattr(m, "load", lambda: pytest.fail("restore loaded before checking its input"))
    for what, x, words in BAD:
        with pytest.raises(ValueError, match=f"^{name}: lr") as info:
            m.restore(x, 2)
        assert words in str(info.value) and "\n" not in str(info.value), (what, str(info.value))


def test_psp_sr_keeps_no_graph_and_returns_float32(loaded: PSPSR) -> None:
    m = loaded
    want = m.restore(LR, 2)
    out = m.restore(LR.clone().requires_grad_(True), 2)
    assert not out.requires_grad and out.grad_fn is None
    torch.testing.assert_close(out, want, rtol=0, atol=0)
    for dtype, atol in ((torch.float64, 1e-5), (torch.float16, 2e-2)):
        other = m.restore(LR.to(dtype), 2)
        assert other.dtype == torch.float32
        torch.testing.assert_close(other, want, rtol=0, atol=atol)


@pytest.mark.parametrize("scale", [np.int64(4), torch.tensor(4)])
def test_psp_sr_takes_integer_like_scales(loaded: PSPSR, scale: object) -> None:
    m = loaded
    out = m.restore(LR[:1], scale)  # type: ignore[arg-type]
    assert out.shape == (1, 3, 64, 64)
    torch.testing.assert_close(out, m.restore(LR[:1], 4), rtol=0, atol=0)


def test_a_weights_path_and_a_load_that_leaves_the_global_rng_alone(model_file: Path) -> None:
    torch.manual_seed(0)
    want = torch.rand(4)
    torch.manual_seed(0)
    m = make(str(model_file))
    assert torch.equal(torch.rand(4), want), "loading psp_sr moved the caller's torch RNG"
    from_path = make(model_file)  # a pathlib.Path, as a notebook has it
    assert from_path.options.weights == str(model_file)
    torch.testing.assert_close(from_path.restore(LR, 2), m.restore(LR, 2), rtol=0, atol=0)
    assert validate(PSPSROptions, {"weights": model_file}, label="psp_sr").weights == str(model_file)
    assert PSPPulseOptions(weights=model_file).weights == str(model_file)
    assert PSPSROptions.model_fields["weights"].annotation == (str | None)  # as `methods show` reads it
