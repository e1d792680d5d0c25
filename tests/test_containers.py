"""restorekit in a container or a batch job: a CPU quota caps the threads a command starts, the
memory limit is found on the process's own cgroup (v1 or v2, nested, behind a mount of the
group), loader workers that run out of a 64 MB /dev/shm hand loading to the run, and a process
without a home folder is told which variable to set. Fake /proc and cgroup trees, no privileges."""

from __future__ import annotations

import multiprocessing
import os
import pwd
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from torch import nn
from torch.utils.data import Dataset, get_worker_info

import restorekit.device_memory as dm
from restorekit import sharding
from restorekit.errors import CacheError
from restorekit.training import TrainConfig, Trainer
from restorekit.training import trainer as trainer_module
from restorekit.weights import cache


def fake_proc(tmp_path: Path, cgroup: str, mounts: list[tuple[str, Path, str, str]]) -> str:
    """A ``/proc/self`` with ``cgroup`` as its cgroup file and a mountinfo line per
    ``(root, mount point, fs type, super options)``."""
    proc = tmp_path / "proc"
    proc.mkdir(parents=True, exist_ok=True)
    (proc / "cgroup").write_text(cgroup)
    escaped = [str(point).replace(" ", "\\040") for _, point, _, _ in mounts]
    lines = [f"{30 + i} 23 0:{40 + i} {root} {escaped[i]} rw,nosuid - {fs} cgroup {opts}"
             for i, (root, _, fs, opts) in enumerate(mounts)]
    (proc / "mountinfo").write_text("\n".join(["22 1 8:1 / / rw - ext4 /dev/sda1 rw", *lines]) + "\n")
    return str(proc)


