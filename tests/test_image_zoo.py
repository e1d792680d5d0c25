"""Image files whose pixel scale, extension, link or layout the reader once got wrong (an audit's zoo):
float TIFFs on another scale, 32-bit and signed integer grey, 16-bit Netpbm, the extensions of the
formats read, a link and its target, CIELab TIFFs, and the words for files that do not decode.
Every file is made here, small, in tmp_path."""

from __future__ import annotations

import os
import struct

import numpy as np
import pytest
from PIL import Image

from restorekit import images
from restorekit.errors import ImageError
from restorekit.images import IMAGE_EXTS, list_inputs, read_image, read_image_bytes


def grey(x) -> np.ndarray:
    """The first channel of a read image (grey files are replicated to three), float64."""
    return x[0, 0].double().numpy()


def _tiff(path, arr: np.ndarray, *, sample_format: int, photometric: int = 1, extra: int | None = None) -> None:
    """A baseline little-endian uncompressed TIFF of ``arr`` (H×W or H×W×S), written by hand so that
    any sample layout (unsigned 32-bit, float RGB, grey + alpha) can be made without other libraries."""
    arr = np.ascontiguousarray(arr)
    h, w = arr.shape[:2]
    spp = 1 if arr.ndim == 2 else arr.shape[2]
    bits = arr.dtype.itemsize * 8
    pixels = arr.astype(arr.dtype.newbyteorder("<")).tobytes()
    tags = [(256, 4, [w]), (257, 4, [h]), (258, 3, [bits] * spp), (259, 3, [1]), (262, 3, [photometric]),
            (273, 4, [0]), (277, 3, [spp]), (278, 4, [h]), (279, 4, [len(pixels)]), (339, 3, [sample_format] * spp)]
    if extra is not None:
        tags.append((338, 3, [extra]))
    tags.sort()
    ifd_size = 2 + 12 * len(tags) + 4
    outside = bytearray()
    base = 8 + ifd_size
    entries = []
    for tag, typ, values in tags:
        raw = struct.pack(f"<{len(values)}{'H' if typ == 3 else 'I'}", *values)
        entries.append((tag, typ, values, raw))
        if len(raw) > 4:
            outside += raw + b"\0" * (len(raw) % 2)
    data_at = base + len(outside)
    ifd = struct.pack("<H", len(tags))
    out_at = base
    for tag, typ, values, raw in entries:
        if tag == 273:
            raw = struct.pack("<I", data_at)
        if len(raw) > 4:
            ifd += struct.pack("<HHII", tag, typ, len(values), out_at)
            out_at += len(raw) + len(raw) % 2
        else:
            ifd += struct.pack("<HHI", tag, typ, len(values)) + raw.ljust(4, b"\0")
    ifd += struct.pack("<I", 0)
    path.write_bytes(b"II*\0" + struct.pack("<I", 8) + ifd + bytes(outside) + pixels)


# -- float ('F') images: 0–1, a little overshoot clipped, another scale refused ---------------------------------

def test_a_float_image_on_the_0_255_scale_is_refused_naming_the_range_not_read_as_white(tmp_path):
    arr = np.tile(np.linspace(0, 255, 16, dtype=np.float32), (16, 1))
    Image.fromarray(arr, "F").save(tmp_path / "f255.tif")
    with pytest.raises(ImageError, match=r"f255\.tif: float pixels range from 0 to 255; restorekit reads float "
                                         r"images as 0–1"):
        read_image(tmp_path / "f255.tif")
    arr16 = np.tile(np.linspace(0, 65535, 16, dtype=np.float32), (16, 1))  # 16-bit values as float
    Image.fromarray(arr16, "F").save(tmp_path / "f65535.tif")
    with pytest.raises(ImageError, match=r"float pixels range from 0 to 65535;"):
        read_image(tmp_path / "f65535.tif")


