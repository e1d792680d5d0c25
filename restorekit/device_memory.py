"""How much memory a device has left, and the refusal of a job that would need more.

On the CPU, Linux does not fail an allocation that does not fit: the kernel kills the process
later, mid-way, taking every input of a batch with it and leaving no message. A method whose
working memory grows with the output (a fully convolutional network run at full resolution)
checks its estimate here first and fails that one input with a line saying what it needs.

In a container or a batch job the limit is usually not the machine's memory but the process's
control group's (cgroup v2 ``memory.max``, v1 ``memory.limit_in_bytes``), set on the group the
process is in or on one above it (a Slurm job's, a Kubernetes pod's, a systemd service's): the
groups are found from ``/proc/self/cgroup`` and ``/proc/self/mountinfo`` (:func:`cgroup_folders`).
Where none of these can be read (gVisor, macOS, a hardened ``/proc``) nothing is refused.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

__all__ = ["available_memory", "cgroup_folders", "check_working_memory"]

#: Where the cgroup file systems are mounted when ``/proc/self/mountinfo`` cannot be read.
_CGROUP_ROOT = "/sys/fs/cgroup"
#: A cgroup v1 limit at or above this is no limit (the kernel shows "none" as the largest page count
#: it can hold, 9223372036854771712 with 4-KiB pages; other page sizes give other near-2⁶³ values).
_V1_UNLIMITED = 1 << 62


def _meminfo_available(path: str = "/proc/meminfo") -> int | None:
    try:
        with open(path, encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def _unescape(field: str) -> str:
    """A ``/proc/self/mountinfo`` path field with its octal escapes (``\\040`` for a space) decoded."""
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def _read_lines(path: str) -> list[str] | None:
    try:
        with open(path, encoding="utf-8", errors="surrogateescape") as f:
            return f.read().splitlines()
    except (OSError, ValueError):
        return None


def cgroup_folders(controller: str, proc: str = "/proc/self") -> list[Path]:
    """This process's folders in the cgroup hierarchies that can hold ``controller``'s files
    (``"memory"``, ``"cpu"``): in the v2 (unified) hierarchy and in a v1 one mounted for it, each
    from the group the process is in up to the top its mount shows, innermost first.

    The process's group is read from ``<proc>/cgroup`` and placed under its mount by
    ``<proc>/mountinfo`` (the mount's own root is taken off: a container without a cgroup namespace
    sees its group's path from the host's root, mounted as its ``/sys/fs/cgroup``). Without those
    files only the top folders (``/sys/fs/cgroup``, ``/sys/fs/cgroup/<controller>``) are looked at;
    a folder may lack the files (the caller reads them and takes a missing one as no limit)."""
    groups = _read_lines(f"{proc}/cgroup")
    mounts = _read_lines(f"{proc}/mountinfo")
    if groups is None or mounts is None:
        return [Path(_CGROUP_ROOT), Path(_CGROUP_ROOT) / controller]
    unified: str | None = None
    legacy: str | None = None
    for line in groups:
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        hierarchy, controllers, path = parts
        if hierarchy == "0" and controllers == "":
            unified = path
        elif controller in controllers.split(","):
            legacy = path
    found: list[Path] = []
    seen: set[str] = set()
    for line in mounts:
        pre, sep, post = line.partition(" - ")
        fields, tail = pre.split(), post.split()
        if not sep or len(fields) < 5 or len(tail) < 3:
            continue
        fstype, options = tail[0], tail[2].split(",")
        if fstype == "cgroup2" and unified is not None:
            path, kind = unified, "v2"
        elif fstype == "cgroup" and legacy is not None and controller in options:
            path, kind = legacy, "v1"
        else:
            continue
        if kind in seen:  # (the same hierarchy mounted again elsewhere)
            continue
        seen.add(kind)
        root, mount = _unescape(fields[3]), Path(_unescape(fields[4]))
        if root == "/":
            inside = path
        elif path == root or path.startswith(root.rstrip("/") + "/"):
            inside = path[len(root.rstrip("/")):]
        else:  # the group lies outside what this mount shows: its top is all there is to read
            inside = ""
        parts_in = [p for p in inside.split("/") if p and p != "."]
        if ".." in parts_in:  # (a group path seen from another cgroup namespace)
            parts_in = []
        for depth in range(len(parts_in), -1, -1):
            found.append(mount.joinpath(*parts_in[:depth]))
    return found


def _read_int_file(path: Path) -> str:
    with open(path, encoding="ascii") as f:
        return f.read().strip()


def _stat_value(folder: Path, keys: tuple[str, ...]) -> int:
    """The first of ``keys`` in ``folder``'s ``memory.stat`` (0 when the file or the keys are missing)."""
    try:
        with open(folder / "memory.stat", encoding="ascii") as f:
            values = dict(line.split(None, 1) for line in f if " " in line)
    except (OSError, ValueError):
        return 0
    for key in keys:
        try:
            return max(int(values[key]), 0)
        except (KeyError, ValueError):
            continue
    return 0


