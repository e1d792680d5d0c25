"""Reading image files: which formats are decoded, ICC profiles, transparency colour keys, and the
documented limits (16-bit colour, multi-frame files). The ICC profiles are built here, byte by
byte (ICC v2 matrix/TRC), so nothing depends on the system's colour profiles."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import EpsImagePlugin, Image, ImageCms

import restorekit.images as images
from restorekit.errors import ImageError
from restorekit.images import probe_size, read_image, read_image_bytes, save_image


def rgb255(x: torch.Tensor, y: int = 0, xx: int = 0) -> list[float]:
    return (x[0, :, y, xx] * 255).round().tolist()


# -- ICC v2 profiles, written by hand -------------------------------------------------------------

def _s15(v: float) -> bytes:
    return struct.pack(">i", round(v * 65536))


def _xyz(x: float, y: float, z: float) -> bytes:
    return b"XYZ " + bytes(4) + _s15(x) + _s15(y) + _s15(z)


def _curv(gamma: float) -> bytes:
    return b"curv" + bytes(4) + struct.pack(">IH", 1, round(gamma * 256)) + bytes(2)


def _desc(text: str) -> bytes:
    t = text.encode("ascii") + b"\0"
    return b"desc" + bytes(4) + struct.pack(">I", len(t)) + t + bytes(4 + 4 + 2 + 1 + 67)


def icc_profile(space: str, tags: list[tuple[bytes, bytes]]) -> bytes:
    """A display-class ICC v2 profile of colour ``space`` (b"RGB " or b"GRAY") holding ``tags``."""
    tags = [(b"desc", _desc("restorekit test")), (b"wtpt", _xyz(0.9642, 1.0, 0.8249))] + tags
    offset = 128 + 4 + 12 * len(tags)
    table = data = b""
    for sig, body in tags:
        data += bytes(-(offset + len(data)) % 4)
        table += sig + struct.pack(">II", offset + len(data), len(body))
        data += body
    body = struct.pack(">I", len(tags)) + table + data
    header = (struct.pack(">I", 128 + len(body)) + b"lcms" + bytes([2, 0x10, 0, 0]) + b"mntr" + space + b"XYZ "
              + bytes(12) + b"acsp" + b"APPL" + bytes(12) + bytes(8) + bytes(4)
              + _s15(0.9642) + _s15(1.0) + _s15(0.8249) + bytes(4) + bytes(16) + bytes(28))
    assert len(header) == 128
    return header + body


# Display P3's primaries adapted to D50 (as Apple's profile has them), with a 2.2 gamma.
P3_PRIMARIES = ((0.515121, 0.241196, -0.001053), (0.291977, 0.692245, 0.041885), (0.157104, 0.066574, 0.784073))


def display_p3() -> bytes:
    r, g, b = P3_PRIMARIES
    return icc_profile(b"RGB ", [(b"rXYZ", _xyz(*r)), (b"gXYZ", _xyz(*g)), (b"bXYZ", _xyz(*b)),
                                 (b"rTRC", _curv(2.2)), (b"gTRC", _curv(2.2)), (b"bTRC", _curv(2.2))])


def linear_gray() -> bytes:
    return icc_profile(b"GRAY", [(b"kTRC", _curv(1.0))])


SRGB = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()


# -- 3. ICC profiles -------------------------------------------------------------------------------------

@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "TIFF", "WEBP"])
def test_a_display_p3_red_is_converted_to_srgb_not_read_as_srgb_numbers(tmp_path, fmt, capsys):
    """(230, 40, 40) in Display P3 is a red more saturated than sRGB's (230, 40, 40): read as it is,
    it would come out visibly duller. Converted (relative colorimetric), red rises and green falls."""
    path = tmp_path / f"red.{fmt.lower()}"
    extra = {"quality": 100} if fmt in ("JPEG", "WEBP") else {}
    if fmt == "WEBP":
        extra["lossless"] = True
    Image.new("RGB", (8, 8), (230, 40, 40)).save(path, fmt, icc_profile=display_p3(), **extra)
    r, g, b = rgb255(read_image(path))
    expected = ImageCms.applyTransform(
        Image.new("RGB", (1, 1), (230, 40, 40)),
        ImageCms.buildTransform(ImageCms.ImageCmsProfile(io.BytesIO(display_p3())), ImageCms.createProfile("sRGB"),
                                "RGB", "RGB", renderingIntent=ImageCms.Intent.RELATIVE_COLORIMETRIC)).getpixel((0, 0))
    assert r > 245 and g < 15 and b < 20, (r, g, b)
    assert max(abs(a - e) for a, e in zip((r, g, b), expected)) <= (1 if fmt != "JPEG" else 3)
    assert capsys.readouterr().err == ""


def test_an_srgb_profile_changes_nothing_and_alpha_still_composites(tmp_path):
    arr = np.random.default_rng(0).integers(0, 256, (6, 7, 3), dtype=np.uint8)
    Image.fromarray(arr).save(tmp_path / "s.png", icc_profile=SRGB)
    got = (read_image(tmp_path / "s.png")[0].permute(1, 2, 0).numpy() * 255).round()
    assert np.abs(got - arr).max() <= 1
    rgba = Image.new("RGBA", (4, 4), (230, 40, 40, 0))
    rgba.putpixel((1, 0), (230, 40, 40, 255))
    rgba.save(tmp_path / "a.png", icc_profile=display_p3())
    x = read_image(tmp_path / "a.png")
    assert rgb255(x) == [255, 255, 255]  # transparent: white, after the conversion too
    assert rgb255(x, 0, 1)[0] > 245 and rgb255(x, 0, 1)[1] < 15


def test_a_grayscale_profile_is_applied(tmp_path):
    """A linear-light gray 50/255 is sRGB ≈ 122/255."""
    Image.new("L", (4, 4), 50).save(tmp_path / "g.png", icc_profile=linear_gray())
    assert rgb255(read_image(tmp_path / "g.png")) == [122, 122, 122]


def test_a_palette_image_is_converted_through_its_profile(tmp_path):
    pal = Image.new("P", (4, 4), 0)
    pal.putpalette([230, 40, 40] * 256)
    pal.save(tmp_path / "p.png", icc_profile=display_p3())
    r, g, _ = rgb255(read_image(tmp_path / "p.png"))
    assert r > 245 and g < 15


@pytest.mark.parametrize("profile,why", [(b"not a profile" * 20, "damaged"), ("p3-on-gray", "does not fit")])
def test_a_profile_that_cannot_be_used_is_one_warning_and_the_pixels_are_taken_as_srgb(tmp_path, capsys,
                                                                                          profile, why):
    if profile == "p3-on-gray":
        img, profile = Image.new("L", (4, 4), 50), display_p3()
    else:
        img = Image.new("RGB", (4, 4), (230, 40, 40))
    path = tmp_path / "broken.png"
    img.save(path, icc_profile=profile)
    want = [230, 40, 40] if img.mode == "RGB" else [50, 50, 50]
    assert rgb255(read_image(path)) == want
    assert rgb255(read_image(path)) == want
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"warning: {path}: its ICC profile") and why in lines[0]
    assert "taken as sRGB" in lines[0]


def test_outputs_are_untagged_srgb(tmp_path):
    Image.new("RGB", (4, 4), (230, 40, 40)).save(tmp_path / "in.png", icc_profile=display_p3())
    out = save_image(read_image(tmp_path / "in.png"), tmp_path / "out.png")
    with Image.open(out) as im:
        assert "icc_profile" not in im.info and im.getpixel((0, 0))[0] > 245


# -- 2. formats: raster formats pillow decodes itself, whatever the extension ---------------------------------

EPS = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 8 8\n0 0 moveto 8 8 lineto stroke\nshowpage\n%%EOF\n"


@pytest.mark.parametrize("reader", [read_image, probe_size])
def test_an_eps_file_named_png_never_reaches_ghostscript(tmp_path, monkeypatch, reader):
    calls = []
    monkeypatch.setattr(EpsImagePlugin, "Ghostscript", lambda *a, **k: calls.append(a) or (_ for _ in ()).throw(
        AssertionError("Ghostscript called")))
    monkeypatch.setattr(EpsImagePlugin.EpsImageFile, "_open",
                        lambda self: calls.append("eps") or (_ for _ in ()).throw(AssertionError("EPS plugin opened")))
    path = tmp_path / "face.png"
    path.write_bytes(EPS)
    with pytest.raises(ImageError) as info:
        reader(path)
    msg = str(info.value)
    assert msg.startswith(f"{path}: its format is EPS, which is not read here") and "PNG, JPEG" in msg
    assert "\n" not in msg and calls == []


def test_other_formats_are_refused_by_name_and_the_allowed_ones_are_read(tmp_path):
    Image.new("RGB", (8, 8), (10, 20, 30)).save(tmp_path / "x.png", "PCX")  # a PCX file named .png
    with pytest.raises(ImageError, match=r"x\.png: its format is PCX, which is not read here"):
        read_image(tmp_path / "x.png")
    (tmp_path / "doc.jpg").write_bytes(b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<<>>\nendobj\n")
    with pytest.raises(ImageError, match=r"doc\.jpg: its format is PDF"):
        read_image(tmp_path / "doc.jpg")
    (tmp_path / "notes.png").write_bytes(b"just some notes\n" * 4)
    with pytest.raises(ImageError, match=r"notes\.png: not a readable image"):
        read_image(tmp_path / "notes.png")
    for fmt, name in [("PPM", "a.ppm"), ("TGA", "a.tga"), ("BMP", "a.bmp"), ("GIF", "a.gif"), ("ICO", "a.ico"),
                      ("TIFF", "a.tif"), ("WEBP", "a.webp"), ("JPEG2000", "a.jp2")]:
        assert fmt in images.FILE_FORMATS
        Image.new("RGB", (16, 16), (200, 100, 50)).save(tmp_path / name, fmt)
        assert read_image(tmp_path / name).shape == (1, 3, 16, 16), fmt
    first, second = Image.new("RGB", (16, 16), (200, 0, 0)), Image.new("RGB", (16, 16), (0, 0, 200))
    first.save(tmp_path / "phone.jpg", "MPO", save_all=True, append_images=[second], quality=95)
    assert rgb255(read_image(tmp_path / "phone.jpg"))[0] > 180  # the JPEGs many phones write (MPO)


def test_uploads_keep_their_own_list_and_name_what_they_are():
    with pytest.raises(ImageError, match=r"^x\.eps: its format is EPS, which is not read here \(image files may be "
                                         r"PNG, JPEG, WEBP, BMP, TIFF, GIF\)$"):
        read_image_bytes(EPS, "x.eps")
    with pytest.raises(ImageError, match=r"^notes\.txt: not an image in a format read here \(PNG, JPEG, WEBP, BMP, "
                                         r"TIFF, GIF\)$"):
        read_image_bytes(b"just some notes\n", "notes.txt")
    damaged = b"\x89PNG\r\n\x1a\n" + b"\x00" * 40
    with pytest.raises(ImageError, match=r"^cut\.png: (a damaged or unreadable PNG file|corrupt or truncated)"):
        read_image_bytes(damaged, "cut.png")


# -- 6. transparency colour keys (tRNS) ----------------------------------------------------------------------

@pytest.mark.parametrize("mode,key,other", [("L", 7, 0), ("RGB", (10, 20, 30), (0, 0, 0)), ("I;16", 700, 0)])
def test_a_transparency_colour_key_is_composited_over_white(tmp_path, mode, key, other):
    img = Image.new(mode, (2, 2), key)
    img.putpixel((1, 0), other)
    img.save(tmp_path / "k.png", transparency=key)
    with Image.open(tmp_path / "k.png") as im:
        assert im.mode == mode and "transparency" in im.info
    x = read_image(tmp_path / "k.png")
    assert x[0, :, 0, 0].tolist() == [1.0, 1.0, 1.0]  # the keyed pixel: transparent → white
    assert x[0, :, 0, 1].tolist() == [0.0, 0.0, 0.0]  # the others as they are


def test_a_gif_with_a_transparent_index_is_composited_over_white(tmp_path):
    pal = Image.new("P", (2, 2), 1)
    pal.putpalette([0, 0, 0, 200, 10, 10] + [0] * 762)
    pal.putpixel((1, 0), 0)
    pal.save(tmp_path / "t.gif", transparency=1)
    x = read_image(tmp_path / "t.gif")
    assert rgb255(x) == [255, 255, 255] and rgb255(x, 0, 1) == [0, 0, 0]


# -- 7, 9. documented limits: 16-bit colour is 8-bit by pillow; multi-frame files give their first frame --------

def _png_rgb16(arr: np.ndarray, path: Path, key: tuple[int, int, int] | None = None) -> None:
    """A 48-bit PNG (bit depth 16, colour type 2) of ``arr`` (H×W×3 uint16), with a ``tRNS``
    transparency key of 16-bit samples when ``key`` is given."""
    h, w, _ = arr.shape
    raw = b"".join(b"\0" + arr[y].astype(">u2").tobytes() for y in range(h))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    trns = chunk(b"tRNS", struct.pack(">HHH", *key)) if key is not None else b""
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0))
                     + trns + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


@pytest.mark.parametrize("key,keyed,other,want", [
    # a key <= 255 a sample: pillow's 8-bit pixels (0,0,0) would match it instead of the keyed ones
    ((0, 0, 0x00FF), (0, 0, 0x00FF), (0, 0, 0xFFFF), ([0, 0, 0], [0, 0, 255])),
    # a key > 255: it never matches an 8-bit pixel
    ((0x1234, 0x5678, 0x9ABC), (0x1234, 0x5678, 0x9ABC), (0xFFFF, 0x5678, 0x9ABC), ([18, 86, 154], [255, 86, 154])),
])
def test_a_16_bit_colour_key_is_not_applied_the_pixels_are_opaque_with_one_warning(tmp_path, capsys, key, keyed,
                                                                                     other, want):
    arr = np.zeros((16, 16, 3), np.uint16)
    arr[:, :8] = keyed
    arr[:, 8:] = other
    _png_rgb16(arr, tmp_path / "k16.png", key=key)
    with Image.open(tmp_path / "k16.png") as im:
        assert im.mode == "RGB" and im.info["transparency"] == key  # pillow: 8-bit pixels, 16-bit key
    for _ in range(2):
        x = read_image(tmp_path / "k16.png")
        assert rgb255(x, 0, 0) == want[0] and rgb255(x, 0, 15) == want[1]  # no pixel turned white
    err = capsys.readouterr().err
    assert err.count("warning:") == 1 and f"{tmp_path / 'k16.png'}: its transparency colour key is not applied" in err


def test_a_damaged_file_of_an_allowed_format_is_called_damaged_not_refused(tmp_path):
    (tmp_path / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 4) + b"tEXta b\x00\x00" + bytes(20))
    (tmp_path / "bad.gif").write_bytes(b"GIF89a" + bytes(10))
    for name, fmt in (("bad.png", "PNG"), ("bad.gif", "GIF")):
        with pytest.raises(ImageError) as info:
            read_image(tmp_path / name)
        msg = str(info.value)
        assert msg.startswith(f"{tmp_path / name}: a damaged or unreadable {fmt} file"), msg
        assert "not read here" not in msg


def test_warnings_escape_unprintable_characters_in_the_file_name(tmp_path, capsys):
    name = "a\x1b]0;pwned\x07\nwarning: forged.png"
    arr = np.zeros((16, 16, 3), np.uint16)
    _png_rgb16(arr, tmp_path / name, key=(0, 0, 0x00FF))
    read_image(tmp_path / name)
    err = capsys.readouterr().err
    assert "\x1b" not in err and "\x07" not in err and err.count("\n") == 1
    assert "a\\x1b]0;pwned\\x07\\nwarning: forged.png: its transparency colour key" in err


def test_16_bit_colour_is_read_as_its_high_byte_as_the_readme_says(tmp_path):
    arr = np.array([[[3257, 65535, 255]]], dtype=np.uint16)
    _png_rgb16(np.repeat(np.repeat(arr, 2, 0), 2, 1), tmp_path / "c16.png")
    assert rgb255(read_image(tmp_path / "c16.png")) == [12, 255, 0]  # 3257 >> 8, 65535 >> 8, 255 >> 8
    g16 = np.full((2, 2), 3257, np.uint16)
    Image.fromarray(g16).save(tmp_path / "g16.png")
    assert read_image(tmp_path / "g16.png")[0, 0, 0, 0].item() == pytest.approx(3257 / 65535, abs=1e-7)


def test_a_multi_frame_file_gives_its_first_frame(tmp_path):
    frames = [Image.new("RGB", (8, 8), c) for c in ((250, 0, 0), (0, 0, 250))]
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:])
    frames[0].save(tmp_path / "pages.tif", save_all=True, append_images=frames[1:])
    frames[0].save(tmp_path / "anim.png", save_all=True, append_images=frames[1:])
    for name in ("anim.gif", "pages.tif", "anim.png"):
        r, _, b = rgb255(read_image(tmp_path / name))
        assert r > 200 and b < 50, name


def test_the_readme_states_the_rules():
    text = (Path(images.__file__).parents[1] / "README.md").read_text(encoding="utf-8")
    section = text[text.index("## The image convention"):text.index("## Commands")]
    for phrase in ("relative colorimetric", "ICC profile", "untagged", "16-bit *colour*", "truncates",
                   "first frame", "transparency colour key", "never EPS"):
        assert phrase in section, phrase
    assert "16-bit data\nis scaled by 1/65535" not in text


def test_an_upload_in_a_format_without_a_signature_is_named_for_what_it_is():
    """A TGA (no magic bytes) was named CUR, whose weak signature check answered first."""
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (10, 20, 30)).save(buf, "TGA")
    with pytest.raises(ImageError, match=r"^t\.tga: its format is TGA, which is not read here"):
        read_image_bytes(buf.getvalue(), "t.tga")
