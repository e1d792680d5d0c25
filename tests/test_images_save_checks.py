"""``save_image`` and ``to_pil`` refuse, in one line, what is not one float image in [0, 1] (as
``Method.restore`` refuses its input) instead of writing it white, black or clipped, and
``save_image`` refuses a file ``read_image`` could not read back (a side under 2 px)."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from restorekit.errors import ImageError, RestorekitError
from restorekit.images import read_image, save_image, to_pil

G = torch.Generator().manual_seed(0)
U8 = torch.randint(0, 256, (1, 3, 8, 8), dtype=torch.uint8, generator=G)
ONE_NAN = torch.full((1, 3, 8, 8), 0.5)
ONE_NAN[0, 1, 2, 3] = float("nan")

REFUSED = [
    ("uint8", U8, "must be a floating-point tensor in [0, 1], got torch.uint8: for 8-bit values use x.float() / 255"),
    ("0-255", U8.float(), "has values from"),
    ("[-1, 1]", torch.linspace(-1, 1, 192).reshape(1, 3, 8, 8), "a [-1, 1] image? use (x + 1) / 2"),
    ("NaN", torch.full((1, 3, 8, 8), float("nan")), "holds 192 NaN value(s) of 192"),
    ("one NaN", ONE_NAN, "holds 1 NaN value(s) of 192"),
    ("inf", torch.full((1, 3, 8, 8), float("inf")), "holds 192 infinite value(s) of 192"),
    ("numpy", np.random.default_rng(0).random((3, 8, 8)), "got numpy.ndarray"),
    ("batch of 2", torch.rand(2, 3, 8, 8), "is a batch of 2: one image (3×H×W or 1×3×H×W) is converted at a time"),
    ("HWC", torch.rand(8, 8, 3), "got shape (8, 8, 3): one image H×W×3 (channels last)"),
]


@pytest.mark.parametrize(("label", "image", "says"), REFUSED, ids=[r[0] for r in REFUSED])
def test_save_image_refuses_what_is_no_float_image_in_0_1_and_writes_nothing(tmp_path: Path, label: str,
                                                                             image: object, says: str) -> None:
    out = tmp_path / "o.png"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # (NaN was cast to black with numpy's RuntimeWarning)
        with pytest.raises(ImageError) as caught:
            save_image(image, out)  # type: ignore[arg-type]
    msg = str(caught.value)
    assert msg.startswith(f"{out}: the image ") and says in msg and "\n" not in msg, msg
    assert isinstance(caught.value, RestorekitError)  # reported as one line (generate: a failed seed)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(("label", "image", "says"), REFUSED, ids=[r[0] for r in REFUSED])
def test_to_pil_refuses_the_same_with_a_value_error(label: str, image: object, says: str) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(ValueError) as caught:
            to_pil(image)  # type: ignore[arg-type]
    assert str(caught.value).startswith("to_pil: image ") and says in str(caught.value)


def test_what_worked_keeps_working_float16_float64_chw_grad_and_overshoot(tmp_path: Path) -> None:
    x = torch.rand(1, 3, 6, 7, generator=torch.Generator().manual_seed(1))
    want = (x * 255).round() / 255
    for i, y in enumerate([x.double(), x[0], x.clone().requires_grad_()]):
        assert torch.equal(read_image(save_image(y, tmp_path / f"{i}.png")), want), i
    half = x.half()
    assert torch.equal(read_image(save_image(half, tmp_path / "half.png")), (half.float() * 255).round() / 255)
    # ringing within the slack (0.5) is clipped as an 8-bit writer clips it
    ring = torch.tensor([1.2, -0.1, 0.5, 1.5, -0.5, 0.0]).reshape(1, 3, 1, 2).repeat(1, 1, 2, 1)
    assert np.asarray(Image.open(save_image(ring, tmp_path / "ring.png")))[0].tolist() == [[255, 128, 0], [0, 255, 0]]


def test_save_image_refuses_a_side_under_2_px_which_read_image_could_not_read_back(tmp_path: Path) -> None:
    with pytest.raises(ImageError, match=r"one\.png: 1×1 is too small \(each side must be ≥ 2 px\)"):
        save_image(torch.rand(1, 3, 1, 1), tmp_path / "one.png")
    with pytest.raises(ImageError, match=r"thin\.png: 5×1 is too small"):
        save_image(torch.rand(1, 3, 1, 5), tmp_path / "thin.png")
    assert list(tmp_path.iterdir()) == []
    assert read_image(save_image(torch.full((1, 3, 2, 2), 0.5), tmp_path / "two.png")).shape == (1, 3, 2, 2)
    assert to_pil(torch.rand(1, 3, 1, 1)).size == (1, 1)  # in memory (no file to read back): as before


def test_a_training_grid_draws_nan_black_and_saves(tmp_path: Path) -> None:
    """save_image refuses NaN, but a snapshot's or validation's sample grid must never stop a run:
    image_grid draws a bad sample black (as the grid was saved before the check)."""
    from restorekit.training.trainer import image_grid

    bad = torch.full((2, 3, 4, 4), float("nan"))
    good = torch.full((2, 3, 4, 4), 0.5)
    grid = image_grid([good, bad])
    assert torch.isfinite(grid).all() and grid.shape == (1, 3, 8, 8)
    save_image(grid, tmp_path / "grid.png")
    back = read_image(tmp_path / "grid.png")
    assert float(back[..., :4].mean()) == pytest.approx(128 / 255) and float(back[..., 4:].max()) == 0.0
