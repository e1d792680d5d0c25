"""Export a restorekit network to ONNX, checked against PyTorch before the file appears.

What is exported is one ``nn.Module`` that takes images in the framework's convention
(``N×3×H×W`` float32 RGB in ``[0, 1]``) and returns images in the same convention. Everything a
method does around its network that is not a fixed-shape tensor program (resizing the input to
the network's size, resizing the result to ``scale ×`` the input, padding to a stride) stays
in PyTorch, in the :class:`ExportSpec`'s ``prepare``/``finish`` functions, so the torch and
onnxruntime backends share that code exactly.

Methods offer an export in one of two ways, tried in this order by :func:`find_export_spec`:

1. the method object implements the :class:`Exportable` protocol (``export_module()``);
2. registry-free lookup: the top-level package of the method's class has a module
   ``onnx_graph`` with a dict ``ONNX_EXPORTERS = {method name: builder(method) -> ExportSpec}``.
   First-party plugins use this, which keeps the export code out of their method modules;
   third-party plugins may use either.

:func:`export_onnx` writes atomically: the graph is exported into memory, where it is checked
with ``onnx.checker`` and run with onnxruntime on a seeded test batch (two rows
when the batch axis is dynamic, which also proves the graph does not bake the batch size in;
with ``dynamic_spatial`` once more at a second, non-square size on ``spatial_multiple``, which
proves the same of height and width); the largest absolute difference from the PyTorch output
is reported and must not exceed the tolerance, else :class:`OnnxExportError` is raised — no file
is left behind. Only then are the checked bytes written, as every output is
(:func:`~restorekit.images.write_via_temp`: through the descriptor of a temporary file beside the
target, never by its name, which another user of a shared folder could swap for a link, and
renamed into place only while it is still that file). A JSON sidecar ``<file>.json``
records the source weights' sha256 (the weights file's, when the spec names one, and always
the module state's: :func:`state_sha256`), opset, input/output names and shapes, dynamic
axes, precision, the tolerance and the difference reached, and the versions involved, and
the sha256 of the graph file itself (its key fields — method, weights, their sha256 and license,
the state's — are also in the graph's own ``metadata_props``, named ``restorekit.*``, for
whoever gets the ``.onnx`` without its sidecar). Both files are written under hidden names
before either is renamed into place, the graph first; should the sidecar's rename fail, the
previous graph (kept aside under a second name until both are in place) is put back, so a failed
export leaves the previous pair as it was. The two renames are still two, so a graph can end up
beside another export's sidecar (two exports to one path at once, an
export killed between the renames, one file copied without the other); whoever uses the graph
checks that with :func:`sidecar_problem`. With ``overwrite=False`` the graph is linked into
place, which fails when the path exists by then: an existing file is never replaced.

The exporter is PyTorch's TorchScript-based one (``dynamo=False``): it needs nothing beyond
``onnx`` and ``onnxruntime`` and exports a small model in seconds; the torch.export-based
exporter needs ``onnxscript``, takes minutes on CPU for a small pSp and specialises a batch
of one to a fixed batch size. torch 2.9 made that exporter the default and the TorchScript one
deprecated (each call warns ``DeprecationWarning: You are using the legacy TorchScript-based ONNX
export``): the warning is silenced around the call, as the tracer's are, and the choice stands
until a torch release drops ``dynamo=False`` (then the export fails in one line naming it).
"""

from __future__ import annotations

import copy
import hashlib
import importlib
import io
import json
import os
import secrets
import stat
import time
import warnings
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterator, Protocol, runtime_checkable

import torch
from torch import Tensor, nn

from .errors import FileSystemError, RestorekitError, describe_os_error
from .images import temp_prefix, write_via_temp
from .safe_open import Folder
from .weights.checksum import sha256_file

