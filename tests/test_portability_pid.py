"""Whether the process of an import's temporary copy still runs, asked portably: never with
``os.kill(pid, 0)`` on Windows (signal 0 is CTRL_C_EVENT there: a Ctrl-C to a console's processes,
and a dead process reads as alive), and no pid at or below 0 is a file's owner."""

from __future__ import annotations

import ctypes
import os
from pathlib import Path

import pytest

from restorekit.weights import cache


@pytest.fixture
def no_kill(monkeypatch):  # type: ignore[no-untyped-def]
    def refuse(pid: int, sig: int) -> None:
        raise AssertionError(f"os.kill({pid}, {sig}) called")

    monkeypatch.setattr(cache.os, "kill", refuse)


@pytest.mark.parametrize("pid", [0, -1, -os.getpid()], ids=["zero", "minus-one", "minus-this-process"])
def test_no_pid_at_or_below_zero_is_alive(no_kill, pid: int) -> None:  # type: ignore[no-untyped-def]
    # os.kill(0, 0) signals this process group (and on Windows sends Ctrl-C to the console).
    assert cache.pid_alive(pid) is False


def test_this_process_is_alive_and_a_finished_one_is_not() -> None:
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, encoding="utf-8", check=True)
    assert cache.pid_alive(os.getpid()) is True
    assert cache.pid_alive(int(proc.stdout)) is False


class FakeKernel32:
    """OpenProcess / GetExitCodeProcess / CloseHandle over a table ``pid -> exit code`` (259 while
    it runs); a pid not in the table fails OpenProcess with ``error``."""

    def __init__(self, procs: dict[int, int], error: int = 87, exit_code_fails: bool = False) -> None:
        self.procs, self.error, self.exit_code_fails = procs, error, exit_code_fails
        self.last_error, self.open_handles = 0, set()  # type: ignore[var-annotated]

    def OpenProcess(self, access: int, inherit: bool, pid: int) -> int:  # noqa: N802 - the Windows name
        assert access == 0x1000 and not inherit
        if pid not in self.procs:
            self.last_error = self.error
            return 0
        self.open_handles.add(pid + 1000)
        return pid + 1000

    def GetExitCodeProcess(self, handle: int, code) -> int:  # type: ignore[no-untyped-def]  # noqa: N802
        if self.exit_code_fails:
            return 0
        ctypes.cast(code, ctypes.POINTER(ctypes.c_ulong)).contents.value = self.procs[handle - 1000]
        return 1

    def CloseHandle(self, handle: int) -> int:  # noqa: N802
        self.open_handles.remove(handle)
        return 1


def _api(k32: FakeKernel32):  # type: ignore[no-untyped-def]
    return k32, lambda: k32.last_error


def test_windows_query_reads_the_exit_code() -> None:
    k32 = FakeKernel32({10: 259, 11: 0, 12: 1})
    assert cache._pid_alive_nt(10, _api(k32)) is True  # STILL_ACTIVE
    assert cache._pid_alive_nt(11, _api(k32)) is False  # exited
    assert cache._pid_alive_nt(12, _api(k32)) is False
    assert cache._pid_alive_nt(13, _api(k32)) is False  # no such process (ERROR_INVALID_PARAMETER)
    assert not k32.open_handles  # every handle closed


def test_windows_query_in_doubt_answers_alive(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    assert cache._pid_alive_nt(13, _api(FakeKernel32({}, error=5))) is True  # access denied
    assert cache._pid_alive_nt(10, _api(FakeKernel32({10: 0}, exit_code_fails=True))) is True
    assert cache._pid_alive_nt(2**40, _api(FakeKernel32({}))) is True  # not a DWORD: not asked at all

    def no_ctypes():  # type: ignore[no-untyped-def]
        raise AttributeError("module 'ctypes' has no attribute 'WinDLL'")

    monkeypatch.setattr(cache, "_kernel32", no_ctypes)
    assert cache._pid_alive_nt(13) is True


def test_windows_never_calls_os_kill(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    k32, kills = FakeKernel32({10: 259}), []
    monkeypatch.setattr(cache, "_kernel32", lambda: _api(k32), raising=False)
    monkeypatch.setattr(cache.os, "kill", lambda pid, sig: kills.append((pid, sig)))
    with monkeypatch.context() as m:  # os.name back before any failure is reported
        m.setattr(cache.os, "name", "nt")
        alive = [cache.pid_alive(10), cache.pid_alive(11), cache.pid_alive(0)]
    assert kills == []
    assert alive == [True, False, False]  # 11: on Windows os.kill raised OSError for it, read as alive


@pytest.mark.parametrize("tail,pid", [("0", 0), ("\u00b2", None)], ids=["pid-0", "superscript-2"])
def test_a_copy_of_no_valid_process_is_stray(tmp_path: Path, monkeypatch, no_kill, tail: str, pid) -> None:  # type: ignore[no-untyped-def]
    """``.a.pt.import-0`` has no owner; ``-²`` is no process id at all ('²'.isdigit(), but int() refuses it)."""
    monkeypatch.setenv("RESTOREKIT_HOME", str(tmp_path))
    folder = cache.weights_dir("w")
    folder.mkdir(parents=True)
    copy = folder / f".a.pt.import-{tail}"
    copy.touch()
    assert cache.stray_imports("w") == [(copy, pid)]
    assert cache.remove_stray_imports("w") == [copy]
