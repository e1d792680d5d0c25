"""What ties an ONNX graph to the method that runs it: the loaded network's state (not only a
weights file's hash), the options that may be built into the graph, a pre-flight check shared
with the torch backend; how the export writes (from memory, never through a swapped name); the
CLI's refusal of a link at --out; sidecars of the wrong JSON types; provenance in the graph."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, ClassVar

import pytest
import torch
from pydantic import Field
from torch import Tensor, nn

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

import onnx  # noqa: E402

from restorekit import onnx_backend, onnx_export  # noqa: E402
from restorekit.errors import FileSystemError  # noqa: E402
from restorekit.interfaces import Method, MethodInfo, Options  # noqa: E402
from restorekit.onnx_backend import (  # noqa: E402
    OnnxBackendError,
    OnnxMethod,
    cache_path,
    drop_unused_exports,
    onnx_method,
)
from restorekit.onnx_export import ExportSpec, export_onnx, find_export_spec, read_sidecar, sidecar_path  # noqa: E402


def net(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 3, 3, padding=1), nn.Sigmoid()).eval()


class FileWeights(Method):
    """Weights "from a file" whose sha256 it reports as given: ``sha`` stands for the hash of the
    file as it is *now*, ``module`` for what was loaded from it before."""

    info = MethodInfo(name="filew_onnx", summary="test")

    def __init__(self, module: nn.Module, sha: str | None) -> None:
        super().__init__()
        self.net, self.sha = module, sha

    def restore(self, lr: Tensor, scale: int, *, seed: int | None = None, n_samples: int = 1) -> Tensor:
        with torch.no_grad():
            return self.net(lr)

    def export_module(self) -> ExportSpec:
        return ExportSpec(self.net, torch.zeros(1, 3, 16, 16), {"method": "filew_onnx", "weights_sha256": self.sha})


def test_the_cache_never_serves_a_graph_of_another_network_than_the_one_loaded(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A weights file rewritten between load() and its hashing (a trainer saving its checkpoint
    while an eval runs): the graph of the old weights was cached under the new file's sha256, and
    every later run with the new weights was served the old graph."""
    monkeypatch.setenv("RESTOREKIT_HOME", str(tmp_path / "home"))
    sha_b = "bb" * 32
    stale = onnx_method(FileWeights(net(1), sha_b), threads=1)  # network A loaded, file now B
    fresh = FileWeights(net(2), sha_b)  # a later run: loads B
    om = onnx_method(fresh, threads=1)
    assert om.session.path != stale.session.path
    lr = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    assert float((om.restore(lr, 1) - fresh.restore(lr, 1)).abs().max()) < 1e-5
    # A sidecar of another network at the path that this network's key gives (however it got
    # there) is not taken as it is: the graph is exported again.
    spec = find_export_spec(fresh)
    state = onnx_export.state_sha256(spec.module)
    path = cache_path(spec, "filew_onnx", method_module=FileWeights.__module__, state=state)
    export_onnx(FileWeights(net(1), sha_b).export_module(), path, overwrite=True)
    calls: list[Path] = []
    real = onnx_backend.export_onnx
    monkeypatch.setattr(onnx_backend, "export_onnx", lambda s, p, **k: calls.append(p) or real(s, p, **k))
    om = onnx_method(FileWeights(net(2), sha_b), threads=1)
    assert calls == [path] and read_sidecar(path)["state_sha256"] == state
    assert float((om.restore(lr, 1) - fresh.restore(lr, 1)).abs().max()) < 1e-5


def test_onnx_file_with_the_same_file_hash_but_another_state_is_refused(tmp_path: Path) -> None:
    """--onnx compared the network state only when a file hash was missing on one side."""
    out = tmp_path / "a.onnx"
    export_onnx(FileWeights(net(1), "cc" * 32).export_module(), out)
    with pytest.raises(OnnxBackendError) as err:
        onnx_method(FileWeights(net(2), "cc" * 32), onnx_path=out, threads=1)
    assert "other weights" in str(err.value) and "state_sha256" in str(err.value) and "\n" not in str(err.value)
    assert isinstance(onnx_method(FileWeights(net(1), "cc" * 32), onnx_path=out, threads=1), OnnxMethod)


