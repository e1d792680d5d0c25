"""restorekit.consistency: back-projection makes an output downscale to its input, keeps its details."""

from __future__ import annotations

import pytest
import torch

from restorekit.consistency import back_project, downscale_error
from restorekit.degradations import bicubic_resize
from restorekit.testing.data import smooth_batch


def _pair(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """A smooth 64-px image, its ×8 bicubic LR, and an unrelated smooth 'restoration' of that LR."""
    hr = smooth_batch(2, 64, 64, seed=seed)
    lr = bicubic_resize(hr, (8, 8)).clamp(0, 1)
    return smooth_batch(2, 64, 64, seed=seed + 100), lr


def test_error_falls_with_every_step() -> None:
    sr, lr = _pair()
    errors = torch.stack([downscale_error(back_project(sr, lr, steps=k), lr) for k in range(6)])
    assert bool((errors[1:] < errors[:-1]).all()), errors
    assert bool((errors[3] < 0.02 * errors[0]).all()), errors  # smooth content: fast convergence


def test_zero_steps_is_identity_and_consistent_input_is_kept() -> None:
    sr, lr = _pair(1)
    assert back_project(sr, lr, steps=0) is sr
    # No steps, no use of lr: a caller passes its option through even where lr could not be a target.
    assert back_project(sr, torch.zeros(1, 3, 128, 128), steps=0) is sr
    # An image that already downscales to lr (the HR itself, inside [0,1]) barely moves.
    hr = 0.1 + 0.8 * smooth_batch(1, 64, 64, seed=7)
    lr1 = bicubic_resize(hr, (8, 8))
    assert (back_project(hr, lr1, steps=3) - hr).abs().max() < 1e-6


def test_details_the_input_cannot_see_are_kept() -> None:
    """A checkerboard at the output's Nyquist frequency downscales to nothing: it survives."""
    base = 0.25 + 0.5 * smooth_batch(1, 64, 64, seed=2)
    lr = bicubic_resize(0.25 + 0.5 * smooth_batch(1, 64, 64, seed=3), (8, 8))
    yy, xx = torch.meshgrid(torch.arange(64), torch.arange(64), indexing="ij")
    checker = 0.05 * (1 - 2 * ((yy + xx) % 2)).float()
    a = back_project(base, lr, steps=3)
    b = back_project(base + checker, lr, steps=3)
    torch.testing.assert_close(b - a, checker.expand_as(a), rtol=0, atol=2e-3)


def test_output_stays_in_range_and_broadcasts_one_lr() -> None:
    sr, lr = _pair(4)
    out = back_project(sr * 1.0, lr[:1], steps=5)
    assert out.shape == sr.shape and out.dtype == sr.dtype
    assert float(out.min()) >= 0 and float(out.max()) <= 1
    torch.testing.assert_close(out[1], back_project(sr[1:], lr[:1], steps=5)[0])
    # Native sizes that are no multiple of the input work too (the resizes take any size).
    odd = back_project(smooth_batch(1, 50, 50, seed=5), lr[:1], steps=3)
    assert downscale_error(odd, lr[:1]) < downscale_error(smooth_batch(1, 50, 50, seed=5), lr[:1])


def test_golden_values() -> None:
    sr = torch.linspace(0.2, 0.8, 3 * 8 * 8).reshape(1, 3, 8, 8)
    lr = torch.tensor([[0.3, 0.6], [0.5, 0.4]]).expand(1, 3, 2, 2)
    out = back_project(sr, lr, steps=2)
    got = torch.stack([out[0, 0, 0, 0], out[0, 1, 3, 4], out[0, 2, 7, 7], out.mean()])
    # Pinned values (two steps of this module); the mean is the input's: the correction moves it there.
    torch.testing.assert_close(got, torch.tensor([0.1449867, 0.4849125, 0.3385545, 0.45]), rtol=0, atol=1e-5)


def test_unclamped_steps_are_linear() -> None:
    """Without the box, each step is the linear map x + U(lr − D(x)): sums and scalings pass through."""
    a, b = smooth_batch(1, 32, 32, seed=10) * 2 - 0.5, smooth_batch(1, 32, 32, seed=11)
    la, lb = smooth_batch(1, 8, 8, seed=12), smooth_batch(1, 8, 8, seed=13)
    lhs = back_project(a + 2 * b, la + 2 * lb, steps=3, clamp=False)
    rhs = back_project(a, la, steps=3, clamp=False) + 2 * back_project(b, lb, steps=3, clamp=False)
    torch.testing.assert_close(lhs, rhs, rtol=0, atol=1e-5)
    assert float(lhs.min()) < 0  # not boxed
    assert float(back_project(a, la, steps=3).min()) >= 0


def test_gradient_reaches_the_output_and_the_input() -> None:
    sr = (0.3 + 0.4 * smooth_batch(1, 16, 16, seed=6)).double().requires_grad_(True)
    lr = (0.3 + 0.4 * smooth_batch(1, 4, 4, seed=8)).double().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda a, b: back_project(a, b, steps=2), (sr, lr))


def test_bad_shapes_say_what_is_wrong() -> None:
    with pytest.raises(ValueError, match="equal channels"):
        back_project(torch.zeros(1, 3, 8, 8), torch.zeros(1, 1, 2, 2))
    with pytest.raises(ValueError, match="2 LR images for 3 outputs"):
        back_project(torch.zeros(3, 3, 8, 8), torch.zeros(2, 3, 2, 2))
    with pytest.raises(ValueError, match="larger than the output"):
        back_project(torch.zeros(1, 3, 8, 8), torch.zeros(1, 3, 16, 16))
    with pytest.raises(ValueError, match="steps must be >= 0"):
        back_project(torch.zeros(1, 3, 8, 8), torch.zeros(1, 3, 2, 2), steps=-1)
