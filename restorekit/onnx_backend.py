"""The onnxruntime backend: run a method's exported graph instead of its PyTorch network.

:class:`OnnxSession` wraps an ``onnxruntime.InferenceSession`` on ``N×3×H×W`` float32 images in
[0, 1]: CPU provider, CUDA provider first when the device is CUDA and onnxruntime has it;
``threads`` sets the intra-op thread count (default: torch's, so both backends are timed with
the same number of threads). A graph exported with a fixed batch size is run row by row.

:func:`onnx_method` turns a loaded method into an :class:`OnnxMethod` whose ``restore`` is
``finish(session(prepare(lr)))`` — the method's own PyTorch pre- and post-processing around the
graph (see :class:`restorekit.onnx_export.ExportSpec`), after the spec's ``preflight`` check.
The graph comes from ``--onnx PATH`` or from the export cache ``<cache>/onnx/``
(``$RESTOREKIT_HOME``), where it is exported on first use, keyed by the weights' sha256, the
state of the network the method loaded, the options that may be in the graph and the export
settings. Either way a graph is used only when its sidecar belongs to it (its ``sha256`` is the
file's) and records the state of the network the method loaded (``state_sha256``: a weights file
can change between its load and its hashing, so its sha256 alone does not say what was loaded);
a cached graph whose sidecar does not is exported again, an ``--onnx`` one is refused, as is one
exported with other options (:func:`restorekit.onnx_export.export_options`) or another
``graph`` description.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import sys
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import Tensor

from .errors import RestorekitError
from .interfaces import Method, MethodInfo
from .options import OptionError
from .onnx_export import (DEFAULT_OPSET, OPTIONS_KEY, ExportSpec, OnnxExportError, export_onnx, find_export_spec,
                          read_sidecar, sidecar_incomplete, sidecar_path, sidecar_problem, state_sha256)

BACKENDS = ("torch", "onnxruntime")


class OnnxBackendError(RestorekitError):
    """onnxruntime is missing, or a graph cannot serve the request."""


def _ort() -> Any:
    try:
        import onnxruntime
    except ImportError:
        raise OnnxBackendError("--backend onnxruntime needs the 'onnxruntime' package; install it with "
                               "pip install 'restorekit[onnx]'") from None
    return onnxruntime


def providers_for(device: torch.device | str) -> list[Any]:
    """``[("CUDAExecutionProvider", {"device_id": N}), "CPUExecutionProvider"]`` for a CUDA device
    when onnxruntime has the CUDA provider (``N``: the device's index, the current CUDA device for
    a bare ``cuda``), else ``["CPUExecutionProvider"]``."""
    dev = torch.device(device)
    if dev.type == "cuda" and "CUDAExecutionProvider" in _ort().get_available_providers():
        index = dev.index if dev.index is not None else torch.cuda.current_device()
        return [("CUDAExecutionProvider", {"device_id": int(index)}), "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


def _sidecar_mismatch(path: Path, side: dict[str, Any] | None, where: str = "",
                      method: str = "METHOD") -> OnnxBackendError | None:
    """The error for a graph beside a sidecar that is not its own (see :func:`sidecar_problem`)."""
    problem = sidecar_problem(path, side)
    if problem is None:
        return None
    return OnnxBackendError(f"{where}{problem}; export again with `restorekit export {method} --out {path} "
                            f"--overwrite`")


class OnnxSession:
    """An onnxruntime session on an exported restorekit graph (float32 ``N×3×H×W`` in and out).

    ``sidecar``: the graph's sidecar as the caller read (and checked) it; by default it is read
    here, and refused when it belongs to another graph.
    """

    def __init__(self, path: str | os.PathLike[str], *, device: torch.device | str = "cpu",
                 threads: int | None = None, sidecar: dict[str, Any] | None = None) -> None:
        ort = _ort()
        self.path = Path(path)
        if not self.path.is_file():
            raise OnnxBackendError(f"{self.path}: no such ONNX file")
        if sidecar is None:
            sidecar = read_sidecar(self.path)
            err = _sidecar_mismatch(self.path, sidecar)
            if err is not None:
                raise err
        self.threads = int(threads if threads is not None else torch.get_num_threads())
        so = ort.SessionOptions()
        so.intra_op_num_threads = self.threads
        so.inter_op_num_threads = 1
        so.log_severity_level = 4  # a failed load or run is said in one line (below), not in onnxruntime's log
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        providers = providers_for(device)
        first = providers[0]
        self.device_id: int | None = int(first[1]["device_id"]) if isinstance(first, tuple) else None
        try:
            self.session = ort.InferenceSession(str(self.path), so, providers=providers)
        except Exception as exc:
            raise OnnxBackendError(f"{self.path}: onnxruntime cannot load it ({str(exc).splitlines()[0]})") from None
        inputs, outputs = self.session.get_inputs(), self.session.get_outputs()
        if len(inputs) != 1 or len(outputs) != 1:
            raise OnnxBackendError(f"{self.path}: expected one input and one output, got {len(inputs)} and "
                                   f"{len(outputs)}")
        self.input_name = inputs[0].name
        self.output_name = outputs[0].name
        # Static dimensions as ints, dynamic ones as None.
        self.input_shape: tuple[int | None, ...] = tuple(d if isinstance(d, int) else None for d in inputs[0].shape)
        if len(self.input_shape) != 4 or self.input_shape[1] != 3:
            raise OnnxBackendError(f"{self.path}: input '{self.input_name}' is {inputs[0].shape}, not N×3×H×W")
        self.providers: list[str] = list(self.session.get_providers())
        self.sidecar = sidecar or None

    @property
    def device(self) -> str:
        """Where the graph runs: ``cuda:N`` with the CUDA provider, else ``cpu``."""
        if self.providers and self.providers[0] == "CUDAExecutionProvider":
            return "cuda" if self.device_id is None else f"cuda:{self.device_id}"
        return "cpu"

    def describe(self) -> str:
        dims = "×".join("N" if i == 0 and d is None else "?" if d is None else str(d)
                        for i, d in enumerate(self.input_shape))
        return f"{self.path.name} ({dims} input, {self.providers[0]}, {self.threads} threads)"

    def run(self, x: Tensor) -> Tensor:
        """``N×3×H×W`` float32 in [0, 1] → the graph's output, as a CPU float32 tensor."""
        if x.ndim != 4 or x.shape[1] != 3:
            raise OnnxBackendError(f"{self.path.name}: expected an N×3×H×W batch, got {tuple(x.shape)}")
        for axis, (want, got) in enumerate(zip(self.input_shape[2:], x.shape[2:]), start=2):
            if want is not None and want != got:
                size = f"{self.input_shape[2]}×{self.input_shape[3]}"
                raise OnnxBackendError(f"{self.path.name}: takes {size} inputs, got {x.shape[2]}×{x.shape[3]}")
        arr = x.detach().to("cpu", torch.float32).contiguous().numpy()
        batch = self.input_shape[0]
        if batch is not None and arr.shape[0] != batch:
            if batch != 1:
                raise OnnxBackendError(f"{self.path.name}: exported for batches of {batch}, got {arr.shape[0]}")
            outs = [self._run(arr[i:i + 1]) for i in range(arr.shape[0])]
            return torch.from_numpy(np.concatenate(outs, axis=0))
        return torch.from_numpy(self._run(arr))

    def _run(self, arr: np.ndarray) -> np.ndarray:
        """One ``session.run``; a graph that fails on this input is :class:`OnnxBackendError` in one
        line naming the graph (onnxruntime's own multi-line log is silenced)."""
        ort = _ort()
        ro = ort.RunOptions()
        ro.log_severity_level = 4
        try:
            return self.session.run([self.output_name], {self.input_name: arr}, ro)[0]  # type: ignore[no-any-return]
        except Exception as exc:
            lines = str(exc).strip().splitlines()
            shape = "×".join(map(str, arr.shape))
            raise OnnxBackendError(f"{self.path}: onnxruntime cannot run the graph on a {shape} input "
                                   f"({lines[0] if lines else type(exc).__name__})") from exc


