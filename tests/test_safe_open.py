"""Files written in folders others may write to: planted links and FIFOs are refused, not followed."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from restorekit.safe_open import create_exclusive, ends_line, open_append

posix = pytest.mark.skipif(not hasattr(os, "O_NOFOLLOW"), reason="POSIX open flags")


def test_append_makes_and_appends(tmp_path: Path) -> None:
    p = tmp_path / "log.jsonl"
    with open_append(p) as f:
        assert ends_line(f)
        f.write(b"a\n")
    with open_append(p) as f:
        assert ends_line(f)
        f.write(b"b")
        assert not ends_line(f)
    assert p.read_bytes() == b"a\nb"


@posix
def test_a_planted_symbolic_link_is_not_followed(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_bytes(b"keep")
    (tmp_path / "log.jsonl").symlink_to(victim)
    with pytest.raises(OSError, match="symbolic link"):
        open_append(tmp_path / "log.jsonl")
    (tmp_path / "new").symlink_to(tmp_path / "nowhere")
    with pytest.raises(FileExistsError):
        create_exclusive(tmp_path / "new")
    assert victim.read_bytes() == b"keep" and not (tmp_path / "nowhere").exists()


@posix
def test_a_planted_hard_link_or_fifo_is_refused_without_hanging(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_bytes(b"keep")
    os.link(victim, tmp_path / "linked.jsonl")
    with pytest.raises(OSError, match="hard link"):
        open_append(tmp_path / "linked.jsonl")
    os.mkfifo(tmp_path / "fifo.jsonl")
    with pytest.raises(OSError, match="not a regular file"):
        open_append(tmp_path / "fifo.jsonl")
    assert victim.read_bytes() == b"keep"


@posix
def test_read_plain_refuses_links_and_fifos_without_hanging(tmp_path: Path) -> None:
    from restorekit.safe_open import read_plain

    assert read_plain(tmp_path / "none") is None
    (tmp_path / "a").write_bytes(b"x\n")
    assert read_plain(tmp_path / "a") == b"x\n"
    (tmp_path / "link").symlink_to(tmp_path / "a")
    with pytest.raises(OSError, match="symbolic link"):
        read_plain(tmp_path / "link")
    os.mkfifo(tmp_path / "fifo")
    with pytest.raises(OSError, match="not a regular file"):
        read_plain(tmp_path / "fifo")
