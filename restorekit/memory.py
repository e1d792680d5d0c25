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

Also here: the process's own Linux status (:func:`status_fields`: resident size, its high-water
mark, the umask) and the reset of that mark (:func:`reset_peak_rss`), read per image by
``compare``'s memory column and by every file written (its permissions): the status read whole
in one ``read``, its keys looked for, not every line parsed. Nothing is kept open: a descriptor
kept for the process's life would be one more file a long-running server holds.
"""

from __future__ import annotations

import ctypes
import os
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


#: This process's id, kept current across ``os.fork`` (:func:`_forget_in_child`): asked of the
#: system once, not at every use (glibc caches it no more).
_PID = os.getpid()


def process_id() -> int:
    """This process's id (``os.getpid()``, without a system call)."""
    return _PID


def _forget_in_child() -> None:
    """After a fork, in the child: its own process id."""
    global _PID
    _PID = os.getpid()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_in_child)


def status_fields(*keys: str) -> dict[str, str] | None:
    """The values of ``keys`` (``VmRSS``, ``VmHWM``, ``Umask``…) in Linux's ``/proc/self/status``,
    read now (``"13632 kB"``, ``"0022"``); a key the file lacks is left out. None where there is no
    such file."""
    try:
        with open("/proc/self/status", "rb") as f:
            data = f.read()
    except OSError:
        return None
    found: dict[str, str] = {}
    for key in keys:  # (looked for, not every line parsed: this runs per file written)
        tag = f"{key}:".encode("ascii")
        if data.startswith(tag):
            at = len(tag)
        else:
            at = data.find(b"\n" + tag)
            if at < 0:
                continue
            at += 1 + len(tag)
        end = data.find(b"\n", at)
        found[key] = data[at:end if end >= 0 else len(data)].decode("ascii", "replace").strip()
    return found


def reset_peak_rss() -> bool:
    """Reset Linux's resident high-water mark (``VmHWM``) to the current resident size (``5`` to
    ``/proc/self/clear_refs``); whether it was reset."""
    try:
        fd = os.open("/proc/self/clear_refs", os.O_WRONLY | getattr(os, "O_CLOEXEC", 0))
    except (OSError, ValueError):
        return False
    try:
        return os.write(fd, b"5") == 1
    except OSError:
        return False
    finally:
        os.close(fd)
