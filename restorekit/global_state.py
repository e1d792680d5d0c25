"""Process-wide torch, NumPy and Python settings a component could leave changed: read, compare, put back.

One snapshot holds the thread count, grad mode, default dtype, cuDNN and determinism flags, the
float32 precision each operator runs at, and the global torch/CUDA/NumPy/Python RNG states. The
conformance suite fails a component whose calls change them; loading plugins and building methods
(:func:`restorekit.plugins.kept_global_state`) puts them back, so one plugin cannot change how
everything after it computes.

Threads. All of this is the process's, not a thread's — grad mode aside, which torch keeps per
thread (so it is read and put back in the thread that changed it). A snapshot taken and put back
in one thread therefore undoes what other threads did meanwhile: a default dtype another thread
set for the length of one call would be set back (or made permanent), and another thread's
``torch.manual_seed(…)`` and its draws from the global RNG would be rewound. :data:`LOCK` keeps them
apart: :func:`~restorekit.plugins.kept_global_state` holds it from its snapshot to its put-back
(plugin loads and method builds in two threads run one after the other), and code in another
thread that seeds or draws from the global RNGs, or changes any setting above for a while, holds
it as well where a method may be built or a plugin loaded at the same time. A loaded method's
``restore`` needs it only if it touches this state even for the length of the call; restorekit's
own do not (they draw from their own ``torch.Generator``s) — but for one case: under a default
dtype other than float32 every method's ``load`` and ``restore`` (and every metric's call) hold it
at float32 for their length (:func:`restorekit.interfaces.float32_default_dtype`), so that a
notebook's ``torch.set_default_dtype(torch.float64)`` does not break them.
"""

from __future__ import annotations

import contextlib
import random
import threading
from typing import Any, Callable

import numpy as np
import torch
from torch import Tensor

#: Held while process-wide state is snapshot, changed and put back (see the module's docstring):
#: re-entrant, so a plugin loaded while a method is built (in the same thread) does not wait.
LOCK = threading.RLock()

UNREADABLE = "unreadable (torch raised on the read: the legacy allow_tf32 and the new fp32_precision APIs were mixed)"
# Without torch's per-operator settings (torch < 2.9) the float32 precision is compared through these two.
MATMUL = "torch.get_float32_matmul_precision()"
CONV_TF32 = "TF32 convolutions (torch.backends.cudnn.allow_tf32)"
RAW_PRECISION = "_raw float32 precision settings"  # not compared: put back whenever they differ
# The per-operator settings whose effective value is compared (a value of 'none' inherits from its
# parent, up to torch.backends.fp32_precision, whose 'none' is torch's default, 'ieee').
_PRECISION_LEAVES = ("cuda.matmul", "cudnn.conv", "cudnn.rnn", "mkldnn.matmul", "mkldnn.conv", "mkldnn.rnn")


def precision_key(path: str) -> str:
    return f"torch.backends.{path}.fp32_precision"


def is_precision_key(key: str) -> bool:
    return key in (MATMUL, CONV_TF32) or (key.startswith("torch.backends.") and key.endswith(".fp32_precision"))


def read(get: Callable[[], Any]) -> Any:
    try:
        return get()
    except Exception:  # torch raises on reading a legacy flag after the new API set it
        return UNREADABLE


def precision_objects() -> list[tuple[str, Any]]:
    """The objects with a per-operator ``fp32_precision`` (torch ≥ 2.9; none before), parents first."""
    b = torch.backends
    out = []
    for path in ("", "cuda.matmul", "cudnn", "cudnn.conv", "cudnn.rnn", "mkldnn", "mkldnn.matmul", "mkldnn.conv",
                 "mkldnn.rnn"):
        obj: Any = b
        for part in filter(None, path.split(".")):
            obj = getattr(obj, part, None)
        if obj is not None and _has_precision(obj):
            out.append((path, obj))
    return out


def _has_precision(obj: Any) -> bool:
    """Whether ``obj`` has an ``fp32_precision`` (an ``AttributeError`` says it has none; a read
    that raises otherwise is one that exists but cannot be read now). Not ``read()``'s result as
    such: its placeholder for an unreadable value is a string too."""
    try:
        return isinstance(obj.fp32_precision, str)
    except AttributeError:
        return False
    except Exception:  # torch raises on reading a flag the other API set: it exists
        return True


