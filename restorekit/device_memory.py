"""How much memory a device has left, and the refusal of a job that would need more.

On the CPU, Linux does not fail an allocation that does not fit: the kernel kills the process
later, mid-way, taking every input of a batch with it and leaving no message. A method whose
working memory grows with the output (a fully convolutional network run at full resolution)
checks its estimate here first and fails that one input with a line saying what it needs.
"""

from __future__ import annotations

import torch


def _meminfo_available(path: str = "/proc/meminfo") -> int | None:
    try:
        with open(path, encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def _cgroup_available(root: str = "/sys/fs/cgroup") -> int | None:
    """What the process's cgroup (v2) still allows, where it sets a limit."""
    try:
        with open(f"{root}/memory.max", encoding="ascii") as f:
            limit = f.read().strip()
        if limit == "max":
            return None
        with open(f"{root}/memory.current", encoding="ascii") as f:
            current = int(f.read().strip())
        return max(int(limit) - current, 0)
    except (OSError, ValueError):
        return None


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
