"""A FIFO or a device where restorekit reads without decoding — an output's path on a rerun, a
realism reference set's files when they are hashed — is never read: reading a FIFO waits for a
writer that never comes, and /dev/zero never ends. Each test fails by its alarm, not by hanging."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from restorekit.cli import build_cli
from restorekit.harness.realism.evaluate import file_digests
from restorekit.images import save_image
from restorekit.provenance import read_note

pytestmark = pytest.mark.skipif(not hasattr(os, "mkfifo") or not hasattr(signal, "SIGALRM")
                                or not os.path.exists("/dev/zero"), reason="needs FIFOs, SIGALRM and /dev/zero")


class Hung(BaseException):
    """Raised by the alarm: no OSError (TimeoutError is one), which the code under test may catch."""


@pytest.fixture(autouse=True)
def alarm() -> Iterator[None]:
    def hung(signum, frame):  # type: ignore[no-untyped-def]
        raise Hung("blocked reading a FIFO or a device")

    old = signal.signal(signal.SIGALRM, hung)
    signal.alarm(10)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, old)


def png(path: Path, seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    save_image(torch.rand(1, 3, 8, 8, generator=torch.Generator().manual_seed(seed)), path)
    return path


def test_a_fifo_where_an_output_goes_is_an_error_not_a_finished_output(tmp_path: Path) -> None:
    png(tmp_path / "in" / "a.png")
    png(tmp_path / "in" / "b.png", 1)
    out = tmp_path / "out"
    out.mkdir()
    os.mkfifo(out / "a.png")
    r = CliRunner().invoke(build_cli(), ["run", "bicubic", "--scale", "2", "--input", str(tmp_path / "in"),
                                         "--output", str(out)], catch_exceptions=False)
    assert r.exit_code == 1, r.output
    assert f"error: {out / 'a.png'}: is a FIFO (named pipe), where the output goes" in r.stderr.splitlines()
    assert "1 written, 0 skipped" in r.stderr and (out / "b.png").is_file()  # (it was "1 skipped (exist)")


def test_read_note_of_a_fifo_or_device_is_none_at_once(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "pipe.png")
    (tmp_path / "zero.png").symlink_to("/dev/zero")
    assert read_note(tmp_path / "pipe.png") is None and read_note(tmp_path / "zero.png") is None
    assert read_note(tmp_path) is None  # a folder
    written = tmp_path / "w.png"
    save_image(torch.zeros(1, 3, 4, 4), written, note={"restorekit": {"method": "x"}})
    assert read_note(written) == {"restorekit": {"method": "x"}}


def test_reference_digests_name_what_cannot_be_read_without_reading_it(tmp_path: Path) -> None:
    good = png(tmp_path / "ref" / "good.png")
    os.mkfifo(tmp_path / "ref" / "pipe.png")
    (tmp_path / "ref" / "zero.png").symlink_to("/dev/zero")
    (tmp_path / "ref" / "gone.png").symlink_to(tmp_path / "nowhere.png")
    paths = sorted((tmp_path / "ref").iterdir())
    digests = file_digests(paths)
    import hashlib

    assert hashlib.sha256(good.read_bytes()).hexdigest() in digests and len(digests) == 4
    assert sum(d.startswith("not a regular file") for d in digests) == 2
    assert sum(d.startswith("unreadable") for d in digests) == 1
    assert file_digests(paths) == digests  # the same set, the same key
