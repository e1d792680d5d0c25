"""``run`` and ``compare`` as one job over the processes of a ``torchrun`` launch.

Under ``torchrun`` (``WORLD_SIZE > 1``) every process joins a gloo group — only small Python
objects travel between ranks — and works on its own device: ``cuda:LOCAL_RANK``, or the CPU with
its share of the cores it may use (:func:`cpu_budget` ``// LOCAL_WORLD_SIZE`` threads: affinity,
a container's CPU quota, Slurm's CPUs per task; fewer when ``OMP_NUM_THREADS`` says so;
``torchrun`` sets 1 unless told otherwise).

Work is dealt deterministically: every rank computes the same list, and rank ``r`` of ``W`` takes
items ``r, r + W, r + 2W, …`` (:meth:`Job.part`). Ranks meet only at a few named points
(:meth:`Job.sync`), where they wait by polling the launcher's key-value store instead of inside a
collective, so a rank that finishes its share long before the others hits no collective timeout;
a rank that fails before the end sets an ``abort`` key that releases the waiting ones.

Without ``torchrun`` :data:`SINGLE` is the job: one rank, every helper the identity, no group.
"""

from __future__ import annotations

import math
import os
import re
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, TypeVar

import click
import torch

from .errors import RestorekitError
from .process_layout import process_layout

if TYPE_CHECKING:  # imported when a job starts: ``restorekit.training`` costs a start-up otherwise
    from .training.distributed import DistInfo

T = TypeVar("T")

_PREFIX = "restorekit/"
_ABORT = _PREFIX + "abort"


def launched() -> bool:
    """Whether this process is one of several started by ``torchrun`` (``WORLD_SIZE > 1``)."""
    return process_layout().get("WORLD_SIZE", 1) > 1


def exit_code_of(exc: BaseException) -> int:
    """The exit code a command ends with when ``exc`` escapes it (see ``restorekit.cli``)."""
    if isinstance(exc, SystemExit):
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    if isinstance(exc, click.exceptions.Exit):
        return exc.exit_code
    if isinstance(exc, click.ClickException):
        return exc.exit_code
    if isinstance(exc, (RestorekitError, OSError)):
        return 2
    if isinstance(exc, KeyboardInterrupt):
        return 130
    return 1