SIDECAR_FORMAT = "restorekit.onnx/1"
DEFAULT_OPSET = 17
MIN_OPSET = 11
# Largest |ONNX − PyTorch| allowed by default, on [0, 1] images: float32 graphs differ only
# by summation order (1e-3 is a quarter of an 8-bit level); float16 graphs by half precision.
DEFAULT_TOLERANCE = 1e-3
DEFAULT_TOLERANCE_FP16 = 3e-2
INPUT_NAME = "image"
OUTPUT_NAME = "restored"


class OnnxExportError(RestorekitError):
    """A network cannot be exported, or its ONNX graph does not reproduce PyTorch's output."""


class OnnxOutputExists(OnnxExportError):
    """``export_onnx(..., overwrite=False)``: the target path exists (it may have appeared while exporting)."""


def _missing_runtime(exc: ImportError) -> OnnxExportError:
    return OnnxExportError(f"ONNX export needs the 'onnx' and 'onnxruntime' packages ({exc.name} is missing); "
                           f"install them with pip install 'restorekit[onnx]'")


@dataclass(frozen=True)
class ExportSpec:
    """What to export and how a backend runs it.

    ``module``: ``N×3×H×W`` float32 in [0, 1] → images in [0, 1] (clamped by the module).
    ``example``: a ``1×3×H×W`` input of the size the graph is built for. With
    ``dynamic_spatial`` the height and width may vary (fully convolutional networks; sides
    must then be multiples of ``spatial_multiple``), else they are fixed to the example's.
    ``metadata``: recorded in the sidecar; ``weights_sha256`` keys the export cache.
    ``prepare(lr, scale)`` turns a method input into the graph input and
    ``finish(out, lr, scale)`` the graph output into the method's result; both are PyTorch code
    run outside the graph (identity when ``None``). ``preflight(lr, scale, device)`` runs before
    them on every onnxruntime call (``device``: where the graph runs): the method's own refusals
    and notes that its PyTorch ``restore`` gives before any work (a memory estimate, a scale it
    was not trained for), so both backends refuse the same inputs.

    ``metadata["graph"]``: what the graph holds that the method's options decide (an unrolled
    pass count, a fixed size), as a JSON object. A graph whose sidecar records another is refused
    by ``--onnx``; when it is given, options that differ only outside the graph (in ``prepare``
    and ``finish``) do not refuse it. Without it, every option that is not result-neutral is
    taken to be in the graph (see :func:`export_options`).
    """

    module: nn.Module
    example: Tensor
    metadata: dict[str, Any] = field(default_factory=dict)
    dynamic_spatial: bool = False
    spatial_multiple: int = 1
    prepare: Callable[[Tensor, int], Tensor] | None = None
    finish: Callable[[Tensor, Tensor, int], Tensor] | None = None
    preflight: Callable[[Tensor, int, torch.device], None] | None = None


@runtime_checkable
class Exportable(Protocol):
    """A method whose network can be exported: ``export_module()`` describes it (after ``load()``)."""

    def export_module(self) -> ExportSpec:
        """The exportable network, an example input, metadata and the code around the graph."""
        ...


def _package_exporter(cls: type, name: str) -> Callable[[Any], ExportSpec]:
    """``cls``'s package's ``onnx_graph.ONNX_EXPORTERS[name]``; :class:`OnnxExportError` when none."""
    package = cls.__module__.split(".")[0]
    modname = f"{package}.onnx_graph"
    try:
        mod = importlib.import_module(modname)
    except ModuleNotFoundError as exc:
        if exc.name not in (modname, package):
            raise
        raise OnnxExportError(f"method '{name}' cannot be exported to ONNX: it has no export_module() and "
                              f"its package has no {modname} module") from None
    builders: dict[str, Callable[[Any], ExportSpec]] = getattr(mod, "ONNX_EXPORTERS", {})
    if name not in builders:
        known = ", ".join(sorted(builders)) or "none"
        raise OnnxExportError(f"method '{name}' cannot be exported to ONNX ({modname} exports: {known})")
    return builders[name]


def check_exportable(cls: type) -> None:
    """:class:`OnnxExportError` when a method class offers no export (see :func:`find_export_spec`);
    asks nothing of weights or options, so it can be said before a method is built or loaded."""
    name = str(getattr(getattr(cls, "info", None), "name", cls.__name__))
    if not callable(getattr(cls, "export_module", None)):
        _package_exporter(cls, name)