def test_float_overshoot_is_clipped_quietly_and_stray_values_with_a_warning(tmp_path, capsys):
    arr = np.tile(np.linspace(-0.1, 1.1, 16, dtype=np.float32), (16, 1))  # resampling overshoot
    Image.fromarray(arr, "F").save(tmp_path / "over.tif")
    x = grey(read_image(tmp_path / "over.tif"))
    assert x.min() == 0.0 and x.max() == 1.0
    np.testing.assert_allclose(x[0, 5:11], arr[0, 5:11], atol=1e-7)
    assert "warning" not in capsys.readouterr().err
    arr = np.full((16, 16), 0.5, np.float32)
    arr[3, 4], arr[9, 9] = 40.0, -3.0  # a few stray values: the image is 0–1
    Image.fromarray(arr, "F").save(tmp_path / "stray.tif")
    x = grey(read_image(tmp_path / "stray.tif"))
    assert x[3, 4] == 1.0 and x[9, 9] == 0.0 and x[0, 0] == 0.5
    err = capsys.readouterr().err
    assert err.count("warning:") == 1 and "stray.tif: 2 float pixel value(s) far outside 0–1" in err, err
    arr = np.full((16, 16), 0.25, np.float32)
    arr[0, :5] = 3.0  # the span said is the clipped values' (it was the whole image's: "from 0.25 to 3")
    Image.fromarray(arr, "F").save(tmp_path / "five.tif")
    read_image(tmp_path / "five.tif")
    assert "five.tif: 5 float pixel value(s) far outside 0–1 (from 3 to 3) clipped" in capsys.readouterr().err


# -- 32-bit and signed integer ('I') grey -----------------------------------------------------------------------

def test_unsigned_32_bit_grey_above_65535_is_scaled_by_its_full_range_not_clipped_white(tmp_path):
    vals = np.array([[0, 70_000, 2**31 + 5, 2**32 - 1]] * 4, dtype=np.uint32)
    _tiff(tmp_path / "u32.tif", vals, sample_format=1)
    x = grey(read_image(tmp_path / "u32.tif"))
    np.testing.assert_allclose(x[0], vals[0] / (2**32 - 1), atol=1e-7)  # above 2**31 too: not wrapped negative
    signed = np.array([[0, 70_000, 2**30, 2**31 - 1]] * 4, dtype=np.int32)  # pillow writes mode I as signed
    Image.fromarray(signed, "I").save(tmp_path / "s32.tif")
    np.testing.assert_allclose(grey(read_image(tmp_path / "s32.tif"))[0], signed[0] / (2**31 - 1), atol=1e-7)
    narrow = np.array([[0, 128, 300, 65535]] * 4, dtype=np.uint32)  # 16-bit values stored wide: as before
    _tiff(tmp_path / "n32.tif", narrow, sample_format=1)
    np.testing.assert_allclose(grey(read_image(tmp_path / "n32.tif"))[0], narrow[0] / 65535, atol=1e-7)


def test_grey_just_above_16_bits_is_read_at_the_bit_depth_that_holds_it(tmp_path, capsys):
    """A maximum of 70000 was divided by 2**32-1: the image came out black (1.6e-5), silently."""
    vals = np.array([[0, 1000, 40_000, 70_000]] * 4, dtype=np.uint32)
    _tiff(tmp_path / "u17.tif", vals, sample_format=1)
    x = grey(read_image(tmp_path / "u17.tif"))
    np.testing.assert_allclose(x[0], vals[0] / (2**17 - 1), atol=1e-7)
    assert "u17.tif: integer pixels up to 70000: read as 17-bit data (÷131071)" in capsys.readouterr().err
    vals24 = np.array([[0, 2**23, 2**24 - 1, 5]] * 4, dtype=np.uint32)
    _tiff(tmp_path / "u24.tif", vals24, sample_format=1)
    np.testing.assert_allclose(grey(read_image(tmp_path / "u24.tif"))[0], vals24[0] / (2**24 - 1), atol=1e-7)


