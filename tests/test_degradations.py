"""Degradations: PIL-convention bicubic, blur, noise, JPEG, and the spec language."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from restorekit.degradations import downscale, gaussian_kernel1d, parse_spec
from restorekit.errors import RestorekitError

from restorekit.testing.data import smooth_image


def test_bicubic_downscale_matches_pillow():
    arr = np.random.default_rng(1).integers(0, 256, (64, 48, 3), dtype=np.uint8)
    x = torch.from_numpy(arr.transpose(2, 0, 1) / 255.0).float()[None]
    ours = downscale(x, 4)[0].numpy().transpose(1, 2, 0) * 255
    ref = np.asarray(Image.fromarray(arr).resize((12, 16), Image.BICUBIC), dtype=np.float64)
    assert ours.shape == ref.shape
    # pillow rounds to 8 bits and clips; ours is float: within one level.
    assert np.abs(ours - ref).max() <= 1.0


def test_spec_round_trip_and_scale():
    chain = parse_spec("blur:1.5+bicubic:4+noise:5+jpeg:60")
    assert chain.spec() == "blur:1.5+bicubic:4+noise:5+jpeg:60"
    assert chain.scale == 4
    assert parse_spec("bicubic:2+bicubic:4").scale == 8


@pytest.mark.parametrize("spec,msg", [("bicubc:4", "did you mean 'bicubic'"), ("bicubic:0", "greater than"),
                                      ("jpeg:abc", "not a number"), ("", "empty")])
def test_bad_specs(spec, msg):
    with pytest.raises(RestorekitError, match=msg):
        parse_spec(spec)


def test_a_spec_chains_at_most_max_steps_and_a_caller_can_stop_between_steps():
    from restorekit.degradations import MAX_STEPS
    from restorekit.progress import Cancelled, reporting

    assert len(parse_spec("+".join(["blur:0.5"] * MAX_STEPS)).steps) == MAX_STEPS
    with pytest.raises(RestorekitError, match=f"has {MAX_STEPS + 1} steps; at most {MAX_STEPS}"):
        parse_spec("+".join(["blur:0.5"] * (MAX_STEPS + 1)))
    chain = parse_spec("blur:1+noise:5+bicubic:2")
    seen: list[tuple[str, int, int]] = []

    def stop_at_second(label: str, done: int, total: int) -> None:
        seen.append((label, done, total))
        if done == 1:
            raise Cancelled("cancelled")

    with reporting(stop_at_second), pytest.raises(Cancelled):
        chain(torch.rand(1, 3, 8, 8))
    assert seen == [("degrading the input", 0, 3), ("degrading the input", 1, 3)]


def test_noise_is_seeded_and_has_requested_sigma():
    x = torch.full((1, 3, 128, 128), 0.5)
    chain = parse_spec("noise:10")
    a = chain(x, generator=torch.Generator().manual_seed(3))
    b = chain(x, generator=torch.Generator().manual_seed(3))
    c = chain(x, generator=torch.Generator().manual_seed(4))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert abs((a - x).std().item() * 255 - 10) < 0.3


def test_blur_preserves_mean_and_grows_with_sigma():
    img = torch.from_numpy(smooth_image(32, 32, 0).transpose(2, 0, 1) / 255.0).float()[None]
    noisy = (img + torch.randn(img.shape, generator=torch.Generator().manual_seed(0)) * 0.1)
    errs = [(parse_spec(f"blur:{s}")(noisy) - noisy).abs().mean().item() for s in (0.5, 1, 2, 4)]
    assert errs == sorted(errs)
    assert abs(parse_spec("blur:2")(noisy).mean().item() - noisy.mean().item()) < 1e-3
    k = gaussian_kernel1d(1.5)
    assert k.numel() == 11 and abs(k.sum().item() - 1) < 1e-6


def test_jpeg_loses_more_at_low_quality():
    img = torch.from_numpy(smooth_image(64, 64, 2).transpose(2, 0, 1) / 255.0).float()[None]
    img = img + torch.randn(img.shape, generator=torch.Generator().manual_seed(0)) * 0.05
    img = img.clamp(0, 1)
    e90 = (parse_spec("jpeg:90")(img) - img).abs().mean().item()
    e20 = (parse_spec("jpeg:20")(img) - img).abs().mean().item()
    assert 0 < e90 < e20


@pytest.mark.parametrize("spec", ["blur:1.23456789+bicubic:4", "noise:0.1234567", "blur:49.99999999",
                                  "blur:0.30000000000000004+noise:2.5"])
def test_spec_string_keeps_the_values_exactly(spec):
    """compare stores chain.spec() and parses it again to make its LR, so a value cut to six
    digits ('blur:1.23457') degraded with another sigma than the one asked for."""
    chain = parse_spec(spec)
    again = parse_spec(chain.spec())
    assert [s.params for s in again.steps] == [s.params for s in chain.steps]
    assert chain.spec() == spec
    # Values that were already short keep their short form (compare's stored settings and LR folders).
    assert parse_spec("blur:1.5+noise:5.0+bicubic:4+jpeg:60").spec() == "blur:1.5+noise:5+bicubic:4+jpeg:60"


def test_bicubic_to_one_pixel_wide_matches_the_kernel():
    """torch's antialiased bicubic is wrong when the output is one pixel wide and taller than
    that: it gave every row of a 4×2 → 2×1 downscale the same value. Golden values worked by hand
    from the Keys kernel (a = −0.5) widened ×2: the columns average to 0.1, 0.7, 0.7, 0.2 and the
    rows take weights k(.25), k(.25), k(.75), k(1.25) = 0.8671875, 0.8671875, 0.2265625,
    −0.0703125 (sum 1.890625), giving 107.3/242 and 119.3/242."""
    from restorekit.degradations import bicubic_resize

    a = torch.tensor([[0.0, 0.2], [0.4, 1.0], [0.9, 0.5], [0.1, 0.3]], dtype=torch.float64)
    got = bicubic_resize(a[None, None], (2, 1))[0, 0, :, 0]
    assert torch.allclose(got, torch.tensor([107.3 / 242, 119.3 / 242], dtype=torch.float64), atol=1e-12)
    # The same as pillow's float resize for more shapes, down and up (a 1-px-wide column scaled up),
    # and the transposed case (one pixel tall), which torch gets right, stays right.
    rng = np.random.default_rng(3)
    for h, w, oh, ow in [(6, 2, 3, 1), (12, 6, 2, 1), (40, 8, 5, 1), (2, 1, 6, 1), (5, 1, 3, 1), (2, 6, 1, 3),
                         (17, 23, 5, 7)]:
        img = rng.random((h, w)).astype(np.float32)
        ref = np.asarray(Image.fromarray(img, "F").resize((ow, oh), Image.BICUBIC), dtype=np.float64)
        ours = bicubic_resize(torch.from_numpy(img).double()[None, None].expand(2, 3, h, w), (oh, ow))
        assert ours.shape == (2, 3, oh, ow)
        assert np.abs(ours.numpy() - ref).max() < 1e-6, (h, w, oh, ow)
    # downscale (the bicubic degradation) by the same rule: 3×2 → 1… a 6×2 image by 2 is 3×1.
    x = torch.from_numpy(rng.random((1, 3, 6, 2))).float()
    ref = np.stack([np.asarray(Image.fromarray(c, "F").resize((1, 3), Image.BICUBIC)) for c in x[0].numpy()])
    assert np.abs(downscale(x, 2)[0].numpy() - ref.clip(0, 1)).max() < 1e-6


@pytest.mark.parametrize("spec,msg", [
    ("blur:nan", r"step 'blur:nan': 'nan' is not a number"),
    ("noise:NaN+bicubic:2", r"step 'noise:NaN': 'NaN' is not a number"),
    ("blur:inf", r"'inf' is not a number"),
    ("blur:1_5", r"'1_5' is not a number"),  # float() reads it as 15
    ("jpeg:6_0", r"'6_0' is not a number"),
    ("bicubic:0x4", r"'0x4' is not a number"),
    ("bicubic:4++jpeg:60", r"empty step"),
    ("bicubic:4+", r"empty step"),
    ("+bicubic:4", r"empty step"),
    ("bicubic: 4 + ", r"empty step"),
    ("bicubic", r"step 'bicubic' needs a value, e.g. 'bicubic:4'"),
    ("jpeg:", r"step 'jpeg:' needs a value, e.g. 'jpeg:75'"),
])
def test_bad_spec_values_are_one_clear_line(spec, msg):
    with pytest.raises(RestorekitError, match=msg) as err:
        parse_spec(spec)
    assert "\n" not in str(err.value) and str(err.value).startswith(f"degradation spec '{spec}'")


def test_spec_whitespace_around_names_and_values_is_ignored():
    assert parse_spec(" blur : 1.5 + bicubic :4+ jpeg: 60 ").spec() == "blur:1.5+bicubic:4+jpeg:60"
    assert [s.params.model_dump() for s in parse_spec("noise:2.5e0+bicubic:4.0").steps] == [{"sigma": 2.5},
                                                                                             {"scale": 4}]
