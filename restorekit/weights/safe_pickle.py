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

Numpy's own state setters are guarded as well: a pickle sets a dtype's or an array's state with
``BUILD``, and ``dtype.__setstate__`` would accept forged fields and flags (an "object" dtype that
numpy believes holds none, whose array then reads pointers from the file's bytes). So dtypes are
only the plain numeric, bool and string kinds, always a fresh copy, with a state that adds
nothing to what their spelling says; arrays take only such a dtype, with exactly the bytes their
shape needs; nothing else may be given a state. This needs the pure-Python unpickler (the C one's
opcodes cannot be overridden): slower per opcode, the same per byte of array data.

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


#: dtype kinds a pickle may name: bool, integers, floats, complex, bytes and unicode strings —
#: no objects, no structured or sub-array ("V") types, no datetimes.
PLAIN_KINDS = frozenset("biufcSU")


def _plain_dtype(dtype: Any) -> Any:
    """``dtype`` when it is a plain dtype (:data:`PLAIN_KINDS`, no fields, no sub-array, the flags
    its spelling gives); else :class:`UnsafeFileError`."""
    import numpy as np

    if not isinstance(dtype, np.dtype):
        raise UnsafeFileError(f"refused a dtype argument of type {type(dtype).__name__}")
    if dtype.kind not in PLAIN_KINDS or dtype.fields is not None or dtype.subdtype is not None:
        raise UnsafeFileError(f"refused dtype {dtype!r} (only plain numeric, bool and string dtypes)")
    if dtype.flags != np.dtype(dtype.str).flags:
        raise UnsafeFileError(f"refused dtype {dtype!r} with forged flags {dtype.flags}")
    return dtype


def _dtype(spec: Any, align: Any = False, copy: Any = True) -> Any:
    """``numpy.dtype(spec, align, copy)`` as dtype pickles spell it, for a plain spec only; always
    a fresh copy (a pickle's state must never reach numpy's shared built-in dtypes)."""
    import numpy as np

    if not isinstance(spec, str) or len(spec) > 16 or align not in (False, 0):
        raise UnsafeFileError(f"refused numpy.dtype({spec!r}, align={align!r})")
    try:
        dtype = np.dtype(spec)
    except TypeError as exc:
        raise UnsafeFileError(f"refused numpy.dtype({spec!r}): {exc}") from None
    return _plain_dtype(np.dtype(dtype, copy=True))


def _check_dtype_state(dtype: Any, state: Any) -> None:
    """A dtype's pickled state may set its byte order and restate its size, nothing more."""
    if not isinstance(state, tuple) or len(state) not in (8, 9) or state[0] not in (3, 4):
        raise UnsafeFileError(f"refused a dtype state of {type(state).__name__} {str(state)[:80]}")
    _, order, subarray, names, fields, elsize, alignment, flags, *meta = state
    if order not in ("<", ">", "|", "=") or (subarray, names, fields) != (None, None, None) or any(
            m is not None for m in meta):
        raise UnsafeFileError(f"refused a dtype state that adds fields, a sub-array or metadata: {str(state)[:80]}")
    if elsize not in (-1, dtype.itemsize) or alignment not in (-1, dtype.alignment) or flags != dtype.flags:
        raise UnsafeFileError(f"refused a dtype state with forged size, alignment or flags: {str(state)[:80]}")


def _check_array_state(state: Any) -> None:
    """An array's pickled state: a plain dtype and exactly the bytes its shape needs."""
    import numpy as np

    if not isinstance(state, tuple) or len(state) != 5:
        raise UnsafeFileError(f"refused an array state of {type(state).__name__}")
    _, shape, dtype, _fortran, data = state
    _plain_dtype(dtype)
    if not isinstance(shape, tuple) or not all(isinstance(n, int) and n >= 0 for n in shape):
        raise UnsafeFileError(f"refused an array state with shape {str(shape)[:80]}")
    if not isinstance(data, (bytes, bytearray)) or len(data) != int(np.prod(shape, dtype=object)) * dtype.itemsize:
        raise UnsafeFileError(f"refused an array state whose data does not match its shape {shape} and dtype {dtype}")


def _scalar(dtype: Any, data: Any = None) -> Any:
    """numpy's ``scalar(dtype, bytes)`` for a plain dtype and exactly its bytes."""
    _plain_dtype(dtype)
    if not isinstance(data, bytes) or len(data) != dtype.itemsize:
        raise UnsafeFileError(f"refused numpy scalar of {dtype} from {type(data).__name__}")
    return _numpy_attr(_MULTIARRAY, "scalar")(dtype, data)


def _frombuffer(buf: Any, dtype: Any, shape: Any, order: Any) -> Any:
    """numpy's ``_frombuffer`` as protocol-5 array pickles use it, for a plain dtype only."""
    _plain_dtype(dtype)
    return _numpy_attr(_NUMERIC, "_frombuffer")(buf, dtype, shape, order)


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
                                        ("numpy", "dtype"): lambda: _dtype}
for _mod in _MULTIARRAY:
    _ALLOWED[(_mod, "_reconstruct")] = lambda: _reconstruct
    _ALLOWED[(_mod, "scalar")] = lambda: _scalar
for _mod in _NUMERIC:
    # Protocol-5 pickles of contiguous arrays: frombuffer(data, dtype).reshape(shape, order).
    _ALLOWED[(_mod, "_frombuffer")] = lambda: _frombuffer
_ALLOWED[("_codecs", "encode")] = lambda: _latin1_encode
for _mod in ("builtins", "__builtin__"):
    _ALLOWED[(_mod, "bytes")] = lambda: _empty_bytes

#: The globals a numpy-only pickle may name, as ``"module.name"`` strings.
ALLOWED_GLOBALS: frozenset[str] = frozenset(f"{m}.{n}" for m, n in _ALLOWED)


class NumpyOnlyUnpickler(pickle._Unpickler):
    """An unpickler that can rebuild numpy arrays and plain containers, and nothing else."""

    dispatch = dict(pickle._Unpickler.dispatch)

    def __init__(self, file: BinaryIO, *, source: str = "<stream>") -> None:
        super().__init__(file)
        self.source = source

    def load_build(self) -> None:
        """``BUILD``: only a plain dtype's or a plain array's own state (see the module's doc)."""
        import numpy as np

        if len(self.stack) < 2:
            raise pickle.UnpicklingError("BUILD with nothing to build")
        inst, state = self.stack[-2], self.stack[-1]
        if isinstance(inst, np.dtype):
            _check_dtype_state(inst, state)
        elif type(inst) is np.ndarray:
            _check_array_state(state)
        else:
            raise UnsafeFileError(f"refused to set the state of a {type(inst).__name__}")
        super().load_build()
        if isinstance(inst, np.dtype):
            _plain_dtype(inst)

    dispatch[pickle.BUILD[0]] = load_build

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
    except Exception as exc:  # the pure-Python unpickler's KeyError, IndexError, struct.error… on a bad file
        raise RestorekitError(f"{source}: not a readable numpy pickle ({type(exc).__name__}: {exc})") from None
