"""The border map of a batch norm folded before a zero-padded convolution (``BorderBias.full``):
built from a kernel-sized canvas, it equals the convolution of a constant ``H×W`` input."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from restorekit_psp_sr import fold
from restorekit_psp_sr.encoder import BackboneEncoderUsingLastLayerIntoW, GradualStyleEncoder
from restorekit_psp_sr.fast_encoder import optimize_encoder
from restorekit_psp_sr.fold import BorderBias

from test_inference import randomize_bn, rel


def border_bias(cin: int, cout: int, k: int, p: int, seed: int = 0) -> BorderBias:
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(cout, cin, k, k, generator=g, dtype=torch.float64)
    shift = torch.randn(cin, generator=g, dtype=torch.float64)
    return BorderBias(w, shift, p, (w * shift.reshape(1, -1, 1, 1)).sum((1, 2, 3)))


def direct(b: BorderBias, h: int, w: int) -> torch.Tensor:
    """The definition: ``conv(pad(shift))`` over a constant ``H×W`` input, minus the interior."""
    const = b.shift.reshape(1, -1, 1, 1).expand(1, -1, h, w)
    return F.conv2d(const, b.weight, padding=b.padding)[0] - b.interior.reshape(-1, 1, 1)


@pytest.mark.parametrize(("h", "w", "k", "p"), [
    (9, 7, 3, 1),  # non-square
    (3, 3, 3, 1),  # H = W = 2p+1: no repeated middle
    (3, 8, 3, 1),  # H = 2p+1, W larger
    (2, 5, 3, 1),  # H < 2p+1: border rows meet (direct path)
    (1, 1, 3, 1),
    (16, 11, 7, 3),
    (7, 12, 7, 3),  # H = 2p+1
    (6, 20, 7, 3),  # H < 2p+1
    (5, 4, 1, 0),  # p = 0: no border at all
    (6, 9, 3, 0),  # p = 0, a 3×3 kernel: the output is smaller than the input
    (8, 10, 5, 1),  # padding smaller than "same"
])
def test_full_equals_the_direct_convolution(h: int, w: int, k: int, p: int) -> None:
    b = border_bias(5, 6, k, p)
    want = direct(b, h, w)
    got = b.full(h, w)
    assert got.shape == want.shape and got.dtype == torch.float64
    assert torch.allclose(got, want, rtol=0, atol=1e-12)
    if p > 0:  # the border matters: a wrong row or column class would show
        assert want.abs().max() > 0.1


def test_full_convolves_only_a_kernel_sized_canvas(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[tuple[int, ...]] = []
    conv2d = F.conv2d

    def recording(x: torch.Tensor, *args: object, **kw: object) -> torch.Tensor:
        seen.append(tuple(x.shape[-2:]))
        return conv2d(x, *args, **kw)

    b = border_bias(4, 3, 3, 1)
    want = direct(b, 64, 48)
    monkeypatch.setattr(fold.F, "conv2d", recording)
    got = b.full(64, 48)
    assert seen == [(3, 3)]
    assert torch.allclose(got, want, rtol=0, atol=1e-12)


def test_fast_encoders_match_their_modules_at_two_input_sizes() -> None:
    """The folded forward (border map per input size, cached) equals the modules' own forward."""
    torch.manual_seed(7)
    enc = BackboneEncoderUsingLastLayerIntoW(4, 16, backbone="ir_se_light", input_size=32)
    enc = randomize_bn(enc, 7).eval()
    fast = optimize_encoder(copy.deepcopy(enc))
    with torch.no_grad():
        for size in [(32, 32), (40, 24), (32, 32)]:  # any size; back to the first (the cached map)
            x = torch.rand(2, 3, *size) * 2 - 1
            assert rel(fast(x), enc(x)) < 1e-5
    assert fast.inference_path._backbone is not None  # the fast path ran
    for input_size in (32, 64):  # the pyramid encoder serves its own input size only
        torch.manual_seed(input_size)
        enc = GradualStyleEncoder(8, 16, backbone="ir_se_light", input_size=input_size, head_channels=16)
        enc = randomize_bn(enc, input_size).eval()
        fast = optimize_encoder(copy.deepcopy(enc))
        x = torch.rand(2, 3, input_size, input_size) * 2 - 1
        with torch.no_grad():
            assert rel(fast(x), enc(x)) < 1e-5
        assert fast.inference_path._backbone is not None
