"""Load pickles of numpy arrays without letting the file run code.

A pickle names the Python callables that rebuild its objects; an ordinary ``pickle.load``
imports and calls whatever the file names (``os.system`` included). :class:`NumpyOnlyUnpickler`
resolves only the handful of numpy globals that rebuild arrays, dtypes and scalars, and refuses
every other name with :class:`~restorekit.errors.UnsafeFileError` *before* anything is called.
Containers (dict, list, tuple, str, bytes, numbers) need no globals and load as usual.

Both spellings of numpy's internal module are accepted: pickles written under numpy 1.x say
``numpy.core.multiarray``, those written under numpy 2 say ``numpy._core.multiarray``; each is
resolved to whatever the installed numpy provides.
"""

from __future__ import annotations

import io
import os
import pickle
from pathlib import Path
from typing import Any, BinaryIO

from .errors import RestorekitError, UnsafeFileError

# (module, name) pairs a numpy-array pickle may reference, mapped to where the object lives in
# the installed numpy (tried in order: numpy 2 first, then numpy 1).
_ALIASES: dict[tuple[str, str], tuple[tuple[str, str], ...]] = {}
for _mod in ("numpy.core.multiarray", "numpy._core.multiarray"):
    _ALIASES[(_mod, "_reconstruct")] = (("numpy._core.multiarray", "_reconstruct"),
                                        ("numpy.core.multiarray", "_reconstruct"))
    _ALIASES[(_mod, "scalar")] = (("numpy._core.multiarray", "scalar"),
                                  ("numpy.core.multiarray", "scalar"))
for _mod in ("numpy.core.numeric", "numpy._core.numeric"):
    # Protocol-5 pickles of contiguous arrays: frombuffer(buf, dtype).reshape(shape, order).
    _ALIASES[(_mod, "_frombuffer")] = (("numpy._core.numeric", "_frombuffer"),
                                       ("numpy.core.numeric", "_frombuffer"))
_ALIASES[("numpy", "ndarray")] = (("numpy", "ndarray"),)
# Protocol-2 pickles written by Python 3 spell bytes as ``_codecs.encode(text, "latin1")``.
_ALIASES[("_codecs", "encode")] = (("restorekit.safe_pickle", "_latin1_encode"),)
# ... and an empty bytes object as ``bytes()``.
for _mod in ("builtins", "__builtin__"):
    _ALIASES[(_mod, "bytes")] = (("restorekit.safe_pickle", "_empty_bytes"),)
_ALIASES[("numpy", "dtype")] = (("numpy", "dtype"),)

#: The globals a numpy-only pickle may name, as ``"module.name"`` strings.
ALLOWED_GLOBALS: frozenset[str] = frozenset(f"{m}.{n}" for m, n in _ALIASES)


def _latin1_encode(text: str, encoding: str = "utf-8", errors: str = "strict") -> bytes:
    """``_codecs.encode`` restricted to the latin-1 use pickle makes of it (no codec lookups)."""
    if encoding not in ("latin1", "latin-1") or errors != "strict" or not isinstance(text, str):
        raise UnsafeFileError(f"refused _codecs.encode with encoding {encoding!r}")
    return text.encode("latin-1")


def _empty_bytes(*args: Any) -> bytes:
    """``bytes()`` as protocol-2 pickles use it; any argument is refused (``bytes(10**12)``)."""
    if args:
        raise UnsafeFileError("refused bytes() with arguments")
    return b""


def _resolve(module: str, name: str) -> Any:
    import importlib
    import warnings

    for mod_name, attr in _ALIASES[(module, name)]:
        try:
            with warnings.catch_warnings():  # numpy 2 warns on numpy.core access
                warnings.simplefilter("ignore", DeprecationWarning)
                mod = importlib.import_module(mod_name)
            return getattr(mod, attr)
        except (ImportError, AttributeError):
            continue
    raise RestorekitError(f"installed numpy has no {module}.{name}")


class NumpyOnlyUnpickler(pickle.Unpickler):
    """An unpickler that can rebuild numpy arrays and plain containers, and nothing else."""

    def __init__(self, file: BinaryIO, *, source: str = "<stream>") -> None:
        super().__init__(file)
        self.source = source

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _ALIASES:
            return _resolve(module, name)
        raise UnsafeFileError(
            f"{self.source}: refused to load, the pickle asks for '{module}.{name}' "
            f"(only numpy array globals are allowed)")

    def persistent_load(self, pid: Any) -> Any:
        raise UnsafeFileError(f"{self.source}: refused to load, the pickle uses persistent ids")


def load_numpy_pickle(path: str | os.PathLike[str]) -> Any:
    """Unpickle ``path`` allowing only numpy array globals; never runs code from the file."""
    p = Path(path)
    with open(p, "rb") as f:
        return _load(f, str(p))


def loads_numpy_pickle(data: bytes, *, source: str = "<bytes>") -> Any:
    """Like :func:`load_numpy_pickle` for bytes already in memory."""
    return _load(io.BytesIO(data), source)


def _load(f: BinaryIO, source: str) -> Any:
    try:
        return NumpyOnlyUnpickler(f, source=source).load()
    except UnsafeFileError as exc:
        if str(exc).startswith(source):
            raise
        raise UnsafeFileError(f"{source}: {exc}") from None
    except RestorekitError:
        raise
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError) as exc:
        raise RestorekitError(f"{source}: not a readable numpy pickle ({type(exc).__name__}: {exc})") from None
