"""Loading weight files without running code from them, and converting them to safetensors.

``.safetensors`` files are read as they are; anything else goes through
``torch.load(weights_only=True)``, so a pickle that names arbitrary globals is refused with
:class:`~restorekit.errors.UnsafeFileError`. :func:`pickle_globals` reads a pickle's opcodes
(nothing is imported or called) to say what such a file asks for. This layer takes paths;
weights names are resolved to paths by the catalogue.
"""

from __future__ import annotations

import contextlib
import json
import os
import pickle
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import FileSystemError, RestorekitError, UnsafeFileError, describe_os_error

if TYPE_CHECKING:
    from torch import Tensor

__all__ = ["UnreadableWeightsError", "OutputExistsError", "pickle_globals", "unsafe_globals", "read_checkpoint",
           "check_format", "flatten_state_dict", "state_dict_from", "safetensors_metadata", "write_safetensors"]

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
    """The ``module.name`` globals a pickle (or a torch zip checkpoint's ``data.pkl``) refers to.

    Reads opcodes with :mod:`pickletools` only; nothing is imported or called. Used to name
    what an unsafe file asks for.
    """
    import pickletools
    import zipfile

    path = Path(path)
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as zf:
                pkl = next((n for n in zf.namelist() if n.endswith("data.pkl")), None)
                data = zf.read(pkl) if pkl else b""
        else:
            data = path.read_bytes()
    except OSError:
        return set()
    found: set[str] = set()
    memo: dict[int, Any] = {}
    recent: list[str] = []  # strings pushed so far; STACK_GLOBAL takes the last two
    top: str | None = None  # the string on top of the stack, if the last push was one
    try:
        for op, arg, _ in pickletools.genops(data):
            if op.name in ("SHORT_BINUNICODE", "BINUNICODE", "UNICODE", "BINUNICODE8"):
                recent.append(arg)
                top = arg
            elif op.name == "MEMOIZE":
                memo[len(memo)] = top
            elif op.name in ("BINPUT", "LONG_BINPUT", "PUT"):
                memo[int(arg)] = top
            elif op.name in ("BINGET", "LONG_BINGET", "GET"):
                top = memo.get(int(arg))
                if top is not None:
                    recent.append(top)
            else:
                if op.name in ("GLOBAL", "INST"):
                    found.add(str(arg).replace(" ", "."))
                elif op.name == "STACK_GLOBAL" and len(recent) >= 2:
                    found.add(f"{recent[-2]}.{recent[-1]}")
                elif op.name == "STOP":
                    break
                top = None
    except Exception:  # malformed pickle: report what was seen so far
        pass
    return found


# Globals a PyTorch checkpoint of plain tensors and containers refers to (all allowed by weights_only).
_PLAIN_GLOBALS = frozenset({"collections.OrderedDict", "builtins.set", "builtins.frozenset", "builtins.bytearray",
                            "builtins.slice", "builtins.complex", "_codecs.encode"})


def unsafe_globals(path: str | os.PathLike[str]) -> list[str]:
    """Globals beyond tensors and plain containers in a PyTorch zip checkpoint's pickle (sorted).

    Empty for files that are not PyTorch zip checkpoints (safetensors, ONNX, legacy pickles:
    those are checked when loaded). Nothing is unpickled: :func:`pickle_globals` reads opcodes.
    """
    import zipfile

    try:
        if not zipfile.is_zipfile(path):
            return []
        with zipfile.ZipFile(path) as zf:
            if not any(n.endswith("data.pkl") for n in zf.namelist()):
                return []
    except OSError:
        return []
    return sorted(g for g in pickle_globals(path) if not g.startswith("torch.") and g not in _PLAIN_GLOBALS)


def refuse_unsafe(path: str | os.PathLike[str], where: str, *, allow_unsafe: bool = False) -> None:
    """Refuse (``UnsafeFileError``) a PyTorch checkpoint whose pickle holds more than tensors,
    unless ``allow_unsafe``: loading it could run code. ``where`` names it in the message."""
    unsafe = unsafe_globals(path)
    if unsafe and not allow_unsafe:
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
        from safetensors.torch import load_file

        try:
            return load_file(str(path), device="cpu")
        except OSError as exc:
            raise FileSystemError(describe_os_error(exc, path, action="read")) from exc
        except Exception as exc:  # SafetensorError, or a header that does not parse
            raise UnreadableWeightsError(f"cannot read weights file {path}: not a readable safetensors file "
                                         f"({_first_line(exc)})") from exc
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
    appears while the file is written (the temporary file is linked into place, not renamed).

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
        save_file(tensors, str(tmp), metadata=metadata)
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
