"""psp_sr exported to ONNX: one dynamic-batch file matches PyTorch at batch 1 and 3, the
onnxruntime backend of `run` matches the torch one, the static FIR equals upfirdn2d."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from restorekit.cli import build_cli  # noqa: E402
from restorekit.onnx_backend import OnnxBackendError, OnnxSession, onnx_method  # noqa: E402
from restorekit.onnx_export import ExportSpec, export_onnx, find_export_spec, read_sidecar  # noqa: E402
from restorekit.testing.data import smooth_batch  # noqa: E402
from tiny_models import save_tiny, tiny_psp
from restorekit_psp_sr.method import PSPSR, PSPSROptions, save_psp_safetensors  # noqa: E402
from restorekit_psp_sr.onnx_graph import PSPInferenceGraph, StaticFIR  # noqa: E402
from restorekit_psp_sr.ops import upfirdn2d_ref  # noqa: E402




@pytest.fixture(scope="module")
def model_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny(tmp_path_factory.mktemp("model") / "tiny.safetensors", noise_strength=0.3)


@pytest.fixture(scope="module")
def exported(model_file: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`restorekit export psp_sr` of the tiny model (dynamic batch, the default)."""
    out = tmp_path_factory.mktemp("onnx") / "tiny.onnx"
    res = CliRunner().invoke(build_cli(), ["export", "psp_sr", "--weights", str(model_file), "--out", str(out),
                                           "--opt", "impl=ref", "--tolerance", "1e-4", "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["path"] == str(out)
    return out


def make(model_file: Path, **opts: object) -> PSPSR:
    m = PSPSR(PSPSROptions(weights=str(model_file), impl="ref", **opts))
    m.load()
    return m


@pytest.mark.parametrize("up,pad", [(1, (1, 1)), (1, (2, 1)), (1, (0, -1)), (2, (2, 1)), (2, (1, 2)), (2, (3, 3))])
def test_static_fir_equals_upfirdn2d(up: int, pad: tuple[int, int]) -> None:
    x = torch.randn(2, 5, 9, 9, generator=torch.Generator().manual_seed(up + pad[0]))
    k = torch.tensor([1.0, 3.0, 3.0, 1.0])
    k = k / k.sum()
    gain = float(up * up)
    ref = upfirdn2d_ref(x, k, up=up, pad=pad, gain=gain)
    got = StaticFIR(k, 5, up=up, pad=pad, gain=gain)(x)
    assert got.shape == ref.shape
    torch.testing.assert_close(got, ref, rtol=0, atol=1e-6)


def test_graph_module_equals_model_and_leaves_it_alone() -> None:
    model = tiny_psp(noise_strength=0.3)
    graph = PSPInferenceGraph(model)
    x = smooth_batch(3, 32, 32, seed=3)
    with torch.no_grad():
        ref, _ = model(x)
        got = graph(x)
    torch.testing.assert_close(got, ref.clamp(0, 1), rtol=0, atol=1e-5)
    assert model.decoder.convs[0].conv.fused is None  # the export copy was changed, not the model
    assert isinstance(graph.psp.decoder.convs[0].conv.blur, StaticFIR)


def test_fp16_export(tmp_path: Path) -> None:
    """float16 inside the graph (StyleGAN2's addcmul must stay float16), float32 in and out."""
    model = tiny_psp(noise_strength=0.3)
    res = export_onnx(ExportSpec(PSPInferenceGraph(model), torch.full((1, 3, 32, 32), 0.5)), tmp_path / "h.onnx",
                      fp16=True)
    assert res.info["precision"] == "float16" and 0 < res.max_abs_diff < 1e-2
    x = smooth_batch(3, 32, 32, seed=7)
    with torch.no_grad():
        ref, _ = model(x)
    got = OnnxSession(res.path, threads=1).run(x)
    assert got.dtype == torch.float32 and float((got - ref.clamp(0, 1)).abs().max()) < 1e-2


def test_export_sidecar_and_batches(exported: Path, model_file: Path) -> None:
    side = read_sidecar(exported)
    assert side is not None
    m = make(model_file)
    assert side["weights_sha256"] == m.weights_info["sha256"] and side["source"]["method"] == "psp_sr"
    assert side["input"]["shape"] == ["batch", 3, 32, 32] and side["output"]["shape"] == ["batch", 3, 32, 32]
    assert side["source"]["graph"]["input_size"] == 32 and side["max_abs_diff"] <= side["tolerance"] == 1e-4
    sess = OnnxSession(exported, threads=1)
    for n in (1, 3):  # one file, two batch sizes
        x = smooth_batch(n, 32, 32, seed=10 + n)
        with torch.no_grad():
            ref, _ = m.model(x)
        got = sess.run(x)
        assert got.shape == (n, 3, 32, 32)
        assert float((got - ref.clamp(0, 1)).abs().max()) < 1e-4


def test_backend_restore_matches_torch(exported: Path, model_file: Path) -> None:
    m = make(model_file)
    om = onnx_method(make(model_file), onnx_path=exported, threads=1)
    for size, scale in ((16, 2), (8, 4), (12, 3)):  # trained sizes and an off-size input (resized)
        lr = smooth_batch(3, size, size, seed=size)
        ref = m.restore(lr, scale)
        got = om.restore(lr, scale)
        assert got.shape == ref.shape == (3, 3, size * scale, size * scale)
        assert float((got - ref).abs().max()) < 1e-4
    # The consistency steps run after the graph, as in the torch backend.
    lr = smooth_batch(2, 8, 8, seed=9)
    ref = make(model_file, consistency_steps=2).restore(lr, 4)
    got = onnx_method(make(model_file, consistency_steps=2), onnx_path=exported, threads=1).restore(lr, 4)
    assert not torch.allclose(ref, m.restore(lr, 4), atol=1e-3) and float((got - ref).abs().max()) < 1e-4
    native = onnx_method(make(model_file, keep_native_size=True), onnx_path=exported, threads=1)
    assert native.restore(smooth_batch(1, 8, 8), 4).shape == (1, 3, 32, 32)
    with pytest.raises(OnnxBackendError, match="n_samples=2 needs --backend torch"):
        om.restore(smooth_batch(1, 16, 16), 2, n_samples=2)
    # A graph from other weights is refused.
    other = tiny_psp(seed=1, noise_strength=0.3)
    other_file = model_file.parent / "other.safetensors"
    save_psp_safetensors(other, other_file, factors=[1, 2, 4], license="CC0-1.0", name="other")
    with pytest.raises(OnnxBackendError, match="exported from weights sha256"):
        onnx_method(make(other_file), onnx_path=exported)
    assert find_export_spec(m).metadata["weights_sha256"] == m.weights_info["sha256"]


def test_backend_gives_the_torch_backends_detail_note(exported: Path, model_file: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    om = onnx_method(make(model_file), onnx_path=exported, threads=1)
    capsys.readouterr()
    om.restore(smooth_batch(1, 16, 16, seed=2), 2)  # 16 px of a 32-px generator: detail re-drawn
    assert "16-px inputs show more than the prior keeps" in capsys.readouterr().err


def test_cli_run_backends_agree(exported: Path, model_file: Path, tmp_path: Path,
                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RESTOREKIT_HOME", str(tmp_path / "home"))
    src = tmp_path / "in"
    src.mkdir()
    for i in range(2):
        arr = (smooth_batch(1, 16, 16, seed=i)[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
        Image.fromarray(arr).save(src / f"f{i}.png")
    outs = {}
    runs = {"torch": ["--backend", "torch"], "file": ["--backend", "onnxruntime", "--onnx", str(exported)],
            "cache": ["--backend", "onnxruntime"]}
    for key, extra in runs.items():
        out = tmp_path / key
        res = CliRunner().invoke(build_cli(), ["run", "psp_sr", "--scale", "2", "--input", str(src), "--output",
                                               str(out), "--weights", str(model_file), "--opt", "impl=ref",
                                               "--device", "cpu", "--json", *extra])
        assert res.exit_code == 0, res.output
        assert json.loads(res.stdout)["backend"] == extra[1]
        outs[key] = np.stack([np.asarray(Image.open(out / f"f{i}.png"), dtype=np.int16) for i in range(2)])
    # 8-bit outputs: at most one level apart where a value sits on a rounding boundary.
    assert np.abs(outs["file"] - outs["torch"]).max() <= 1
    assert np.abs(outs["cache"] - outs["torch"]).max() <= 1
    cached = list((tmp_path / "home" / "onnx").glob("psp_sr-*.onnx"))
    assert len(cached) == 1 and read_sidecar(cached[0])["weights_sha256"] == make(model_file).weights_info["sha256"]
    res = CliRunner().invoke(build_cli(), ["run", "psp_sr", "--scale", "2", "--input", str(src), "--output",
                                           str(tmp_path / "x"), "--onnx", str(exported)])
    assert res.exit_code == 2 and "--onnx only applies with --backend onnxruntime" in res.output
    # `bench method --backend torch,onnxruntime` times both side by side (reusing the cached export).
    res = CliRunner().invoke(build_cli(), ["bench", "method", "psp_sr", "--weights", str(model_file), "--opt",
                                           "impl=ref", "--device", "cpu", "--backend", "torch,onnxruntime",
                                           "--batch", "1,2", "--repeat", "1", "--warmup", "0", "--threads", "1",
                                           "--json"])
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    assert [(r["backend"], r["batch"], r["threads"]) for r in data["results"]] == [
        ("torch", 1, 1), ("torch", 2, 1), ("onnxruntime", 1, 1), ("onnxruntime", 2, 1)]
    assert set(data["backend_ratio"]) == {"1", "2"} and all(v > 0 for v in data["backend_ratio"].values())
    assert all(r["parts_ms"] == {} for r in data["results"] if r["backend"] == "onnxruntime")
    assert len(list((tmp_path / "home" / "onnx").glob("psp_sr-*.onnx"))) == 1
    res = CliRunner().invoke(build_cli(), ["bench", "method", "psp_sr", "--weights", str(model_file),
                                           "--backend", "tensorrt"])
    assert res.exit_code == 2 and "backends are torch, onnxruntime" in res.output
