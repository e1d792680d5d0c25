"""Checks for scripts that test training under ``torchrun``."""

from __future__ import annotations

from pathlib import Path


def native_threads(marker: str) -> list[str]:
    """Names of this process's threads (Linux ``/proc/self/task``) that contain ``marker``.

    After :func:`restorekit.training.distributed.cleanup`, ``native_threads("gloo")`` should be
    empty: a backend thread still running then meets interpreter shutdown, where a rank can abort
    after a finished run. Empty where ``/proc`` is not there."""
    tasks = Path("/proc/self/task")
    if not tasks.is_dir():
        return []
    names = []
    for t in tasks.iterdir():
        try:
            names.append((t / "comm").read_text(encoding="utf-8", errors="replace").strip())
        except OSError:  # the thread ended while listed
            continue
    return [n for n in names if marker in n]
