"""restorekit.onnx_export / onnx_backend on a tiny network: atomic checked export, sidecar,
dynamic batch, failure leaves nothing behind, exporter discovery, the onnxruntime method wrapper."""

from __future__ import annotations

import json
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import Tensor, nn

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from restorekit import onnx_export  # noqa: E402
from restorekit.errors import FileSystemError  # noqa: E402
from restorekit.interfaces import Method, MethodInfo  # noqa: E402
from restorekit.onnx_backend import OnnxBackendError, OnnxMethod, OnnxSession, cache_path, onnx_method  # noqa: E402
from restorekit.onnx_export import (  # noqa: E402
    Exportable,
    ExportSpec,
    OnnxExportError,
    export_onnx,
    find_export_spec,
    read_sidecar,
)


class TinyNet(nn.Module):
    """[0,1] → [0,1]: conv, leaky ReLU, conv, sigmoid, ×2 nearest upsampling."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.a = nn.Conv2d(3, 8, 3, padding=1)
        self.b = nn.Conv2d(8, 3, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        y = torch.sigmoid(self.b(nn.functional.leaky_relu(self.a(x * 2 - 1), 0.2)))
        return nn.functional.interpolate(y, scale_factor=2, mode="nearest")


def spec(dynamic_spatial: bool = False, **meta: object) -> ExportSpec:
    return ExportSpec(TinyNet().eval(), torch.full((1, 3, 16, 16), 0.5),
                      metadata={"method": "tiny", "weights_sha256": "ab" * 32, **meta},
                      dynamic_spatial=dynamic_spatial)


def test_export_sidecar_and_dynamic_batch(tmp_path: Path) -> None:
    out = tmp_path / "tiny.onnx"
    messages: list[str] = []
    res = export_onnx(spec(), out, opset=17, log=messages.append)
    assert out.is_file() and res.sidecar == tmp_path / "tiny.onnx.json"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny.onnx", "tiny.onnx.json"]  # no temp files left
    side = read_sidecar(out)
    assert side is not None and side == json.loads(res.sidecar.read_text())
    assert side["format"] == "restorekit.onnx/1" and side["opset"] == 17 and side["precision"] == "float32"
    assert side["weights_sha256"] == "ab" * 32 and side["source"]["method"] == "tiny"
    assert side["input"] == {"name": "image", "shape": ["batch", 3, 16, 16], "dtype": "float32", "range": [0, 1],
                             "layout": "NCHW RGB"}
    assert side["output"]["name"] == "restored" and side["output"]["shape"] == ["batch", 3, 32, 32]
    assert side["dynamic_axes"] == {"image": {"0": "batch"}, "restored": {"0": "batch"}}
    assert side["tolerance"] == onnx_export.DEFAULT_TOLERANCE and 0 <= side["max_abs_diff"] <= 1e-5
    assert side["check_batch"] == 2 and side["versions"]["restorekit"]
    assert len(side["sha256"]) == 64 and "max |onnxruntime − PyTorch|" in messages[0]
    net = TinyNet().eval()
    sess = OnnxSession(out, threads=1)
    assert sess.input_shape == (None, 3, 16, 16) and sess.providers == ["CPUExecutionProvider"]
    for n in (1, 3):
        x = torch.rand(n, 3, 16, 16, generator=torch.Generator().manual_seed(n))
        with torch.no_grad():
            ref = net(x)
        got = sess.run(x)
        assert got.shape == (n, 3, 32, 32)
        assert float((got - ref).abs().max()) < 1e-4
    with pytest.raises(OnnxBackendError, match="takes 16×16 inputs, got 8×8"):
        sess.run(torch.rand(1, 3, 8, 8))


def test_fixed_batch_runs_row_by_row_and_dynamic_spatial(tmp_path: Path) -> None:
    fixed = export_onnx(spec(), tmp_path / "fixed.onnx", dynamic_batch=False).path
    assert read_sidecar(fixed)["input"]["shape"] == [1, 3, 16, 16]
    x = torch.rand(3, 3, 16, 16, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        ref = TinyNet().eval()(x)
    assert float((OnnxSession(fixed, threads=1).run(x) - ref).abs().max()) < 1e-4
    spatial = export_onnx(spec(dynamic_spatial=True), tmp_path / "spatial.onnx").path
    side = read_sidecar(spatial)
    assert side["input"]["shape"] == ["batch", 3, "height", "width"]
    x = torch.rand(2, 3, 12, 20, generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        ref = TinyNet().eval()(x)
    got = OnnxSession(spatial, threads=1).run(x)
    assert got.shape == (2, 3, 24, 40) and float((got - ref).abs().max()) < 1e-4


def test_failed_check_leaves_no_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real = onnx_export.run_onnxruntime
    monkeypatch.setattr(onnx_export, "run_onnxruntime", lambda path, x, threads=1: real(path, x) + 0.01)
    out = tmp_path / "bad.onnx"
    with pytest.raises(OnnxExportError, match=r"differs from PyTorch by 0\.01.*no file written"):
        export_onnx(spec(), out)
    assert list(tmp_path.iterdir()) == []
    # An existing file is kept as it was when a re-export fails.
    out.write_bytes(b"old")
    with pytest.raises(OnnxExportError):
        export_onnx(spec(), out, tolerance=1e-3)
    assert out.read_bytes() == b"old" and sorted(p.name for p in tmp_path.iterdir()) == ["bad.onnx"]


def test_zero_tolerance_and_untraceable_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real = onnx_export.run_onnxruntime
    monkeypatch.setattr(onnx_export, "run_onnxruntime", lambda path, x, threads=1: real(path, x) + 1e-6)
    with pytest.raises(OnnxExportError, match=r"tolerance 0\)"):
        export_onnx(spec(), tmp_path / "zero.onnx", tolerance=0)

    class Broken(nn.Module):
        def forward(self, x: Tensor) -> Tensor:
            raise RuntimeError("cannot trace this")

    with pytest.raises(OnnxExportError, match="torch.onnx.export failed: cannot trace this"):
        export_onnx(ExportSpec(Broken(), torch.zeros(1, 3, 8, 8)), tmp_path / "broken.onnx")
    assert list(tmp_path.iterdir()) == []


def test_fp16_graph_keeps_float32_io(tmp_path: Path) -> None:
    res = export_onnx(spec(), tmp_path / "half.onnx", fp16=True)
    assert res.info["precision"] == "float16" and res.tolerance == onnx_export.DEFAULT_TOLERANCE_FP16
    assert 0 < res.max_abs_diff < 1e-2  # half precision: close, not equal
    out = OnnxSession(res.path, threads=1).run(torch.rand(2, 3, 16, 16))
    assert out.dtype == torch.float32 and out.shape == (2, 3, 32, 32)

    class AddCMul(nn.Module):  # the TorchScript exporter's own addcmul would cast to float32
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 3, 1)

        def forward(self, x: Tensor) -> Tensor:
            return torch.addcmul(x, self.conv(x), x, value=0.5).clamp(0, 1)

    res = export_onnx(ExportSpec(AddCMul(), torch.zeros(1, 3, 8, 8)), tmp_path / "addcmul.onnx", fp16=True)
    assert res.max_abs_diff < 1e-2
    # The float16 override is gone afterwards: a float32 export is exact again.
    assert export_onnx(ExportSpec(AddCMul(), torch.zeros(1, 3, 8, 8)), tmp_path / "f32.onnx").max_abs_diff < 1e-6


class TinyMethod(Method):
    """×2 nearest upsampling through TinyNet; implements the Exportable protocol."""

    info = MethodInfo(name="tiny_onnx", summary="test")

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.net = TinyNet().eval()
        self.prepared = 0

    def restore(self, lr: Tensor, scale: int, *, seed: int | None = None, n_samples: int = 1) -> Tensor:
        with torch.no_grad():
            return self.net(nn.functional.interpolate(lr, size=(16, 16), mode="bilinear")).clamp(0, 1)

    def export_module(self) -> ExportSpec:
        def prepare(lr: Tensor, scale: int) -> Tensor:
            self.prepared += 1
            return nn.functional.interpolate(lr, size=(16, 16), mode="bilinear")

        return ExportSpec(self.net, torch.zeros(1, 3, 16, 16), {"weights_sha256": "cd" * 32},
                          prepare=prepare, finish=lambda y, lr, scale: y.clamp(0, 1))


def test_onnx_method_matches_torch_and_caches(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RESTOREKIT_HOME", str(tmp_path / "home"))
    m = TinyMethod()
    assert isinstance(m, Exportable)
    om = onnx_method(m, threads=1)
    path = cache_path(find_export_spec(m), "tiny_onnx", method_module=TinyMethod.__module__)
    assert om.session.path == path and path.parent == tmp_path / "home" / "onnx"
    assert path.name.startswith("tiny_onnx-" + "cd" * 8) and read_sidecar(path) is not None
    lr = torch.rand(3, 3, 10, 10, generator=torch.Generator().manual_seed(1))
    out = om.restore(lr, 2)
    assert float((out - m.restore(lr, 2)).abs().max()) < 1e-4 and m.prepared == 1
    assert om.info.name == "tiny_onnx" and om.backend == "onnxruntime" and om.precision == "float32"
    assert om.last_reports == [{"backend": "onnxruntime"}] * 3 and om.bench_parts is None
    # Deterministic methods repeat their single output for n_samples.
    assert torch.equal(om.restore(lr[:1], 2, n_samples=2), out[:1].repeat(2, 1, 1, 1))
    # ... and check n_samples and seed as the torch backend does (n_samples=0 gave one output).
    for bad, said in (({"n_samples": 0}, "n_samples must be a positive integer"), ({"seed": -1}, "seed must be None")):
        with pytest.raises(ValueError, match=f"tiny_onnx: {said}"):
            om.restore(lr[:1], 2, **bad)
    # The second time the cached export is used as it is.
    monkeypatch.setattr("restorekit.onnx_backend.export_onnx", lambda *a, **k: pytest.fail("exported again"))
    assert isinstance(onnx_method(TinyMethod(), threads=1), OnnxMethod)
    # --onnx with a graph exported from other weights is refused.
    other = TinyMethod()
    other.export_module = lambda: ExportSpec(other.net, torch.zeros(1, 3, 16, 16),  # type: ignore[method-assign]
                                             {"weights_sha256": "ef" * 32})
    with pytest.raises(OnnxBackendError, match="exported from weights sha256 cdcd"):
        onnx_method(other, onnx_path=path)


def test_concurrent_first_uses_export_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Processes (here threads, each with its own lock file handle) that find no cached export
    wait for the first one's export instead of making their own (torchrun ranks on one machine)."""
    import threading
    import time

    import restorekit.onnx_backend as backend

    monkeypatch.setenv("RESTOREKIT_HOME", str(tmp_path / "home"))
    real, calls = backend.export_onnx, []

    def slow_export(*args: Any, **kwargs: Any) -> Any:
        calls.append(threading.get_ident())
        time.sleep(0.3)  # every other caller arrives while this one exports
        return real(*args, **kwargs)

    monkeypatch.setattr(backend, "export_onnx", slow_export)
    results: list[Any] = []
    # Built before the threads start: TinyNet seeds torch's one global generator, which threads
    # building at once would share (processes, which these stand for, each have their own), and
    # networks of other weights rightly get other exports.
    methods = [TinyMethod() for _ in range(3)]
    threads = [threading.Thread(target=lambda m=m: results.append(onnx_method(m, threads=1))) for m in methods]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(calls) == 1 and len(results) == 3
    assert len({r.session.path for r in results}) == 1


