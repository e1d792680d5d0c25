"""Reading the umask never changes it: ``serve`` writes files from two threads, and a umask of 0 for
an instant made the files another thread created then writable by everyone."""

from __future__ import annotations

import os
import stat
import threading
from pathlib import Path

import pytest

from restorekit import images


def _race(tmp_path: Path, files: int = 1000) -> list[str]:
    """Create files while another thread reads the file mode in a loop; those left group- or
    world-writable (the umask was 0 when they were made). With a read that sets the umask to 0 and
    back, a few hundred of 1000 files are caught so."""
    stop, reading = threading.Event(), threading.Event()

    def reader() -> None:
        while not stop.is_set():
            images.new_file_mode()
            reading.set()

    old = os.umask(0o022)
    t = threading.Thread(target=reader, daemon=True)
    t.start()
    try:
        assert reading.wait(10)  # the race runs from the first file on
        for i in range(files):
            fd = os.open(tmp_path / f"f{i}", os.O_CREAT | os.O_WRONLY, 0o666)
            os.close(fd)
    finally:
        stop.set()
        t.join()
        os.umask(old)
    return [p.name for p in tmp_path.iterdir() if p.stat().st_mode & (stat.S_IWGRP | stat.S_IWOTH)]


def test_reading_the_mode_leaves_other_threads_files_alone(tmp_path: Path) -> None:
    assert _race(tmp_path) == []


def test_without_proc_a_thread_running_gets_the_known_umask(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setattr(images, "_proc_umask", lambda: None)  # as on macOS or Windows
    assert _race(tmp_path) == []


@pytest.mark.parametrize("proc", [True, False], ids=["proc", "no-proc"])
def test_the_mode_follows_the_umask(monkeypatch, proc: bool) -> None:  # type: ignore[no-untyped-def]
    if not proc:
        monkeypatch.setattr(images, "_proc_umask", lambda: None)
    elif images._proc_umask() is None:
        pytest.skip("no Umask line in /proc/self/status here")
    old = os.umask(0o027)
    try:
        assert images.new_file_mode() == 0o640
        os.umask(0o077)
        assert images.new_file_mode() == 0o600
        assert os.umask(0o077) == 0o077  # and it is still set
    finally:
        os.umask(old)


def test_a_umask_set_before_import_is_the_one_known(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """Without /proc, while other threads run the mode comes from the umask read at import (on the
    main thread): the one the user set before it."""
    monkeypatch.setattr(images, "_proc_umask", lambda: None)
    old = os.umask(0o007)
    try:
        monkeypatch.setattr(images, "_known_umask", images._read_umask_once())  # what import does
        monkeypatch.setattr(images.threading, "active_count", lambda: 2)  # another thread runs
        assert images.new_file_mode() == 0o660
        assert os.umask(0o007) == 0o007
    finally:
        os.umask(old)
