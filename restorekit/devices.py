"""The devices restorekit runs on: ``--device`` values, their validation, and how a method's
device and precision are described.

``--device`` takes ``auto`` (CUDA when present, else the CPU), ``cpu``, ``cuda`` (the current
CUDA device: ``cuda:0``, or ``cuda:LOCAL_RANK`` under ``torchrun``) or ``cuda:N``. Anything
else (``mps``, ``cuda:x``) is refused with one line; so is ``cuda`` on a machine without a GPU
and ``cuda:N`` past this machine's GPUs — by every command, while its options are read
(:class:`DeviceType`), with restorekit's one ``error:`` line rather than click's usage block.
"""

from __future__ import annotations

import re
from typing import Any

import click
import torch

from .errors import RestorekitError

__all__ = ["DEVICE", "DEVICE_HELP", "DeviceType", "check_device", "resolve_device", "normalize_device",
           "run_device", "precision_label", "TF32_SUFFIX"]

_SYNTAX = re.compile(r"(auto|cpu|cuda)(?::(\d+))?")

#: The help text every ``--device`` option shares (after its own first words, if any).
DEVICE_HELP = "auto (CUDA when available, else the CPU), cpu, cuda (the current GPU) or cuda:N (GPU N)."


def _problem(text: str) -> str | None:
    """Why ``text`` (stripped, lower case) is no ``--device`` value; None when it is one."""
    m = _SYNTAX.fullmatch(text)
    if m is not None and (m.group(2) is None or m.group(1) == "cuda"):
        return None
    kind = re.fullmatch(r"([a-z_]+)(?::\d+)?", text)
    if kind is not None and kind.group(1) not in ("auto", "cpu", "cuda"):  # mps, xpu, …
        return "restorekit runs on cpu or cuda (auto, cpu, cuda or cuda:N)"
    return "not a device (auto, cpu, cuda or cuda:N)"


def check_device(device: str | torch.device) -> str:
    """``device`` as a ``--device`` value (``auto``, ``cpu``, ``cuda`` or ``cuda:N``, lower case),
    checked for form only (no GPU is looked for); :class:`RestorekitError` with one line otherwise."""
    text = str(device).strip().lower()
    problem = _problem(text)
    if problem is not None:
        raise RestorekitError(f"--device {str(device).strip()}: {problem}")
    return text


def _count(n: int) -> str:
    if n == 1:
        return "1 CUDA device (cuda:0)"
    return f"{n} CUDA devices (cuda:0 to cuda:{n - 1})"


def resolve_device(device: str | torch.device, *, default_index: int | None = None) -> torch.device:
    """The ``torch.device`` for a ``--device`` value, always with an index on CUDA.

    ``auto``: CUDA when present, else the CPU. ``cuda`` without an index: ``default_index``
    (``torch.cuda.current_device()`` when None). :class:`RestorekitError` (one line) for a value
    that is no device, a device that is neither CPU nor CUDA, CUDA without a GPU and ``cuda:N``
    past this machine's GPUs.
    """
    text = check_device(device)
    if text == "auto":
        text = "cuda" if torch.cuda.is_available() else "cpu"
    if text == "cpu":
        return torch.device("cpu")
    n = _check_present(text)
    index = int(text.split(":", 1)[1]) if ":" in text else None
    if index is None:
        index = torch.cuda.current_device() if default_index is None else int(default_index)
    if index >= n:
        raise RestorekitError(f"--device {text}: this machine has {_count(n)}")
    return torch.device("cuda", index)


def _check_present(text: str) -> int:
    """The number of CUDA devices, for a well-formed ``cuda``/``cuda:N`` value; :class:`RestorekitError`
    (one line) without a GPU or with ``N`` past them. Initialises no CUDA context (no
    ``current_device``), so it is safe before ``torchrun`` forks or a worker picks its GPU."""
    if not torch.cuda.is_available():
        raise RestorekitError(f"--device {text}: no CUDA device is available (use --device cpu or auto)")
    n = torch.cuda.device_count()
    if ":" in text and int(text.split(":", 1)[1]) >= n:
        raise RestorekitError(f"--device {text}: this machine has {_count(n)}")
    return n


