"""Images are read, never memory-mapped: given a path, pillow maps uncompressed grey, palette and
RGBA files, and a read that then fails (EIO on a network file system, a file cut short by another
process) kills the process with SIGBUS instead of raising an error restorekit can name."""

from __future__ import annotations

import mmap
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from restorekit.images import ImageError, probe_size, read_image


@pytest.fixture
def mapped(monkeypatch: pytest.MonkeyPatch) -> list[tuple]:
    """Every ``mmap.mmap`` made while the test runs."""
    made: list[tuple] = []
    real = mmap.mmap

    class Counting(real):  # type: ignore[misc, valid-type]
        def __new__(cls, *args, **kwargs):  # type: ignore[no-untyped-def]
            made.append(args)
            return real.__new__(cls, *args, **kwargs)

    monkeypatch.setattr(mmap, "mmap", Counting)
    return made


@pytest.mark.parametrize("name, mode", [("grey.pgm", "L"), ("grey.tif", "L"), ("palette.bmp", "P"),
                                        ("rgba.tif", "RGBA")])
def test_uncompressed_files_are_read_not_mapped(tmp_path: Path, mapped: list[tuple], name: str, mode: str) -> None:
    pixels = (np.arange(48 * 40).reshape(40, 48) % 251).astype("uint8")
    im = Image.fromarray(pixels)
    if mode == "P":
        im = im.convert("P")
    elif mode == "RGBA":
        im = Image.merge("RGBA", [im, im, im, Image.new("L", im.size, 255)])
    im.save(tmp_path / name)
    # (pillow, given the path, maps each of these: the test would see it)
    with Image.open(tmp_path / name) as direct:
        expect = np.asarray(direct.convert("RGB"), dtype=np.float32) / 255
    assert len(mapped) == 1
    mapped.clear()
    x = read_image(tmp_path / name)
    assert mapped == [] and x.shape == (1, 3, 40, 48)
    torch.testing.assert_close(x[0].permute(1, 2, 0), torch.from_numpy(expect), rtol=0, atol=1 / 255)
    assert probe_size(tmp_path / name) == (48, 40) and mapped == []


def test_a_file_cut_short_is_an_error_naming_it(tmp_path: Path) -> None:
    Image.fromarray(np.full((64, 64), 7, dtype="uint8")).save(tmp_path / "cut.pgm")
    data = (tmp_path / "cut.pgm").read_bytes()
    (tmp_path / "cut.pgm").write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageError, match=r"cut\.pgm: corrupt or truncated image"):
        read_image(tmp_path / "cut.pgm")
