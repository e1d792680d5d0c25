"""pix2pixHD on onnxruntime: a weights file rewritten after the method loaded it does not put a
graph of the old weights under the new file's hash; the memory guard and the untrained-scale
note apply on both backends; the sidecar and the graph record the weights' name, sha256 and
license, never a user's path."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

import onnx  # noqa: E402

import restorekit.device_memory as device_memory  # noqa: E402
from restorekit.errors import InsufficientMemory  # noqa: E402
from restorekit.onnx_backend import onnx_method  # noqa: E402
from restorekit.onnx_export import export_onnx, find_export_spec, read_sidecar  # noqa: E402
from restorekit.testing.data import smooth_batch  # noqa: E402
from restorekit.weights import get_spec, sha256_file  # noqa: E402
from restorekit_baselines.pix2pixhd import GeneratorConfig, Pix2PixHD, Pix2PixHDGenerator, save_generator  # noqa: E402

CFG = GeneratorConfig(ngf=4, n_downsampling=2, n_blocks=1)


def save(path: Path, seed: int) -> Path:
    torch.manual_seed(seed)
    return save_generator(Pix2PixHDGenerator(CFG), path, factors=[2])


def method(weights: Path | None = None) -> Pix2PixHD:
    m = Pix2PixHD(Pix2PixHD.Options(weights=str(weights) if weights else None))
    m.load()
    return m


def test_weights_rewritten_after_load_do_not_get_the_old_graph(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RESTOREKIT_HOME", str(tmp_path / "home"))
    a, b = save(tmp_path / "a.safetensors", 0), save(tmp_path / "b.safetensors", 1)
    w = tmp_path / "w.safetensors"
    shutil.copy(a, w)
    m = method(w)  # loads A
    shutil.copy(b, w)  # a trainer writes B meanwhile
    # The export of what was loaded (A) does not claim the file's hash now (B's).
    assert find_export_spec(m).metadata["weights_sha256"] is None
    first = onnx_method(m, threads=1).session.path
    assert read_sidecar(first)["weights_sha256"] is None
    # A later run loads B: it gets B's graph, not A's.
    m2 = method(w)
    om = onnx_method(m2, threads=1)
    assert om.session.path != first and read_sidecar(om.session.path)["weights_sha256"] == sha256_file(b)
    lr = smooth_batch(1, 16, 16, seed=2)
    assert float((om.restore(lr, 2) - m2.restore(lr, 2)).abs().max()) < 1e-4


def test_memory_guard_and_scale_note_on_both_backends(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    w = save(tmp_path / "p.safetensors", 0)
    out = tmp_path / "p.onnx"
    export_onnx(find_export_spec(method(w)), out)
    lr = smooth_batch(1, 16, 16, seed=1)
    om = onnx_method(method(w), onnx_path=out, threads=1)
    capsys.readouterr()
    om.restore(lr, 4)  # trained for ×2
    assert "trained for scale(s) [2], not 4" in capsys.readouterr().err
    om.restore(lr, 4)
    assert capsys.readouterr().err == ""  # once per scale, as with torch
    monkeypatch.setattr(device_memory, "available_memory", lambda device: 1 << 10)
    torch_m = method(w)
    for backend in (torch_m, om):
        with pytest.raises(InsufficientMemory, match=r"pix2pixhd at ×4 \(64×64\) needs about .* is available on cpu"):
            backend.restore(lr, 4)


def test_provenance_of_default_and_file_weights(tmp_path: Path) -> None:
    spec = get_spec("pix2pixhd-faces128")
    res = export_onnx(find_export_spec(method()), tmp_path / "d.onnx")
    source = res.info["source"]
    assert (source["weights"], source["weights_file"], source["weights_sha256"], source["license"]) == (
        "pix2pixhd-faces128", "pix2pixhd_faces128.safetensors", spec.file().sha256, spec.license)
    assert res.info["weights_sha256"] == spec.file().sha256
    props = {p.key: p.value for p in onnx.load(str(res.path)).metadata_props}
    assert props["restorekit.weights"] == "pix2pixhd-faces128" and props["restorekit.license"] == spec.license
    assert props["restorekit.weights_sha256"] == spec.file().sha256
    w = save(tmp_path / "mine.safetensors", 0)
    res = export_onnx(find_export_spec(method(w)), tmp_path / "m.onnx")
    source = res.info["source"]
    assert (source["weights"], source["weights_file"], source["weights_sha256"], source["license"]) == (
        "mine.safetensors", "mine.safetensors", sha256_file(w), None)
    assert str(tmp_path) not in json.dumps(res.info)  # no user's path in what is shared with the graph