#: The sidecar ``source`` key of :func:`export_options` (prefixed like ``restorekit_export_code``,
#: so that no exporter's own metadata key is taken for it).
OPTIONS_KEY = "restorekit_options"


def export_options(method: Any) -> dict[str, Any]:
    """The method's options that may be built into its graph: its validated options as JSON values
    without the result-neutral ones (:func:`restorekit.interfaces.result_options`) and without
    ``weights``, whose file and state hashes identify what was loaded better than its spelling.
    Part of the export cache key and recorded in the sidecar's ``source``."""
    from .interfaces import Options, result_options

    options = getattr(method, "options", None)
    if not isinstance(options, Options):
        return {}
    return {k: v for k, v in result_options(options).items() if k != "weights"}


def find_export_spec(method: Any) -> ExportSpec:
    """The :class:`ExportSpec` of a loaded method: its ``export_module()``, else its package's
    ``onnx_graph.ONNX_EXPORTERS[name]``; :class:`OnnxExportError` when it offers neither."""
    name = str(getattr(getattr(method, "info", None), "name", type(method).__name__))
    fn = getattr(method, "export_module", None)
    if callable(fn):
        spec = fn()
    else:
        spec = _package_exporter(type(method), name)(method)
    if not isinstance(spec, ExportSpec):
        raise OnnxExportError(f"method '{name}': its exporter returned {type(spec).__name__}, not an ExportSpec")
    from .onnx_backend import export_code_fingerprint

    # The code that builds the graph, recorded in the sidecar's source: a graph a user keeps
    # (`run --onnx FILE`) is told apart from one the current code would export.
    spec.metadata["restorekit_export_code"] = export_code_fingerprint(type(method).__module__)
    spec.metadata[OPTIONS_KEY] = export_options(method)
    return spec


@dataclass(frozen=True)
class ExportResult:
    """Where the graph went and how closely onnxruntime reproduced PyTorch."""

    path: Path
    sidecar: Path
    max_abs_diff: float
    tolerance: float
    seconds: float
    info: dict[str, Any]


