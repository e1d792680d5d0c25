"""--onnx sidecars that cannot vouch for their graph, and the export cache key's code fingerprint."""

from __future__ import annotations

import json
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from torch import Tensor, nn

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from restorekit import onnx_backend  # noqa: E402
from restorekit.harness.runner import code_fingerprint  # noqa: E402
from restorekit.interfaces import Method, MethodInfo  # noqa: E402
from restorekit.onnx_backend import OnnxBackendError, OnnxMethod, cache_path, onnx_method  # noqa: E402
from restorekit.onnx_export import SIDECAR_FORMAT, ExportSpec, export_onnx, sidecar_path  # noqa: E402


def net(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 3, 3, padding=1), nn.Sigmoid()).eval()


class Plain(Method):
    """No weights file hash (like pix2pixhd's embedded default): only the state identifies it."""

    info = MethodInfo(name="plain_onnx", summary="test")

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.net = module

    def restore(self, lr: Tensor, scale: int, *, seed: int | None = None, n_samples: int = 1) -> Tensor:
        with torch.no_grad():
            return self.net(lr)

    def export_module(self) -> ExportSpec:
        return ExportSpec(self.net, torch.zeros(1, 3, 16, 16), {"method": "plain_onnx"})


@pytest.mark.parametrize("strip", [
    ["sha256", "state_sha256", "weights_sha256"],   # the audit's repro: all hashes stripped
    ["state_sha256", "weights_sha256"],
    "empty",                                         # {}
    "format",                                        # another (older / foreign) format
])
def test_a_sidecar_that_cannot_vouch_for_the_graph_is_refused(tmp_path: Path, strip: object) -> None:
    out = tmp_path / "other.onnx"
    export_onnx(Plain(net(1)).export_module(), out)  # other weights than the method below loads
    side = json.loads(sidecar_path(out).read_text())
    assert side["format"] == SIDECAR_FORMAT
    if strip == "empty":
        side = {}
    elif strip == "format":
        side["format"] = "restorekit.onnx/0"
    else:
        for k in strip:  # type: ignore[union-attr]
            side.pop(k)
        side["source"].pop("method", None)
    sidecar_path(out).write_text(json.dumps(side))
    with pytest.raises(OnnxBackendError) as err:
        onnx_method(Plain(net(2)), onnx_path=out, threads=1)
    msg = str(err.value)
    assert "\n" not in msg and str(out) in msg and "re-export with `restorekit export plain_onnx" in msg
    assert ("format" in msg) if strip in ("empty", "format") else ("lacks" in msg)
    # The same graph with its full sidecar is accepted for its own weights, refused for others.
    export_onnx(Plain(net(1)).export_module(), out, overwrite=True)
    assert isinstance(onnx_method(Plain(net(1)), onnx_path=out, threads=1), OnnxMethod)
    with pytest.raises(OnnxBackendError, match="other weights"):
        onnx_method(Plain(net(2)), onnx_path=out, threads=1)


