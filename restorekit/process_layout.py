"""Where this process stands in a job that ``torchrun`` started: its variables, checked.

``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK`` and ``LOCAL_WORLD_SIZE`` are set by torchrun, but also by
hand or by a scheduler's wrapper script; read with a bare ``int()``, a wrong one ended a command in
an unexplained ``ValueError``, or started a process group that never forms. Torch-free.
"""

from __future__ import annotations

import os

from .errors import RestorekitError

__all__ = ["PROCESS_VARIABLES", "process_layout"]

#: The process layout torchrun gives each process; ``(variable, smallest value)``.
PROCESS_VARIABLES = (("WORLD_SIZE", 1), ("RANK", 0), ("LOCAL_RANK", 0), ("LOCAL_WORLD_SIZE", 1))


def process_layout() -> dict[str, int]:
    """torchrun's variables as integers (those set), refused in one line where one is not a whole
    number, is below its least value, or ``RANK`` is missing or not below ``WORLD_SIZE`` in a job of
    several processes."""
    layout: dict[str, int] = {}
    for name, least in PROCESS_VARIABLES:
        text = os.environ.get(name)
        if text is None:
            continue
        try:
            value = int(text.strip())
        except ValueError:
            value = None
        if value is None or value < least:
            raise RestorekitError(f"environment variable {name}={text!r} must be a whole number ≥ {least} "
                                  "(torchrun sets it; unset it to run in one process)")
        layout[name] = value
    world = layout.get("WORLD_SIZE", 1)
    if world > 1 and "RANK" not in layout:
        raise RestorekitError(f"environment variable WORLD_SIZE={world} without RANK: start a job of several "
                              "processes with torchrun, or unset WORLD_SIZE to run in one process")
    if layout.get("RANK", 0) >= world:
        raise RestorekitError(f"environment variable RANK={layout['RANK']} must be below WORLD_SIZE={world} "
                              "(torchrun sets both; unset them to run in one process)")
    return layout