class OnnxMethod(Method):
    """A loaded method whose network runs in onnxruntime; everything else is the method's own.

    ``restore`` = ``finish(session(prepare(lr)))``. Attributes it does not define (``notes``,
    ``weights_info``, ``preferred_input_size`` …) are the wrapped method's. Only one sample per
    input is served for stochastic methods (their sampling happens outside the graph).
    """

    backend: ClassVar[str] = "onnxruntime"
    # Per-part timings of the wrapped method would time PyTorch, not this backend.
    bench_parts = None
    bench_breakdown = None

    def __init__(self, inner: Method, spec: ExportSpec, session: OnnxSession) -> None:
        super().__init__(inner.options, device=inner.device)
        self.inner = inner
        self.info: MethodInfo = inner.info  # type: ignore[misc]
        self.spec = spec
        self.session = session
        sidecar = session.sidecar or {}
        self.precision = str(sidecar.get("precision", "float32"))

    @property
    def run_device(self) -> torch.device:
        """Where the graph runs (the session's device: the CPU when onnxruntime has no CUDA
        provider, even for a method on CUDA, whose pre- and post-processing stay on ``device``)."""
        return torch.device(self.session.device)

    def __getattr__(self, name: str) -> Any:
        # Only reached for attributes this object lacks; "inner" itself must not recurse.
        if name == "inner":
            raise AttributeError(name)
        return getattr(self.inner, name)

    def load(self) -> None:
        self.inner.load()

    def check_scale(self, scale: int) -> None:
        self.inner.check_scale(scale)

    def restore(self, lr: Tensor, scale: int, *, seed: int | None = None, n_samples: int = 1) -> Tensor:
        self.check_input(lr)
        self.check_scale(scale)
        self.check_sampling(seed, n_samples)
        scale, n_samples = int(scale), int(n_samples)
        if n_samples > 1 and not self.info.deterministic:
            raise OnnxBackendError(f"{self.info.name}: --backend onnxruntime makes one output per input "
                                   f"(n_samples={n_samples} needs --backend torch)")
        if self.spec.preflight is not None:  # the method's own refusals, before any work (as with torch)
            self.spec.preflight(lr, scale, self.run_device)
        lr = lr.to(self.device, torch.float32)
        x = self.spec.prepare(lr, scale) if self.spec.prepare is not None else lr
        y = self.session.run(x).to(self.device)
        out = self.spec.finish(y, lr, scale) if self.spec.finish is not None else y
        reports = list(getattr(self.inner, "last_reports", []) or [])
        if len(reports) != out.shape[0]:
            reports = [{} for _ in range(out.shape[0])]
        self.last_reports = [{**r, "backend": "onnxruntime"} for r in reports]
        if n_samples > 1:
            out = out.repeat_interleave(n_samples, dim=0)
            self.last_reports = [r for r in self.last_reports for _ in range(n_samples)]
        return out


