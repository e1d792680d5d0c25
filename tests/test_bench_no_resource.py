"""Windows has no ``resource`` module: the benches say memory is not measured instead of failing."""

from __future__ import annotations

import sys

import pytest
import torch


def test_bench_memory_without_resource(monkeypatch: pytest.MonkeyPatch) -> None:
    from restorekit.commands.bench_method import peak_memory_mib

    assert peak_memory_mib(torch.device("cpu")) is not None
    monkeypatch.setitem(sys.modules, "resource", None)  # what `import resource` meets on Windows
    assert peak_memory_mib(torch.device("cpu")) is None
    bench_generator = pytest.importorskip("restorekit_psp_sr.bench_generator")
    assert bench_generator._maxrss_mb() is None
    r = bench_generator.bench_generator(resolution=32, batch=1, device="cpu", channel_max=8, repeats=1,
                                        optimize=False)
    assert r.memory_kind.startswith("not measured")
