"""Image convention and file I/O: conversion rules, EXIF, bad files, atomic writes, input specs."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from restorekit.errors import ImageError
from restorekit.images import list_inputs, read_image, save_image, to_pil


def test_png_round_trip_is_exact(tmp_path):
    arr = np.random.default_rng(0).integers(0, 256, (7, 9, 3), dtype=np.uint8)
    Image.fromarray(arr).save(tmp_path / "a.png")
    x = read_image(tmp_path / "a.png")
    assert x.shape == (1, 3, 7, 9) and x.dtype == torch.float32
    assert x.min() >= 0 and x.max() <= 1
    save_image(x, tmp_path / "b.png")
    assert np.array_equal(np.asarray(Image.open(tmp_path / "b.png")), arr)


def test_exif_orientation_applied(tmp_path):
    arr = np.zeros((4, 6, 3), np.uint8)
    arr[0, 0] = 255  # top-left marker
    img = Image.fromarray(arr)
    exif = img.getexif()
    exif[0x0112] = 6  # rotate 90° CW on display
    img.save(tmp_path / "r.jpg", exif=exif, quality=100)
    x = read_image(tmp_path / "r.jpg")
    assert x.shape[-2:] == (6, 4)  # displayed upright: width and height swap
    assert x[0, :, 0, -1].mean() > 0.7  # marker moved to the top-right


def test_grayscale_16bit_palette_rgba_rules(tmp_path):
    g = np.arange(12, dtype=np.uint8).reshape(3, 4) * 20
    Image.fromarray(g, "L").save(tmp_path / "g.png")
    x = read_image(tmp_path / "g.png")
    assert torch.equal(x[0, 0], x[0, 1]) and torch.allclose(x[0, 0], torch.from_numpy(g / 255).float())

    g16 = (np.arange(12, dtype=np.uint16).reshape(3, 4) * 5000)
    Image.fromarray(g16).save(tmp_path / "g16.png")
    x16 = read_image(tmp_path / "g16.png")
    assert torch.allclose(x16[0, 2], torch.from_numpy(g16 / 65535).float(), atol=1e-6)

    pal = Image.fromarray(np.array([[0, 1], [1, 0]], np.uint8), "P")
    pal.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    pal.save(tmp_path / "p.png")
    xp = read_image(tmp_path / "p.png")
    assert xp[0, :, 0, 0].tolist() == [1.0, 0.0, 0.0] and xp[0, :, 0, 1].tolist() == [0.0, 0.0, 1.0]

    rgba = np.zeros((2, 2, 4), np.uint8)
    rgba[..., 0] = 255
    rgba[0, 0, 3] = 0      # transparent → white
    rgba[1, 1, 3] = 255    # opaque red
    rgba[0, 1, 3] = 128    # half: composited over white
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    xa = read_image(tmp_path / "a.png")
    assert xa[0, :, 0, 0].tolist() == [1.0, 1.0, 1.0]
    assert xa[0, :, 1, 1].tolist() == [1.0, 0.0, 0.0]
    assert abs(xa[0, 1, 0, 1].item() - 127 / 255) < 2 / 255


@pytest.mark.parametrize("kind", ["text", "truncated", "empty", "tiny"])
def test_bad_files_raise_one_line_naming_file(tmp_path, kind):
    p = tmp_path / f"bad_{kind}.png"
    if kind == "text":
        p.write_text("not an image")
    elif kind == "truncated":
        Image.fromarray(np.zeros((64, 64, 3), np.uint8) + 100).save(p)
        p.write_bytes(p.read_bytes()[:60])
    elif kind == "empty":
        p.write_bytes(b"")
    else:
        Image.fromarray(np.zeros((1, 1, 3), np.uint8)).save(p)
    with pytest.raises(ImageError) as ei:
        read_image(p)
    msg = str(ei.value)
    assert str(p) in msg and "\n" not in msg


def test_pixel_limit_refused_before_decoding(tmp_path):
    Image.fromarray(np.zeros((100, 100, 3), np.uint8)).save(tmp_path / "big.png")
    with pytest.raises(ImageError, match="exceeds the limit"):
        read_image(tmp_path / "big.png", max_pixels=9_999)
    assert read_image(tmp_path / "big.png", max_pixels=10_000).shape == (1, 3, 100, 100)


def test_atomic_write_leaves_nothing_on_failure(tmp_path, monkeypatch):
    x = torch.rand(1, 3, 8, 8)
    import restorekit.images as images

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(images.os, "replace", boom)
    with pytest.raises(OSError):
        save_image(x, tmp_path / "o.png")
    assert list(tmp_path.iterdir()) == []


def test_input_specs(tmp_path):
    d = tmp_path / "in"
    d.mkdir()
    for n in ("b.png", "a.jpg", "notes.md"):
        (d / n).write_bytes(b"x")
    (d / "a.png").write_bytes(b"x")
    items = list_inputs(d)
    assert [i.path.name for i in items] == ["a.jpg", "a.png", "b.png"]
    assert [i.stem for i in items] == ["a.jpg", "a.png", "b"]  # colliding stems: named with their extension
    assert [i.path.name for i in list_inputs(str(d / "*.png"))] == ["a.png", "b.png"]
    lst = tmp_path / "list.txt"
    lst.write_text("# faces\nin/b.png\n\nin/a.jpg\n")
    assert [i.path.name for i in list_inputs(lst)] == ["b.png", "a.jpg"]
    assert [i.path.name for i in list_inputs(f"@{lst}")] == ["b.png", "a.jpg"]
    with pytest.raises(ImageError, match="no such file"):
        list_inputs(tmp_path / "missing")


def test_a_path_that_exists_is_taken_literally_even_with_glob_characters(tmp_path):
    """``face[1].png`` as a pattern matches ``face1.png``: the file named, not another, is the input."""
    d = tmp_path / "in"
    d.mkdir()
    (d / "face[1].png").write_bytes(b"x")
    (d / "face1.png").write_bytes(b"y")
    assert [i.path.name for i in list_inputs(d / "face[1].png")] == ["face[1].png"]
    year = tmp_path / "set[2024]"
    year.mkdir()
    (year / "x.png").write_bytes(b"x")
    assert [i.path.name for i in list_inputs(year)] == ["x.png"]
    assert [i.path.name for i in list_inputs(str(d / "face?.png"))] == ["face1.png"]  # a pattern still globs
    with pytest.raises(ImageError, match="the pattern matches no file"):
        list_inputs(str(d / "none[0-9].png"))


def test_float_pixels_that_are_not_numbers_are_refused_naming_the_file(tmp_path):
    """A 32-bit float TIFF with NaN (or inf) pixels is not an image: clipping keeps NaN, which
    reached every method (and the black pixels of a degraded LR). One line naming the file."""
    import numpy as np
    from PIL import Image

    arr = np.full((8, 8), 0.5, np.float32)
    arr[2, 3], arr[5, 5] = np.nan, np.inf
    path = tmp_path / "fnan.tif"
    Image.fromarray(arr, "F").save(path)
    with pytest.raises(ImageError, match=r"fnan\.tif: holds 2 NaN or infinite pixel value\(s\)$"):
        read_image(path)
    arr[2, 3] = arr[5, 5] = 2.0  # out of range but numbers: clipped, as before
    Image.fromarray(arr, "F").save(path)
    assert float(read_image(path).max()) == 1.0


def test_an_output_name_the_file_system_takes_is_written_whatever_its_length(tmp_path):
    """The temporary file beside a 250-byte name must not pass the 255-byte limit itself."""
    from restorekit.images import atomic_write_bytes

    for name in ("x" * 245 + ".png", "é" * 123 + ".png"):  # 249 and 250 bytes
        target = tmp_path / name
        atomic_write_bytes(target, b"data")
        assert target.read_bytes() == b"data"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["x" * 245 + ".png", "é" * 123 + ".png"])


def test_list_file_that_is_not_utf8_text_is_one_line_naming_it(tmp_path):
    """A list file with a byte-order mark lists its paths; one that is not UTF-8 text (a JPEG
    named .txt, a Latin-1 list) is an ImageError naming it, and a usage error (exit 2) at the
    command line, not an 'unexpected UnicodeDecodeError'."""
    from click.testing import CliRunner

    from restorekit.cli import build_cli

    (tmp_path / "a.png").write_bytes(b"x")
    bom = tmp_path / "bom.txt"
    bom.write_bytes(b"\xef\xbb\xbfa.png\n")
    assert [i.path.name for i in list_inputs(f"@{bom}")] == ["a.png"]
    bad = tmp_path / "latin1.txt"
    bad.write_bytes("caf\xe9.png\n".encode("latin-1"))
    with pytest.raises(ImageError, match=r"latin1\.txt: .*not UTF-8 text"):
        list_inputs(f"@{bad}")
    r = CliRunner().invoke(build_cli(), ["run", "bicubic", "--scale", "2", "--input", str(bad), "--output",
                                         str(tmp_path / "o")])
    assert r.exit_code == 2
    assert "latin1.txt" in r.output and "not UTF-8 text" in r.output and "unexpected" not in r.output


def test_to_pil_rounds_and_clamps():
    x = torch.tensor([[[[1.2]], [[-0.1]], [[0.5]]]])
    assert np.asarray(to_pil(x)).tolist() == [[[255, 0, 128]]]


def test_outputs_get_umask_permissions(tmp_path):
    import os

    old = os.umask(0o022)
    try:
        save_image(torch.rand(1, 3, 4, 4), tmp_path / "p.png")
    finally:
        os.umask(old)
    assert (tmp_path / "p.png").stat().st_mode & 0o777 == 0o644


def test_unreadable_file_is_named_as_a_permission_problem(tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """A file the user may not read is not 'corrupt': the message says what is wrong (root reads
    everything, so the denial is simulated at the open)."""
    import PIL.Image

    import restorekit.images as images

    path = tmp_path / "locked.png"
    images.save_image(torch.rand(1, 3, 8, 8), path)

    def deny(*args, **kwargs):  # type: ignore[no-untyped-def]
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(PIL.Image, "open", deny)
    for fn in (images.read_image, images.probe_size):
        with pytest.raises(images.ImageError, match="locked.png: permission denied"):
            fn(path)


def test_side_by_side_lives_with_images_and_resizes_the_left_one():
    from restorekit.commands import run
    from restorekit.images import side_by_side

    lr, sr = torch.rand(1, 3, 4, 5), torch.rand(1, 3, 8, 10)
    both = side_by_side(lr, sr)
    assert both.shape == (1, 3, 8, 20) and torch.equal(both[..., 10:], sr)
    assert torch.equal(both[..., :10], torch.nn.functional.interpolate(lr, size=(8, 10), mode="nearest"))
    assert run.side_by_side is side_by_side  # `run --couple` and `--faces detect --couple` share it


def test_damaged_exif_is_one_warning_line_naming_the_file_once(tmp_path, capsys):
    import io

    im = Image.fromarray(np.random.default_rng(0).integers(0, 256, (16, 12, 3), dtype=np.uint8))
    exif = Image.Exif()
    exif[0x0112] = 6
    buf = io.BytesIO()
    im.save(buf, "JPEG", exif=exif.tobytes())
    data = bytearray(buf.getvalue())
    i = data.find(b"Exif\x00\x00MM")
    assert i > 0
    data[i + 14:i + 16] = b"\x00\x40"  # an IFD that claims 64 entries: pillow reads a few bytes, warns
    p = tmp_path / "bad.jpg"
    p.write_bytes(bytes(data))
    with pytest.warns(UserWarning, match="Corrupt EXIF"):  # what pillow itself says, two lines raw
        Image.open(p).getexif()
    capsys.readouterr()
    first = read_image(p)
    again = read_image(p)
    assert torch.equal(first, again) and first.shape == (1, 3, 12, 16)  # the orientation entry still read
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1, err
    assert err[0].startswith(f"warning: {p}: damaged metadata, used as far as it reads (") and "Corrupt EXIF" in err[0]


def test_notes_once_per_file_are_remembered_for_a_bounded_number_of_files(monkeypatch, capsys) -> None:
    """A long-running process warns once per file and note, remembering at most NOTED_MAX pairs
    (the oldest forgotten first), not one entry per file it ever read."""
    from restorekit import images

    monkeypatch.setattr(images, "_NOTED", {})
    monkeypatch.setattr(images, "NOTED_MAX", 3)
    for i in range(5):
        images._note_once(f"f{i}.png", "note")
    images._note_once("f4.png", "note")  # remembered: not again
    assert list(images._NOTED) == [(f"f{i}.png", "note") for i in (2, 3, 4)]
    images._note_once("f0.png", "note")  # forgotten: said again
    lines = capsys.readouterr().err.splitlines()
    assert lines == [f"warning: f{i}.png: note" for i in range(5)] + ["warning: f0.png: note"]