class GainOptions(Options):
    gain: float = Field(1.0, description="detail gain, built into the graph as a constant")
    quiet: bool = Field(False, description="no notes")
    result_neutral: ClassVar[frozenset[str]] = frozenset({"quiet"})


class Gain(nn.Module):
    def __init__(self, gain: float) -> None:
        super().__init__()
        self.conv = net(0)[0]
        self.gain = gain  # not in the state dict

    def forward(self, x: Tensor) -> Tensor:
        return (x + self.gain * self.conv(x)).clamp(0, 1)


class GainMethod(Method):
    info = MethodInfo(name="gain_onnx", summary="test")
    Options = GainOptions
    describe_graph: ClassVar[bool] = False

    def __init__(self, **opts: Any) -> None:
        super().__init__(GainOptions(**opts))
        self.net = Gain(self.options.gain).eval()

    def restore(self, lr: Tensor, scale: int, *, seed: int | None = None, n_samples: int = 1) -> Tensor:
        with torch.no_grad():
            return self.net(lr)

    def export_module(self) -> ExportSpec:
        meta: dict[str, Any] = {"method": "gain_onnx"}
        if self.describe_graph:
            meta["graph"] = {"gain": self.options.gain}
        return ExportSpec(self.net, torch.zeros(1, 3, 16, 16), meta)


class DescribedGain(GainMethod):
    describe_graph = True