def test_registry_free_lookup(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pkg = tmp_path / "onnxlookup_pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "methods.py").write_text(textwrap.dedent("""
        from restorekit.interfaces import Method, MethodInfo

        class Found(Method):
            info = MethodInfo(name="found", summary="x")
            def restore(self, lr, scale, *, seed=None, n_samples=1):
                return lr

        class Missing(Method):
            info = MethodInfo(name="missing", summary="x")
            def restore(self, lr, scale, *, seed=None, n_samples=1):
                return lr
        """))
    (pkg / "onnx_graph.py").write_text(textwrap.dedent("""
        import torch
        from restorekit.onnx_export import ExportSpec
        ONNX_EXPORTERS = {"found": lambda m: ExportSpec(torch.nn.Identity(), torch.zeros(1, 3, 4, 4), {"by": "lookup"})}
        """))
    monkeypatch.syspath_prepend(str(tmp_path))
    from onnxlookup_pkg.methods import Found, Missing  # type: ignore[import-not-found]

    assert find_export_spec(Found()).metadata["by"] == "lookup"
    with pytest.raises(OnnxExportError, match=r"'missing' cannot be exported.*exports: found"):
        find_export_spec(Missing())
    with pytest.raises(OnnxExportError, match="has no export_module\\(\\) and its package has no"):
        find_export_spec(TinyMethodNoExport())
    sys.modules.pop("onnxlookup_pkg.onnx_graph", None)


class TinyMethodNoExport(Method):
    info = MethodInfo(name="noexport", summary="x")

    def restore(self, lr: Tensor, scale: int, *, seed: int | None = None, n_samples: int = 1) -> Tensor:
        return lr


def test_exports_eval_mode_and_restores_training_mode(tmp_path: Path) -> None:
    torch.manual_seed(1)
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.Conv2d(4, 3, 1), nn.Sigmoid())
    with torch.no_grad():
        net[1].running_mean.uniform_(-0.5, 0.5)
        net[1].running_var.uniform_(0.5, 2.0)
    net.train()
    res = export_onnx(ExportSpec(net, torch.zeros(1, 3, 8, 8)), tmp_path / "bn.onnx", tolerance=1e-5)
    assert net.training and net[1].training  # the caller's module is left in the mode it was in
    x = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        ref = net.eval()(x)  # inference uses the running statistics
    assert float((OnnxSession(res.path, threads=1).run(x) - ref).abs().max()) < 1e-5


def test_an_opset_the_exporter_lacks_is_one_line_and_prints_nothing(tmp_path: Path,
                                                                     capfd: pytest.CaptureFixture[str]) -> None:
    """torch's TorchScript exporter prints its whole IR graph on stdout (from C++) before it raises
    for an opset it does not know, which buried the one-line error and broke `export --json`."""
    from torch.onnx import _constants

    top = int(_constants.ONNX_MAX_OPSET)
    capfd.readouterr()
    for bad in (top + 1, 30, 6):
        with pytest.raises(OnnxExportError) as err:
            export_onnx(spec(), tmp_path / "x.onnx", opset=bad)
        msg = str(err.value)
        assert "\n" not in msg and f"opset {bad}" in msg and f"{onnx_export.MIN_OPSET}–{top}" in msg
    captured = capfd.readouterr()
    assert captured.out == "" and "graph" not in captured.err
    assert list(tmp_path.iterdir()) == []
    assert export_onnx(spec(), tmp_path / "top.onnx", opset=top).info["opset"] == top


def test_export_cli_opset_out_of_range_is_a_usage_line(tmp_path: Path) -> None:
    import subprocess

    out = tmp_path / "m.onnx"
    proc = subprocess.run([sys.executable, "-m", "restorekit", "export", "pix2pixhd", "--out", str(out),
                           "--opset", "30", "--json"], capture_output=True, text=True, timeout=300,
                          env={**__import__("os").environ, "RESTOREKIT_HOME": str(tmp_path / "home")})
    assert proc.returncode == 2 and proc.stdout == ""  # nothing but the usage error (click's three lines)
    assert proc.stderr.strip().splitlines()[-1].startswith("Error: opset 30 cannot be exported")
    assert "graph" not in proc.stderr and len(proc.stderr.strip().splitlines()) <= 4
    assert not out.exists()


def test_onnx_file_from_other_weights_is_refused_when_no_file_hash_is_known(tmp_path: Path) -> None:
    """A method whose weights have no file sha256 (pix2pixhd's embedded default, random weights…)
    used to skip the --onnx check, so a graph exported from other weights ran under its name."""
    def net(seed: int) -> nn.Module:
        torch.manual_seed(seed)
        return nn.Sequential(nn.Conv2d(3, 3, 3, padding=1), nn.Sigmoid()).eval()

    class NoHash(TinyMethod):
        def __init__(self, module: nn.Module, sha: str | None = None) -> None:
            super().__init__()
            self.net, self.sha = module, sha

        def export_module(self) -> ExportSpec:
            return ExportSpec(self.net, torch.zeros(1, 3, 16, 16), {"weights_sha256": self.sha})

    other = tmp_path / "other.onnx"
    export_onnx(NoHash(net(1), "ef" * 32).export_module(), other)  # exported from a weights file
    side = read_sidecar(other)
    assert side is not None and len(side["state_sha256"]) == 64
    for method in (NoHash(net(2)), NoHash(net(2), "ab" * 32)):  # no file hash on one side, or differing
        with pytest.raises(OnnxBackendError, match="exported from other weights|exported from weights sha256"):
            onnx_method(method, onnx_path=other, threads=1)
    # The same weights are accepted, with or without a file hash on the method's side.
    for method in (NoHash(net(1)), NoHash(net(1), "ef" * 32)):
        assert isinstance(onnx_method(method, onnx_path=other, threads=1), OnnxMethod)
    # A sidecar without state_sha256 (written before it existed, or stripped) used to be taken as it
    # was, so a graph of other weights ran under the method's name: it is refused now.
    legacy = tmp_path / "legacy.onnx"
    export_onnx(NoHash(net(1)).export_module(), legacy)
    data = json.loads(legacy.with_name("legacy.onnx.json").read_text())
    data.pop("state_sha256")
    legacy.with_name("legacy.onnx.json").write_text(json.dumps(data))
    with pytest.raises(OnnxBackendError, match="lacks state_sha256.*re-export with `restorekit export"):
        onnx_method(NoHash(net(2)), onnx_path=legacy, threads=1)


class BakesItsSize(nn.Module):
    """Claims any size but, traced, keeps the example's: ``int()`` of a shape becomes a constant."""

    def forward(self, x: Tensor) -> Tensor:
        ramp = torch.linspace(0, 1, int(x.shape[-1])).view(1, 1, 1, -1)
        return (x * 0.5 + 0.5 * ramp).clamp(0, 1)


def test_dynamic_spatial_is_checked_at_a_second_size(tmp_path: Path) -> None:
    """The export check ran only at the example's size, so a graph declared dynamic in height and
    width that bakes its size in was written, and failed (or went wrong) only when run."""
    with pytest.raises(OnnxExportError, match=r"height and width.*no file written"):
        export_onnx(ExportSpec(BakesItsSize(), torch.zeros(1, 3, 16, 16), dynamic_spatial=True),
                    tmp_path / "baked.onnx")
    assert list(tmp_path.iterdir()) == []
    # Declared fixed, the same module exports (and serves its one size).
    assert export_onnx(ExportSpec(BakesItsSize(), torch.zeros(1, 3, 16, 16)), tmp_path / "fixed.onnx").path.is_file()
    # A graph that is dynamic passes, checked at a second, non-square size on the spatial multiple.
    res = export_onnx(ExportSpec(TinyNet().eval(), torch.zeros(1, 3, 16, 16), dynamic_spatial=True,
                                 spatial_multiple=4), tmp_path / "dyn.onnx")
    assert res.info["check_sizes"] == [[16, 16], [20, 24]] and res.max_abs_diff < 1e-4


@pytest.mark.parametrize("args", [["pulse", "--weights", "nothing-here.pt"],
                                  ["psp_pulse", "--weights", "nothing-here.pt"],
                                  ["bicubic"]])
def test_export_of_a_method_without_an_exporter_says_so_before_loading(tmp_path: Path, args: list[str]) -> None:
    """`export pulse` with its weights missing said how to get the weights; once they were there,
    the export was refused anyway. That a method has no ONNX graph is said first, in one line."""
    from click.testing import CliRunner

    from restorekit.cli import build_cli

    out = tmp_path / "m.onnx"
    r = CliRunner().invoke(build_cli(), ["export", *args, "--out", str(out)], catch_exceptions=False)
    assert r.exit_code == 2 and not out.exists()
    assert r.output.strip().splitlines() == [r.output.strip()]  # one line
    assert r.output.startswith(f"error: method '{args[0]}' cannot be exported to ONNX")
    assert "nothing-here" not in r.output


def test_a_graph_beside_another_graphs_sidecar_is_refused(tmp_path: Path) -> None:
    """A graph and its sidecar are written one after the other, so two exports to one --out at
    once, an export killed between the two, or a copy of one file but not the other could leave a
    graph beside another export's sidecar (same weights, other settings): it was used as if the
    sidecar described it. The sidecar's sha256 of the graph file is now checked when it is used."""
    m = TinyMethod()
    dyn = export_onnx(m.export_module(), tmp_path / "dyn.onnx")
    half = export_onnx(m.export_module(), tmp_path / "half.onnx", fp16=True)
    assert dyn.info["sha256"] != half.info["sha256"]
    a, b = dyn.sidecar.read_bytes(), half.sidecar.read_bytes()
    dyn.sidecar.write_bytes(b)
    half.sidecar.write_bytes(a)
    for graph, side in ((dyn, half), (half, dyn)):
        with pytest.raises(OnnxBackendError) as err:
            onnx_method(TinyMethod(), onnx_path=graph.path, threads=1)
        msg = str(err.value)
        assert "\n" not in msg and str(graph.path) in msg and str(graph.sidecar) in msg
        assert "export again" in msg
    # Each graph with its own sidecar is accepted; a sidecar without the graph's sha256 is refused.
    dyn.sidecar.write_bytes(a)
    assert isinstance(onnx_method(TinyMethod(), onnx_path=dyn.path, threads=1), OnnxMethod)
    legacy = json.loads(b)
    legacy.pop("sha256")
    dyn.sidecar.write_text(json.dumps(legacy))
    with pytest.raises(OnnxBackendError, match="lacks sha256"):
        onnx_method(TinyMethod(), onnx_path=dyn.path, threads=1)


def test_a_cached_graph_beside_another_sidecar_is_exported_again(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RESTOREKIT_HOME", str(tmp_path / "home"))
    path = onnx_method(TinyMethod(), threads=1).session.path
    side = json.loads(onnx_export.sidecar_path(path).read_text())
    export_onnx(TinyMethod().export_module(), path, fp16=True)  # as if another export had replaced the graph
    onnx_export.sidecar_path(path).write_text(json.dumps(side))  # … and its sidecar were the old one
    om = onnx_method(TinyMethod(), threads=1)
    assert om.precision == "float32" and onnx_export.sha256_file(path) == read_sidecar(path)["sha256"]


@pytest.mark.parametrize("hard_links", [True, False])
def test_export_without_overwrite_does_not_replace_a_file_that_appeared(tmp_path: Path, hard_links: bool,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """`export --out F` without --overwrite checked that F did not exist before exporting, then
    renamed over whatever was there by the end (another export's graph, say)."""
    if not hard_links:  # a file system without them: the file is created exclusively instead
        def no_link(*args: Any, **kwargs: Any) -> None:
            raise PermissionError(1, "Operation not permitted")

        monkeypatch.setattr(onnx_export.os, "link", no_link)
    out = tmp_path / "m.onnx"
    out.write_bytes(b"someone else's")
    with pytest.raises(OnnxExportError, match="exists"):
        export_onnx(spec(), out, overwrite=False)
    assert out.read_bytes() == b"someone else's" and [p.name for p in tmp_path.iterdir()] == ["m.onnx"]
    res = export_onnx(spec(), tmp_path / "new.onnx", overwrite=False)
    assert onnx_export.sha256_file(res.path) == res.info["sha256"]
    assert (res.path.stat().st_mode & 0o777) == (res.sidecar.stat().st_mode & 0o777)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx", "new.onnx", "new.onnx.json"]


def test_export_without_overwrite_keeps_a_file_where_the_sidecar_goes(tmp_path: Path) -> None:
    """A file at <out>.json is not replaced without --overwrite, and the graph is not left without
    its sidecar; a folder there is an error naming that path, not a hidden temporary file."""
    out = tmp_path / "m.onnx"
    side = onnx_export.sidecar_path(out)
    side.write_text("notes kept here")
    with pytest.raises(OnnxExportError, match="m.onnx.json exists"):
        export_onnx(spec(), out, overwrite=False)
    assert side.read_text() == "notes kept here" and sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx.json"]
    side.unlink()
    side.mkdir()
    with pytest.raises(FileSystemError) as err:
        export_onnx(spec(), out)
    assert f"cannot write {side}" in str(err.value) and ".part" not in str(err.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx.json"]  # the graph went with it


def test_a_graph_without_its_sidecar_is_refused(tmp_path: Path) -> None:
    """Nothing would say which method or weights a bare graph holds (another method's graph ran
    under this name and gave its output): --onnx needs the sidecar export writes."""
    res = export_onnx(TinyMethod().export_module(), tmp_path / "m.onnx")
    assert isinstance(onnx_method(TinyMethod(), onnx_path=res.path, threads=1), OnnxMethod)
    res.sidecar.unlink()
    with pytest.raises(OnnxBackendError, match="no sidecar .*m.onnx.json beside it"):
        onnx_method(TinyMethod(), onnx_path=res.path, threads=1)


@pytest.mark.parametrize("text", ["[1, 2]", "{not json"])
def test_a_graph_beside_a_sidecar_that_is_no_object_is_refused_with_the_export_to_run(tmp_path: Path,
                                                                                      text: str) -> None:
    """Every other --onnx sidecar problem names the export that mends it; this one did not."""
    res = export_onnx(TinyMethod().export_module(), tmp_path / "m.onnx")
    res.sidecar.write_text(text)
    with pytest.raises(OnnxBackendError) as err:
        onnx_method(TinyMethod(), onnx_path=res.path, threads=1)
    msg = str(err.value)
    assert msg.startswith(f"--onnx {res.sidecar}: ") and "\n" not in msg, msg
    assert msg.endswith(f"; re-export with `restorekit export {TinyMethod.info.name} --out {res.path} --overwrite`"), msg


def test_run_with_a_graph_beside_another_graphs_sidecar_exits_2(tmp_path: Path) -> None:
    from click.testing import CliRunner
    from PIL import Image

    from restorekit.cli import build_cli

    env = {"RESTOREKIT_HOME": str(tmp_path / "home")}
    cli, runner = build_cli(), CliRunner()
    a, b = tmp_path / "a.onnx", tmp_path / "b.onnx"
    for out, extra in ((a, []), (b, ["--fixed-batch"])):
        r = runner.invoke(cli, ["export", "pix2pixhd", "--out", str(out), *extra], env=env)
        assert r.exit_code == 0, r.output
    sa, sb = onnx_export.sidecar_path(a), onnx_export.sidecar_path(b)
    sa_bytes = sa.read_bytes()
    sa.write_bytes(sb.read_bytes())
    Image.new("RGB", (16, 16), (120, 90, 60)).save(tmp_path / "in.png")
    r = runner.invoke(cli, ["run", "pix2pixhd", "--scale", "2", "--input", str(tmp_path / "in.png"),
                            "--output", str(tmp_path / "o"), "--backend", "onnxruntime", "--onnx", str(a), "-q"],
                      env=env)
    assert r.exit_code == 2 and r.output.strip().count("\n") == 0, r.output
    assert str(a) in r.output and str(sa) in r.output and "export again" in r.output
    sa.write_bytes(sa_bytes)
    r = runner.invoke(cli, ["run", "pix2pixhd", "--scale", "2", "--input", str(tmp_path / "in.png"),
                            "--output", str(tmp_path / "o"), "--backend", "onnxruntime", "--onnx", str(a), "-q"],
                      env=env)
    assert r.exit_code == 0, r.output


def test_export_cli_does_not_replace_a_file_that_appears_while_exporting(tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    from click.testing import CliRunner

    import restorekit.commands.export as export_command
    from restorekit.cli import build_cli

    out = tmp_path / "m.onnx"
    real = export_command.export_onnx

    def racing(spec: ExportSpec, path: Path, **kwargs: Any) -> Any:
        out.write_bytes(b"the other export's")  # another `export --out m.onnx` finished first
        return real(spec, path, **kwargs)

    monkeypatch.setattr(export_command, "export_onnx", racing)
    r = CliRunner().invoke(build_cli(), ["export", "pix2pixhd", "--out", str(out)],
                           env={"RESTOREKIT_HOME": str(tmp_path / "home")})
    assert r.exit_code == 2 and "m.onnx exists" in r.output and "--overwrite" in r.output, r.output
    assert out.read_bytes() == b"the other export's" and not onnx_export.sidecar_path(out).exists()
    assert [p.name for p in tmp_path.iterdir() if p.name != "home"] == ["m.onnx"]  # no temporary files left
