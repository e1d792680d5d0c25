"""The weights cache's lock, as a concurrency audit found it: on a file system without locks (NFS
without its lock service: ``flock`` fails with ``ENOLCK``) every pull, import, rm and ONNX export
is refused with the fix that works there (a cache on a local disk), and a process that has to wait
for the lock says once on stderr which process it waits for, named as its lock file says."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from restorekit import weights as W
from restorekit.commands.weights import weights_group
from restorekit.errors import CacheError
from restorekit.weights import cache

fcntl = pytest.importorskip("fcntl")


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    h = tmp_path / "home"
    monkeypatch.setenv("RESTOREKIT_HOME", str(h))
    return h


def _no_flock(monkeypatch: pytest.MonkeyPatch, code: int = errno.ENOLCK) -> None:
    """``flock`` as NFS without its lock service answers it."""
    def flock(fd: int, op: int) -> None:
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(fcntl, "flock", flock)


def _dead_pid() -> int:
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True,
                          check=True)
    return int(done.stdout)


class Holder:
    """Another process holding ``code``'s lock: it prints ``held``, then waits for a line on stdin."""

    def __init__(self, code: str, home: Path) -> None:
        env = {**os.environ, "RESTOREKIT_HOME": str(home)}
        self.proc = subprocess.Popen([sys.executable, "-c", textwrap.dedent(code)], text=True, env=env,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        line = self.proc.stdout.readline()  # type: ignore[union-attr]
        if line.strip() != "held":
            self.proc.kill()
            pytest.fail(f"the other process did not take the lock: {self.proc.communicate()[1]}")

    def release_after(self, seconds: float) -> threading.Timer:
        timer = threading.Timer(seconds, self.release)
        timer.start()
        return timer

    def release(self) -> None:
        if self.proc.poll() is None:
            self.proc.communicate("go\n", timeout=30)


# -- a file system without locks ------------------------------------------------------------------------

@pytest.mark.parametrize("code", [errno.ENOLCK, errno.EOPNOTSUPP])
def test_a_cache_without_file_locks_is_refused_with_a_local_disk_for_fix(home, monkeypatch, code):
    _no_flock(monkeypatch, code)
    lock = home / "weights" / ".lpips-alex.lock"
    with pytest.raises(CacheError) as info:
        with cache.locked("lpips-alex"):
            pytest.fail("the cache was written unlocked")
    msg = str(info.value)
    assert msg.startswith(f"the restorekit cache cannot be used at {lock}: its file system has no file locks (")
    assert msg.endswith(f"; RESTOREKIT_HOME is {home}: set RESTOREKIT_HOME to a folder on a local disk")
    assert "NFS without its lock service" in msg and "\n" not in msg
    assert "check the path and its permissions" not in msg


def test_weights_import_without_file_locks_says_the_fix_and_writes_nothing(home, tmp_path, monkeypatch):
    table = {"toy": W.WeightSpec(name="toy", architecture="toy", plugin="tests", license="MIT",
                                 files=[{"filename": "toy.bin"}])}
    monkeypatch.setattr(W, "registry_specs", lambda: {n: (s, Path(f"registry/weights/{n}.toml"))
                                                      for n, s in table.items()})
    monkeypatch.setattr(W, "plugin_specs", lambda: {})
    src = tmp_path / "toy.bin"
    src.write_bytes(b"\0" * 64)
    _no_flock(monkeypatch)
    r = CliRunner().invoke(weights_group, ["import", "toy", str(src), "--trust"])
    assert r.exit_code == 2, r.output
    lines = [line for line in r.output.splitlines() if line.strip()]
    assert len(lines) == 1 and str(home / "weights" / ".toy.lock") in lines[0]
    assert lines[0].endswith("set RESTOREKIT_HOME to a folder on a local disk")
    assert not W.weights_dir("toy").exists() or not any(W.weights_dir("toy").iterdir())


# -- waiting for the lock -------------------------------------------------------------------------------

def test_waiting_for_another_process_says_once_whom_for(home, capsys):
    lock = home / "weights" / ".big-x.lock"
    other = Holder("""
        import sys
        sys.argv = ["/venv/bin/restorekit", "weights", "import", "big-x", "/data/big.bin"]
        from restorekit.weights.cache import locked
        with locked("big-x"):
            print("held", flush=True)
            sys.stdin.readline()
        """, home)
    assert lock.read_text(encoding="utf-8") == f"{other.proc.pid} weights import big-x\n"  # the holder's note
    timer = other.release_after(0.6)
    start = time.monotonic()
    try:
        with cache.locked("big-x"):
            waited = time.monotonic() - start
            mine = lock.read_text(encoding="utf-8")
    finally:
        timer.join(30)
        other.release()
    assert waited >= 0.5  # it still waits for the holder to end ...
    err = capsys.readouterr().err
    assert err == (f"waiting for process {other.proc.pid} (weights import big-x) to finish with the restorekit "
                   f"cache's lock {lock} ...\n")  # ... and says whom for, once
    assert mine == f"{os.getpid()} {cache._process_note()}".strip() + "\n"
    assert lock.stat().st_size == 0  # emptied on release: no note of a holder that has ended


def test_a_note_of_a_process_that_has_ended_names_nobody(home, capsys):
    """The holder has not written its note (just taken the lock, or an earlier version): the note a
    process killed while holding the lock left names nobody, and the line says so."""
    lock = home / "weights" / ".big-x.lock"
    lock.parent.mkdir(parents=True)
    lock.write_text(f"{_dead_pid()} weights pull big-x\n", encoding="utf-8")
    other = Holder(f"""
        import fcntl, os, sys
        fd = os.open({str(lock)!r}, os.O_RDWR)
        fcntl.flock(fd, fcntl.LOCK_EX)
        print("held", flush=True)
        sys.stdin.readline()
        """, home)
    timer = other.release_after(0.5)
    try:
        with cache.locked("big-x"):
            pass
    finally:
        timer.join(30)
        other.release()
    assert capsys.readouterr().err == (f"waiting for another process to finish with the restorekit cache's lock "
                                       f"{lock} ...\n")


def test_a_free_lock_and_another_thread_of_this_process_wait_silently(home, capsys):
    lock = home / "weights" / ".toy.lock"
    taken, notes = threading.Event(), []

    def hold() -> None:
        with cache.locked("toy"):
            notes.append(lock.read_text(encoding="utf-8"))
            taken.set()
            time.sleep(0.4)

    t = threading.Thread(target=hold)
    t.start()
    try:
        assert taken.wait(30)
        start = time.monotonic()
        with cache.locked("toy"):  # waits for the other thread, saying nothing: its own output says what it does
            waited = time.monotonic() - start
    finally:
        t.join(30)
    assert notes == [f"{os.getpid()} {cache._process_note()}".strip() + "\n"] and waited >= 0.2
    with cache.locked("toy"):  # free at once: nothing said either
        pass
    assert capsys.readouterr().err == "" and lock.stat().st_size == 0


@pytest.mark.parametrize(("argv", "note"), [
    (["/venv/bin/restorekit", "weights", "import", "big-x", "/data/big.bin"], "weights import big-x"),
    (["restorekit", "--debug", "run", "psp_sr", "--input", "lr", "--output", "out"], "run psp_sr"),
    (["/site/restorekit/__main__.py", "compare", "--methods", "bicubic"], "compare"),
    (["restorekit"], "restorekit"),
    (["/home/u/pull_all.py", "--fast"], "pull_all.py"),
    (["-c"], ""),
])
def test_the_note_names_the_command_up_to_its_first_option(monkeypatch, argv, note):
    monkeypatch.setattr(sys, "argv", argv)
    assert cache._process_note() == note