class Job:
    """This process's place in a ``run``/``compare`` job, and the few ways ranks meet."""

    def __init__(self, info: DistInfo | None = None, store: Any | None = None) -> None:
        self.info = info  # None: a single process
        self._store = store  # the launcher's c10d store (None: a single process)
        self._points = 0  # named meeting points passed, the same sequence on every rank
        self._on_wait: Callable[[], None] | None = None
        self.settled = False  # the final merge is done: the ranks may now end in any order

    @property
    def rank(self) -> int:
        return 0 if self.info is None else self.info.rank

    @property
    def world(self) -> int:
        return 1 if self.info is None else self.info.world_size

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world > 1

    @property
    def device(self) -> torch.device | None:
        """This rank's device (``cuda:LOCAL_RANK`` or the CPU); None alone (the command's own choice)."""
        return None if self.info is None else self.info.device

    def device_for(self, requested: str) -> str:
        """The device to build on: the requested one alone, this rank's in a job."""
        return requested if self.device is None else str(self.device)

    def part(self, seq: Sequence[T]) -> list[T]:
        """This rank's share of ``seq``: items ``rank, rank + world, …`` (all of it alone)."""
        return list(seq[self.rank::self.world])

    def indices(self, n: int) -> range:
        """The indices of this rank's share of a list of ``n``."""
        return range(self.rank, n, self.world)

    # ----------------------------------------------------------------------------------------
    # Meeting points

    def _aborted(self) -> int | None:
        if self._store is None or not self._store.check([_ABORT]):
            return None
        try:
            return int(self._store.get(_ABORT).decode())
        except (ValueError, RuntimeError):
            return 1

    def sync(self) -> None:
        """Wait until every rank reaches this point (polling; no collective timeout applies).

        Raises ``SystemExit`` with the failing rank's exit code when another rank aborted
        (that rank has said why).
        """
        if self._store is None:
            return
        self._points += 1
        key = f"{_PREFIX}point/{self._points}"
        self._store.add(key, 1)
        pause = 0.005
        while int(self._store.add(key, 0)) < self.world:
            code = self._aborted()
            if code is not None:
                raise SystemExit(code)
            if self._on_wait is not None:
                self._on_wait()
            time.sleep(pause)
            pause = min(0.25, pause * 1.5)

    def gather(self, obj: T) -> list[T]:
        """Every rank's ``obj``, in rank order, on every rank (``[obj]`` alone)."""
        if self.info is None or not self.distributed:
            return [obj]
        from .training.distributed import all_gather_objects

        self.sync()
        return all_gather_objects(self.info, obj)

    def together(self, fn: Callable[[], T]) -> T:
        """Run a set-up step on every rank and agree on its outcome before anyone goes on.

        When it fails anywhere, the lowest failing rank raises its error (said once) and the
        others end with the same exit code; a rank whose own error differs raises it too.
        """
        if not self.distributed:
            return fn()
        value: Any = None
        error: Exception | None = None
        try:
            value = fn()
        except Exception as exc:  # agreed on below, then raised where it is said
            error = exc
        said = self.gather(None if error is None else (str(error), exit_code_of(error)))
        failing = [(r, s) for r, s in enumerate(said) if s is not None]
        if not failing:
            return value  # type: ignore[no-any-return]
        self.settled = True  # every rank ends here: no rank is left waiting
        first_rank, (first_msg, first_code) = failing[0]
        if error is not None and (self.rank == first_rank or str(error) != first_msg):
            raise error
        raise SystemExit(first_code)

    def abort(self, code: int) -> None:
        """Tell the other ranks this one is ending before the job's end (they stop waiting)."""
        if self._store is not None:
            try:
                self._store.set(_ABORT, str(code or 1))
            except Exception:  # the store went with the launcher: nobody is left waiting
                pass

    # ----------------------------------------------------------------------------------------
    # Progress

    @contextmanager
    def progress(self, total: int, label: str, quiet: bool) -> Iterator[Callable[[str], None]]:
        """A progress bar shown once (rank 0) counting every rank's steps; yields ``advance(description)``."""
        from .batch import progress_bar

        if self._store is None:
            with progress_bar(total, label, quiet) as advance:
                yield advance
            return
        store = self._store
        self._points += 1
        key = f"{_PREFIX}progress/{self._points}"
        if not self.is_main:
            yield lambda desc: store.add(key, 1)
            return
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        from .batch import bar_disabled
        from .cli import err_console as console  # error lines go through it: above the bar, not onto it

        with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                      TimeRemainingColumn(), console=console, transient=True,
                      disable=bar_disabled(console, total, quiet)) as prog:
            task = prog.add_task(f"{label} ({self.world} processes)", total=total)

            def refresh(desc: str | None = None) -> None:
                done = int(store.add(key, 0))
                if desc is None:
                    prog.update(task, completed=done)
                else:
                    prog.update(task, completed=done, description=f"{label} ({self.world} processes) {desc}")

            def advance(desc: str) -> None:
                store.add(key, 1)
                refresh(desc)

            self._on_wait = refresh
            try:
                yield advance
            finally:
                self._on_wait = None

    def describe_devices(self, names: list[str]) -> str:
        """One device description for the ranks' ``names`` (``cuda:3 (…)`` counted as ``cuda (…)``)."""
        if not names:
            return ""
        if len(names) == 1 and not self.distributed:
            return names[0]
        shown = list(dict.fromkeys(re.sub(r"^cuda:\d+", "cuda", n) for n in names))
        if len(shown) == 1:
            return f"{shown[0]} × {len(names)} processes"
        return f"{', '.join(shown)} ({len(names)} processes)"


SINGLE = Job()
_current: Job = SINGLE


def current_job() -> Job:
    """The job this process is part of (:data:`SINGLE` outside :func:`job_for`)."""
    return _current


#: Variables by which the user chooses torch's thread count (torch reads them at its start); one
#: that sets a count (:func:`_thread_count_set`) leaves that count alone.
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")


def cpu_quota(proc: str = "/proc/self") -> float | None:
    """The CPUs this process's cgroups let it use, where one sets a quota (``docker run --cpus``,
    a Kubernetes CPU limit, systemd's ``CPUQuota``): cgroup v2 ``cpu.max`` (``"200000 100000"``:
    2 CPUs) or v1 ``cpu.cfs_quota_us`` / ``cpu.cfs_period_us``, the least over the groups from the
    process's own up to the top (:func:`~restorekit.device_memory.cgroup_folders`). None: no quota,
    or none that can be read (no ``/proc``, no ``/sys/fs/cgroup``: gVisor, macOS, Windows)."""
    from .device_memory import cgroup_folders

    quotas = []
    for folder in cgroup_folders("cpu", proc):
        try:
            with open(folder / "cpu.max", encoding="ascii") as f:
                fields = f.read().split()
            quota, period = fields[0], fields[1] if len(fields) > 1 else "100000"
        except FileNotFoundError:
            try:
                with open(folder / "cpu.cfs_quota_us", encoding="ascii") as f:
                    quota = f.read().strip()
                with open(folder / "cpu.cfs_period_us", encoding="ascii") as f:
                    period = f.read().strip()
            except (OSError, ValueError):
                continue
        except (OSError, ValueError, IndexError):
            continue
        try:
            q, p = int(quota), int(period)
        except ValueError:  # "max": no quota here
            continue
        if q > 0 and p > 0:  # (v1 says "none" with -1)
            quotas.append(q / p)
    return min(quotas) if quotas else None