def test_signed_grey_that_is_mostly_negative_is_refused_and_a_stray_negative_clipped(tmp_path, capsys):
    arr = np.tile(np.linspace(-1000, 1000, 16).astype(np.int16), (16, 1))
    _tiff(tmp_path / "s16.tif", arr, sample_format=2)
    with pytest.raises(ImageError, match=r"s16\.tif: integer pixels range from -1000 to 1000; restorekit reads "
                                         r"integer grey from 0 up"):
        read_image(tmp_path / "s16.tif")
    arr = np.full((16, 16), 20_000, np.int16)
    arr[0, 0] = -7
    _tiff(tmp_path / "one.tif", arr, sample_format=2)
    x = grey(read_image(tmp_path / "one.tif"))
    assert x[0, 0] == 0.0 and abs(x[1, 1] - 20_000 / 65535) < 1e-7
    assert "one.tif: 1 negative integer pixel value(s) clipped to 0" in capsys.readouterr().err


# -- 16-bit Netpbm: pillow has already scaled it to 0..65535 -----------------------------------------------------

@pytest.mark.parametrize("maxval", [256, 1000, 4095, 65535])
def test_a_16_bit_pgm_is_read_by_its_maxval_and_a_dark_frame_stays_dark(tmp_path, maxval):
    raw = np.array([[0, 1, 3, 7, 15, maxval // 300, maxval // 2, maxval]] * 2, dtype=">u2")
    dark = np.array([[0, 1, 2, 3, 4, 5, 6, 7]] * 2, dtype=">u2")  # a dark frame: pillow's values all ≤ 255
    for name, arr in (("full.pgm", raw), ("dark.pgm", dark)):
        (tmp_path / name).write_bytes(f"P5\n8 2\n{maxval}\n".encode() + arr.tobytes())
        with Image.open(tmp_path / name) as im:
            assert (im.format, im.mode) == ("PPM", "I")
        np.testing.assert_allclose(grey(read_image(tmp_path / name))[0], arr[0] / maxval, atol=0.6 / 65535)
    (tmp_path / "plain.pgm").write_bytes(f"P2\n8 2\n{maxval}\n".encode() + " ".join(map(str, dark.ravel())).encode())
    np.testing.assert_allclose(grey(read_image(tmp_path / "plain.pgm"))[0], dark[0] / maxval, atol=0.6 / 65535)


# -- extensions: every one pillow gives the formats read ----------------------------------------------------------

def test_a_folder_lists_every_extension_of_the_formats_read_and_only_those(tmp_path):
    Image.init()
    formats = set(images.FILE_FORMATS) | {"MPO"}
    registered = {e for e, f in Image.registered_extensions().items() if f in formats}
    assert registered <= set(IMAGE_EXTS), sorted(registered - set(IMAGE_EXTS))
    assert all(Image.registered_extensions().get(e, "JPEG") in formats for e in IMAGE_EXTS)
    assert not {".eps", ".ps", ".pdf", ".pcx", ".psd", ".heic", ".avif", ".dds", ".im"} & set(IMAGE_EXTS)
    assert len(set(IMAGE_EXTS)) == len(IMAGE_EXTS) and all(e == e.lower() for e in IMAGE_EXTS)
    face = Image.new("RGB", (16, 16), (200, 120, 90))
    made = {"a.jfif": "JPEG", "b.JPE": "JPEG", "c.tga": "TGA", "d.pgm": "PPM", "e.ico": "ICO", "f.jp2": "JPEG2000",
            "g.png": "PNG", "h.ppm": "PPM"}
    for name, fmt in made.items():
        (face.convert("L") if name == "d.pgm" else face).save(tmp_path / name, fmt)
    (tmp_path / "notes.txt").write_text("not an image")
    (tmp_path / "scan.pdf").write_bytes(b"%PDF-1.4\n")
    listed = [i.path.name for i in list_inputs(tmp_path)]
    assert listed == sorted(made), listed
    for item in list_inputs(tmp_path):
        assert read_image(item.path).shape == (1, 3, 16, 16), item.path.name


# -- one file under two names -----------------------------------------------------------------------------------

def test_a_link_and_its_target_are_one_input_under_the_first_name(tmp_path, capsys):
    d = tmp_path / "in"
    d.mkdir()
    Image.new("RGB", (8, 8), (1, 2, 3)).save(d / "b.png")
    try:
        os.symlink("b.png", d / "a.png")
        os.symlink("b.png", d / "c.png")
    except (OSError, NotImplementedError):
        pytest.skip("no symbolic links here")
    os.link(d / "b.png", d / "d.png")  # a hard link: the same file too
    Image.new("RGB", (8, 8), (1, 2, 3)).save(d / "e.png")  # equal bytes, another file: kept
    assert [(i.path.name, i.stem) for i in list_inputs(d)] == [("a.png", "a"), ("e.png", "e")]
    err = capsys.readouterr().err  # each name left out is said, once (DVC or annex folders of links)
    assert [ln.split(": ", 1)[1] for ln in err.splitlines()] == [
        f"{d / n}.png: the same file as {d / 'a.png'} (a link); used once, under that name" for n in "bcd"]
    assert [i.path.name for i in list_inputs(str(d / "[bc].png"))] == ["b.png"]
    (tmp_path / "list.txt").write_text("in/c.png\nin/b.png\nin/./b.png\nin/e.png\n")
    assert [i.path.name for i in list_inputs(tmp_path / "list.txt")] == ["c.png", "e.png"]


# -- CIELab TIFF ---------------------------------------------------------------------------------------------

def test_a_lab_tiff_with_a_lab_profile_reads_right_without_a_warning(tmp_path, capsys):
    ImageCms = pytest.importorskip("PIL.ImageCms")
    rng = np.random.default_rng(3)
    rgb = Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8), "RGB")
    lab = ImageCms.createProfile("LAB")
    to_lab = ImageCms.buildTransform(ImageCms.createProfile("sRGB"), lab, "RGB", "LAB")
    lab_image = ImageCms.applyTransform(rgb, to_lab)
    lab_image.save(tmp_path / "lab.tif", icc_profile=ImageCms.ImageCmsProfile(lab).tobytes())
    with Image.open(tmp_path / "lab.tif") as im:
        assert im.mode == "LAB" and im.info.get("icc_profile")
    x = read_image(tmp_path / "lab.tif")[0].permute(1, 2, 0).double().numpy() * 255
    assert np.abs(x - np.asarray(rgb, np.float64)).mean() < 1.5
    assert "warning" not in capsys.readouterr().err


# -- what a file that does not decode is called ---------------------------------------------------------------

def test_unreadable_files_are_described_in_words(tmp_path):
    (tmp_path / "notes.png").write_bytes(b"just some notes\n" * 4)
    with pytest.raises(ImageError, match=r"^.*notes\.png: not a readable image \(its first bytes match no image "
                                         r"format restorekit reads\)$"):
        read_image(tmp_path / "notes.png")
    heic = struct.pack(">I", 24) + b"ftypheic" + b"\0\0\0\0" + b"mif1heic" + bytes(64)
    (tmp_path / "phone.jpg").write_bytes(heic)
    with pytest.raises(ImageError, match=r"phone\.jpg: its format is HEIC, which is not read here"):
        read_image(tmp_path / "phone.jpg")
    with pytest.raises(ImageError, match=r"^phone\.heic: its format is HEIC, which is not read here"):
        read_image_bytes(heic, "phone.heic")
    _tiff(tmp_path / "frgb.tif", np.zeros((4, 4, 3), np.float32), sample_format=3, photometric=2)
    _tiff(tmp_path / "ga16.tif", np.zeros((4, 4, 2), np.uint16), sample_format=1, extra=2)
    for name, layout in (("frgb.tif", "3 samples a pixel of 32-bit float, RGB"),
                         ("ga16.tif", "2 samples a pixel of 16-bit unsigned integer, grey with 1 extra sample")):
        with pytest.raises(ImageError) as info:
            read_image(tmp_path / name)
        assert str(info.value) == (f"{tmp_path / name}: a damaged TIFF, or one whose sample layout pillow "
                                   f"cannot decode ({layout})")
        with pytest.raises(ImageError, match=r"^up\.tif: a damaged TIFF, or one whose sample layout"):
            read_image_bytes((tmp_path / name).read_bytes(), "up.tif")