class DeviceType(click.ParamType):
    """``--device``: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``, checked for form (a click usage
    error) and, for ``cuda``/``cuda:N``, for the GPU being there: that refusal is a
    :class:`RestorekitError`, which restorekit's command group prints as one ``error:`` line (exit
    2) for every command alike — raised from inside a command, as a usage error, click had printed
    its usage block above it. ``--help`` is read first, so it needs no GPU; ``auto`` looks for none."""

    name = "device"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if value is None:
            return None
        text = str(value).strip().lower()
        problem = _problem(text)
        if problem is not None:
            self.fail(f"'{value}': {problem}", param, ctx)
        if text.startswith("cuda"):
            _check_present(text)
        return text

    def get_metavar(self, param: click.Parameter, ctx: click.Context | None = None) -> str:  # type: ignore[override]
        return "[auto|cpu|cuda|cuda:N]"

    def shell_complete(self, ctx: click.Context, param: click.Parameter, incomplete: str) -> list[Any]:
        from click.shell_completion import CompletionItem

        return [CompletionItem(c) for c in ("auto", "cpu", "cuda", "cuda:0") if c.startswith(incomplete)]


#: The shared click type of every ``--device`` option.
DEVICE = DeviceType()


def normalize_device(device: str | torch.device) -> torch.device:
    """``device`` with an explicit index on CUDA (``cuda`` → ``cuda:<current device>``), so that it
    compares equal to the ``.device`` of the tensors made there."""
    dev = torch.device(device)
    if dev.type == "cuda" and dev.index is None:
        return torch.device("cuda", torch.cuda.current_device())
    return dev


def run_device(method: Any) -> torch.device:
    """Where ``method``'s network runs: its ``run_device`` where it has one (an onnxruntime graph
    runs where its session does, which may be the CPU for a method on CUDA), else its ``device``."""
    dev = getattr(method, "run_device", None)
    return torch.device(dev if dev is not None else method.device)


#: What :func:`precision_label` adds to ``float32`` where cuDNN runs convolutions in TF32.
TF32_SUFFIX = " (TF32 convolutions)"


def precision_label(device: str | torch.device, precision: str = "float32") -> str:
    """``precision`` as it is computed on ``device``: ``float32 (TF32 convolutions)`` for float32
    on a CUDA GPU of compute capability 8.0 or higher (Ampere and later) while
    ``torch.backends.cudnn.allow_tf32`` is on (torch's default), whose convolutions then round
    their inputs to TF32's 10-bit mantissa; ``precision`` unchanged otherwise (the CPU above all)."""
    dev = torch.device(device)
    if precision != "float32" or dev.type != "cuda" or not _tf32_convolutions():
        return precision
    try:
        major, _ = torch.cuda.get_device_capability(dev.index if dev.index is not None else None)
    except Exception:  # no driver to ask: say nothing rather than guess
        return precision
    return precision + TF32_SUFFIX if major >= 8 else precision


def _tf32_convolutions() -> bool:
    """Whether cuDNN runs float32 convolutions in TF32: torch's newer per-operator setting
    (``torch.backends.cudnn.conv.fp32_precision``, torch ≥ 2.9) where it exists and is set, else
    the legacy ``allow_tf32`` (reading which raises once the two APIs were mixed)."""
    try:
        conv = getattr(torch.backends.cudnn, "conv", None)
        setting = getattr(conv, "fp32_precision", None)
        if isinstance(setting, str) and setting != "none":
            return setting == "tf32"
        return bool(torch.backends.cudnn.allow_tf32)
    except Exception:  # neither can be read: say nothing rather than guess
        return False