_FINGERPRINTS: dict[str, str] = {}


def export_code_fingerprint(method_module: str | None) -> str:
    """16 hex digits over the code that builds a method's graph: the files of the package holding
    ``method_module`` (its network and ``onnx_graph`` exporter, see
    :func:`restorekit.harness.runner.code_fingerprint`; for a method of the core, its own module
    file) and the core's ``onnx_export`` module. Part of the export cache key, so that a graph
    exported by older code is not served after that code changed under the same version.
    Computed once per process and module."""
    key = method_module or ""
    if key not in _FINGERPRINTS:
        from . import onnx_export
        from .harness.runner import code_fingerprint
        from .weights.checksum import sha256_file

        def file_hash(mod: Any) -> str:
            f = getattr(mod, "__file__", None)
            return sha256_file(f)[:16] if f and Path(f).is_file() else ""

        top = key.split(".")[0]
        if not key:
            own = ""
        elif top == __name__.split(".")[0]:  # a method of the core: not the whole core package
            own = file_hash(sys.modules.get(key))
        else:
            own = code_fingerprint(key)
        both = f"{own}\0{file_hash(onnx_export)}"
        _FINGERPRINTS[key] = hashlib.sha256(both.encode()).hexdigest()[:16]
    return _FINGERPRINTS[key]


def cache_path(spec: ExportSpec, method_name: str, *, opset: int = DEFAULT_OPSET, fp16: bool = False,
               method_module: str | None = None, state: str | None = None) -> Path:
    """``<cache>/onnx/<method>-<weights sha256[:16]>-<settings hash>.onnx``; the settings hash
    covers the export settings, the state of the network (``state``: :func:`state_sha256` of
    ``spec.module``, computed when not given), what options put into the graph — the spec's
    ``metadata["graph"]`` when it says so, else every option (the sidecar ``source``'s
    ``restorekit_options``: any may be a constant in the graph) — and
    :func:`export_code_fingerprint` of ``method_module`` (the method class's module). Options
    that act only around a described graph (back-projection steps) share one export."""
    from . import __version__
    from .weights import onnx_cache_dir

    state = state or state_sha256(spec.module)
    sha = spec.metadata.get("weights_sha256") or state
    code = export_code_fingerprint(method_module)
    settings = {"opset": opset, "fp16": fp16, "restorekit": __version__, "graph": spec.metadata.get("graph"),
                "dynamic_spatial": spec.dynamic_spatial, "example": list(spec.example.shape), "code": code,
                "state": state,
                "options": (spec.metadata.get(OPTIONS_KEY) or {}) if spec.metadata.get("graph") is None else None}
    key = hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:8]
    return onnx_cache_dir() / f"{method_name}-{str(sha)[:16]}-{key}.onnx"


