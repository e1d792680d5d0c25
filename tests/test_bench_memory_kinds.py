"""`bench method`'s peak memory says what it measures per row, and no ratio is given between
unlike measures: torch and onnxruntime in one process never share a per-side measure."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import ClassVar

import pytest
import torch
from click.testing import CliRunner
from torch import Tensor, nn

from restorekit.cli import build_cli
from restorekit.commands import bench_method
from restorekit.commands.bench_method import (
    MEMORY_KINDS,
    NO_RESOURCE,
    ONNX_CUDA_UNMEASURED,
    memory_kind,
    memory_ratio,
)
from restorekit.interfaces import Method, MethodInfo


def test_each_backend_and_device_is_labelled_with_what_is_measured() -> None:
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert memory_kind(SimpleNamespace(device=cpu)) == "process_peak_rss"
    assert memory_kind(SimpleNamespace(device=cuda)) == "cuda_peak_allocated"  # torch on CUDA
    # onnxruntime on CUDA: torch's allocator never sees its memory (the row read torch's peak before).
    assert memory_kind(SimpleNamespace(device=cuda, run_device="cuda", session=object())) == ONNX_CUDA_UNMEASURED
    # A method on CUDA whose graph onnxruntime runs on the CPU: the CPU's measure, not torch's CUDA peak.
    assert memory_kind(SimpleNamespace(device=cuda, run_device="cpu", session=object())) == "process_peak_rss"
    assert set(MEMORY_KINDS) == {"cuda_peak_allocated", "process_peak_rss"}


def row(backend: str, kind: str, mib: float | None) -> dict[str, object]:
    return {"backend": backend, "memory_kind": kind, "peak_memory_mib": mib}


def test_a_ratio_only_between_figures_of_one_per_side_measure() -> None:
    assert memory_ratio(row("torch", "cuda_peak_allocated", 300.0), row("torch", "cuda_peak_allocated", 200.0)) == (
        1.5, None)
    ratio, why = memory_ratio(row("torch", "cuda_peak_allocated", 300.0),
                              row("onnxruntime", ONNX_CUDA_UNMEASURED, None))
    assert ratio is None and why is not None and "different things" in why and "outside torch's allocator" in why
    ratio, why = memory_ratio(row("torch", "process_peak_rss", 850.0), row("onnxruntime", "process_peak_rss", 850.0))
    assert ratio is None and why == "both figures are process_peak_rss, the whole process's, not each side's own"
    assert memory_ratio(row("torch", NO_RESOURCE, None), row("onnxruntime", NO_RESOURCE, None)) == (
        None, f"both: {NO_RESOURCE}")


class TinyNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 3, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return torch.sigmoid(self.conv(nn.functional.interpolate(x, scale_factor=2, mode="nearest")))


class TinyMem(Method):
    """×2: nearest upsampling and one convolution; exportable to ONNX."""

    info: ClassVar[MethodInfo] = MethodInfo(name="tiny_mem_onnx", summary="test", license="Apache-2.0",
                                            scales=[2], deterministic=True)

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.net = TinyNet().eval()

    def restore(self, lr: Tensor, scale: int, *, seed: int | None = None, n_samples: int = 1) -> Tensor:
        with torch.no_grad():
            return self.net(lr)

    def export_module(self):  # type: ignore[no-untyped-def]
        from restorekit.onnx_export import ExportSpec

        return ExportSpec(self.net, torch.zeros(1, 3, 8, 8), {"method": "tiny_mem_onnx", "weights_sha256": "ee" * 32})


@pytest.fixture
def tiny_registered(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    from restorekit.plugins import registry

    monkeypatch.setenv("RESTOREKIT_HOME", str(tmp_path / "home"))  # the export cache
    reg = registry()
    reg.add("methods", TinyMem.info.name, TinyMem, "test")
    try:
        yield
    finally:
        reg.items["methods"].pop(TinyMem.info.name, None)
        reg.owner["methods"].pop(TinyMem.info.name, None)


def test_torch_and_onnxruntime_rows_on_the_cpu_refuse_a_memory_ratio(tiny_registered: None) -> None:
    args = ["bench", "method", "tiny_mem_onnx", "--scale", "2", "--size", "8", "--batch", "1,2", "--repeat", "1",
            "--warmup", "0", "--device", "cpu", "--backend", "torch,onnxruntime", "--threads", "1"]
    r = CliRunner().invoke(build_cli(), [*args, "--json"])
    assert r.exit_code == 0, r.output
    data = json.loads(r.stdout)
    rows = {(x["backend"], x["batch"]): x for x in data["results"]}
    assert len(rows) == 4 and all(x["memory_kind"] == "process_peak_rss" for x in rows.values())
    assert all(x["peak_memory_mib"] > 0 for x in rows.values())
    assert set(data["backend_ratio"]) == {"1", "2"}  # the speed ratio stays
    assert data["backend_memory_ratio"] == {"1": None, "2": None}
    assert data["backend_memory_note"] == {b: "both figures are process_peak_rss, the whole process's, not each "
                                              "side's own" for b in ("1", "2")}
    # The console labels the column and says once why there is no ratio.
    r = CliRunner().invoke(build_cli(), args)
    assert r.exit_code == 0, r.output
    out = " ".join(r.stdout.split())
    assert "(rss, whole process)" in out
    assert out.count("no peak-memory ratio of torch to onnxruntime (batch 1, 2)") == 1
    assert f"peak MiB (rss, whole process): {' '.join(MEMORY_KINDS['process_peak_rss'].split())}" in out


def test_onnxruntime_on_cuda_is_not_read_from_torchs_allocator(tiny_registered: None,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """A row whose graph runs on onnxruntime's CUDA provider: null, never torch's CUDA peak (which
    holds only the input and output tensors of such a call)."""
    from restorekit.onnx_backend import onnx_method

    om = onnx_method(TinyMem(), threads=1)
    monkeypatch.setattr(type(om.session), "device", property(lambda self: "cuda:0"))
    read: list[str] = []
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda *a: read.append("peak") or 2**30)
    monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats", lambda *a: read.append("reset"))
    (fig,) = bench_method.time_interleaved([(om, torch.rand(1, 3, 8, 8), 2)], 2, warmup=0)
    assert (fig["memory_kind"], fig["peak_memory_mib"]) == (ONNX_CUDA_UNMEASURED, None) and read == []