def test_options_built_into_a_graph_key_the_cache_and_are_checked_by_onnx(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A plugin's option baked into its graph (here a Python constant) was in no cache key: the
    graph of gain=1 was served for gain=3."""
    monkeypatch.setenv("RESTOREKIT_HOME", str(tmp_path / "home"))
    lr = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    paths = set()
    for gain in (1.0, 3.0):
        m = GainMethod(gain=gain)
        om = onnx_method(m, threads=1)
        paths.add(om.session.path)
        assert float((om.restore(lr, 1) - m.restore(lr, 1)).abs().max()) < 1e-5
        assert read_sidecar(om.session.path)["source"]["restorekit_options"] == {"gain": gain}
    assert len(paths) == 2
    # A result-neutral option is in no key: the same graph.
    assert onnx_method(GainMethod(gain=3.0, quiet=True), threads=1).session.path in paths
    # --onnx: a graph of other options is refused when the exporter does not describe its graph …
    out = tmp_path / "g1.onnx"
    export_onnx(find_export_spec(GainMethod(gain=1.0)), out)
    assert isinstance(onnx_method(GainMethod(gain=1.0, quiet=True), onnx_path=out, threads=1), OnnxMethod)
    with pytest.raises(OnnxBackendError, match=r"exported with other options .*gain: 1\.0 → 3\.0"):
        onnx_method(GainMethod(gain=3.0), onnx_path=out, threads=1)
    # … and when the sidecar does not record them at all (a graph exported before they were recorded).
    side = json.loads(sidecar_path(out).read_text())
    del side["source"]["restorekit_options"]
    sidecar_path(out).write_text(json.dumps(side))
    with pytest.raises(OnnxBackendError, match="does not record the options"):
        onnx_method(GainMethod(gain=1.0), onnx_path=out, threads=1)
    # An exporter that describes what its graph holds decides by that description; options that
    # differ only outside the graph get a note.
    described = tmp_path / "d1.onnx"
    export_onnx(find_export_spec(DescribedGain(gain=1.0)), described)
    with pytest.raises(OnnxBackendError, match="exported with other settings"):
        onnx_method(DescribedGain(gain=3.0), onnx_path=described, threads=1)
    side = json.loads(sidecar_path(described).read_text())
    side["source"]["restorekit_options"] = {"gain": 1.0, "steps": 2}
    sidecar_path(described).write_text(json.dumps(side))
    notes: list[str] = []
    assert isinstance(onnx_method(DescribedGain(gain=1.0), onnx_path=described, threads=1, log=notes.append),
                      OnnxMethod)
    assert any("other options (steps: 2 → —)" in n for n in notes)


class PostOptions(GainOptions):
    post: int = Field(0, description="a step after the graph (as back-projection)")


class DescribedPost(DescribedGain):
    Options = PostOptions

    def __init__(self, **opts: Any) -> None:
        Method.__init__(self, PostOptions(**opts))
        self.net = Gain(self.options.gain).eval()


def test_options_outside_a_described_graph_share_one_export(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An exporter that describes its graph keys the cache by that description: an option acting
    only around the graph (psp_sr's consistency_steps) exported the same network again, and kept
    one more copy per value."""
    monkeypatch.setenv("RESTOREKIT_HOME", str(tmp_path / "home"))
    paths = {onnx_method(DescribedPost(gain=1.0, post=k), threads=1).session.path for k in (0, 3)}
    assert len(paths) == 1
    assert onnx_method(DescribedPost(gain=2.0), threads=1).session.path not in paths  # in the graph


class Checked(Method):
    info = MethodInfo(name="checked_onnx", summary="test")

    def __init__(self) -> None:
        super().__init__()
        self.net = net(3)
        self.prepared = 0
        self.seen: list[tuple[tuple[int, ...], int, str]] = []

    def preflight(self, lr: Tensor, scale: int, device: torch.device) -> None:
        self.seen.append((tuple(lr.shape), scale, str(device)))
        if lr.shape[-1] > 16:
            raise ValueError("checked_onnx: too large for this machine")

    def restore(self, lr: Tensor, scale: int, *, seed: int | None = None, n_samples: int = 1) -> Tensor:
        self.preflight(lr, scale, self.device)
        with torch.no_grad():
            return self.net(lr)

    def export_module(self) -> ExportSpec:
        def prepare(lr: Tensor, scale: int) -> Tensor:
            self.prepared += 1
            return lr

        return ExportSpec(self.net, torch.zeros(1, 3, 16, 16), {"method": "checked_onnx"}, dynamic_spatial=True,
                          prepare=prepare, preflight=self.preflight)


def test_the_spec_preflight_runs_before_any_work_on_onnxruntime(tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """A method's memory guard and notes lived in its torch restore(): onnxruntime skipped them."""
    monkeypatch.setenv("RESTOREKIT_HOME", str(tmp_path / "home"))
    m = Checked()
    om = onnx_method(m, threads=1)
    assert om.restore(torch.rand(1, 3, 16, 16), 1).shape == (1, 3, 16, 16)
    assert m.seen == [((1, 3, 16, 16), 1, "cpu")] and m.prepared == 1
    with pytest.raises(ValueError, match="too large"):
        om.restore(torch.rand(1, 3, 32, 32), 1)
    assert m.prepared == 1  # refused before the graph's input was made


def test_export_writes_from_memory_not_through_a_swapped_temporary_name(tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """In a folder others can write to, the temporary file could be swapped for a link while the
    network was traced (the exporter then wrote the graph through the link into the linked file),
    or now while its bytes are written (as every output: images.write_via_temp)."""
    import restorekit.images as images

    folder = tmp_path / "shared"
    folder.mkdir()
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    real = images._new_temp

    def swapping(where: Any, name: str, suffix: str) -> Any:
        fd, tmp = real(where, name, suffix)
        part = where.path / tmp  # another user of the folder swaps it now
        part.unlink()
        part.symlink_to(victim)
        return fd, tmp

    monkeypatch.setattr(images, "_new_temp", swapping)
    spec = ExportSpec(net(4), torch.zeros(1, 3, 8, 8), {"method": "x"})
    with pytest.raises(FileSystemError) as err:
        export_onnx(spec, folder / "m.onnx")
    assert victim.read_text() == "precious\n"
    assert "was replaced by something else while being written" in str(err.value) and "\n" not in str(err.value)
    assert not (folder / "m.onnx").exists() and not sidecar_path(folder / "m.onnx").exists()
    assert list(folder.iterdir()) == []
    # Without a swap the same export writes the bytes it checked.
    monkeypatch.setattr(images, "_new_temp", real)
    res = export_onnx(spec, folder / "ok.onnx")
    assert onnx_export.sha256_file(res.path) == res.info["sha256"]


def test_the_graph_carries_its_key_fields_in_metadata_props(tmp_path: Path) -> None:
    meta = {"method": "x", "weights": "w.safetensors", "weights_file": "w.safetensors", "weights_sha256": "ab" * 32,
            "license": "MIT"}
    res = export_onnx(ExportSpec(net(5), torch.zeros(1, 3, 8, 8), meta), tmp_path / "m.onnx")
    props = {p.key: p.value for p in onnx.load(str(res.path)).metadata_props}
    assert props == {"restorekit.method": "x", "restorekit.weights": "w.safetensors",
                     "restorekit.weights_file": "w.safetensors", "restorekit.weights_sha256": "ab" * 32,
                     "restorekit.license": "MIT", "restorekit.state_sha256": res.info["state_sha256"],
                     "restorekit.sidecar_format": onnx_export.SIDECAR_FORMAT,
                     "restorekit.version": res.info["versions"]["restorekit"]}
    assert res.info["metadata_props"] == sorted(props)


@pytest.mark.parametrize("where,value,said", [
    ("source", "x", "its sidecar's 'source' is a string, not an object"),
    ("weights_sha256", 5, "its sidecar's 'weights_sha256' is a number, not a string"),
    ("precision", ["float32"], "its sidecar's 'precision' is an array, not a string"),
    ("source.method", 1, "its sidecar's 'source.method' is a number, not a string"),
    ("source.graph", "x", "its sidecar's 'source.graph' is a string, not an object"),
    ("source.restorekit_options", [1], "its sidecar's 'source.restorekit_options' is an array, not an object"),
])
def test_a_sidecar_field_of_another_type_is_a_one_line_refusal(tmp_path: Path, where: str, value: object,
                                                               said: str) -> None:
    out = tmp_path / "m.onnx"
    export_onnx(find_export_spec(GainMethod()), out)
    side = json.loads(sidecar_path(out).read_text())
    if where.startswith("source."):
        side["source"][where.split(".", 1)[1]] = value
    else:
        side[where] = value
    sidecar_path(out).write_text(json.dumps(side))
    with pytest.raises(OnnxBackendError) as err:
        onnx_method(GainMethod(), onnx_path=out, threads=1)
    msg = str(err.value)
    assert said in msg and "\n" not in msg and "re-export with `restorekit export gain_onnx" in msg


def test_unused_exports_with_a_malformed_sidecar_do_not_break_an_export(tmp_path: Path) -> None:
    new = tmp_path / "m-aaaaaaaaaaaaaaaa-11111111.onnx"
    for p, side in ((new, {"source": {"restorekit_export_code": "new"}}),
                    (tmp_path / "m-aaaaaaaaaaaaaaaa-22222222.onnx", {"source": "x"}),
                    (tmp_path / "m-aaaaaaaaaaaaaaaa-33333333.onnx", None)):
        p.write_bytes(b"onnx")
        sidecar_path(p).write_text(json.dumps(side) if side is not None else "{not json")
        then = 0
        os.utime(sidecar_path(p), (then, then))
    dropped = drop_unused_exports(new, "m", "new")
    # A sidecar whose source is no object says nothing of its method: dropped as another code's.
    assert {p.name for p in dropped} == {"m-aaaaaaaaaaaaaaaa-22222222.onnx", "m-aaaaaaaaaaaaaaaa-22222222.onnx.json"}


def test_export_cli_refuses_a_link_to_nothing_at_out_before_exporting(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """Path.exists() follows links: a dangling link at --out passed the early check, the whole
    export ran, and then failed saying the file had appeared while exporting."""
    from click.testing import CliRunner

    import restorekit.commands.export as export_command
    from restorekit.cli import build_cli

    monkeypatch.setattr(export_command, "export_onnx", lambda *a, **k: pytest.fail("exported"))
    out = tmp_path / "m.onnx"
    out.symlink_to(tmp_path / "nowhere")
    env = {"RESTOREKIT_HOME": str(tmp_path / "home")}
    r = CliRunner().invoke(build_cli(), ["export", "pix2pixhd", "--out", str(out)], env=env)
    assert r.exit_code == 2 and f"{out} exists as a link to nothing" in r.output, r.output
    out.unlink()
    sidecar_path(out).symlink_to(tmp_path / "nowhere")
    r = CliRunner().invoke(build_cli(), ["export", "pix2pixhd", "--out", str(out)], env=env)
    assert r.exit_code == 2 and "m.onnx.json exists as a link to nothing, where the export's sidecar goes" in r.output
    assert os.path.islink(sidecar_path(out)) and not out.exists()
