"""CUDA inference paths, checked on the CPU: ``--device`` values (``cuda:N``, refusals), the device
and precision compare records, onnxruntime sessions' device, detectors given GPU tensors, LPIPS's
device check. CUDA is faked (``torch.cuda`` functions patched, a fake onnxruntime); the tests
that need a GPU are marked and skipped without one."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import SimpleNamespace

import click
import numpy as np
import pytest
import torch
from click.testing import CliRunner
from pydantic import ValidationError

import restorekit.onnx_backend as ob
from restorekit.cli import build_cli
from restorekit.devices import DeviceType, check_device, normalize_device, precision_label, run_device
from restorekit.errors import RestorekitError
from restorekit.harness import runner
from restorekit.methods import build_method, resolve_device
from restorekit.training.distributed import pick_device
from restorekit.web.config import ServeConfig

from cli_commands import all_commands


def fake_cuda(monkeypatch: pytest.MonkeyPatch, count: int = 1, current: int = 0, capability: tuple[int, int] = (9, 0)):
    """``torch.cuda`` as a machine with ``count`` GPUs reports it (nothing is allocated)."""
    state = {"current": current, "set": []}

    def set_device(dev):
        state["set"].append(torch.device(dev))
        state["current"] = torch.device(dev).index

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: count)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: state["current"])
    monkeypatch.setattr(torch.cuda, "set_device", set_device)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda idx=None: "FAKE H100")
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda idx=None: capability)
    return state


# ---------------------------------------------------------------------------------------------
# --device values


@pytest.mark.parametrize("text, want", [("auto", "auto"), ("cpu", "cpu"), ("cuda", "cuda"), ("cuda:3", "cuda:3"),
                                        (" CUDA:1 ", "cuda:1")])
def test_device_values_accepted(text: str, want: str) -> None:
    assert check_device(text) == want


@pytest.mark.parametrize("text", ["mps", "mps:0", "xpu", "bogus"])
def test_other_backends_are_refused(text: str, monkeypatch: pytest.MonkeyPatch) -> None:
    fake_cuda(monkeypatch)
    with pytest.raises(RestorekitError, match=rf"^--device {text}: restorekit runs on cpu or cuda"):
        resolve_device(text)


@pytest.mark.parametrize("text", ["cuda:x", "cuda:-1", "cpu:0", "cuda:", ""])
def test_malformed_devices_are_refused(text: str, monkeypatch: pytest.MonkeyPatch) -> None:
    fake_cuda(monkeypatch)
    with pytest.raises(RestorekitError, match=r": not a device \(auto, cpu, cuda or cuda:N\)$"):
        resolve_device(text)


def test_cuda_index_past_the_gpus_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    fake_cuda(monkeypatch, count=1)
    with pytest.raises(RestorekitError) as e:
        resolve_device("cuda:7")
    assert str(e.value) == "--device cuda:7: this machine has 1 CUDA device (cuda:0)"
    fake_cuda(monkeypatch, count=2)
    with pytest.raises(RestorekitError) as e:
        resolve_device("cuda:2")
    assert str(e.value) == "--device cuda:2: this machine has 2 CUDA devices (cuda:0 to cuda:1)"
    assert resolve_device("cuda:1") == torch.device("cuda", 1)


def test_bare_cuda_and_auto_resolve_to_the_current_gpu_with_its_index(monkeypatch: pytest.MonkeyPatch) -> None:
    fake_cuda(monkeypatch, count=2, current=1)
    for text in ("cuda", "auto"):
        dev = resolve_device(text)
        assert dev == torch.device("cuda", 1) and dev.index == 1
    assert resolve_device("cpu") == torch.device("cpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_index_without_a_gpu_is_the_no_cuda_line() -> None:
    with pytest.raises(RestorekitError, match=r"^--device cuda:1: no CUDA device is available \(use --device cpu"):
        resolve_device("cuda:1")
    assert resolve_device("auto") == torch.device("cpu")


def test_pick_device_validates_as_resolve_device(monkeypatch: pytest.MonkeyPatch) -> None:
    state = fake_cuda(monkeypatch, count=2)
    assert pick_device("cuda", local_rank=3) == torch.device("cuda", 1)  # torchrun: cuda:LOCAL_RANK
    assert pick_device("auto", local_rank=0) == torch.device("cuda", 0)
    assert pick_device("cuda:1", local_rank=0) == torch.device("cuda", 1)
    assert state["set"] == [torch.device("cuda", 1), torch.device("cuda", 0), torch.device("cuda", 1)]
    with pytest.raises(RestorekitError, match=r"^--device cuda:5: this machine has 2 CUDA devices"):
        pick_device("cuda:5")
    with pytest.raises(RestorekitError, match=r"^--device mps: restorekit runs on cpu or cuda"):
        pick_device("mps")
    assert pick_device("cpu") == torch.device("cpu")


def test_serve_config_device_is_validated_the_same_way() -> None:
    assert ServeConfig(device="cuda:1").device == "cuda:1"
    for bad, text in (("mps", "restorekit runs on cpu or cuda"), ("cuda:x", "not a device")):
        with pytest.raises(ValidationError, match=text):
            ServeConfig(device=bad)


def _device_options() -> list[tuple[str, click.Parameter]]:
    """The ``--device`` options of restorekit's commands and its first-party plugins' (not test plugins')."""
    return [(path, p) for path, cmd in all_commands() for p in cmd.params
            if p.name == "device" and (cmd.callback is None or cmd.callback.__module__.startswith("restorekit"))]


def test_every_core_device_option_takes_cuda_n() -> None:
    found = dict(_device_options())
    for cmd in ("run", "compare", "serve", "generate", "realism", "bench method", "bench harness", "bench generator"):
        assert cmd in found, sorted(found)
    wrong = {path: type(p.type).__name__ for path, p in found.items() if not isinstance(p.type, DeviceType)}
    assert not wrong, wrong
    for path, p in found.items():
        assert "cuda:N" in (p.help or ""), path


def _invoke(*args: object):
    return CliRunner().invoke(build_cli(), [str(a) for a in args], prog_name="restorekit", catch_exceptions=False)


def test_cli_refuses_mps_as_a_usage_error(hr_folder: Path, tmp_path: Path) -> None:
    r = _invoke("run", "bicubic", "--scale", "2", "--input", hr_folder, "--output", tmp_path / "o", "--device", "mps")
    assert r.exit_code == 2, r.output
    assert "restorekit runs on cpu or cuda" in r.stderr and "is not one of" not in r.stderr, r.stderr


def test_cli_cuda_index_past_the_gpus_is_one_line_exit_2(hr_folder: Path, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    fake_cuda(monkeypatch, count=1)
    r = _invoke("run", "bicubic", "--scale", "2", "--input", hr_folder, "--output", tmp_path / "o",
                "--device", "cuda:7")
    assert r.exit_code == 2, r.output
    assert r.stderr.strip().splitlines()[-1] == "error: --device cuda:7: this machine has 1 CUDA device (cuda:0)"
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").iterdir())


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cli_accepts_cuda_n_then_says_there_is_no_gpu(hr_folder: Path, tmp_path: Path) -> None:
    r = _invoke("run", "bicubic", "--scale", "2", "--input", hr_folder, "--output", tmp_path / "o",
                "--device", "cuda:1")
    assert r.exit_code == 2, r.output
    assert "no CUDA device is available" in r.stderr and "is not one of" not in r.stderr, r.stderr


# ---------------------------------------------------------------------------------------------
# Precision and device that compare records


def _plan(method) -> SimpleNamespace:
    return SimpleNamespace(name="bicubic", plugin="baselines", cls=lambda options, device: method, options=method.options,
                           backend="torch", device="", precision="float32", weights_info=None, load_error=None)


def _method_on(device: str):
    m = build_method("bicubic", {}, "cpu")
    m.device = torch.device(device)  # what --device cuda builds (nothing here is moved to a GPU)
    return m


def test_compare_records_tf32_on_ampere_and_later(monkeypatch: pytest.MonkeyPatch) -> None:
    fake_cuda(monkeypatch, capability=(9, 0))
    mp = _plan(_method_on("cuda:0"))
    assert runner._build(mp, torch.device("cuda", 0)) is not None
    assert mp.precision == "float32 (TF32 convolutions)"
    assert mp.device == "cuda:0 (FAKE H100)"
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    assert precision_label("cuda:0") == "float32"
    conv = getattr(torch.backends.cudnn, "conv", None)
    if conv is not None and hasattr(conv, "fp32_precision"):  # torch >= 2.9's per-operator setting
        before = conv.fp32_precision
        try:
            conv.fp32_precision = "ieee"  # reading allow_tf32 now raises: the two APIs were mixed
            assert precision_label("cuda:0") == "float32"
            conv.fp32_precision = "tf32"
            assert precision_label("cuda:0") == "float32 (TF32 convolutions)"
        finally:
            conv.fp32_precision = before


def test_compare_records_float32_before_ampere_and_on_the_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    fake_cuda(monkeypatch, capability=(7, 5))
    mp = _plan(_method_on("cuda:0"))
    runner._build(mp, torch.device("cuda", 0))
    assert mp.precision == "float32"
    fake_cuda(monkeypatch, capability=(9, 0))
    mp = _plan(_method_on("cpu"))
    runner._build(mp, torch.device("cpu"))
    assert mp.precision == "float32"  # byte-identical on the CPU: stored results do not change
    assert precision_label("cpu") == "float32" and precision_label("cuda:0", "float16") == "float16"


# ---------------------------------------------------------------------------------------------
# onnxruntime sessions


class _FakeOrt:
    """onnxruntime as far as OnnxSession uses it; ``available``: its execution providers."""

    class SessionOptions(SimpleNamespace):
        pass

    GraphOptimizationLevel = SimpleNamespace(ORT_ENABLE_ALL=99)

    def __init__(self, available: list[str]) -> None:
        self.available = available
        self.requested: list = []
        ort = self

        class InferenceSession:
            def __init__(self, path, so, providers):
                ort.requested.append(providers)
                names = [p[0] if isinstance(p, tuple) else p for p in providers]
                self._providers = [n for n in names if n in ort.available]

            def get_inputs(self):
                return [SimpleNamespace(name="lr", shape=["N", 3, "H", "W"])]

            def get_outputs(self):
                return [SimpleNamespace(name="out", shape=["N", 3, "H", "W"])]

            def get_providers(self):
                return self._providers

        self.InferenceSession = InferenceSession

    def get_available_providers(self) -> list[str]:
        return self.available


def test_cuda_sessions_get_the_device_index(monkeypatch: pytest.MonkeyPatch) -> None:
    fake_cuda(monkeypatch, count=4, current=2)
    monkeypatch.setattr(ob, "_ort", lambda: _FakeOrt(["CUDAExecutionProvider", "CPUExecutionProvider"]))
    assert ob.providers_for(torch.device("cuda", 1)) == [("CUDAExecutionProvider", {"device_id": 1}),
                                                         "CPUExecutionProvider"]
    assert ob.providers_for("cuda") == [("CUDAExecutionProvider", {"device_id": 2}), "CPUExecutionProvider"]
    assert ob.providers_for("cpu") == ["CPUExecutionProvider"]


def test_session_device_is_where_the_graph_runs(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    fake_cuda(monkeypatch, count=4)
    graph = tmp_path / "g.onnx"
    graph.write_bytes(b"x")
    gpu = _FakeOrt(["CUDAExecutionProvider", "CPUExecutionProvider"])
    monkeypatch.setattr(ob, "_ort", lambda: gpu)
    s = ob.OnnxSession(graph, device=torch.device("cuda", 3), sidecar={"precision": "float32"})
    assert s.device == "cuda:3" and gpu.requested[-1][0] == ("CUDAExecutionProvider", {"device_id": 3})
    cpu_only = _FakeOrt(["CPUExecutionProvider", "AzureExecutionProvider"])
    monkeypatch.setattr(ob, "_ort", lambda: cpu_only)
    s = ob.OnnxSession(graph, device=torch.device("cuda", 0), sidecar={"precision": "float32"})
    assert s.device == "cpu"
    om = ob.OnnxMethod(_method_on("cuda:0"), SimpleNamespace(prepare=None, finish=None), s)
    assert om.device == torch.device("cuda", 0)  # the method's own pre- and post-processing
    assert run_device(om) == torch.device("cpu")
    assert runner._device_name(run_device(om)).startswith("cpu (")


def _patch_cached_export(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, ort: _FakeOrt) -> None:
    graph = tmp_path / "cached.onnx"
    graph.write_bytes(b"x")
    monkeypatch.setattr(ob, "_ort", lambda: ort)
    monkeypatch.setattr(ob, "find_export_spec", lambda m: SimpleNamespace(prepare=None, finish=None, preflight=None,
                                                                          module=None))
    monkeypatch.setattr(ob, "state_sha256", lambda module: "state")  # the graph holds what the method loaded
    monkeypatch.setattr(ob, "cache_path", lambda *a, **k: graph)
    monkeypatch.setattr(ob, "read_sidecar", lambda p: {"precision": "float32", "state_sha256": "state"})
    monkeypatch.setattr(ob, "sidecar_incomplete", lambda side: None)
    monkeypatch.setattr(ob, "sidecar_problem", lambda p, side: None)
    monkeypatch.setattr(ob, "_mark_used", lambda p: None)


def test_no_cuda_provider_warning_reaches_callers_without_a_log(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    """compare and bench method build the onnxruntime method without a log: the user still hears it."""
    fake_cuda(monkeypatch)
    _patch_cached_export(monkeypatch, tmp_path, _FakeOrt(["CPUExecutionProvider"]))
    om = ob.onnx_method(_method_on("cuda:0"))
    err = capsys.readouterr().err
    assert err.strip().splitlines() == ["warning: bicubic: onnxruntime runs the graph on the CPU: it has no CUDA "
                                        "provider, or its CUDA provider did not load (install onnxruntime-gpu "
                                        "built for this CUDA)"]
    assert run_device(om) == torch.device("cpu")
    logged: list[str] = []
    ob.onnx_method(_method_on("cuda:0"), log=logged.append)
    assert len(logged) == 1 and "onnxruntime-gpu" in logged[0] and capsys.readouterr().err == ""


def test_compare_records_the_onnx_session_device(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    fake_cuda(monkeypatch)
    _patch_cached_export(monkeypatch, tmp_path, _FakeOrt(["CPUExecutionProvider"]))
    mp = _plan(_method_on("cuda:0"))
    assert runner._build(mp, torch.device("cuda", 0), backend="onnxruntime") is not None
    assert mp.backend == "onnxruntime" and mp.device.startswith("cpu ("), mp.device
    assert mp.precision == "float32"


# ---------------------------------------------------------------------------------------------
# Face detectors and LPIPS on GPU tensors


class _GpuLike(torch.Tensor):
    """A CPU tensor that, like a CUDA one, cannot be turned into numpy before ``.cpu()``."""

    def numpy(self, *a, **k):  # type: ignore[override]
        raise TypeError("can't convert cuda:0 device type tensor to numpy. Use Tensor.cpu() first")

    def cpu(self, *a, **k):  # type: ignore[override]
        return self.as_subclass(torch.Tensor)


def test_nms_works_on_boxes_that_are_not_on_the_cpu() -> None:
    from restorekit.faces.detectors import _nms, _nms_min

    boxes = torch.tensor([[0.0, 0, 10, 10], [1, 1, 11, 11], [50, 50, 60, 60]])
    scores = torch.tensor([0.9, 0.8, 0.7])
    want = _nms(boxes, scores, 0.5)
    assert want.tolist() == [0, 2]
    got = _nms(boxes.as_subclass(_GpuLike), scores.as_subclass(_GpuLike), 0.5)
    assert got.as_subclass(torch.Tensor).tolist() == [0, 2]
    got = _nms_min(boxes.as_subclass(_GpuLike), scores.as_subclass(_GpuLike), 0.7)
    assert got.as_subclass(torch.Tensor).tolist() == _nms_min(boxes, scores, 0.7).tolist()


@pytest.mark.parametrize("entry", ["face_share", "evaluate_images"])
def test_realism_builds_its_detector_on_the_cpu(entry: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """As the face pipeline does, whatever --device the feature networks run on."""
    import restorekit.faces.pipeline as pipeline
    from restorekit.harness.realism import evaluate as R

    built: list[dict] = []

    class Det:
        def detect(self, img):
            assert img.device.type == "cpu"
            return []

    def fake_build(name, **kwargs):
        built.append(kwargs)
        return Det()

    monkeypatch.setattr(pipeline, "build_detector", fake_build)
    if entry == "face_share":
        R.face_share([torch.rand(2, 3, 16, 16)], "mtcnn", device="cuda:0")
    else:
        monkeypatch.setattr(R, "_build_spaces", lambda spaces, device: [])
        monkeypatch.setattr(R, "_reference", lambda *a, **k: (None, "ref"))
        monkeypatch.setattr(R, "_paths", lambda images: ["a", "b"])
        monkeypatch.setattr(R, "image_batches",
                            lambda paths, bs, skipped, skipped_paths=None: iter([torch.rand(2, 3, 16, 16)]))

        def stats(batches, built_spaces, on_batch=None):
            for b in batches:
                on_batch(b)
            return []

        monkeypatch.setattr(R, "multi_statistics", stats)
        monkeypatch.setattr(R, "_figures", lambda *a: {})
        R.evaluate_images(tmp_path, tmp_path, spaces=[], device="cuda:0", detector="mtcnn")
    assert built and all(str(k.get("device", "cpu")) == "cpu" for k in built), built


def test_lpips_compares_devices_normalised(monkeypatch: pytest.MonkeyPatch) -> None:
    """Set up on a bare ``cuda``, it is not set up again for tensors on ``cuda:<current>``."""
    from restorekit.metrics_lpips import LPIPSAlex

    fake_cuda(monkeypatch, count=2, current=1)
    moves: list[torch.device] = []
    net = SimpleNamespace(backbone="alex", to=lambda d: moves.append(torch.device(d)))
    metric = LPIPSAlex(net=net)  # type: ignore[arg-type]
    metric.setup(torch.device("cuda"))
    assert metric._device == torch.device("cuda", 1)
    metric._ensure(torch.device("cuda", 1))  # what a batch on the current GPU reports
    assert moves == [torch.device("cuda")]
    metric._ensure(torch.device("cuda", 0))
    assert moves == [torch.device("cuda"), torch.device("cuda", 0)]
    assert normalize_device("cuda") == torch.device("cuda", 1) == normalize_device(torch.device("cuda", 1))
    assert normalize_device("cpu") == torch.device("cpu")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.skipif(importlib.util.find_spec("facenet_pytorch") is None, reason="MTCNN weights need facenet-pytorch")
def test_mtcnn_on_cuda_matches_the_cpu() -> None:
    skimage_data = pytest.importorskip("skimage.data")
    from restorekit.faces.detectors import MtcnnDetector

    img = torch.from_numpy(np.ascontiguousarray(skimage_data.astronaut())).permute(2, 0, 1).float() / 255
    cpu = MtcnnDetector().detect_raw(img)
    gpu = MtcnnDetector(device="cuda").detect_raw(img)
    assert len(cpu[0]) == len(gpu[0]) >= 1
    torch.testing.assert_close(gpu[0], cpu[0], atol=0.5, rtol=0)


def test_compare_measures_memory_where_the_network_runs() -> None:
    """compare recorded torch's CUDA allocator peak for an onnxruntime graph on CUDA (which holds
    only the call's input and output), and nothing for a graph on the CPU of a method on CUDA."""
    from types import SimpleNamespace

    torch_on_cuda = SimpleNamespace(device=torch.device("cuda", 0), run_device=None)
    ort_on_cuda = SimpleNamespace(device=torch.device("cuda", 0), run_device="cuda:0", session=object())
    ort_on_cpu = SimpleNamespace(device=torch.device("cuda", 0), run_device="cpu", session=object())
    assert runner.memory_measure(torch_on_cuda) == (torch.device("cuda", 0), "cuda")
    assert runner.memory_measure(ort_on_cuda) == (torch.device("cuda", 0), "none")
    assert runner.memory_measure(ort_on_cpu) == (torch.device("cpu"), "cpu")