def _positive(text: str | None) -> int | None:
    try:
        value = int((text or "").strip())
    except ValueError:
        return None
    return value if value > 0 else None


def cpu_budget(proc: str = "/proc/self") -> int:
    """The cores this process may keep busy: those it may run on (its affinity: a ``taskset``, a
    Slurm or Kubernetes cpuset, ``docker run --cpuset-cpus``), no more than its cgroups' CPU quota
    allows (:func:`cpu_quota`, rounded up: 1.5 CPUs keep 2 threads busy three quarters of the time)
    and no more than Slurm's ``SLURM_CPUS_PER_TASK`` where that is set; at least 1."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        cores = os.cpu_count() or 1
    quota = cpu_quota(proc)
    if quota is not None:
        cores = min(cores, max(1, math.ceil(quota - 1e-9)))
    slurm = _positive(os.environ.get("SLURM_CPUS_PER_TASK"))
    if slurm is not None:
        cores = min(cores, slurm)
    return max(1, cores)


def command_threads(proc: str = "/proc/self") -> int | None:
    """The intra-op thread count a command should give torch: its :func:`cpu_budget` where that is
    below torch's count and the user chose none (:data:`THREAD_VARIABLES`); None: leave torch's.

    torch starts as many threads as the process may run on, whatever a CPU quota allows: under
    ``docker run --cpus=2`` on a 64-core machine, 64 threads share 2 CPUs' time and the run is
    several times slower than with 2 (each parallel section waits for threads the quota has
    paused). A count the user set (these variables, ``--threads``, ``num_threads``) always wins."""
    if any(_thread_count_set(os.environ.get(name, "")) for name in THREAD_VARIABLES):
        return None
    budget = cpu_budget(proc)
    return budget if budget < torch.get_num_threads() else None


def _thread_count_set(value: str) -> bool:
    """Whether ``value`` (of a :data:`THREAD_VARIABLES` variable) sets a thread count: a whole number
    of at least 1 (``+4`` too), or OpenMP's list of one per nesting level (``4,2``). ``0``, ``abc``, ``²`` or an empty
    value set none — OpenMP says it ignores them (``Invalid value``) and torch starts one thread per
    core — so the CPU budget still caps them."""
    first = value.split(",")[0].strip()
    return re.fullmatch(r"\+?[0-9]+", first) is not None and int(first) >= 1  # (ASCII digits: OpenMP's)


def use_cpu_budget() -> int | None:
    """Cap torch's threads at this process's CPU budget (:func:`command_threads`); the count set,
    None when nothing changed. For a command, which owns its process — never on import, nor from a
    library call: a program that uses restorekit keeps the threads it chose."""
    threads = command_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    return threads


def cpu_share() -> int:
    """Threads for one of ``LOCAL_WORLD_SIZE`` processes on the cores this process may use
    (:func:`cpu_budget`: affinity, CPU quota, Slurm's CPUs per task), never more than asked."""
    local = process_layout().get("LOCAL_WORLD_SIZE", 1)
    return max(1, min(torch.get_num_threads(), cpu_budget() // local))


@contextmanager
def job_for(device: str) -> Iterator[Job]:
    """The job of a ``run``/``compare`` command: joined here under ``torchrun``, left at the end.

    At the end every rank waits for the others (rank 0 may still be writing reports), unless
    this rank ends early, which it tells the others through the abort key.
    """
    global _current
    if not launched():
        yield SINGLE
        return
    from torch.distributed import distributed_c10d

    from .training.distributed import init_distributed

    try:
        info = init_distributed(device, backend="gloo")
    except RuntimeError as exc:  # no CUDA device on this rank
        raise RestorekitError(f"--device {device}: {exc}") from None
    job = Job(info, distributed_c10d._get_default_store())
    if info.device.type == "cpu":
        torch.set_num_threads(cpu_share())
    _current = job
    try:
        yield job
    except BaseException as exc:
        if job.settled:
            _end(job)
        else:
            job.abort(exit_code_of(exc))
            _leave(job)
        raise
    else:
        _end(job)
    finally:
        _current = SINGLE


def _end(job: Job) -> None:
    try:
        job.sync()
    finally:
        _leave(job)


def _leave(job: Job) -> None:
    from .training.distributed import cleanup

    if job.info is not None:
        cleanup(job.info)