def _graph_differences(exported: Any, current: Any) -> list[str]:
    """``key: exported → now`` for what a graph's sidecar says it was built with (``source.graph``)
    that the method's current export spec describes otherwise (compared as the sidecar stores it)."""
    if not isinstance(exported, dict) or current is None:
        return []
    now = json.loads(json.dumps(current, default=str))
    if not isinstance(now, dict):
        return []
    return [f"{k}: {exported.get(k, '—')} → {now.get(k, '—')}" for k in sorted(exported.keys() | now.keys())
            if exported.get(k) != now.get(k)]


#: A cached graph of other code unused this long is removed when the same weights are exported again.
STALE_EXPORT_DAYS = 30


def _mark_used(path: Path) -> None:
    """Note that the cached graph at ``path`` was served (its sidecar's mtime), so that another
    install sharing the cache (another venv, an editable checkout) does not take it for stale."""
    try:
        os.utime(sidecar_path(path))
    except OSError:  # a read-only cache: nothing is pruned there either
        pass


def drop_unused_exports(path: Path, method_name: str, code: str | None, *,
                        days: float = STALE_EXPORT_DAYS) -> list[Path]:
    """Remove the cached graphs of ``method_name`` beside ``path`` for the same weights (its
    ``<method>-<weights>-`` prefix) that other code exported and nothing served for ``days``: the
    cache key holds the code, so after an upgrade they are never served again here, and each
    would otherwise leave a copy of every network behind. A graph another live install uses is
    marked at each use (:func:`_mark_used`) and stays. Returns the files removed."""
    import time

    if not code:
        return []
    cutoff = time.time() - days * 86400
    prefix = path.name.rsplit("-", 1)[0] + "-"
    dropped: list[Path] = []
    for other in path.parent.glob(f"{glob.escape(prefix)}*.onnx"):
        if other == path or other.name.count("-") != path.name.count("-"):
            continue
        side_file = sidecar_path(other)
        try:
            side = read_sidecar(other)
        except RestorekitError:  # unreadable: not ours to judge
            continue
        source = (side or {}).get("source")
        source = source if isinstance(source, dict) else {}
        try:
            used = side_file.stat().st_mtime
        except OSError:
            continue
        if side is None or source.get("method", method_name) != method_name or \
                source.get("restorekit_export_code") == code or used >= cutoff:
            continue  # unreadable, another method's, this code's, or used lately
        for p in (other, side_file, other.with_name(other.name + ".lock")):
            try:
                p.unlink()
                dropped.append(p)
            except OSError:
                pass
    return dropped


def _check_options(path: Path, name: str, source: dict[str, Any], spec: ExportSpec, log: Any) -> None:
    """``--onnx``: refuse a graph exported with other options (:data:`OPTIONS_KEY`) than the method
    has now, unless its exporter describes what the graph holds (``metadata["graph"]``, compared
    before): then the options differ only outside the graph, and a note says which."""
    want = spec.metadata.get(OPTIONS_KEY) or {}
    have = source.get(OPTIONS_KEY)
    if have is None and not want:
        return
    described = spec.metadata.get("graph") is not None
    if have is None:
        if described:
            return
        raise OnnxBackendError(f"--onnx {path}: its sidecar does not record the options it was exported with, and "
                               f"{name}'s options may be built into its graph; export again with `restorekit export "
                               f"{name} --out {path} --overwrite` and these options")
    diffs = _graph_differences(have, want)
    if not diffs:
        return
    if described:
        if log is not None:
            log(f"{name}: --onnx {path} was exported with other options ({'; '.join(diffs[:3])}); the graph they "
                f"describe is the same, so they change only what runs around it")
        return
    raise OnnxBackendError(f"--onnx {path}: exported with other options than {name} has now "
                           f"({'; '.join(diffs[:3])}); export again with `restorekit export {name} --out {path} "
                           f"--overwrite` and these options")


