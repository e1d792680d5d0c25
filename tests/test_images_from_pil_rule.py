"""``from_pil(Image.open(p))`` is ``read_image(p)``: the module's whole conversion rule (EXIF
orientation, ICC profile to sRGB, 16-bit grey, alpha, palette), as README's Python example uses it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps
from test_io_formats import display_p3

from restorekit import images
from restorekit.images import from_pil, read_image, to_numpy_rgb, to_pil

PIXELS = np.random.default_rng(0).integers(0, 256, (13, 17, 3), dtype=np.uint8)


def _oriented(path: Path, orientation: int, **kw: object) -> Path:
    im = Image.fromarray(PIXELS)
    exif = im.getexif()
    exif[0x0112] = orientation
    im.save(path, exif=exif.tobytes(), **kw)
    return path


def _zoo(d: Path) -> list[Path]:
    """Files whose pixels the rule changes (orientation, profile) and files it reads as they are."""
    grey16 = np.random.default_rng(1).integers(0, 65536, (10, 12), dtype=np.uint16)
    Image.fromarray(grey16).save(d / "grey16.png")
    rgba = np.dstack([PIXELS, np.linspace(0, 255, PIXELS[..., 0].size).reshape(13, 17).astype(np.uint8)])
    Image.fromarray(rgba, "RGBA").save(d / "alpha.png")
    Image.fromarray(PIXELS).convert("P").save(d / "palette.gif")
    Image.new("RGB", (8, 8), (230, 40, 40)).save(d / "p3.png", icc_profile=display_p3())
    Image.fromarray(rgba, "RGBA").save(d / "p3_alpha.png", icc_profile=display_p3())
    return [_oriented(d / "o6.png", 6), _oriented(d / "o3.jpg", 3, quality=100),
            _oriented(d / "o8.webp", 8, lossless=True), d / "grey16.png", d / "alpha.png", d / "palette.gif",
            d / "p3.png", d / "p3_alpha.png"]


def test_from_pil_of_an_opened_file_is_read_image_bit_for_bit(tmp_path: Path) -> None:
    for path in _zoo(tmp_path):
        want = read_image(path)
        with Image.open(path) as im:
            got = from_pil(im)
        assert got.dtype == torch.float32 and got.shape == want.shape and torch.equal(got, want), path.name
        with Image.open(path) as im:
            assert np.array_equal(to_numpy_rgb(im), want[0].permute(1, 2, 0).numpy()), path.name


def test_exif_orientation_6_is_turned_once_and_the_callers_image_is_left_as_it_was(tmp_path: Path) -> None:
    path = _oriented(tmp_path / "o6.png", 6)
    upright = torch.from_numpy(np.rot90(PIXELS, -1).copy()).permute(2, 0, 1)[None].float() / 255
    with Image.open(path) as im:
        got = from_pil(im)
        assert im.size == (17, 13) and im.getexif()[0x0112] == 6  # not turned in place
        again = from_pil(im)
        turned = ImageOps.exif_transpose(im)  # a caller that turned it already: the copy has no tag
    assert got.shape == (1, 3, 17, 13) and torch.equal(got, upright) and torch.equal(again, upright)
    assert turned is not None and torch.equal(from_pil(turned), upright)  # not turned a second time


def test_a_display_p3_red_is_converted_to_srgb_as_read_image_converts_it(tmp_path: Path) -> None:
    path = tmp_path / "p3.png"
    Image.new("RGB", (8, 8), (230, 40, 40)).save(path, icc_profile=display_p3())
    with Image.open(path) as im:
        got = from_pil(im)
        assert im.info.get("icc_profile")  # the caller's image keeps its profile
    assert (got[0, :, 0, 0] * 255).round().tolist() == [252.0, 0.0, 6.0]
    assert torch.equal(got, read_image(path))


def test_an_image_made_in_memory_is_converted_as_it_stands_without_a_copy() -> None:
    """What ``run``/``compare``/``serve`` do with outputs (``from_pil(to_pil(y))``): no EXIF, no
    profile, so the rule changes nothing; and the image is not copied to find that out."""
    x = torch.rand(1, 3, 9, 11, generator=torch.Generator().manual_seed(2))
    pil = to_pil(x)
    assert images._upright(pil) is pil
    assert torch.equal(from_pil(pil), (x * 255).round() / 255)
