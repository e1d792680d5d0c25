"""Subprocesses a test module starts early and its tests collect later.

A ``torchrun`` launch spends most of its time starting interpreters that import torch, mostly on
one core at a time; started when a module's first test starts, it runs beside that module's
in-process tests (and its other launches) instead of after them. A module starts only the runs of
its tests that this session selected (:func:`selected`), and ends what is still running when it
ends (:meth:`Launch.stop`).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
from collections.abc import Mapping, Sequence

import pytest

#: Variables the suite's ``fresh_registry`` fixture clears for every test, cleared for the runs too.
CLEARED = ("RESTOREKIT_LOAD_PLUGINS", "RESTOREKIT_STRICT_PLUGINS")


def torchrun(processes: int) -> list[str]:
    """The command line that starts ``torchrun --standalone --nproc_per_node PROCESSES`` (no log
    folder: torchrun's default is a new ``/tmp/torchelastic_*`` per launch, never removed)."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes),
            "--log-dir", os.devnull]


class Launch:
    """``cmd`` started in the background, its output into files (a full pipe cannot stall it while
    the test works on), in a session of its own (a signal meant for the test run is not its)."""

    def __init__(self, cmd: Sequence[str], env: Mapping[str, str] | None = None) -> None:
        self._out, self._err = tempfile.TemporaryFile(), tempfile.TemporaryFile()
        base = {k: v for k, v in os.environ.items() if k not in CLEARED}
        # faulthandler: should a rank abort, its threads' Python stacks reach the failure message.
        full = {"PYTHONFAULTHANDLER": "1", **base, **(env or {})}
        self.proc = subprocess.Popen(list(cmd), stdout=self._out, stderr=self._err, env=full,
                                     start_new_session=True)
        self._result: subprocess.CompletedProcess[str] | None = None

    def wait(self, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        """Its exit code, stdout and stderr, once it has ended (ended by force after ``timeout`` s)."""
        if self._result is None:
            try:
                code = self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.stop()
                raise
            streams = []
            for f in (self._out, self._err):
                f.seek(0)
                streams.append(f.read().decode("utf-8", "replace"))
                f.close()
            self._result = subprocess.CompletedProcess(self.proc.args, code, streams[0], streams[1])
        return self._result

    def stop(self) -> None:
        """End it and every process it started, if it is still running.

        A TERM first: torchrun passes it on to its workers, each in a session of its own, and
        waits for them (30 s at most); whatever still runs after that is killed.
        """
        if self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(45)
        except subprocess.TimeoutExpired:
            for pid in [*descendants(self.proc.pid), self.proc.pid]:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            self.proc.wait()


def descendants(pid: int) -> list[int]:
    """The processes started by ``pid`` and by those, from ``/proc`` (none where there is no ``/proc``)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc") if os.path.isdir("/proc") else []:
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue  # ended meanwhile
        children.setdefault(ppid, []).append(int(entry))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def selected(request: pytest.FixtureRequest, *names: str) -> set[str]:
    """Which of the tests ``names`` of the requesting module this session runs."""
    return {item.name for item in request.session.items if item.name in names and item.path == request.path}