def _effective_precision(raw: dict[str, Any], leaf: str) -> Any:
    """What ``leaf``'s float32 precision is in effect: its own value unless 'none', else its
    parent's (``cudnn.conv`` → ``cudnn`` → the top ``torch.backends``); all 'none': 'ieee'. A read
    that raised is its own value."""
    path: str | None = leaf
    while path is not None:
        value = raw.get(path)
        if value is not None and value != "none":
            return value
        path = (path.rsplit(".", 1)[0] if "." in path else "") if path else None
    return "ieee"


def _precision_state() -> dict[str, Any]:
    """The float32 precision each operator runs at (per-operator settings, torch ≥ 2.9; before:
    the matmul precision and cuDNN's TF32 flag), read safely (as :mod:`restorekit.devices` does),
    and the raw settings of both APIs to put them back."""
    objects = precision_objects()
    raw = {
        "legacy": {"cuda.matmul.allow_tf32": read(lambda: bool(torch.backends.cuda.matmul.allow_tf32)),
                   "cudnn.allow_tf32": read(lambda: bool(torch.backends.cudnn.allow_tf32)),
                   "matmul_precision": read(torch.get_float32_matmul_precision)},
        "fp32_precision": {path: read(lambda obj=obj: obj.fp32_precision) for path, obj in objects},
    }
    state: dict[str, Any] = {RAW_PRECISION: raw}
    leaves = [leaf for leaf in _PRECISION_LEAVES if leaf in raw["fp32_precision"]]
    if leaves:
        for leaf in leaves:
            state[precision_key(leaf)] = _effective_precision(raw["fp32_precision"], leaf)
    else:
        state[MATMUL] = raw["legacy"]["matmul_precision"]
        state[CONV_TF32] = raw["legacy"]["cudnn.allow_tf32"]
    return state


def set_precision_state(state: dict[str, Any]) -> None:
    """Put the float32 precision settings back: the legacy flags and the matmul precision first
    (when they were readable), then every per-operator setting that differs (parents first, as
    setting a parent may change its children; twice, for one a later setter moved)."""
    raw = state[RAW_PRECISION]
    legacy = raw["legacy"]
    setters: list[tuple[Any, Callable[[Any], None]]] = [
        (legacy["cuda.matmul.allow_tf32"], lambda v: setattr(torch.backends.cuda.matmul, "allow_tf32", v)),
        (legacy["cudnn.allow_tf32"], lambda v: setattr(torch.backends.cudnn, "allow_tf32", v)),
        (legacy["matmul_precision"], torch.set_float32_matmul_precision),
    ]
    for value, setter in setters:
        if value != UNREADABLE:
            with contextlib.suppress(Exception):
                setter(value)
    for _ in range(2):
        for path, obj in precision_objects():
            want = raw["fp32_precision"].get(path)
            if want is not None and want != UNREADABLE and read(lambda: obj.fp32_precision) != want:
                with contextlib.suppress(Exception):
                    obj.fp32_precision = want


