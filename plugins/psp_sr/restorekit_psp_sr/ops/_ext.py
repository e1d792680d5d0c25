"""Lazy, cached builds of this package's CUDA extensions.

Nothing is compiled at import: :func:`load_extension` runs ``torch.utils.cpp_extension.load``
the first time an op meets a CUDA tensor with ``impl`` ``"auto"`` or ``"cuda"``. The build
lands in torch's extension cache (``TORCH_EXTENSIONS_DIR``), so later processes reuse it.
"""

from __future__ import annotations

import os
import threading
import warnings
from pathlib import Path
from types import ModuleType
from typing import Literal

import torch

Impl = Literal["auto", "cuda", "ref"]
IMPLS = ("auto", "cuda", "ref")
_HERE = Path(__file__).resolve().parent
_lock = threading.Lock()
_modules: dict[str, ModuleType] = {}
_failures: dict[str, str] = {}
_warned: set[str] = set()


class OpsBuildError(RuntimeError):
    """A CUDA extension could not be built or loaded; the message says why."""


def _build(name: str) -> ModuleType:
    from torch.utils import cpp_extension

    if not torch.cuda.is_available():
        raise OpsBuildError("CUDA is not available in this torch build or on this machine")
    if cpp_extension.CUDA_HOME is None:
        raise OpsBuildError("no CUDA toolkit found (set CUDA_HOME or put nvcc on PATH)")
    sources = [str(_HERE / f"{name}.cpp"), str(_HERE / f"{name}.cu")]
    return cpp_extension.load(
        name=f"restorekit_{name}",
        sources=sources,
        extra_cflags=["-O3"],
        extra_cuda_cflags=["-O3", "--use_fast_math"],
        extra_ldflags=[f"-L{d}" for d in _cudart_dirs(cpp_extension.CUDA_HOME)],
        verbose=False,
    )


def _cudart_dirs(cuda_home: str) -> list[str]:
    """Folders holding ``libcudart.so`` beyond ``CUDA_HOME/lib64``.

    torch infers ``CUDA_HOME`` from the ``nvcc`` on PATH; when that is a wrapper or symlink
    such as ``/usr/local/bin/nvcc`` the guess (``/usr/local``) has no CUDA libraries and
    linking fails with ``cannot find -lcudart``. The installed toolkits have them.
    """
    import glob
    import shutil

    out: list[str] = []
    nvcc = shutil.which("nvcc") or str(Path(cuda_home) / "bin" / "nvcc")
    homes = [Path(cuda_home), Path(os.path.realpath(nvcc)).parent.parent]
    homes += [Path(p) for p in sorted(glob.glob("/usr/local/cuda*"), reverse=True)]
    for home in homes:
        for sub in ("lib64", "lib", "targets/x86_64-linux/lib"):
            d = home / sub
            real = os.path.realpath(d)
            if (d / "libcudart.so").exists() and real not in out:
                out.append(real)
    return out


def load_extension(name: str) -> ModuleType:
    """Build (once per process, cached on disk by torch) and return extension ``name``.

    Raises :class:`OpsBuildError` naming the op when the build fails; the failure is
    remembered so a process does not retry a broken build on every call.
    """
    mod = _modules.get(name)
    if mod is not None:
        return mod
    with _lock:
        if name in _modules:
            return _modules[name]
        if name in _failures:
            raise OpsBuildError(_failures[name])
        try:
            mod = _build(name)
        except OpsBuildError as exc:
            _failures[name] = f"cannot build the CUDA op '{name}': {exc}"
            raise OpsBuildError(_failures[name]) from None
        except Exception as exc:  # compiler errors, missing headers, ABI mismatches
            first = str(exc).strip().splitlines()[:1] or [type(exc).__name__]
            _failures[name] = f"cannot build the CUDA op '{name}': {first[0]}"
            raise OpsBuildError(_failures[name]) from exc
        _modules[name] = mod
        return mod


def use_cuda(name: str, x: torch.Tensor, impl: str) -> ModuleType | None:
    """The extension to run ``name`` on ``x`` with, or ``None`` for the reference path.

    ``ref``: always the reference. ``cuda``: the kernel or a clear error. ``auto``: the kernel
    for CUDA tensors when it builds, else the reference with a one-time warning.
    """
    if impl not in IMPLS:
        raise ValueError(f"{name}: impl must be one of {', '.join(IMPLS)}; got {impl!r}")
    if impl == "ref":
        return None
    if impl == "cuda":
        if not x.is_cuda:
            raise ValueError(f"{name}: impl='cuda' needs a CUDA tensor, got one on {x.device}")
        return load_extension(name)
    if not x.is_cuda:
        return None
    try:
        return load_extension(name)
    except OpsBuildError as exc:
        if name not in _warned:
            _warned.add(name)
            warnings.warn(f"{exc}; using the slower pure-PyTorch reference instead",
                          RuntimeWarning, stacklevel=3)
        return None


def reset_for_tests() -> None:
    """Forget loaded modules, failures and warnings (tests only)."""
    _modules.clear()
    _failures.clear()
    _warned.clear()
