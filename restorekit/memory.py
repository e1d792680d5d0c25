"""Keep freed memory in the process for the next call (glibc), instead of handing it back.

glibc serves every request above its mmap threshold (32 MB at most) with a fresh ``mmap`` and
returns it with ``munmap`` on free, and trims the heap's top whenever it is free. A network
running on the CPU frees its large activations at the end of each call, so the next call gets
new pages that the kernel has to fault in and zero again: on this project's 2-core machine that
was about a quarter of the 1024-px generator's time (0.2-0.35 s of kernel time per image, 1.0 s
unoptimised) — the plain convolutions it is measured against pay it too, for their outputs.
:func:`keep_freed_memory` makes glibc serve every request from its heap and never trim it, so
calls after the first reuse the same pages.

Process-wide and permanent: the resident size stays at its peak (which a model of this size
reaches on every call anyway). Nothing happens where glibc is not the C library.
"""

from __future__ import annotations

import ctypes
import platform
import sys

import torch

M_TRIM_THRESHOLD = -1
M_TOP_PAD = -2
M_MMAP_MAX = -4
_INT_MAX = 2**31 - 1

_applied: bool | None = None


def keep_freed_memory() -> bool:
    """Ask glibc to keep freed memory for reuse (once per process); whether it is in effect."""
    global _applied
    if _applied is not None:
        return _applied
    _applied = False
    if not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    # mallopt returns 1 on success. No mmap'd chunks, no trimming, the heap grown 64 MB at a time.
    _applied = bool(mallopt(M_MMAP_MAX, 0) and mallopt(M_TRIM_THRESHOLD, _INT_MAX)
                    and mallopt(M_TOP_PAD, 64 << 20))
    return _applied


def kept() -> bool:
    """Whether :func:`keep_freed_memory` is in effect in this process (it cannot be undone: a
    benchmark that times a side without it must do so before anything asks for it)."""
    return _applied is True


#: Below this output resolution a generator's activations are a few MB; faulting them in again
#: on every call costs next to nothing, so the process's malloc is left alone.
MIN_RESOLUTION = 256


def keep_freed_memory_for(device: torch.device, resolution: int) -> bool:
    """:func:`keep_freed_memory` where it pays: on the CPU, for generators of ``MIN_RESOLUTION`` px
    or more (the methods' ``keep_memory`` option decides whether to ask). Whether it is in effect."""
    if device.type != "cpu" or resolution < MIN_RESOLUTION:
        return False
    return keep_freed_memory()