def test_a_cached_graph_with_an_incomplete_sidecar_is_exported_again(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RESTOREKIT_HOME", str(tmp_path / "home"))
    path = onnx_method(Plain(net(1)), threads=1).session.path
    side = json.loads(sidecar_path(path).read_text())
    side.pop("state_sha256")
    sidecar_path(path).write_text(json.dumps(side))
    calls: list[Path] = []
    real = onnx_backend.export_onnx
    monkeypatch.setattr(onnx_backend, "export_onnx", lambda spec, p, **k: calls.append(p) or real(spec, p, **k))
    onnx_method(Plain(net(1)), threads=1)
    assert calls == [path] and "state_sha256" in json.loads(sidecar_path(path).read_text())


def test_the_cache_key_covers_the_code_of_the_methods_package(tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """The key held only weights and settings (and restorekit's version, which an editable install
    never changes): a fixed export bug in a plugin kept serving the graph cached before the fix."""
    monkeypatch.setenv("RESTOREKIT_HOME", str(tmp_path / "home"))
    pkg = tmp_path / "src" / "onnxkey_pkg"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    code = textwrap.dedent("""
        import torch
        from torch import nn
        from restorekit.interfaces import Method, MethodInfo
        from restorekit.onnx_export import ExportSpec

        class Keyed(Method):
            info = MethodInfo(name="keyed_onnx", summary="test")

            def __init__(self):
                super().__init__()
                torch.manual_seed(0)
                self.net = nn.Sequential(nn.Conv2d(3, 3, 1), nn.Sigmoid()).eval()

            def restore(self, lr, scale, *, seed=None, n_samples=1):
                return self.net(lr)

            def export_module(self):
                return ExportSpec(self.net, torch.zeros(1, 3, 8, 8), {"weights_sha256": "ab" * 32})
        """)
    (pkg / "methods.py").write_text(code)
    monkeypatch.syspath_prepend(str(tmp_path / "src"))
    from onnxkey_pkg.methods import Keyed  # type: ignore[import-not-found]

    monkeypatch.setattr(onnx_backend, "_FINGERPRINTS", {})
    first = onnx_method(Keyed(), threads=1).session.path
    assert first == cache_path(Keyed().export_module(), "keyed_onnx", method_module=Keyed.__module__)
    # The same code: the same cached graph.
    assert onnx_method(Keyed(), threads=1).session.path == first
    # The package's code changes (same weights, same settings, same version): another cache entry.
    (pkg / "methods.py").write_text(code + "\n# export graph fixed\n")
    monkeypatch.setattr(onnx_backend, "_FINGERPRINTS", {})
    code_fingerprint.cache_clear()  # once per process: a new run is a new process
    second = onnx_method(Keyed(), threads=1).session.path
    assert second != first and second.is_file()
    # The core's onnx_export module is part of the key too.
    from restorekit import onnx_export
    fake = tmp_path / "onnx_export.py"
    fake.write_text(Path(onnx_export.__file__).read_text() + "\n# changed\n")
    monkeypatch.setattr(onnx_export, "__file__", str(fake))
    monkeypatch.setattr(onnx_backend, "_FINGERPRINTS", {})
    assert cache_path(Keyed().export_module(), "keyed_onnx", method_module=Keyed.__module__) not in (first, second)
    sys.modules.pop("onnxkey_pkg.methods", None)
    sys.modules.pop("onnxkey_pkg", None)


def test_a_kept_graph_from_other_code_is_run_with_a_note(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`run --onnx FILE`: the sidecar records the code that built the graph; a graph from other code
    (an upgrade, an edit) still runs — its hashes tie it to the weights — but the user is told."""
    import json as _json

    from restorekit.methods import build_method
    from restorekit.onnx_backend import onnx_method
    from restorekit.onnx_export import export_onnx, find_export_spec, sidecar_path

    pytest.importorskip("restorekit_baselines")
    method = build_method("pix2pixhd")
    graph = tmp_path / "p.onnx"
    export_onnx(find_export_spec(method), graph)
    side = _json.loads(sidecar_path(graph).read_text(encoding="utf-8"))
    assert len(side["source"]["restorekit_export_code"]) == 16
    notes: list[str] = []
    onnx_method(method, onnx_path=graph, log=notes.append)
    assert not any("other code" in n for n in notes)
    side["source"]["restorekit_export_code"] = "0" * 16
    sidecar_path(graph).write_text(_json.dumps(side), encoding="utf-8")
    onnx_method(method, onnx_path=graph, log=notes.append)
    assert any("exported by other code" in n and "--overwrite" in n for n in notes)


def test_an_export_drops_graphs_of_other_code_nothing_used_for_a_month(tmp_path: Path) -> None:
    """After an upgrade the cache holds graphs older code made, which this code never serves; those
    unused for 30 days go when the same weights are exported again. A graph another install
    still uses (its sidecar's mtime, renewed at each use) stays, as do graphs of this code."""
    import json as _json
    import os
    import time

    from restorekit.onnx_backend import _mark_used, drop_unused_exports

    def graph(name: str, code: str | None, age_days: float = 60, method: str = "psp_sr") -> Path:
        p = tmp_path / name
        p.write_bytes(b"onnx")
        source = {"method": method, **({"restorekit_export_code": code} if code else {})}
        side = tmp_path / (name + ".json")
        side.write_text(_json.dumps({"source": source}), encoding="utf-8")
        then = time.time() - age_days * 86400
        os.utime(side, (then, then))
        return p

    new = graph("psp_sr-aaaaaaaaaaaaaaaa-11111111.onnx", "new", 0)
    stale = graph("psp_sr-aaaaaaaaaaaaaaaa-22222222.onnx", "old")
    (tmp_path / (stale.name + ".lock")).write_bytes(b"")
    no_code = graph("psp_sr-aaaaaaaaaaaaaaaa-44444444.onnx", None)  # from before the code was recorded
    in_use = graph("psp_sr-aaaaaaaaaaaaaaaa-66666666.onnx", "other install")
    _mark_used(in_use)  # served today by the install that made it
    same_code = graph("psp_sr-aaaaaaaaaaaaaaaa-33333333.onnx", "new")  # other settings (fp16, opset)
    other_weights = graph("psp_sr-bbbbbbbbbbbbbbbb-55555555.onnx", "old")
    other_method = graph("psp_sr-aaaaaaaaaaaaaaaa-77777777.onnx", "old", method="pulse")
    dropped = {p.name for p in drop_unused_exports(new, "psp_sr", "new")}
    assert dropped == {stale.name, stale.name + ".json", stale.name + ".lock", no_code.name, no_code.name + ".json"}
    assert all(p.exists() for p in (new, in_use, same_code, other_weights, other_method))
