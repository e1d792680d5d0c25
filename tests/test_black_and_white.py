"""A black-and-white input comes back black and white from a super-resolution method in `run`,
`compare` and `serve` (a colour face model tints grey faces); colour inputs, and methods of other
tasks, keep the method's colours."""

from __future__ import annotations

from typing import ClassVar

import pytest
import torch
from click.testing import CliRunner

from restorekit.cli import build_cli
from restorekit.images import read_image, save_image
from restorekit.interfaces import Method, MethodInfo, NoOptions
from restorekit.methods import keep_black_and_white


class Tint(Method):
    """Upscales by repetition and adds a red cast: a colour model's tint on a grey input."""

    info: ClassVar[MethodInfo] = MethodInfo(name="tint_test", summary="tints")
    Options = NoOptions

    def restore(self, lr, scale, *, seed=None, n_samples=1):
        out = lr.repeat_interleave(scale, -1).repeat_interleave(scale, -2).repeat_interleave(n_samples, 0)
        return (out + torch.tensor([0.05, 0.0, -0.05]).view(1, 3, 1, 1)).clamp(0, 1)


class Colourise(Tint):
    info: ClassVar[MethodInfo] = MethodInfo(name="colourise_test", summary="colourises", task="colorization")


def grey_and_colour() -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    grey = (0.2 + 0.6 * torch.rand(1, 1, 6, 5, generator=g)).expand(1, 3, 6, 5)
    colour = 0.2 + 0.6 * torch.rand(1, 3, 6, 5, generator=g)
    return torch.cat([grey, colour])


def test_grey_inputs_samples_become_their_luma_and_colour_ones_are_kept():
    lr = grey_and_colour()
    m = Tint(NoOptions())
    out = m.restore(lr, 2, n_samples=3)
    kept = keep_black_and_white(m, lr, out, n_samples=3)
    for row in range(3):  # image 0's three samples: grey, at the tinted output's BT.601 luma
        want = (0.299 * out[row, 0] + 0.587 * out[row, 1] + 0.114 * out[row, 2])
        for c in range(3):
            torch.testing.assert_close(kept[row, c], want)
    assert torch.equal(kept[3:], out[3:])  # image 1 (colour): untouched
    assert not torch.equal(out[:3, 0], out[:3, 2])  # the input to it was tinted
    assert torch.equal(keep_black_and_white(Colourise(NoOptions()), lr, out, n_samples=3), out)
    exact = lr.repeat_interleave(2, -1).repeat_interleave(2, -2)[:1] * 0.999  # a grey output: left as it is
    assert keep_black_and_white(m, lr[:1], exact) is exact


def test_a_near_grey_input_within_one_level_counts_as_grey():
    lr = grey_and_colour()[:1].clone()
    lr[:, 0] += 0.9 / 255
    m = Tint(NoOptions())
    out = keep_black_and_white(m, lr, m.restore(lr, 2))
    assert torch.equal(out[:, 0], out[:, 1]) and torch.equal(out[:, 1], out[:, 2])
    lr[:, 0] += 2 / 255  # beyond it: a colour image
    out = keep_black_and_white(m, lr, m.restore(lr, 2))
    assert not torch.equal(out[:, 0], out[:, 2])


def test_run_psp_sr_keeps_a_black_and_white_face_black_and_white(tmp_path):
    """The shipped psp_sr model tints grey 16-px faces by up to ~20/255 per channel."""
    src = tmp_path / "in"
    src.mkdir()
    g = torch.Generator().manual_seed(3)
    save_image((0.3 + 0.4 * torch.rand(1, 1, 16, 16, generator=g)).expand(1, 3, 16, 16), src / "grey.png")
    save_image(0.3 + 0.4 * torch.rand(1, 3, 16, 16, generator=g), src / "colour.png")
    r = CliRunner().invoke(build_cli(), ["run", "psp_sr", "--scale", "8", "--input", str(src), "--output",
                                         str(tmp_path / "o"), "-q"], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    grey_out, colour_out = read_image(tmp_path / "o" / "grey.png"), read_image(tmp_path / "o" / "colour.png")
    assert torch.equal(grey_out[:, 0], grey_out[:, 1]) and torch.equal(grey_out[:, 1], grey_out[:, 2])
    assert (colour_out[:, 0] - colour_out[:, 2]).abs().max() > 5 / 255


@pytest.mark.parametrize("method", ["psp_sr"])
def test_compare_measures_what_run_writes_for_a_grey_face(tmp_path, method):
    hr = tmp_path / "hr"
    hr.mkdir()
    g = torch.Generator().manual_seed(4)
    save_image((0.3 + 0.4 * torch.rand(1, 1, 128, 128, generator=g)).expand(1, 3, 128, 128), hr / "grey.png")
    out = tmp_path / "cmp"
    r = CliRunner().invoke(build_cli(), ["compare", "--methods", method, "--scale", "8", "--data", str(hr),
                                         "--out", str(out), "--metrics", "psnr_rgb", "-q"],
                           catch_exceptions=False)
    assert r.exit_code == 0, r.output
    saved = sorted(out.rglob("grey*.png"))
    saved = [p for p in saved if method in p.parts]
    assert saved, sorted(str(p) for p in out.rglob("*.png"))
    y = read_image(saved[0])
    assert torch.equal(y[:, 0], y[:, 1]) and torch.equal(y[:, 1], y[:, 2])


def test_one_level_apart_is_grey_at_every_level():
    """(v + 1)/255 − v/255 is a hair over 1/255 in float32 for some v (3, 7, …, 127): those faces
    were taken for colour ones, others one level apart for grey."""
    from restorekit.faces.compose import is_grey

    for v in range(255):
        x = torch.full((1, 3, 2, 2), v / 255)
        x[:, 0] = (v + 1) / 255
        assert is_grey(x), v
        x[:, 0] = min(v + 2, 255) / 255 if v < 253 else (v - 2) / 255
        assert not is_grey(x), v
