"""Loading weight files without running code from them, and converting them to safetensors.

``.safetensors`` files are read as they are; anything else goes through
``torch.load(weights_only=True)``, so a pickle that names arbitrary globals is refused with
:class:`~restorekit.errors.UnsafeFileError`. :func:`pickle_globals` reads a pickle's opcodes
(nothing is imported or called) to say what such a file asks for. This layer takes paths;
weights names are resolved to paths by the catalogue.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import json
import os
import pickle
import re
import stat
import warnings
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import FileSystemError, RestorekitError, UnsafeFileError, describe_os_error
from ..safe_open import create_exclusive
from .safe_pickle import ALLOWED_GLOBALS as NUMPY_ONLY_GLOBALS
from .st_bytes import sort_metadata_in_place

if TYPE_CHECKING:
    from torch import Tensor

__all__ = ["UnreadableWeightsError", "OutputExistsError", "pickle_globals", "unsafe_globals", "read_checkpoint",
           "read_safetensors", "check_format", "flatten_state_dict", "state_dict_from", "safetensors_metadata",
           "write_safetensors", "state_mismatch"]

_UNSAFE_HINT = ("it would import '{glob}' and could run code when loaded, so it is not unpickled here. Where "
                "you trust the file, re-save its tensors (torch.save of a dict of tensors, e.g. {{'g_ema': "
                "state_dict, 'latent_avg': ...}}) and use that; or, for a file you trust, `restorekit weights "
                "import NAME FILE --opt allow_unsafe=true` and a loader's allow_unsafe option (the stylegan2 "
                "generator: --opt allow_unsafe=true)")


class OutputExistsError(RestorekitError):
    """An output file exists and was not to be replaced."""


class UnreadableWeightsError(RestorekitError):
    """A weights file is not readable in its format (damaged, truncated, or no weights file at all)."""


def pickle_globals(path: str | os.PathLike[str]) -> set[str]:
    """The ``module.name`` globals a weights file's pickles refer to.

    Reads opcodes with :mod:`pickletools` only; nothing is imported or called. A zip checkpoint:
    every ``.pkl`` entry (among them the ``<prefix>/data.pkl`` torch reads, ``<prefix>`` being the
    folder of the archive's first entry, whatever other entries precede or mimic it); a legacy
    torch file: its five pickles (magic number, protocol, system info, the object, storage keys);
    any other pickle: the pickle at its start (and any whole pickle after it). The names strings
    give to ``STACK_GLOBAL`` are followed through the stack and memo, whichever opcode pushed
    them (``BINUNICODE``, ``SHORT_BINSTRING``, …); one the scan cannot name is ``?.?``.
    """
    import zipfile

    path = Path(path)
    found: set[str] = set()
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as zf:
                for info in zf.infolist():
                    if info.filename.lower().endswith(".pkl"):  # data.pkl under any prefix, any case
                        with zf.open(info) as f:
                            _pickle_globals_of(f, found)
            return found
        with open(path, "rb") as f:
            first = _pickle_globals_of(f, found)
            if first == _TORCH_LEGACY_MAGIC:
                for _ in range(4):
                    _pickle_globals_of(f, found)
            elif first is not _BROKEN:  # a plain pickle: later whole pickles too (a loader may read on)
                for _ in range(64):
                    if f.peek(1)[:1] != b"\x80" or _pickle_globals_of(f, found) is _BROKEN:
                        break
    except (OSError, zipfile.BadZipFile, zipfile.LargeZipFile, NotImplementedError, EOFError, RuntimeError):
        pass  # unreadable here: what was seen so far (torch.load, weights-only, is the second check)
    return found


_STRING_OPS = frozenset({"SHORT_BINUNICODE", "BINUNICODE", "UNICODE", "BINUNICODE8", "STRING", "BINSTRING",
                         "SHORT_BINSTRING", "SHORT_BINBYTES", "BINBYTES", "BINBYTES8"})
_BROKEN = object()  # what _pickle_globals_of returns for a pickle that does not parse
_MARK = object()  # a MARK on the simulated stack


def _pickle_globals_of(f: Any, found: set[str]) -> Any:
    """Add the globals of the pickle at ``f``'s position to ``found``, reading up to its STOP.

    Simulates the unpickler's stack with strings (what a push of a string opcode, memo ``GET`` or
    ``DUP`` gives) and placeholders (anything else), following each opcode's stack effect from
    :mod:`pickletools`, so ``STACK_GLOBAL`` is named by exactly the two values it takes. Returns
    the value of a lone integer pickle (torch's legacy magic number),
    :data:`_BROKEN` for a pickle that does not parse (what was seen so far is kept), else None.
    """
    import _compat_pickle
    import pickletools

    stack: list[Any] = []
    memo: dict[int, Any] = {}
    ints: list[int] = []
    ops = 0

    def pop() -> Any:
        return stack.pop() if stack else None

    def pop_mark() -> None:
        while stack:
            if stack.pop() is _MARK:
                return

    def name(module: str, qualname: str) -> str:
        if (module, qualname) in _compat_pickle.NAME_MAPPING:  # python 2 names, as pickle maps them
            module, qualname = _compat_pickle.NAME_MAPPING[(module, qualname)]
        else:
            module = _compat_pickle.IMPORT_MAPPING.get(module, module)
        return f"{module}.{qualname}"

    try:
        for op, arg, _ in pickletools.genops(f):
            ops += 1
            kind = op.name
            if kind in _STRING_OPS:
                stack.append(arg.decode("latin-1") if isinstance(arg, (bytes, bytearray)) else str(arg))
            elif kind in ("GLOBAL", "INST"):
                module, _, qualname = str(arg).partition(" ")
                found.add(name(module, qualname))
                if kind == "INST":
                    pop_mark()
                stack.append(None)
            elif kind == "STACK_GLOBAL":
                qualname, module = pop(), pop()
                found.add(name(module, qualname) if isinstance(module, str) and isinstance(qualname, str)
                          else f"{module if isinstance(module, str) else '?'}."
                               f"{qualname if isinstance(qualname, str) else '?'}")
                stack.append(None)
            elif kind in ("EXT1", "EXT2", "EXT4"):  # a global from copyreg's extension registry
                found.add(f"?.? (copyreg extension {arg})")
                stack.append(None)
            elif kind == "MEMOIZE":
                memo[len(memo)] = stack[-1] if stack else None
            elif kind in ("PUT", "BINPUT", "LONG_BINPUT"):
                memo[int(arg)] = stack[-1] if stack else None
            elif kind in ("GET", "BINGET", "LONG_BINGET"):
                stack.append(memo.get(int(arg)))
            elif kind == "DUP":
                stack.append(stack[-1] if stack else None)
            elif kind == "MARK":
                stack.append(_MARK)
            elif kind == "STOP":
                return ints[0] if ops <= 3 and len(ints) == 1 else None
            else:
                if kind in ("LONG1", "LONG4", "INT", "BININT", "BININT1", "BININT2", "LONG"):
                    ints.append(arg)
                before = op.stack_before
                marker = pickletools.markobject
                if marker in before:
                    pop_mark()
                    for _ in range(before.index(marker)):
                        pop()
                else:
                    for _ in before:
                        pop()
                stack.extend(None for _ in op.stack_after)
    except Exception:  # malformed pickle (unknown opcode, truncated argument): keep what was seen
        return _BROKEN
    return _BROKEN  # no STOP: truncated


# Globals a PyTorch checkpoint of plain tensors and containers refers to (all allowed by weights_only).
_PLAIN_GLOBALS = frozenset({"collections.OrderedDict", "builtins.set", "builtins.frozenset", "builtins.bytearray",
                            "builtins.slice", "builtins.complex", "_codecs.encode"})
# Where torch's own list cannot be read: the torch names a checkpoint of tensors uses.
_TORCH_TENSOR_GLOBALS = re.compile(
    r"torch\.(?:cuda\.)?(?:\w+Storage|\w+Tensor|Size|device|(?:b?float|u?int|complex|bool|qu?int|bits)\w*"
    r"|_utils\._rebuild_\w+|_tensor\._rebuild_from_type_v2|nn\.parameter\.Parameter"
    r"|storage\.(?:Typed|Untyped)Storage|serialization\._get_layout)")


def _weights_only_globals() -> frozenset[str]:
    """The globals ``torch.load(weights_only=True)`` accepts by default (torch's own list)."""
    try:
        from torch import _weights_only_unpickler

        return frozenset(_weights_only_unpickler._get_allowed_globals())
    except Exception:  # a torch without that private list: the pattern below stands in
        return frozenset()


def unsafe_globals(path: str | os.PathLike[str]) -> list[str]:
    """Globals beyond tensors and plain containers in a file's pickles (sorted).

    Covers PyTorch zip checkpoints (every ``.pkl`` entry, the ``data.pkl`` torch reads among
    them), torch's legacy (non-zip) format and plain pickles; empty for files with no pickle
    (safetensors, ONNX…). Only the globals ``torch.load(weights_only=True)`` accepts, and those
    restorekit's numpy-only unpickler accepts (:data:`safe_pickle.ALLOWED_GLOBALS`: numpy arrays),
    count as safe. Nothing is unpickled: :func:`pickle_globals` reads opcodes.
    """
    found = pickle_globals(path)
    if not found:
        return []
    torch_ok = _weights_only_globals()

    def safe(g: str) -> bool:
        return g in _PLAIN_GLOBALS or g in NUMPY_ONLY_GLOBALS or (
            g in torch_ok if torch_ok else bool(_TORCH_TENSOR_GLOBALS.fullmatch(g)))

    return sorted(g for g in found if not safe(g))


def _weights_only_refusal(path: Path) -> str | None:
    """What ``torch.load(weights_only=True)`` names when it refuses ``path`` for a global or an
    object it will not build, else None (loaded, or failed for another reason: damaged, not a
    checkpoint). The unpickler torch uses here runs no code from the file; a zip checkpoint is
    memory-mapped, so its tensors are not read."""
    import tarfile
    import warnings
    import zipfile

    import torch

    try:
        with open(path, "rb") as f:
            head = f.read(4)
        mmap = zipfile.is_zipfile(path) or head == b"PK\x03\x04"
        if not (mmap or head[:1] == b"\x80" or tarfile.is_tarfile(path)):
            return None  # no torch zip, tar or protocol 2+ pickle (safetensors, ONNX, raw data, or a protocol
            # 0/1 pickle, whose GLOBALs the scan reads as they stand)
    except OSError:
        return None
    for use_mmap in ((True, False) if mmap else (False,)):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                obj = torch.load(path, map_location="cpu", weights_only=True, mmap=use_mmap)
            del obj
            return None
        except pickle.UnpicklingError as exc:
            msg = str(exc)
            m = re.search(r"GLOBAL ([\w.]+)", msg)
            if m:
                return m.group(1)
            m = re.search(r"(reduce for unrecognized function [^\n]*|Can only create new object[^\n]*"
                          r"|Only persistent_load of[^\n]*|persistent_load id must be[^\n]*)", msg)
            if m:
                return m.group(1)[:200]
            return None
        except Exception:  # damaged, not a checkpoint, or the mmap failed: try once more without it
            continue
    return None


def _numpy_only_refusal(path: Path) -> str | None:
    """For a plain pickle naming only numpy-array globals: what restorekit's numpy-only unpickler
    (:class:`safe_pickle.NumpyOnlyUnpickler`, which runs no code from the file) refuses in it, else
    None. Reads the pickle at the start and each whole pickle after it, as the scan does."""
    from .safe_pickle import NumpyOnlyUnpickler

    try:
        with open(path, "rb") as f:
            for _ in range(65):
                try:
                    NumpyOnlyUnpickler(f, source=str(path)).load()
                except UnsafeFileError as exc:
                    msg = str(exc)
                    m = re.search(r"asks for '([^']+)'", msg)
                    return m.group(1) if m else msg.removeprefix(f"{path}: ")[:200]
                except Exception:  # damaged or truncated: not a safety question (the format check says so)
                    return None
                if f.peek(1)[:1] != b"\x80":
                    return None
    except OSError:
        return None
    return None


def _numpy_only_pickle(path: Path) -> bool:
    """Whether ``path`` is a plain pickle (no zip checkpoint, no torch legacy file) whose globals
    are all ones the numpy-only unpickler allows."""
    import zipfile

    found = pickle_globals(path)
    if not found or not found <= NUMPY_ONLY_GLOBALS:
        return False
    try:
        if zipfile.is_zipfile(path):
            return False
        with open(path, "rb") as f:
            first = _pickle_globals_of(f, set())  # opcodes only: the legacy format's magic number, if any
    except (OSError, zipfile.BadZipFile):
        return False
    return first != _TORCH_LEGACY_MAGIC


def refuse_unsafe(path: str | os.PathLike[str], where: str, *, allow_unsafe: bool = False,
                  verified_cached: bool = False) -> None:
    """Refuse (``UnsafeFileError``) a file whose pickles hold more than tensors, plain containers
    and numpy arrays, unless ``allow_unsafe``: loading it could run code. Two checks: the opcode
    scan (:func:`unsafe_globals`), then the unpickler that would read it, run so that it runs no
    code: restorekit's numpy-only unpickler for a plain pickle of numpy arrays, else
    ``torch.load(weights_only=True)``, which refuses what torch will not unpickle safely. With
    ``verified_cached`` (``path`` is a cached copy whose sha256 was just matched) only the scan
    runs: the file is not loaded a second time. ``where`` names the file in the message."""
    if allow_unsafe:
        return
    unsafe = unsafe_globals(path)
    if not unsafe and not verified_cached:
        p = Path(path)
        refusal = _numpy_only_refusal(p) if _numpy_only_pickle(p) else _weights_only_refusal(p)
        unsafe = [refusal] if refusal else []
    if unsafe:
        raise UnsafeFileError(
            f"{where} holds pickled Python objects beyond tensors ({', '.join(unsafe[:4])}), and loading it can run "
            f"code; refused. Re-save its tensors (e.g. {{'g_ema': state_dict, 'latent_avg': ...}}) where you trust "
            "it, or, for a file you trust, import it with --opt allow_unsafe=true (loading it still needs "
            "allow_unsafe=true)")


def read_checkpoint(path: Path, *, allowed_globals: Iterable[Any] = ()) -> Any:
    """Load the checkpoint at ``path`` without running code from it, on the CPU.

    ``.safetensors`` files give ``dict[str, Tensor]``; anything else is read with
    ``torch.load(weights_only=True)``; ``allowed_globals`` (classes or functions) extends the
    weights-only allowlist for this call. A file needing other globals raises
    :class:`UnsafeFileError`.
    """
    if path.suffix == ".safetensors":
        return read_safetensors(path)[0]
    import torch

    try:
        with torch.serialization.safe_globals(list(allowed_globals)):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        msg = str(exc)
        if "weights_only" in msg or "Weights only load failed" in msg or "Unsupported global" in msg:
            m = re.search(r"Unsupported global: GLOBAL ([\w.]+)", msg) or re.search(r"GLOBAL ([\w.]+)", msg)
            names = [m.group(1)] if m else sorted(
                g for g in pickle_globals(path) if not g.startswith(("torch.", "collections.")))
            if names:
                glob = ", ".join(names[:5])
                raise UnsafeFileError(f"refusing to load {path}: " + _UNSAFE_HINT.format(glob=glob)) from None
            detail = msg.split("WeightsUnpickler error:")[-1].strip().splitlines()[0] if msg else ""
            raise _not_a_checkpoint(path, detail or "unpickling failed") from exc
        raise _not_a_checkpoint(path, _first_line(exc)) from exc
    except OSError as exc:
        raise FileSystemError(describe_os_error(exc, path, action="read")) from exc
    except Exception as exc:  # torch and its weights-only unpickler fail on a damaged file in many ways
        unsafe = unsafe_globals(path)  # a pickle of objects is refused as such, never as "damaged"
        if unsafe:
            raise UnsafeFileError(f"refusing to load {path}: "
                                  + _UNSAFE_HINT.format(glob=", ".join(unsafe[:5]))) from None
        raise _not_a_checkpoint(path, _first_line(exc)) from exc


def read_safetensors(path: str | os.PathLike[str]) -> tuple[dict[str, Tensor], dict[str, str]]:
    """The tensors (on the CPU) and the string metadata of the safetensors file at ``path``.

    Read with safetensors' ``pread`` backend where it has one (safetensors ≥ 0.8; older releases
    have only ``mmap``). Its default, ``mmap``, keeps about 64 bytes a tensor for good on every
    load: measured with safetensors 0.8.0, RSS grows by 13 KB per load of psp-sr-faces128 (205
    tensors; 12.6 MiB over 1000 loads, also after ``gc`` and ``malloc_trim``), flat with ``pread``,
    which a long-running process (``restorekit serve``) loading weights again and again would
    accumulate. With ``pread`` the tensors own their memory: nothing of the file stays mapped, and
    what they hold does not change when the file does. An unreadable file raises
    :class:`~restorekit.errors.FileSystemError`, one that is not safetensors
    :class:`UnreadableWeightsError`, both one line naming it.
    """
    from safetensors import safe_open

    p = Path(path)
    try:
        with safe_open(str(p), framework="pt", device="cpu", **_safetensors_backend()) as f:
            metadata = dict(f.metadata() or {})
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except OSError as exc:
        raise FileSystemError(describe_os_error(exc, p, action="read")) from exc
    except Exception as exc:  # SafetensorError, or a header that does not parse
        raise UnreadableWeightsError(f"cannot read weights file {p}: not a readable safetensors file "
                                     f"({_first_line(exc)})") from exc
    return tensors, metadata


@functools.cache
def _safetensors_backend() -> dict[str, str]:
    """``{"backend": "pread"}`` where this safetensors has that choice (see :func:`read_safetensors`)."""
    from safetensors.torch import load_file  # a Python function: its signature says what safe_open takes

    try:
        return {"backend": "pread"} if "backend" in inspect.signature(load_file).parameters else {}
    except (TypeError, ValueError):
        return {}


def _first_line(exc: BaseException) -> str:
    """``Type: first line`` of an exception, or the plain first line where the type says nothing more
    (``RuntimeError``, ``UnpicklingError``: the text is the message); the bare ``KeyError: 101``,
    ``IndexError`` or ``struct.error`` of an unpickler reading garbage is named as what it is."""
    import struct

    text = str(exc).strip().splitlines()[0].strip() if str(exc).strip() else ""
    if isinstance(exc, (RuntimeError, pickle.UnpicklingError)) and text:
        return text
    if isinstance(exc, EOFError):
        return "unpickling failed: unexpected end of file"
    if isinstance(exc, (LookupError, struct.error)):
        kind = "struct.error" if isinstance(exc, struct.error) else type(exc).__name__
        return f"unpickling failed: {kind} {text}".rstrip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _not_a_checkpoint(path: Path, detail: str) -> UnreadableWeightsError:
    return UnreadableWeightsError(f"cannot read weights file {path}: not a readable PyTorch checkpoint/weights file "
                                  f"({detail}); it is damaged, truncated or not a weights file")


# -- format checks (no unpickling, no tensors read) ----------------------------------------------

#: Suffixes of PyTorch checkpoints (``torch.load``: a zip checkpoint, or the legacy pickle format).
TORCH_SUFFIXES = (".pt", ".pth", ".ckpt")
#: Suffixes of plain pickles (numpy weights read by the numpy-only unpickler; torch's legacy format too).
PICKLE_SUFFIXES = (".pkl", ".pickle")
_TORCH_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C  # the first pickle of torch's legacy (pre-zip) format


def check_format(path: str | os.PathLike[str], filename: str, where: str) -> None:
    """Refuse (:class:`UnreadableWeightsError`) a file that is not readable as the format its spec's
    ``filename`` names: ``.safetensors`` a valid header; ``.pt``/``.pth``/``.ckpt`` a PyTorch zip
    checkpoint or legacy file, ``.pkl``/``.pickle`` any pickle, whose opcodes parse to the end (read
    with :mod:`pickletools`: nothing is unpickled, so a checkpoint of objects passes here and
    :func:`refuse_unsafe` judges it); ``.onnx`` an ONNX model. An empty file is refused whatever its
    name; other suffixes (``.bin``, ``.dat``…: no one format) are not checked. ``where`` names the
    file in the message. Cheap next to hashing the file: no tensor data is read."""
    path = Path(path)
    suffix = Path(filename).suffix.lower()
    kind = {".safetensors": "safetensors file", ".onnx": "ONNX model"}.get(suffix, "PyTorch checkpoint/weights file")
    try:
        size = path.stat().st_size
        if size == 0:
            raise _Bad("the file is empty")
        if suffix == ".safetensors":
            _check_safetensors(path, size)
        elif suffix == ".onnx":
            _check_onnx(path)
        elif suffix in TORCH_SUFFIXES or suffix in PICKLE_SUFFIXES:
            _check_torch(path, legacy_only=suffix in TORCH_SUFFIXES)
    except _Bad as exc:
        raise UnreadableWeightsError(f"{where} is not a readable {kind} ({exc}), which {filename} must be; "
                                     "refused, nothing recorded") from None
    except OSError as exc:
        raise FileSystemError(describe_os_error(exc, where, action="read")) from exc


class _Bad(Exception):
    """What a format check found wrong (its text goes into the message)."""


def _check_safetensors(path: Path, size: int) -> None:
    import struct

    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise _Bad("shorter than a safetensors header")
        (n,) = struct.unpack("<Q", head)
        if n < 2 or n > min(size - 8, 100 << 20):
            raise _Bad(f"header length {n} does not fit a {size}-byte file")
        raw = f.read(n)
    try:
        header = json.loads(raw.decode("utf-8").rstrip(" "))
    except ValueError as exc:
        raise _Bad(f"header is not JSON: {exc}") from None
    if not isinstance(header, dict):
        raise _Bad("header is not a JSON object")
    data = size - 8 - n
    for key, info in header.items():
        if key == "__metadata__":
            continue
        offsets = info.get("data_offsets") if isinstance(info, dict) else None
        if (not isinstance(offsets, list) or len(offsets) != 2 or not all(isinstance(o, int) for o in offsets)
                or not 0 <= offsets[0] <= offsets[1] <= data or "dtype" not in info or "shape" not in info):
            raise _Bad(f"tensor '{key}' has no valid dtype, shape and data offsets within the file")


def _check_onnx(path: Path) -> None:
    try:
        import onnx
    except ImportError:  # without the onnx package: a model's first field is its ir_version (tag 0x08)
        with open(path, "rb") as f:
            if f.read(1) != b"\x08":
                raise _Bad("does not start as an ONNX ModelProto") from None
        return
    try:
        model = onnx.load_model(str(path), load_external_data=False)
    except Exception as exc:  # protobuf's DecodeError and friends
        raise _Bad(_first_line(exc)) from None
    if model.ir_version <= 0 or not model.HasField("graph"):
        raise _Bad("no ir_version or graph")


def _scan_pickle(f: Any) -> Any:
    """Read one pickle's opcodes from ``f`` up to its STOP (nothing is imported or called); the
    value of a lone integer pickle (torch's legacy magic number), else None."""
    import pickletools

    value, ops = None, 0
    try:
        for op, arg, _ in pickletools.genops(f):
            ops += 1
            if op.name in ("LONG1", "LONG4", "INT", "BININT", "BININT1", "BININT2", "LONG") and ops <= 3:
                value = arg
            if op.name == "STOP":
                return value
    except Exception as exc:  # ValueError for unknown opcodes, truncated arguments
        raise _Bad(f"its pickle does not parse: {_first_line(exc)}") from None
    raise _Bad("its pickle has no end (truncated)")


def _check_torch(path: Path, *, legacy_only: bool) -> None:
    """A PyTorch zip checkpoint whose ``data.pkl`` parses; else a pickle that parses, which for a
    checkpoint suffix (``legacy_only``) must be torch's legacy format (magic number, version, system
    info, then the object)."""
    import zipfile

    if zipfile.is_zipfile(path):
        try:
            with zipfile.ZipFile(path) as zf:
                pkl = [n for n in zf.namelist() if n.endswith("data.pkl")]
                if len(pkl) != 1:
                    raise _Bad("a zip archive without the data.pkl of a PyTorch checkpoint")
                with zf.open(pkl[0]) as f:
                    _scan_pickle(f)
        except (zipfile.BadZipFile, zipfile.LargeZipFile, NotImplementedError, EOFError) as exc:
            raise _Bad(f"a damaged zip archive: {exc}") from None
        return
    with open(path, "rb") as f:
        first = _scan_pickle(f)
        if first == _TORCH_LEGACY_MAGIC:
            for _ in range(3):
                _scan_pickle(f)
        elif legacy_only:
            raise _Bad("neither a PyTorch zip checkpoint nor torch's legacy format")


def state_mismatch(build: Any, shapes: Mapping[str, tuple[int, ...]], what: str = "") -> str | None:
    """How the network ``build()`` makes differs from a file's tensors (``shapes``: name → shape),
    or None when they match exactly. ``build()`` runs on the meta device, so nothing is allocated:
    a file whose recorded config claims a network it does not hold (a few bytes claiming billions
    of parameters) can be refused before the network is built for real. ``what`` prefixes names."""
    import torch

    # (on older torch the meta build imports sympy, which would leave a warnings filter behind)
    with warnings.catch_warnings(), torch.device("meta"):
        want = {k: tuple(v.shape) for k, v in build().state_dict().items()}
    have = {k: tuple(v) for k, v in shapes.items()}
    missing, unexpected = sorted(set(want) - set(have)), sorted(set(have) - set(want))
    wrong = [k for k in want if k in have and have[k] != want[k]]
    if not (missing or unexpected or wrong):
        return None
    p = f"{what}." if what else ""
    first = (f"missing {p}{missing[0]}" if missing else f"unexpected {p}{unexpected[0]}" if unexpected
             else f"{p}{wrong[0]} is {have[wrong[0]]}, the config says {want[wrong[0]]}")
    return f"{first}; {len(missing)} missing, {len(unexpected)} unexpected, {len(wrong)} of wrong shape"


def flatten_state_dict(obj: Mapping[str, Any], prefix: str = "") -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Split a nested mapping into dotted-key tensors and the non-tensor leaves (dotted keys)."""
    import torch

    tensors: dict[str, torch.Tensor] = {}
    other: dict[str, Any] = {}

    def walk(node: Any, key: str) -> None:
        if key in tensors or key in other:
            raise RestorekitError(f"checkpoint key '{key}' occurs twice after flattening nested dicts")
        if isinstance(node, torch.Tensor):
            tensors[key] = node
        elif isinstance(node, Mapping) and node and all(isinstance(k, str) for k in node):
            for k, v in node.items():
                walk(v, f"{key}.{k}" if key else k)
        else:
            other[key] = node

    walk(obj, prefix)
    return tensors, other


def state_dict_from(obj: Any, *, key: str | None, where: str) -> dict[str, Tensor]:
    """The flat ``dict[str, Tensor]`` in a loaded checkpoint (``where`` names it in errors).

    ``key`` selects a sub-dict first (``"g_ema"``, ``"state_dict"``; dotted for deeper levels).
    Nested dicts are flattened with dotted keys; non-tensor entries are left out.
    """
    tensors, _ = _tensors_under(obj, key, where)
    return tensors


def _tensors_under(obj: Any, key: str | None, where: object) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """``flatten_state_dict`` of the sub-dict ``key`` (dotted) of a loaded checkpoint, refusing a
    missing key, a non-dict or a dict without tensors with one line naming ``where``."""
    if key is not None:
        for part in key.split("."):
            if not isinstance(obj, Mapping) or part not in obj:
                have = ", ".join(sorted(map(str, obj))) if isinstance(obj, Mapping) else type(obj).__name__
                raise RestorekitError(f"checkpoint {where} has no key '{key}' (top-level keys: {have})")
            obj = obj[part]
    if not isinstance(obj, Mapping):
        raise RestorekitError(f"checkpoint {where} holds {type(obj).__name__}, not a state dict")
    tensors, other = flatten_state_dict(obj)
    if not tensors:
        raise RestorekitError(f"checkpoint {where} holds no tensors" + (f" under '{key}'" if key else ""))
    return tensors, other


def safetensors_metadata(path: str | os.PathLike[str]) -> dict[str, str]:
    """The string metadata stored in a safetensors header."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return dict(f.metadata() or {})


_META_LIMIT = 64 * 1024


def write_safetensors(obj: Any, dest: str | os.PathLike[str], *, source: str | os.PathLike[str],
                      key: str | None = None, overwrite: bool = True) -> tuple[int, list[str]]:
    """Write a loaded checkpoint (``source`` names it) to ``dest`` as safetensors, atomically.

    Without ``overwrite`` an existing ``dest`` is refused (:class:`OutputExistsError`), also one that
    appears while the file is written (the temporary file is linked into place, not renamed). The
    file gets the mode a new file gets under the process umask (``0o666`` less it), as other outputs do.

    Nested state dicts are flattened with dotted keys. Non-tensor entries that JSON can hold
    go into the metadata (``restorekit.extra``, up to 64 KiB); the keys of those left out
    are returned. Returns ``(number of tensors, dropped keys)``.
    """
    from safetensors.torch import save_file

    tensors, other = _tensors_under(obj, key, source)
    extra: dict[str, Any] = {}
    dropped: list[str] = []
    for k, v in other.items():
        try:
            json.dumps(v, allow_nan=False)
        except (TypeError, ValueError):
            dropped.append(k)
            continue
        extra[k] = v
    meta_json = json.dumps(extra, sort_keys=True)
    if len(meta_json) > _META_LIMIT:
        dropped.extend(extra)
        extra, meta_json = {}, "{}"
    # safetensors refuses tensors that share memory and wants contiguous ones
    tensors = {k: v.detach().clone().contiguous() for k, v in tensors.items()}
    metadata = {"format": "pt", "restorekit.source": Path(source).name}
    if extra:
        metadata["restorekit.extra"] = meta_json
    dest = Path(dest)
    tmp = dest.with_name(f".{dest.name}.tmp-{os.getpid()}")
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        mode = _new_file_mode(tmp)
        save_file(tensors, str(tmp), metadata=metadata)
        os.chmod(tmp, mode)  # save_file leaves it 0600; an output is readable as any other new file
        sort_metadata_in_place(tmp)  # the same bytes for the same checkpoint (:mod:`.st_bytes`)
        if overwrite:
            os.replace(tmp, dest)
        else:
            _place_new(tmp, dest)
    except OSError as exc:
        raise FileSystemError(describe_os_error(exc, dest)) from exc
    except Exception as exc:  # safetensors reports its own I/O failures as SafetensorError
        if type(exc).__name__ != "SafetensorError":
            raise
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise FileSystemError(f"cannot write {dest}: {reason}; check the folder, its permissions and free space") from exc
    finally:
        with contextlib.suppress(OSError):  # nothing there, or no folder to hold it
            tmp.unlink(missing_ok=True)
    return len(tensors), sorted(dropped)


def _new_file_mode(path: Path) -> int:
    """Create the empty file ``path`` as any new file is made (``0o666`` less the umask, or what a
    folder's default ACL says: the kernel's rule, read without changing the umask, which other
    threads rely on) and return its permission bits. A file that a killed write of the same
    process id left there is replaced."""
    try:
        f = create_exclusive(path)
    except FileExistsError:
        path.unlink()
        f = create_exclusive(path)
    with f:
        return stat.S_IMODE(os.fstat(f.fileno()).st_mode)


def _place_new(tmp: Path, dest: Path) -> None:
    """Move ``tmp`` to ``dest`` unless ``dest`` exists (:class:`OutputExistsError`), atomically where
    the file system has hard links."""
    exists = OutputExistsError(f"{dest} already exists; pass --overwrite to replace it, or choose another -o")
    try:
        os.link(tmp, dest)  # fails if dest exists, whenever it appeared
    except FileExistsError:
        raise exists from None
    except OSError:  # no hard links here (some network and FAT file systems): check, then rename
        if dest.exists() or dest.is_symlink():
            raise exists from None
        os.replace(tmp, dest)
        return
    tmp.unlink()