def _memory_left(folder: Path) -> int | None:
    """What the cgroup at ``folder`` still allows (None: it sets no limit, or it cannot be read).

    Its usage counts the page cache too, which the kernel drops before it kills anything: the
    cache not used lately (``inactive_file``, as the kubelet and ``docker stats`` reckon a
    container's working set) is counted as free, so that reading a few GB of images does not
    leave a container with "nothing" available."""
    try:
        limit = _read_int_file(folder / "memory.max")
        v2 = True
    except FileNotFoundError:
        try:
            limit = _read_int_file(folder / "memory.limit_in_bytes")
        except (OSError, ValueError):
            return None
        v2 = False
    except (OSError, ValueError):
        return None
    try:
        if limit == "max":
            return None
        cap = int(limit)
        if not v2 and cap >= _V1_UNLIMITED:
            return None
        used = int(_read_int_file(folder / ("memory.current" if v2 else "memory.usage_in_bytes")))
    except (OSError, ValueError):
        return None
    cache = _stat_value(folder, ("inactive_file",) if v2 else ("total_inactive_file", "inactive_file"))
    return max(cap - max(used - cache, 0), 0)


def _cgroup_available(root: str | None = None, proc: str = "/proc/self") -> int | None:
    """What the process's cgroups still allow, where one of them sets a limit: the least left
    over the groups from its own up to the top (:func:`cgroup_folders`); ``root``: that one
    folder only. v2 (``memory.max``, ``memory.current``) and v1 (``memory.limit_in_bytes``,
    ``memory.usage_in_bytes``) alike; a file that cannot be read counts as no limit."""
    folders = [Path(root)] if root is not None else cgroup_folders("memory", proc)
    left = [b for b in map(_memory_left, folders) if b is not None]
    return min(left) if left else None


def available_memory(device: torch.device) -> int | None:
    """Bytes a new allocation on ``device`` can still get (None: unknown here).

    CPU: the kernel's estimate of memory available without swapping (``MemAvailable``), within
    the container's cgroup limit; CUDA: the device's free memory plus what torch's allocator
    holds unused."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device))
    if device.type == "cpu":
        found = [b for b in (_meminfo_available(), _cgroup_available()) if b is not None]
        return min(found) if found else None
    return None


def _size(n: float) -> str:
    return f"{n / 1e9:.1f} GB" if n >= 1e9 else f"{n / 1e6:.0f} MB"


def check_working_memory(need: int, device: torch.device, what: str, fix: str) -> None:
    """Refuse, before any work, a job that would need more memory than ``device`` has left —
    on the CPU the kernel would kill the process mid-way, taking every other input with it.

    ``need``: the job's estimated peak in bytes; ``what`` names the job, ``fix`` what to do."""
    have = available_memory(device)
    if have is not None and need > have:
        from .errors import InsufficientMemory

        raise InsufficientMemory(f"{what} needs about {_size(need)} of memory, {_size(have)} is available on "
                                 f"{device.type} ({fix})")