def files(folder: Path, **values: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in values.items():
        (folder / name.replace("__", ".")).write_text(text + "\n")
    return folder


# -- memory -----------------------------------------------------------------------------------------
def test_a_limit_on_the_processs_own_group_or_one_above_it_is_found(tmp_path: Path) -> None:
    """cgroup v2 on a host (systemd, Slurm, Kubernetes without a cgroup namespace): the limit is not
    on /sys/fs/cgroup itself, which was all that was read, but on the job's group above the process's."""
    top = tmp_path / "cg v2"  # (a space: mountinfo escapes it)
    proc = fake_proc(tmp_path, "0::/slurm/job_7/step_0\n", [("/", top, "cgroup2", "rw")])
    files(top / "slurm" / "job_7", memory__max=str(4 << 30), memory__current=str(3 << 30),
          memory__stat="anon 1\ninactive_file 536870912\nactive_file 5\n")
    files(top / "slurm" / "job_7" / "step_0", memory__max="max", memory__current=str(1 << 30))
    assert dm.cgroup_folders("memory", proc) == [top / "slurm/job_7/step_0", top / "slurm/job_7", top / "slurm", top]
    # 4 GiB − (3 GiB used − 0.5 GiB of cache the kernel drops before it kills anything)
    assert dm._cgroup_available(proc=proc) == (4 << 30) - (3 << 30) + (1 << 29)
    files(top / "slurm" / "job_7" / "step_0", memory__max=str(2 << 30))  # a tighter limit further in
    assert dm._cgroup_available(proc=proc) == 1 << 30


def test_cgroup_v1_limits_and_a_group_mounted_as_the_containers_top(tmp_path: Path) -> None:
    """Docker on cgroup v1 without a cgroup namespace: /proc/self/cgroup names /docker/<id>, which
    is the mount's own root (its limit in the mount point itself); v1's 'no limit' is ~2⁶³."""
    mem = tmp_path / "memory"
    proc = fake_proc(tmp_path, "12:cpu,cpuacct:/docker/abc\n4:memory:/docker/abc\n0::/\n",
                     [("/docker/abc", mem, "cgroup", "rw,memory"),
                      ("/docker/abc", tmp_path / "cpu", "cgroup", "rw,cpu,cpuacct")])
    files(mem, memory__limit_in_bytes=str(2 << 30), memory__usage_in_bytes=str(1 << 30),
          memory__stat="cache 9\ninactive_file 7\ntotal_inactive_file 268435456\n")
    assert dm.cgroup_folders("memory", proc) == [mem]
    assert dm._cgroup_available(proc=proc) == (1 << 30) + (1 << 28)
    (mem / "memory.limit_in_bytes").write_text("9223372036854771712\n")  # v1's "none"
    assert dm._cgroup_available(proc=proc) is None


def test_what_cannot_be_read_counts_as_no_limit_and_no_proc_falls_back_quietly(tmp_path: Path) -> None:
    top = tmp_path / "cg"
    proc = fake_proc(tmp_path, "0::/a\n", [("/", top, "cgroup2", "rw")])
    files(top / "a", memory__max=str(1 << 30))
    (top / "a" / "memory.current").mkdir()  # unreadable as a file
    assert dm._cgroup_available(proc=proc) is None
    # gVisor, macOS: no /proc/self files. The top folders are looked at, and nothing raises.
    gone = str(tmp_path / "no-proc")
    assert dm.cgroup_folders("memory", gone) == [Path("/sys/fs/cgroup"), Path("/sys/fs/cgroup/memory")]
    dm._cgroup_available(proc=gone)
    sharding.cpu_quota(gone)
    assert dm._meminfo_available(str(tmp_path / "no-meminfo")) is None


# -- CPU threads ------------------------------------------------------------------------------------
def test_a_cpu_quota_is_read_from_v2_and_v1_along_the_processs_groups(tmp_path: Path) -> None:
    top = tmp_path / "cg"
    proc = fake_proc(tmp_path, "0::/kubepods/pod1/c1\n", [("/", top, "cgroup2", "rw")])
    files(top / "kubepods" / "pod1", cpu__max="200000 100000")  # the pod's limit: 2 CPUs
    files(top / "kubepods" / "pod1" / "c1", cpu__max="max 100000")
    assert sharding.cpu_quota(proc) == 2.0
    v1 = tmp_path / "v1"
    proc1 = fake_proc(v1, "3:cpu,cpuacct:/\n", [("/", v1 / "cpu", "cgroup", "rw,cpu,cpuacct")])
    files(v1 / "cpu", cpu__cfs_quota_us="-1", cpu__cfs_period_us="100000")
    assert sharding.cpu_quota(proc1) is None
    files(v1 / "cpu", cpu__cfs_quota_us="150000")
    assert sharding.cpu_quota(proc1) == 1.5


def test_a_quota_caps_a_commands_threads_unless_the_user_chose_a_count(monkeypatch: pytest.MonkeyPatch) -> None:
    """`docker run --cpus=2` on a 64-core machine: torch starts 64 threads on 2 CPUs' time."""
    for name in (*sharding.THREAD_VARIABLES, "SLURM_CPUS_PER_TASK", "LOCAL_WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(64)), raising=False)
    monkeypatch.setattr(sharding, "cpu_quota", lambda proc="/proc/self": 1.5)
    monkeypatch.setattr(torch, "get_num_threads", lambda: 64)
    set_to: list[int] = []
    monkeypatch.setattr(torch, "set_num_threads", set_to.append)
    assert sharding.cpu_budget() == 2 and sharding.command_threads() == 2
    assert sharding.cpu_share() == 2  # (torchrun's processes share the budget, not the 64 cores)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    assert sharding.cpu_share() == 1
    assert sharding.use_cpu_budget() == 2 and set_to == [2]
    monkeypatch.setenv("OMP_NUM_THREADS", "8")  # the user's count wins
    assert sharding.command_threads() is None and sharding.use_cpu_budget() is None and set_to == [2]
    for chosen in ("4,2", "+4"):  # OpenMP's per-level list, a sign: counts too
        monkeypatch.setenv("OMP_NUM_THREADS", chosen)
        assert sharding.command_threads() is None, chosen
    for ignored in ("0", "abc", " ", "-3", ",2", "²", "٣"):  # OpenMP ignores these ('Invalid value'): no count was chosen
        monkeypatch.setenv("OMP_NUM_THREADS", ignored)
        monkeypatch.setenv("MKL_NUM_THREADS", "0")
        assert sharding.command_threads() == 2, ignored
    monkeypatch.delenv("MKL_NUM_THREADS")
    monkeypatch.delenv("OMP_NUM_THREADS")
    monkeypatch.setattr(sharding, "cpu_quota", lambda proc="/proc/self": None)
    monkeypatch.setenv("SLURM_CPUS_PER_TASK", "4")  # Slurm without a cpuset: its allocation still holds
    assert sharding.cpu_budget() == 4
    monkeypatch.setenv("SLURM_CPUS_PER_TASK", "junk")
    assert sharding.cpu_budget() == 64 and sharding.command_threads() is None  # no cap: torch's own count


# -- shared memory and worker start methods ----------------------------------------------------------
class Squares(Dataset):  # type: ignore[type-arg]
    """Its samples fail in a loader worker as torch does when /dev/shm is full."""

    def __len__(self) -> int:
        return 6

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        if get_worker_info() is not None:
            raise RuntimeError(f"unable to allocate shared memory(shm) for file </torch_{os.getpid()}_1_0>: "
                               "No space left on device (28)")
        g = torch.Generator().manual_seed(i)
        x = torch.rand(3, 4, 4, generator=g)
        return {"lr_up": x, "hr": x.flip(-1)}


def _step(net: nn.Module, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    loss = (net(batch["lr_up"]) - batch["hr"]).square().mean()
    return {"loss": loss}


def _fit(tmp_path: Path, name: str, workers: int) -> dict:
    cfg = TrainConfig(steps=4, batch_size=2, num_workers=workers, log_every=1, val_every=3, ckpt_every=100)
    torch.manual_seed(0)
    def val(m: nn.Module, b: dict[str, torch.Tensor]) -> tuple[list[torch.Tensor], dict[str, torch.Tensor]]:
        y = m(b["lr_up"])
        return [b["lr_up"], y], {"l2": (y - b["hr"]).square().flatten(1).mean(1)}

    tr = Trainer(cfg, nn.Conv2d(3, 3, 1), Squares(), Squares(), out=tmp_path / name, step_fn=_step, val_fn=val,
                 quiet=True)
    return tr.fit()


@pytest.mark.skipif(multiprocessing.get_start_method() != "fork", reason="a forked worker keeps the test's dataset")
def test_workers_out_of_shared_memory_hand_loading_to_the_run(tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    """Docker's 64 MB /dev/shm: the run ended in 'unexpected RuntimeError: Caught RuntimeError in
    DataLoader worker process 0'. Now it says so once, loads the same batches itself and finishes."""
    got = _fit(tmp_path, "workers", 1)
    err = capsys.readouterr().err
    assert got["finished"] and got["step"] == 4
    said = [ln for ln in err.splitlines() if "shared memory" in ln]
    assert len(said) == 1 and said[0].startswith("warning: "), err
    assert "--shm-size" in said[0] and "num_workers = 0" in said[0]
    want = _fit(tmp_path, "in-process", 0)
    assert got["losses"] == want["losses"] and got["val"] == want["val"]


@pytest.mark.parametrize("fail_at", [1, 3], ids=["first-queue", "after-a-worker-started"])
@pytest.mark.filterwarnings("error::pytest.PytestUnraisableExceptionWarning")
def test_a_dev_shm_already_full_when_the_workers_start_hands_loading_to_the_run(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], fail_at: int) -> None:
    """The workers' queues make their semaphores in /dev/shm (sem_open) as the loader's iterator is
    created: a /dev/shm full then raised OSError (ENOSPC) outside the fallback, and the run ended.
    What had started is ended, without torch's 'Exception ignored' traceback."""
    import errno

    if fail_at > 1 and multiprocessing.get_start_method() != "fork":
        pytest.skip("a worker started by spawn or forkserver takes seconds")
    real = torch.multiprocessing.Queue
    made: list[int] = []

    def queue(*a, **kw):  # type: ignore[no-untyped-def]
        made.append(1)
        if len(made) == fail_at:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(*a, **kw)

    monkeypatch.setattr(torch.multiprocessing, "Queue", queue)
    got = _fit(tmp_path, "workers", 2)
    import gc

    gc.collect()  # (the half-made iterator's __del__: nothing left for it to do)
    err = capsys.readouterr().err
    assert got["finished"] and got["step"] == 4 and len(made) == fail_at  # tried once, then in-process for good
    said = [ln for ln in err.splitlines() if "shared memory" in ln]
    assert len(said) == 1 and said[0].startswith("warning: ") and "--shm-size" in said[0], err
    assert "Exception ignored" not in err and "Traceback" not in err, err
    want = _fit(tmp_path, "in-process", 0)
    assert got["losses"] == want["losses"] and got["val"] == want["val"]
    assert trainer_module.no_room_to_start_workers(OSError(errno.ENOSPC, "x"))
    assert not trainer_module.no_room_to_start_workers(OSError(errno.EIO, "x"))
    assert not trainer_module.no_room_to_start_workers(RuntimeError("No space left on device"))


def test_the_signs_of_a_full_dev_shm_are_told_apart_from_other_worker_failures() -> None:
    full = ["Caught RuntimeError in DataLoader worker process 0.\nOriginal Traceback (most recent call last):\n"
            "RuntimeError: unable to allocate shared memory(shm) for file </torch_9_1_0>: No space left on device (28)",
            "DataLoader worker (pid 12) is killed by signal: Bus error. It is possible that dataloader's workers "
            "are out of shared memory. Please try to raise your shared memory limit.",
            "unable to write to file </torch_18_1591100735>: No space left on device (28)"]
    assert all(trainer_module.out_of_shared_memory(RuntimeError(m)) for m in full)
    assert not trainer_module.out_of_shared_memory(RuntimeError("DataLoader worker (pid(s) 12) exited unexpectedly"))
    assert not trainer_module.out_of_shared_memory(ValueError(full[0]))


def test_forkserver_workers_start_with_the_dataset_and_trainer_imported(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """Python 3.14's default start method on Linux: each epoch's workers imported torch and
    restorekit again (2 workers, 2 epochs: 10.9 s against 2.1 s forked; 4.9 s with the preload)."""
    from multiprocessing import forkserver

    preload: list[list[str]] = []
    monkeypatch.setattr(multiprocessing, "get_start_method", lambda allow_none=False: "forkserver")
    monkeypatch.setattr(multiprocessing, "set_forkserver_preload", preload.append)
    monkeypatch.setattr(forkserver._forkserver, "_preload_modules", ["__main__", "numpy"], raising=False)
    tr = Trainer(TrainConfig(steps=1, batch_size=2, num_workers=2), nn.Conv2d(3, 3, 1), Squares(),
                 out=tmp_path, step_fn=_step, quiet=True)
    tr._loader(tr.train_data, 0)
    assert preload == []  # no workers: nothing to start
    tr._loader(tr.train_data, 2)
    assert preload == [["__main__", "numpy", __name__, "restorekit.training.trainer"]]


# -- home and cache -----------------------------------------------------------------------------------
def test_without_a_home_folder_the_cache_names_the_variable_to_set(monkeypatch: pytest.MonkeyPatch,
                                                                  tmp_path: Path) -> None:
    """`docker run -u 12345` without HOME: platformdirs raised RuntimeError ('unexpected', exit 1)."""
    from restorekit.cli import build_cli

    for name in ("HOME", "RESTOREKIT_HOME", "XDG_CACHE_HOME"):
        monkeypatch.delenv(name, raising=False)

    def no_entry(uid: int) -> pwd.struct_passwd:
        raise KeyError(f"getpwuid(): uid not found: {uid}")

    monkeypatch.setattr(pwd, "getpwuid", no_entry)
    with pytest.raises(CacheError, match=r"no folder for its cache: HOME is not set and user id \d+ has "
                                         r"no home folder .*set RESTOREKIT_HOME"):
        cache.cache_dir()
    monkeypatch.setenv("RESTOREKIT_HOME", "~/weights")
    with pytest.raises(CacheError, match=r"RESTOREKIT_HOME is ~/weights, but .*full path"):
        cache.cache_dir()
    monkeypatch.delenv("RESTOREKIT_HOME")
    r = CliRunner().invoke(build_cli(), ["weights", "verify"])  # (a command that needs the cache)
    assert r.exit_code == 2 and r.output.startswith("error: restorekit has no folder for its cache"), r.output
    assert len(r.output.strip().splitlines()) == 1
    r = CliRunner().invoke(build_cli(), ["weights", "list"])  # (the registry is listed all the same)
    assert r.exit_code == 0 and r.stderr.startswith("warning: restorekit has no folder for its cache"), r.output
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache.cache_dir() == tmp_path / "xdg" / "restorekit"
