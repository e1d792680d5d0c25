"""Process-group setup for ``torchrun`` launches and the helpers the trainer needs around it.

``torchrun --nproc_per_node N`` sets ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK``; with
``WORLD_SIZE > 1`` :func:`init_distributed` joins the group (NCCL on CUDA, gloo on CPU) and
pins each process to ``cuda:LOCAL_RANK``, to which NCCL's group is bound (``device_id``).
Without those variables everything is one process.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch.utils.data import Dataset, DistributedSampler

from ..devices import check_device, resolve_device


@dataclass(frozen=True)
class DistInfo:
    """This process's place in the job."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def pick_device(name: str, local_rank: int = 0) -> torch.device:
    """``auto``: CUDA when present (``cuda:LOCAL_RANK``), else CPU; ``cuda``: ``cuda:LOCAL_RANK``;
    ``cuda:N`` as given. Checked as :func:`restorekit.devices.resolve_device` checks ``--device``
    (one-line :class:`RestorekitError`, exit 2)."""
    text = check_device(name)
    default = None
    if text in ("auto", "cuda") and torch.cuda.is_available():
        default = local_rank % torch.cuda.device_count()
    dev = resolve_device(text, default_index=default)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    return dev


def _import_group_defaults() -> None:
    """Import ``torch.distributed.nn.functional`` while no group exists.

    Its functions take ``group=group.WORLD`` as a default argument, evaluated at import. DDP
    imports it (through ``torch._dynamo``); imported after the group is made, those defaults
    pin the group for the life of the process, so ``destroy_process_group`` cannot free it and
    gloo's worker threads are still running at interpreter shutdown, where a rank can abort
    with "terminate called without an active exception" after a finished run. Imported first,
    the defaults hold ``None``."""
    import torch.distributed.nn.functional  # noqa: F401


def init_distributed(device: str = "auto", backend: str | None = None) -> DistInfo:
    """Join the process group when launched by ``torchrun`` (idempotent); else a single process.

    ``backend``: the default is NCCL on CUDA and gloo on CPU (what gradient all-reduces want);
    ``run`` and ``compare`` pass gloo, since only Python objects travel between their ranks.
    """
    from ..process_layout import process_layout

    layout = process_layout()  # one line naming a variable that is no whole number
    world, rank = layout.get("WORLD_SIZE", 1), layout.get("RANK", 0)
    local = layout.get("LOCAL_RANK", rank)
    dev = pick_device(device, local)
    if world > 1 and not dist.is_initialized():
        _import_group_defaults()
        chosen = backend or ("nccl" if dev.type == "cuda" else "gloo")
        # NCCL bound to this process's GPU: its first collective need not guess the device
        # (from the current device or the rank), and torch says so instead of warning.
        bound = dev if chosen == "nccl" and dev.type == "cuda" and dev.index is not None else None
        dist.init_process_group(backend=chosen, device_id=bound)
    if dist.is_initialized():
        world, rank = dist.get_world_size(), dist.get_rank()
    return DistInfo(rank=rank, world_size=world, local_rank=local, device=dev)


def barrier(info: DistInfo) -> None:
    if info.distributed and dist.is_initialized():
        dist.barrier()


def all_gather_objects(info: DistInfo, obj: Any) -> list[Any]:
    """Every rank's ``obj`` (a list of one on a single process)."""
    if not info.distributed:
        return [obj]
    out: list[Any] = [None] * info.world_size
    dist.all_gather_object(out, obj)
    return out


def signal_across(info: DistInfo, signum: int | None) -> int | None:
    """The signal that stopped any rank (the lowest rank's), so that every rank — rank 0, which
    reports, above all — exits with the code a stopped run has, wherever the signal landed."""
    got = [s for s in all_gather_objects(info, signum) if s]
    return int(got[0]) if got else None


def mean_across(info: DistInfo, values: dict[str, float]) -> dict[str, float]:
    """Average scalar logs over ranks (every rank must call with the same keys)."""
    if not info.distributed or not values:
        return values
    keys = sorted(values)
    t = torch.tensor([values[k] for k in keys], dtype=torch.float64,
                     device=info.device if info.device.type == "cuda" else "cpu")
    dist.all_reduce(t)
    t /= info.world_size
    return dict(zip(keys, t.tolist()))


class ResumableSampler(DistributedSampler):  # type: ignore[type-arg]
    """``DistributedSampler`` (same shuffling: ``randperm`` seeded ``seed + epoch``, padded to a
    multiple of the world size, every ``world_size``-th index) that can start mid-epoch, so a
    resumed run sees exactly the samples the uninterrupted run would have seen."""

    def __init__(self, dataset: Dataset[Any], *, num_replicas: int = 1, rank: int = 0, shuffle: bool = True,
                 seed: int = 0) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed,
                         drop_last=False)
        self.skip = 0

    def set_position(self, epoch: int, skip: int) -> None:
        """Start at epoch ``epoch``, skipping its first ``skip`` indices of this rank."""
        self.set_epoch(epoch)
        self.skip = skip

    def __iter__(self):  # type: ignore[no-untyped-def]
        return iter(list(super().__iter__())[self.skip:])

    def __len__(self) -> int:
        return self.num_samples - self.skip


def cleanup(info: DistInfo) -> None:
    """Leave the process group if this module joined one.

    Drop DDP wrappers first (:meth:`Trainer.close`): they hold the group, which would otherwise
    outlive this call and be torn down during interpreter shutdown, when gloo's worker threads
    may no longer take the GIL (a rank then aborts at the end of a finished run with "terminate
    called without an active exception"; see also :func:`_import_group_defaults`)."""
    if info.distributed and dist.is_initialized():
        dist.destroy_process_group()
