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
``compare``'s memory column and by every file written (its permissions). ``/proc/self/status`` is
opened once per process and read again from its start (``pread``): one system call, where opening
and reading it took six or seven.
"""

from __future__ import annotations

import ctypes
import os
import platform
import sys
import threading

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
#: The ``/proc/self`` files this process keeps open, ``{name: (pid, descriptor or None)}`` (None:
#: not there to open, as on macOS or Windows: not asked again).
_PROC_FDS: dict[str, tuple[int, int | None]] = {}
_PROC_LOCK = threading.Lock()
#: Bytes read of ``/proc/self/status`` at first (it is about 1.5 KB); more when it fills them.
_STATUS_BYTES = 8192


def process_id() -> int:
    """This process's id (``os.getpid()``, without a system call)."""
    return _PID


def _proc_fd(name: str, flags: int) -> int | None:
    """This process's ``/proc/self/NAME`` open with ``flags``, opened on first use (None where it
    cannot be). A descriptor a parent opened before a fork names the parent's process: a child
    opens its own (:func:`_forget_in_child` closes the inherited one)."""
    pid = _PID
    held = _PROC_FDS.get(name)
    if held is not None and held[0] == pid:
        return held[1]
    with _PROC_LOCK:
        held = _PROC_FDS.get(name)
        if held is None or held[0] != pid:
            try:
                fd: int | None = os.open(f"/proc/self/{name}", flags | getattr(os, "O_CLOEXEC", 0))
            except (OSError, ValueError):
                fd = None
            held = _PROC_FDS[name] = (pid, fd)
        return held[1]


def _forget_in_child() -> None:
    """After a fork, in the child: its own process id; the descriptors inherited name the
    parent's ``/proc`` files, closed at once (nothing else in the child can have reused their
    numbers yet)."""
    global _PID
    _PID = os.getpid()
    for _, fd in _PROC_FDS.values():
        if fd is not None:
            try:
                os.close(fd)
            except OSError:
                pass
    _PROC_FDS.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_in_child)


def status_fields(*keys: str) -> dict[str, str] | None:
    """The values of ``keys`` (``VmRSS``, ``VmHWM``, ``Umask``…) in Linux's ``/proc/self/status``,
    read now (``"13632 kB"``, ``"0022"``); a key the file lacks is left out. None where there is no
    such file."""
    if not hasattr(os, "pread"):
        return None
    for _ in range(2):  # (a second time with the file opened anew, should the kept number be stale)
        fd = _proc_fd("status", os.O_RDONLY)
        if fd is None:
            return None
        size = _STATUS_BYTES
        try:
            data = os.pread(fd, size, 0)
            while len(data) >= size:  # (filled: read it whole)
                size *= 4
                data = os.pread(fd, size, 0)
        except OSError:
            data = b""
        if data.startswith(b"Name:"):
            break
        with _PROC_LOCK:  # the kept number closed by the program (and maybe reused): not ours any more
            _PROC_FDS.pop("status", None)
    else:
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
    ``/proc/self/clear_refs``); whether it was reset. Opened for each reset, never kept: a write
    through a kept number that the program has closed and reused (``os.closerange``) would land in
    another file."""
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
