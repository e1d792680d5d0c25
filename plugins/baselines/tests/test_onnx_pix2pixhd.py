"""pix2pixHD exported to ONNX: one file with dynamic batch and size matches PyTorch; the
onnxruntime backend of the method matches the torch one (padding and input_size paths)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from click.testing import CliRunner  # noqa: E402

from restorekit.cli import build_cli  # noqa: E402
from restorekit.onnx_backend import OnnxSession, onnx_method  # noqa: E402
from restorekit.onnx_export import read_sidecar  # noqa: E402
from restorekit.testing.data import smooth_batch  # noqa: E402
from restorekit.weights import sha256_file  # noqa: E402
from restorekit_baselines.pix2pixhd import GeneratorConfig, Pix2PixHD, Pix2PixHDGenerator, save_generator  # noqa: E402
from restorekit_baselines.onnx_graph import Pix2PixHDInferenceGraph  # noqa: E402

# One local enhancer: the input pyramid (average pooling) and both generators are in the graph.
CFG = GeneratorConfig(ngf=4, n_downsampling=2, n_blocks=1, n_local_enhancers=1, n_blocks_local=1)


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    gen = Pix2PixHDGenerator(CFG)
    return save_generator(gen, tmp_path_factory.mktemp("w") / "p2p.safetensors", factors=[2])


@pytest.fixture(scope="module")
def exported(weights: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("onnx") / "p2p.onnx"
    res = CliRunner().invoke(build_cli(), ["export", "pix2pixhd", "--weights", str(weights), "--out", str(out),
                                           "--tolerance", "1e-4", "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["precision"] == "float32"
    return out


def method(weights: Path, **opts: object) -> Pix2PixHD:
    m = Pix2PixHD(Pix2PixHD.Options(weights=str(weights), **opts))
    m.load()
    return m


def test_sidecar(exported: Path, weights: Path) -> None:
    side = read_sidecar(exported)
    assert side is not None and side["weights_sha256"] == sha256_file(weights)
    assert side["input"]["shape"] == ["batch", 3, "height", "width"]
    assert side["output"]["shape"] == ["batch", 3, "out_height", "out_width"]
    assert side["spatial_multiple"] == 8 and side["source"]["graph"]["multiple"] == 8
    assert side["source"]["trained"] == {"factors": [2]} and side["max_abs_diff"] <= 1e-4


def test_graph_matches_generator_any_batch_and_size(exported: Path, weights: Path) -> None:
    gen = method(weights).generator
    assert gen is not None
    sess = OnnxSession(exported, threads=1)
    for n, h, w in ((1, 64, 64), (3, 64, 64), (3, 32, 48)):
        x = smooth_batch(n, h, w, seed=n + h)
        with torch.no_grad():
            ref = gen(x).clamp(0, 1)
        got = sess.run(x)
        assert got.shape == (n, 3, h, w)
        assert float((got - ref).abs().max()) < 1e-4
    with torch.no_grad():
        assert torch.equal(Pix2PixHDInferenceGraph(gen)(x), gen(x).clamp(0, 1))


@pytest.mark.parametrize("opts", [{}, {"input_size": 32}, {"consistency_steps": 2}])
def test_backend_restore_matches_torch(exported: Path, weights: Path, opts: dict[str, object]) -> None:
    m = method(weights, **opts)
    om = onnx_method(method(weights, **opts), onnx_path=exported, threads=1)
    # 13 × 2 = 26: padded to 32 (or resized to input_size); 2 × 2 = 4: padded to 16, twice the stride
    for n, size in ((1, 16), (3, 13), (1, 2)):
        lr = smooth_batch(n, size, size, seed=size)
        ref = m.restore(lr, 2)
        got = om.restore(lr, 2)
        assert got.shape == ref.shape == (n, 3, 2 * size, 2 * size)
        assert float((got - ref).abs().max()) < 1e-4
    assert om.last_reports[0]["factors_trained"] == [2] and om.last_reports[0]["backend"] == "onnxruntime"
