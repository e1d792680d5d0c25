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

__all__ = ["pickle_globals", "unsafe_globals", "read_checkpoint", "flatten_state_dict", "state_dict_from",
           "safetensors_metadata", "write_safetensors"]

_UNSAFE_HINT = ("it would import '{glob}' and could run code when loaded; restorekit never unpickles "
                "such files. Convert it in an environment you trust (`restorekit weights convert`) or use "
                "an importer that asks for your explicit consent")


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
        except Exception as exc:
            raise RestorekitError(f"cannot read safetensors file {path}: {exc}") from exc
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
            raise RestorekitError(f"cannot read weights file {path}: not a checkpoint that loads with "
                                  f"weights_only ({detail or 'unpickling failed'})") from exc
        raise RestorekitError(f"cannot read weights file {path}: {msg.splitlines()[0] if msg else exc}") from exc
    except (RuntimeError, EOFError, OSError, ValueError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise RestorekitError(f"cannot read weights file {path}: {first}") from exc


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
                      key: str | None = None) -> tuple[int, list[str]]:
    """Write a loaded checkpoint (``source`` names it) to ``dest`` as safetensors, atomically.

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
        os.replace(tmp, dest)
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
