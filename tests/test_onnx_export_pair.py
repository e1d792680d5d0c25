"""A failed ``export_onnx(..., overwrite=True)`` leaves the previous graph and sidecar as they were
(it used to put the new graph in place first and, when the sidecar's rename failed, delete it:
the old graph gone, its sidecar describing nothing)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import Tensor, nn

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from restorekit import onnx_export  # noqa: E402
from restorekit.errors import FileSystemError  # noqa: E402
from restorekit.onnx_export import ExportSpec, export_onnx, sidecar_path  # noqa: E402
from restorekit.safe_open import Folder  # noqa: E402


class Net(nn.Module):
    """[0,1] → [0,1]: one conv and a sigmoid; ``bias`` makes two exports differ."""

    def __init__(self, bias: float) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.a = nn.Conv2d(3, 3, 3, padding=1)
        with torch.no_grad():
            self.a.bias.fill_(bias)

    def forward(self, x: Tensor) -> Tensor:
        return torch.sigmoid(self.a(x))


def spec(bias: float) -> ExportSpec:
    return ExportSpec(Net(bias).eval(), torch.full((1, 3, 8, 8), 0.5), metadata={"method": "pair"})


def _old_pair(tmp_path: Path) -> tuple[Path, bytes, bytes]:
    out = tmp_path / "m.onnx"
    export_onnx(spec(0.0), out)
    return out, out.read_bytes(), sidecar_path(out).read_bytes()


def _fail_on_sidecar(monkeypatch: pytest.MonkeyPatch, real: Any, exc: OSError) -> None:
    def replace(self: Folder, src: str, dst: str) -> None:
        if dst.endswith(".onnx.json"):
            raise exc
        real(self, src, dst)

    monkeypatch.setattr(Folder, "replace", replace)


@pytest.mark.parametrize("exc", [PermissionError(1, "Operation not permitted"),
                                 IsADirectoryError(21, "Is a directory")])
def test_a_failed_sidecar_rename_puts_the_previous_graph_back(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                              exc: OSError) -> None:
    out, graph, side = _old_pair(tmp_path)
    _fail_on_sidecar(monkeypatch, Folder.replace, exc)
    with pytest.raises(FileSystemError, match="m.onnx.json"):
        export_onnx(spec(0.5), out, overwrite=True)
    assert out.read_bytes() == graph and sidecar_path(out).read_bytes() == side
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx", "m.onnx.json"]  # nothing hidden left
    assert onnx_export.sidecar_problem(out, onnx_export.read_sidecar(out)) is None


def test_without_hard_links_the_graph_is_still_put_back(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Where the file system has no hard links, the old graph is renamed aside, then back."""
    out, graph, side = _old_pair(tmp_path)

    def no_link(*args: Any, **kwargs: Any) -> None:
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(os, "link", no_link)
    _fail_on_sidecar(monkeypatch, Folder.replace, PermissionError(1, "Operation not permitted"))
    with pytest.raises(FileSystemError):
        export_onnx(spec(0.5), out, overwrite=True)
    assert out.read_bytes() == graph and sidecar_path(out).read_bytes() == side
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx", "m.onnx.json"]


def test_a_sidecar_that_cannot_be_written_replaces_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Both files are written before either is renamed: a sidecar write that fails leaves the old graph."""
    out, graph, side = _old_pair(tmp_path)
    real = onnx_export.write_via_temp

    def write(path: Path, *args: Any, **kwargs: Any) -> None:
        if "onnx.json" in path.name:
            raise OSError(28, "No space left on device")
        real(path, *args, **kwargs)

    monkeypatch.setattr(onnx_export, "write_via_temp", write)
    with pytest.raises(FileSystemError, match="m.onnx.json"):
        export_onnx(spec(0.5), out, overwrite=True)
    assert out.read_bytes() == graph and sidecar_path(out).read_bytes() == side
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx", "m.onnx.json"]


def test_a_new_pair_replaces_the_old_one_and_a_first_export_leaves_nothing_on_failure(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out, graph, _ = _old_pair(tmp_path)
    res = export_onnx(spec(0.5), out, overwrite=True)
    assert out.read_bytes() != graph and onnx_export.sha256_file(out) == res.info["sha256"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx", "m.onnx.json"]
    _fail_on_sidecar(monkeypatch, Folder.replace, PermissionError(1, "Operation not permitted"))
    fresh = tmp_path / "sub" / "m.onnx"
    with pytest.raises(FileSystemError):
        export_onnx(spec(0.5), fresh, overwrite=True)
    assert list(fresh.parent.iterdir()) == []