class _Float16(nn.Module):
    """Runs ``module`` in float16 between float32 input and output (the I/O contract stays float32)."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module.half()

    def forward(self, x: Tensor) -> Tensor:
        return self.module(x.half()).float()


@contextmanager
def _half_safe_symbolics(opset: int, active: bool) -> Iterator[None]:
    """While exporting a float16 graph, export ``addcmul`` as ``a + b·c`` in the inputs' type.

    The TorchScript exporter's own ``addcmul`` casts to float32 (its ``value`` scalar is a float
    constant), which leaves float32 activations meeting float16 weights downstream: onnxruntime
    then refuses the graph (StyleGAN2's modulated convs use ``addcmul``).
    """
    if not active:
        yield
        return
    from torch.onnx import symbolic_helper

    @symbolic_helper.parse_args("v", "v", "v", "f")
    def addcmul(g: Any, self: Any, tensor1: Any, tensor2: Any, value: float = 1.0) -> Any:
        prod = g.op("Mul", tensor1, tensor2)
        if value != 1.0:
            if opset >= 15:
                scalar = g.op("CastLike", g.op("Constant", value_t=torch.tensor(value)), prod)
            else:  # no CastLike before opset 15: the graph being exported is float16
                scalar = g.op("Constant", value_t=torch.tensor(value, dtype=torch.float16))
            prod = g.op("Mul", prod, scalar)
        return g.op("Add", self, prod)

    torch.onnx.register_custom_op_symbolic("aten::addcmul", addcmul, opset)
    try:
        yield
    finally:
        torch.onnx.unregister_custom_op_symbolic("aten::addcmul", opset)


def max_opset() -> int:
    """The highest opset this torch's TorchScript exporter writes."""
    try:
        from torch.onnx import _constants

        return int(_constants.ONNX_MAX_OPSET)
    except (ImportError, AttributeError):  # a torch without the constant: the last one known to work here
        return 20


def check_opset(opset: int) -> None:
    """:class:`OnnxExportError` (one line) for an opset outside :data:`MIN_OPSET` … :func:`max_opset`.

    Checked before exporting: for an opset it does not know, torch's exporter prints its whole IR
    graph on stdout (from C++, so nothing in Python can hold it back) before it raises.
    """
    top = max_opset()
    if not MIN_OPSET <= opset <= top:
        raise OnnxExportError(f"opset {opset} cannot be exported: this torch ({torch.__version__}) exports "
                              f"opsets {MIN_OPSET}–{top}")


def state_sha256(module: nn.Module) -> str:
    """sha256 over a module's state dict (names, dtypes, shapes, values): what identifies its
    weights when no weights file (and so no file sha256) is known, and what a graph is checked
    against before it is used (the weights file may have changed since it was loaded)."""
    h = hashlib.sha256()
    for k, v in sorted(module.state_dict().items()):
        h.update(f"{k}|{v.dtype}|{tuple(v.shape)}|".encode())
        h.update(tensor_bytes(v))
    return h.hexdigest()


def tensor_bytes(t: Tensor) -> bytes:
    """A tensor's values as bytes, for a hash (bfloat16, which numpy lacks, as float32)."""
    t = t.detach().cpu().contiguous()
    return t.numpy().tobytes() if t.dtype != torch.bfloat16 else t.float().numpy().tobytes()


def sidecar_path(path: str | os.PathLike[str]) -> Path:
    """``model.onnx`` → ``model.onnx.json``."""
    p = Path(path)
    return p.with_name(p.name + ".json")


def read_sidecar(path: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The sidecar of an exported graph, or ``None`` when there is none; :class:`OnnxExportError`
    when the file there is unreadable or not a JSON object (not a sidecar: said so, not taken for
    a missing one)."""
    p = sidecar_path(path)
    if not p.is_file():
        return None
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise OnnxExportError(f"{p}: unreadable ONNX sidecar ({exc})") from None
    if not isinstance(data, dict):
        got = "null" if data is None else _JSON_NAMES.get(type(data), type(data).__name__)
        raise OnnxExportError(f"{p}: not an ONNX sidecar (its JSON is {got}, not an object)")
    return data


def sidecar_problem(path: str | os.PathLike[str], side: dict[str, Any] | None) -> str | None:
    """Why ``side`` (the sidecar read beside the graph at ``path``) does not describe that graph,
    in words ending before the fix, or ``None`` when it does.

    The sidecar's ``sha256`` is the graph file's as it was written; a sidecar without one (not
    written by :func:`export_onnx`) is taken as it is, as is a missing sidecar.
    """
    want = (side or {}).get("sha256")
    if want is None:
        return None
    have = sha256_file(path)
    if have == want:
        return None
    return (f"{path}: its sidecar {sidecar_path(path)} belongs to another graph (sidecar sha256 "
            f"{str(want)[:12]}…, file {have[:12]}…; the two were not written by the same export)")


def sidecar_incomplete(side: dict[str, Any] | None) -> str | None:
    """Why ``side`` cannot vouch for its graph — not of the format :func:`export_onnx` writes now
    (``format`` ≠ :data:`SIDECAR_FORMAT`), or without the graph file's ``sha256`` or the module
    state's ``state_sha256`` — in words ending before the fix, or ``None`` when it can.

    Without those fields nothing ties the graph to the weights a method loaded, so a graph of
    other weights would run under its name; such a sidecar is refused, not taken as it is."""
    if not isinstance(side, dict):
        return "no sidecar"
    fmt = side.get("format")
    if fmt != SIDECAR_FORMAT:
        return (f"its sidecar is of format {fmt!r}, not {SIDECAR_FORMAT!r}" if fmt is not None
                else f"its sidecar has no 'format' (this restorekit writes {SIDECAR_FORMAT!r})")
    missing = [k for k in ("sha256", "state_sha256") if not isinstance(side.get(k), str) or not side.get(k)]
    if missing:
        return f"its sidecar lacks {' and '.join(missing)}, so nothing says which weights the graph holds"
    return _mistyped(side)


# What the backend reads from a sidecar besides its hashes, and the JSON types it must have (absent
# or null is allowed for each): a hand-edited sidecar is a one-line refusal, not a crash.
_SIDECAR_TYPES: dict[str, tuple[type, ...]] = {"weights_sha256": (str,), "precision": (str,), "source": (dict,)}
_SOURCE_TYPES: dict[str, tuple[type, ...]] = {"method": (str,), "weights": (str,), "graph": (dict,),
                                             "restorekit_export_code": (str,), OPTIONS_KEY: (dict,)}
_JSON_NAMES = {str: "a string", dict: "an object", int: "a number", float: "a number", bool: "true or false",
               list: "an array"}


def _mistyped(side: dict[str, Any]) -> str | None:
    """``its sidecar's 'KEY' is …, not …`` for the first field of another JSON type than expected."""
    def check(where: dict[str, Any], types: dict[str, tuple[type, ...]], prefix: str) -> str | None:
        for key, allowed in types.items():
            value = where.get(key)
            if value is not None and not isinstance(value, allowed):
                got = _JSON_NAMES.get(type(value), type(value).__name__)
                want = " or ".join(_JSON_NAMES.get(t, t.__name__) for t in allowed)
                return f"its sidecar's '{prefix}{key}' is {got}, not {want}"
        return None

    return check(side, _SIDECAR_TYPES, "") or check(side.get("source") or {}, _SOURCE_TYPES, "source.")


def _stage(path: Path, data: bytes) -> str:
    """``data`` written whole (:func:`~restorekit.images.write_via_temp`) under a new hidden name
    beside ``path``, which is returned: not yet in place, so that a graph and its sidecar are both
    written before either replaces anything. Errors name ``path``, not the hidden name."""
    for _ in range(100):
        name = f"{temp_prefix(path.name)}{secrets.token_hex(4)}.export"
        try:
            write_via_temp(path.with_name(name), lambda f: f.write(data), exclusive=True)
            return name
        except FileExistsError:
            continue
        except RestorekitError:
            raise
        except OSError as exc:
            raise FileSystemError(describe_os_error(exc, path)) from exc
    raise FileSystemError(f"cannot write {path}: no free temporary name beside it")


def _place(folder: Folder, staged: str, path: Path, *, exclusive: bool) -> None:
    """The staged file renamed to ``path`` or, with ``exclusive``, linked there so nothing is
    replaced (:class:`OnnxOutputExists`); an error names ``path``."""
    try:
        if exclusive:
            folder.link_new(staged, path.name)
        else:
            folder.replace(staged, path.name)
    except FileExistsError:
        raise OnnxOutputExists(f"{path} exists") from None
    except OSError as exc:
        raise FileSystemError(describe_os_error(exc, path)) from exc


def _present(folder: Folder, name: str) -> bool:
    try:
        folder.lstat(name)
        return True
    except FileNotFoundError:
        return False


def _keep_aside(folder: Folder, path: Path) -> str | None:
    """A second name for the file at ``path`` (a hard link; where there are none, the file renamed),
    so it can be put back should its sidecar not follow it into place; ``None`` when there is no
    file there (nothing, or a folder, which the rename then refuses)."""
    try:
        if stat.S_ISDIR(folder.lstat(path.name).st_mode):
            return None
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise FileSystemError(describe_os_error(exc, path)) from exc
    for _ in range(100):
        name = f"{temp_prefix(path.name)}{secrets.token_hex(4)}.previous"
        try:
            folder.link_new(path.name, name)
            return name
        except FileExistsError:
            continue
        except OSError as exc:
            folder.unlink(name)
            raise FileSystemError(describe_os_error(exc, path)) from exc
    raise FileSystemError(f"cannot write {path}: no free temporary name beside it")


def _put_pair(path: Path, graph: bytes, side: Path, info: bytes, *, exclusive: bool) -> None:
    """The graph at ``path`` and its sidecar at ``side`` (the same folder) put in place as a pair:
    both are written under hidden names first, then renamed (with ``exclusive``, linked) into place,
    the graph first. When the sidecar cannot follow, the graph is undone: the previous one, kept
    aside under a second name until both are in place, is put back (or the new one removed when
    there was none), so a failed export leaves the previous pair as it was."""
    folder = Folder(path.parent, None)
    staged: list[str] = []
    aside: str | None = None
    placed = False
    try:
        staged.append(_stage(path, graph))
        staged.append(_stage(side, info))
        if not exclusive:
            aside = _keep_aside(folder, path)
        _place(folder, staged[0], path, exclusive=exclusive)
        placed = True
        _place(folder, staged[1], side, exclusive=exclusive)
    except BaseException as exc:
        if aside is not None and (placed or not _present(folder, path.name)):
            try:
                folder.replace(aside, path.name)
            except OSError as undo:
                kept, aside = aside, None  # (not removed below: it is the only copy left)
                raise FileSystemError(f"{path}: {exc}; the previous graph could not be put back "
                                      f"({describe_os_error(undo, path)}): it is kept as {folder.path / kept}"
                                      ) from exc
            aside = None
        elif placed:
            folder.unlink(path.name)
        raise
    finally:
        for name in [*staged, *([aside] if aside is not None else [])]:
            with suppress(OSError):
                folder.unlink(name)


def check_input(example: Tensor, batch: int, seed: int = 0) -> Tensor:
    """A seeded ``batch×3×H×W`` batch in [0, 1] the size of ``example``: smooth ramps plus noise,
    different in every row (so a graph that mixed rows up would show it)."""
    g = torch.Generator().manual_seed(seed)
    _, c, h, w = example.shape
    yy = torch.linspace(0, 1, h).reshape(1, 1, h, 1)
    xx = torch.linspace(0, 1, w).reshape(1, 1, 1, w)
    phase = torch.rand(batch, c, 1, 1, generator=g)
    base = 0.5 + 0.35 * torch.sin(6.0 * (yy * phase + xx * (1 - phase)) + 6.28 * phase)
    return (base + 0.1 * torch.rand(batch, c, h, w, generator=g)).clamp(0, 1).float()


def _shape(t: Tensor, dyn: dict[int, str]) -> list[int | str]:
    return [dyn.get(i, int(s)) for i, s in enumerate(t.shape)]


def run_onnxruntime(graph: bytes | str | os.PathLike[str], x: Tensor, threads: int = 1) -> Tensor:
    """One CPU onnxruntime run of a graph (its serialized bytes, or its file) on ``x`` (the export check)."""
    try:
        import onnxruntime as ort
    except ImportError as exc:
        raise _missing_runtime(exc) from None
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.log_severity_level = 4  # a failed run is reported by the caller, in one line
    source = graph if isinstance(graph, bytes) else str(graph)
    sess = ort.InferenceSession(source, so, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    out = sess.run(None, {name: x.detach().cpu().float().contiguous().numpy()})[0]
    return torch.from_numpy(out)


def export_onnx(spec: ExportSpec, out: str | os.PathLike[str], *, opset: int = DEFAULT_OPSET,
                dynamic_batch: bool = True, fp16: bool = False, tolerance: float | None = None,
                overwrite: bool = True, log: Callable[[str], None] | None = None) -> ExportResult:
    """Export ``spec.module`` to ``out`` (see the module docstring); returns the check's figures.

    The module is traced in eval mode at ``spec.example``'s size, on the CPU in float32 (a copy
    when it is elsewhere; float16 inside the graph with ``fp16``); its modes are restored after. Raises :class:`OnnxExportError` when export fails or
    the largest absolute difference from PyTorch exceeds ``tolerance`` (default
    :data:`DEFAULT_TOLERANCE`, or :data:`DEFAULT_TOLERANCE_FP16` with ``fp16``); then no file
    is written. With ``overwrite=False``, :class:`OnnxOutputExists` when ``out`` exists when the
    graph is put in place (checked there, not before: nothing is replaced, not even a file that
    appeared while exporting), and neither file is written.
    """
    try:
        import onnx
        import onnxruntime
    except ImportError as exc:
        raise _missing_runtime(exc) from None
    from . import __version__

    t_start = time.perf_counter()
    out = Path(out)
    tol = float(tolerance if tolerance is not None else (DEFAULT_TOLERANCE_FP16 if fp16 else DEFAULT_TOLERANCE))
    if tol < 0:
        raise OnnxExportError(f"tolerance must be >= 0, got {tol}")
    check_opset(opset)
    if spec.example.ndim != 4 or spec.example.shape[1] != 3:
        raise OnnxExportError(f"export example must be 1×3×H×W, got {tuple(spec.example.shape)}")
    state = state_sha256(spec.module)
    props = _metadata_props(spec.metadata, state, __version__)
    # The module is used as it is when already on the CPU in float32 (no copy of a large model).
    tensors = list(spec.module.parameters()) + list(spec.module.buffers())
    on_cpu_fp32 = all(t.device.type == "cpu" and (t.dtype == torch.float32 or not t.is_floating_point())
                      for t in tensors)
    reference = spec.module if on_cpu_fp32 else copy.deepcopy(spec.module).cpu().float()
    modes = [(m, m.training) for m in reference.modules()]
    reference.eval()
    graph_module: nn.Module = _Float16(copy.deepcopy(reference)).eval() if fp16 else reference
    example = spec.example[:1].detach().cpu().float()

    dyn_in: dict[int, str] = {}
    dyn_out: dict[int, str] = {}
    if dynamic_batch:
        dyn_in[0] = dyn_out[0] = "batch"
    if spec.dynamic_spatial:
        dyn_in.update({2: "height", 3: "width"})
        dyn_out.update({2: "out_height", 3: "out_width"})
    dynamic_axes = {INPUT_NAME: dyn_in, OUTPUT_NAME: dyn_out} if dyn_in else None

    try:
        try:  # (a folder that cannot be made fails before the export, not after it)
            out.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise FileSystemError(describe_os_error(exc, out)) from exc
        with torch.no_grad(), warnings.catch_warnings(), _half_safe_symbolics(opset, fp16):
            # The TorchScript exporter warns about its deprecation and about traced shape checks.
            warnings.simplefilter("ignore")
            buffer = io.BytesIO()  # into memory: nothing is written by a name that could be swapped meanwhile
            try:
                torch.onnx.export(graph_module, (example,), buffer, dynamo=False, opset_version=opset,
                                  input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                                  dynamic_axes=dynamic_axes, do_constant_folding=True)
            except Exception as exc:
                first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                raise OnnxExportError(f"{out}: torch.onnx.export failed: {first}") from exc
            example_out = reference(example)
        try:
            graph = _with_metadata_props(buffer.getvalue(), props)
            del buffer
            onnx.checker.check_model(graph)
        except Exception as exc:
            raise OnnxExportError(f"{out}: the exported graph is not valid ONNX: {exc}") from exc

        check_batch = 2 if dynamic_batch else 1
        h0, w0 = int(example.shape[-2]), int(example.shape[-1])
        sizes = [(h0, w0)]
        if spec.dynamic_spatial:
            # A second, non-square size on the spatial multiple: proves the graph does not bake
            # the example's height and width in (as the two-row batch does for the batch size).
            step = max(1, int(spec.spatial_multiple))
            sizes.append((h0 + step, w0 + 2 * step))
        diff = 0.0
        for i, (h, w) in enumerate(sizes):
            second = i > 0
            where = f" at {h}×{w} (the graph is declared dynamic in height and width)" if second else ""
            x = check_input(example.new_zeros(1, 3, h, w), check_batch, seed=i)
            with torch.no_grad():
                expected = reference(x)
            try:
                got = run_onnxruntime(graph, x)
            except OnnxExportError:
                raise
            except Exception as exc:
                first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                raise OnnxExportError(f"{out}: onnxruntime cannot run the exported graph{where} ({first}); "
                                      f"no file written") from exc
            if got.shape != expected.shape:
                raise OnnxExportError(f"{out}: onnxruntime returned shape {tuple(got.shape)}, PyTorch "
                                      f"{tuple(expected.shape)}{where}; no file written")
            d = float((got - expected).abs().max())
            if not d <= tol:  # NaN fails too
                raise OnnxExportError(f"{out}: onnxruntime output differs from PyTorch by {d:.3g}{where} "
                                      f"(> tolerance {tol:g}); no file written")
            diff = max(diff, d)
        if log is not None:
            at = " and ".join(f"{h}×{w}" for h, w in sizes)
            log(f"export check: max |onnxruntime − PyTorch| = {diff:.3g} on a batch of {check_batch} at {at} "
                f"(tolerance {tol:g})")

        info: dict[str, Any] = {
            "format": SIDECAR_FORMAT,
            "file": out.name,
            "sha256": hashlib.sha256(graph).hexdigest(),  # of the bytes checked, which are the bytes written
            "opset": opset,
            "exporter": "torch.onnx (TorchScript)",
            "precision": "float16" if fp16 else "float32",
            "input": {"name": INPUT_NAME, "shape": _shape(example, dyn_in), "dtype": "float32", "range": [0, 1],
                      "layout": "NCHW RGB"},
            "output": {"name": OUTPUT_NAME, "shape": _shape(example_out, dyn_out), "dtype": "float32",
                       "range": [0, 1], "layout": "NCHW RGB"},
            "dynamic_axes": {k: {str(i): n for i, n in v.items()} for k, v in (dynamic_axes or {}).items()},
            "spatial_multiple": int(spec.spatial_multiple) if spec.dynamic_spatial else None,
            "tolerance": tol,
            "max_abs_diff": diff,
            "check_batch": check_batch,
            "check_sizes": [list(hw) for hw in sizes],
            "source": spec.metadata,
            "weights_sha256": spec.metadata.get("weights_sha256"),
            "state_sha256": state,
            "metadata_props": sorted(props),
            "versions": {"restorekit": __version__, "torch": torch.__version__, "onnx": onnx.__version__,
                         "onnxruntime": onnxruntime.__version__},
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }
        side = sidecar_path(out)
        _put_pair(out, graph, side, (json.dumps(info, indent=2) + "\n").encode("utf-8"), exclusive=not overwrite)
    finally:
        for m, mode in modes:
            m.training = mode
    return ExportResult(out, side, diff, tol, time.perf_counter() - t_start, info)


#: The sidecar fields copied into the graph's own ``metadata_props`` (as ``restorekit.KEY``).
_PROPS_FROM_SOURCE = ("method", "weights", "weights_file", "weights_sha256", "license")


def _metadata_props(metadata: dict[str, Any], state: str, version: str) -> dict[str, str]:
    """``restorekit.*`` key fields for the graph's ``metadata_props`` (string values; unknown ones left out)."""
    props = {f"restorekit.{k}": metadata.get(k) for k in _PROPS_FROM_SOURCE}
    props.update({"restorekit.sidecar_format": SIDECAR_FORMAT, "restorekit.state_sha256": state,
                  "restorekit.version": version})
    return {k: str(v) for k, v in props.items() if isinstance(v, (str, int, float)) and not isinstance(v, bool)}


def _with_metadata_props(graph: bytes, props: dict[str, str]) -> bytes:
    """The serialized ``graph`` with ``props`` added to its ``metadata_props`` (replacing equal keys)."""
    if not props:
        return graph
    import onnx

    model = onnx.load_model_from_string(graph)
    kept = [(p.key, p.value) for p in model.metadata_props if p.key not in props]
    del model.metadata_props[:]
    for key, value in [*kept, *sorted(props.items())]:
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    return model.SerializeToString()