def onnx_method(method: Method, *, onnx_path: str | os.PathLike[str] | None = None, threads: int | None = None,
                opset: int = DEFAULT_OPSET, log: Any = None) -> OnnxMethod:
    """``method`` (loaded) running on onnxruntime, from ``onnx_path`` or the export cache."""
    method.load()
    try:
        spec = find_export_spec(method)
    except ValueError as exc:  # the method's own check of its options for export: a usage problem
        raise OptionError(str(exc)) from None
    name = method.info.name
    # What the method loaded, hashed once: a graph serves it only when its sidecar records the same.
    state = state_sha256(spec.module)
    if onnx_path is not None:
        path = Path(onnx_path).expanduser()
        if not path.is_file():
            raise OnnxBackendError(f"--onnx {path}: no such file")
        try:
            found = read_sidecar(path)
        except OnnxExportError as exc:  # unreadable, or not a JSON object: the fix is the same export
            raise OnnxBackendError(f"--onnx {exc}; re-export with `restorekit export {name} --out {path} "
                                   f"--overwrite`") from None
        if found is None:  # nothing says what the graph holds: another method's would run under this name
            raise OnnxBackendError(f"--onnx {path}: no sidecar {sidecar_path(path)} beside it, so nothing says which "
                                   f"method, weights and settings the graph holds; export it with `restorekit export "
                                   f"{name} --out {path}` (which writes both)")
        side = found
        incomplete = sidecar_incomplete(side)
        if incomplete is not None:  # no hashes: nothing ties the graph to the weights loaded
            raise OnnxBackendError(f"--onnx {path}: {incomplete} ({sidecar_path(path)}); re-export with "
                                   f"`restorekit export {name} --out {path} --overwrite`")
        err = _sidecar_mismatch(path, side, "--onnx ", name)
        if err is not None:
            raise err
        source = side.get("source") or {}
        if source.get("method") not in (None, name):
            raise OnnxBackendError(f"--onnx {path}: a graph of {source['method']}, not of {name}")
        code_key = "restorekit_export_code"  # (named so that no exporter's own metadata key is taken for it)
        if log is not None and source.get(code_key) != spec.metadata.get(code_key):
            log(f"{name}: --onnx {path} was exported by other code than this {name}'s (an upgrade, or an edit); "
                f"re-export it with `restorekit export {name} --out {path} --overwrite` if its results matter")
        diffs = _graph_differences(source.get("graph"), spec.metadata.get("graph"))
        if diffs:  # options built into the graph (e.g. unrolled ReStyle passes) that these options change
            raise OnnxBackendError(f"--onnx {path}: exported with other settings than {name} has now "
                                   f"({'; '.join(diffs[:3])}); export again with these options")
        _check_options(path, name, source, spec, log)
        want = spec.metadata.get("weights_sha256")
        have = side.get("weights_sha256")
        if want and have and want != have:
            raise OnnxBackendError(f"--onnx {path}: exported from weights sha256 {have[:12]}…, but {name} "
                                   f"loaded weights {want[:12]}…; export again with `restorekit export {name}`")
        # Always the networks' state too: a file hash may be missing on one side (an embedded default,
        # random weights), or be of a file that changed after the method (or the export) loaded it.
        if state != side["state_sha256"]:
            weights = source.get("weights")
            weights = f" ('{weights}')" if weights else ""
            raise OnnxBackendError(f"--onnx {path}: exported from other weights{weights} than {name} loaded (its "
                                   f"state_sha256 is not the loaded network's); export again with "
                                   f"`restorekit export {name}`")
    else:
        path = cache_path(spec, name, opset=opset, method_module=type(method).__module__, state=state)

        def cached() -> dict[str, Any] | None:
            """The cached graph's sidecar when both are there, belong together and hold the network
            the method loaded."""
            try:
                side = read_sidecar(path) if path.is_file() else None
            except RestorekitError:  # an unreadable sidecar: exported again
                return None
            if side is None or sidecar_incomplete(side) is not None or sidecar_problem(path, side) is not None:
                return None
            if side["state_sha256"] != state:
                return None
            return side

        got = cached()
        if got is not None:
            _mark_used(path)
        else:
            from .weights import cache_folder
            from .weights.cache import file_lock

            cache_folder(path.parent)
            # The processes of a torchrun job (or two commands) that find no cached export wait
            # for the first one's instead of each exporting the same graph.
            with file_lock(path.with_name(path.name + ".lock")):
                got = cached()  # another process may have made it
                if got is None:
                    if log is not None:
                        log(f"{name}: exporting to ONNX once for --backend onnxruntime → {path}")
                    got = export_onnx(spec, path, opset=opset, log=log).info
                    drop_unused_exports(path, name, spec.metadata.get("restorekit_export_code"))
        side = got
    session = OnnxSession(path, device=method.device, threads=threads, sidecar=side)
    if method.device.type == "cuda" and session.device == "cpu":
        msg = (f"{name}: onnxruntime runs the graph on the CPU: it has no CUDA provider, or its CUDA provider did not "
               "load (install onnxruntime-gpu built for this CUDA)")
        if log is not None:
            log(msg)
        else:  # compare and bench method give no log: the user must still hear it
            print(f"warning: {msg}", file=sys.stderr, flush=True)
    return OnnxMethod(method, spec, session)
