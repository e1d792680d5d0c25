"""Load pickles of numpy arrays without letting the file run code.

A pickle names the Python callables that rebuild its objects; an ordinary ``pickle.load``
imports and calls whatever the file names (``os.system`` included). :class:`NumpyOnlyUnpickler`
resolves only the handful of numpy globals that rebuild arrays, dtypes and scalars, and refuses
every other name with :class:`~restorekit.errors.UnsafeFileError` *before* anything is called.
Containers (dict, list, tuple, str, bytes, numbers) need no globals and load as usual; the two
builtins that protocol-2 pickles use to spell bytes (``_codecs.encode``, ``bytes``) are replaced
by shims that do only that, and ``_reconstruct`` only makes the empty array the pickle's data
then fill; ``numpy.ndarray`` resolves to a stand-in that is only ``_reconstruct``'s argument and
refuses to be called (a pickle cannot make it allocate memory it does not itself contain).

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

from ..errors import RestorekitError, UnsafeFileError

class _ArrayClass:
    """What the global ``numpy.ndarray`` resolves to: array pickles name the class only as
    ``_reconstruct``'s first argument. Calling it (REDUCE, or NEWOBJ, which wants a real class)
    would allocate an array of any shape with no data in the file behind it, so it is refused."""

    def __call__(self, *args: Any) -> Any:
        raise UnsafeFileError("refused numpy.ndarray(...): it would allocate an array the file holds no data for")

    def __repr__(self) -> str:
        return "numpy.ndarray"


_ARRAY_CLASS = _ArrayClass()


def _reconstruct(subtype: Any, shape: Any, dtype: Any) -> Any:
    """numpy's ``_reconstruct`` as array pickles use it: an empty ``ndarray`` whose contents the
    pickle's own data then fill. A large ``shape`` (allocation with no data behind it) is refused."""
    import numpy as np

    if subtype is _ARRAY_CLASS:
        subtype = np.ndarray
    if subtype is not np.ndarray or int(np.prod(shape)) > 1:
        raise UnsafeFileError(f"refused numpy _reconstruct of {getattr(subtype, '__name__', subtype)} "
                              f"with shape {shape!r}")
    return _numpy_attr(("numpy._core.multiarray", "numpy.core.multiarray"), "_reconstruct")(subtype, shape, dtype)


def _latin1_encode(text: str, encoding: str = "utf-8", errors: str = "strict") -> bytes:
    """``_codecs.encode`` as protocol-2 pickles from Python 3 use it to spell bytes (latin-1 only,
    no codec lookups)."""
    if encoding not in ("latin1", "latin-1") or errors != "strict" or not isinstance(text, str):
        raise UnsafeFileError(f"refused _codecs.encode with encoding {encoding!r}")
    return text.encode("latin-1")


def _empty_bytes(*args: Any) -> bytes:
    """``bytes()`` as protocol-2 pickles spell ``b""``; any argument is refused (``bytes(10**12)``)."""
    if args:
        raise UnsafeFileError("refused bytes() with arguments")
    return b""


def _numpy_attr(modules: tuple[str, ...], name: str) -> Any:
    """``name`` from the first of ``modules`` the installed numpy has (numpy 2, then numpy 1)."""
    import importlib
    import warnings

    for mod_name in modules:
        try:
            with warnings.catch_warnings():  # numpy 2 warns on numpy.core access
                warnings.simplefilter("ignore", DeprecationWarning)
                return getattr(importlib.import_module(mod_name), name)
        except (ImportError, AttributeError):
            continue
    raise RestorekitError(f"installed numpy has no {modules[0]}.{name}")


_MULTIARRAY = ("numpy._core.multiarray", "numpy.core.multiarray")
_NUMERIC = ("numpy._core.numeric", "numpy.core.numeric")

# Each global an array pickle may name -> a function returning what it resolves to.
_ALLOWED: dict[tuple[str, str], Any] = {("numpy", "ndarray"): lambda: _ARRAY_CLASS,
                                        ("numpy", "dtype"): lambda: _numpy_attr(("numpy",), "dtype")}
for _mod in _MULTIARRAY:
    _ALLOWED[(_mod, "_reconstruct")] = lambda: _reconstruct
    _ALLOWED[(_mod, "scalar")] = lambda: _numpy_attr(_MULTIARRAY, "scalar")
for _mod in _NUMERIC:
    # Protocol-5 pickles of contiguous arrays: frombuffer(data, dtype).reshape(shape, order).
    _ALLOWED[(_mod, "_frombuffer")] = lambda: _numpy_attr(_NUMERIC, "_frombuffer")
_ALLOWED[("_codecs", "encode")] = lambda: _latin1_encode
for _mod in ("builtins", "__builtin__"):
    _ALLOWED[(_mod, "bytes")] = lambda: _empty_bytes

#: The globals a numpy-only pickle may name, as ``"module.name"`` strings.
ALLOWED_GLOBALS: frozenset[str] = frozenset(f"{m}.{n}" for m, n in _ALLOWED)


class NumpyOnlyUnpickler(pickle.Unpickler):
    """An unpickler that can rebuild numpy arrays and plain containers, and nothing else."""

    def __init__(self, file: BinaryIO, *, source: str = "<stream>") -> None:
        super().__init__(file)
        self.source = source

    def find_class(self, module: str, name: str) -> Any:
        resolve = _ALLOWED.get((module, name))
        if resolve is not None:
            return resolve()
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
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, MemoryError) as exc:
        raise RestorekitError(f"{source}: not a readable numpy pickle ({type(exc).__name__}: {exc})") from None