def snapshot() -> dict[str, Any]:
    """Process-wide settings and RNG states, keyed by how a user would read each one."""
    state: dict[str, Any] = {
        "torch.get_num_threads()": torch.get_num_threads(),
        "torch.is_grad_enabled()": torch.is_grad_enabled(),
        "torch.get_default_dtype()": torch.get_default_dtype(),
        "torch.backends.cudnn.benchmark": torch.backends.cudnn.benchmark,
        "torch.backends.cudnn.deterministic": torch.backends.cudnn.deterministic,
        "torch.are_deterministic_algorithms_enabled()": torch.are_deterministic_algorithms_enabled(),
        "torch.is_deterministic_algorithms_warn_only_enabled()": torch.is_deterministic_algorithms_warn_only_enabled(),
        "the global torch RNG (torch.get_rng_state())": torch.get_rng_state(),
        "numpy's global RNG (np.random.get_state())": np.random.get_state(),
        "Python's global RNG (random.getstate())": random.getstate(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["the CUDA RNG (torch.cuda.get_rng_state_all())"] = torch.cuda.get_rng_state_all()
    state.update(_precision_state())
    return state


def same_value(a: Any, b: Any) -> bool:
    if isinstance(a, Tensor) and isinstance(b, Tensor):
        return a.shape == b.shape and bool(torch.equal(a, b))
    if isinstance(a, np.ndarray) and isinstance(b, np.ndarray):
        return a.shape == b.shape and bool(np.array_equal(a, b))
    if isinstance(a, (tuple, list)) and isinstance(b, (tuple, list)):
        return len(a) == len(b) and all(same_value(x, y) for x, y in zip(a, b))
    return bool(a == b)


_DETERMINISM = ("torch.are_deterministic_algorithms_enabled()", "torch.is_deterministic_algorithms_warn_only_enabled()")
_SETTERS: dict[str, Callable[[Any], None]] = {
    "torch.get_num_threads()": torch.set_num_threads,
    "torch.is_grad_enabled()": torch.set_grad_enabled,
    "torch.get_default_dtype()": torch.set_default_dtype,
    "torch.backends.cudnn.benchmark": lambda v: setattr(torch.backends.cudnn, "benchmark", v),
    "torch.backends.cudnn.deterministic": lambda v: setattr(torch.backends.cudnn, "deterministic", v),
    "the global torch RNG (torch.get_rng_state())": torch.set_rng_state,
    "numpy's global RNG (np.random.get_state())": np.random.set_state,
    "Python's global RNG (random.getstate())": random.setstate,
    "the CUDA RNG (torch.cuda.get_rng_state_all())": lambda v: torch.cuda.set_rng_state_all(v),
}


def restore(state: dict[str, Any], keys: list[str] | None = None) -> None:
    """Set ``keys`` of ``state`` (a :func:`snapshot`; default: all of it) back. Only those are set:
    a setter can be slow the first time (``torch.use_deterministic_algorithms`` imports much of torch)."""
    want = [k for k in (state if keys is None else keys) if k in state]
    for key in want:
        if key in _SETTERS:
            _SETTERS[key](state[key])
    if any(k in _DETERMINISM for k in want):
        torch.use_deterministic_algorithms(state[_DETERMINISM[0]], warn_only=state[_DETERMINISM[1]])
    if keys is None or any(is_precision_key(k) for k in want):
        set_precision_state(state)


def changed_keys(before: dict[str, Any], after: dict[str, Any]) -> list[str]:
    """The keys of ``before`` whose value ``after`` holds differently (the raw precision settings aside)."""
    return [k for k, v in before.items() if k in after and not k.startswith("_") and not same_value(v, after[k])]


def put_back(before: dict[str, Any], after: dict[str, Any]) -> list[str]:
    """Restore ``before`` where ``after`` (the state now) differs; return :func:`changed_keys`. Raw
    precision settings that differ with the same effect are put back too."""
    changed = changed_keys(before, after)
    if changed:
        restore(before, changed)
    if not same_value(before[RAW_PRECISION], after[RAW_PRECISION]) and not any(map(is_precision_key, changed)):
        set_precision_state(before)
    return changed


def is_rng_key(key: str) -> bool:
    return "RNG" in key


def show(v: Any) -> str:
    if isinstance(v, torch.dtype):
        return str(v).replace("torch.", "")
    return repr(v)


def raw_precision_changes(before: dict[str, Any], after: dict[str, Any]) -> dict[str, str]:
    """``{'torch.backends.cudnn.fp32_precision': "'none' → 'tf32'", …}``: the raw per-operator
    settings that differ (the effective values name what runs differently; these, what was set)."""
    a, b = before["fp32_precision"], after["fp32_precision"]
    return {precision_key(p) if p else "torch.backends.fp32_precision": f"{show(a.get(p))} → {show(b.get(p))}"
            for p in dict.fromkeys([*a, *b]) if a.get(p) != b.get(p)}


def describe(before: dict[str, Any], after: dict[str, Any], changed: list[str]) -> list[str]:
    """One phrase per changed key (``torch.get_default_dtype() float32 → float64``; an RNG: ``… was
    advanced or reseeded``), then the raw precision settings behind a changed precision, if they
    say more."""
    parts = [f"{k} was advanced or reseeded" if is_rng_key(k) else f"{k} {show(before[k])} → {show(after[k])}"
             for k in changed]
    raw = raw_precision_changes(before[RAW_PRECISION], after[RAW_PRECISION])
    if raw and any(is_precision_key(k) for k in changed) and set(raw) != {
            p.split(" ")[0] for p in parts if is_precision_key(p.split(" ")[0])}:
        parts.append(f"the raw settings that changed: {', '.join(f'{k} {v}' for k, v in raw.items())}")
    return parts
