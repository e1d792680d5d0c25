"""One process at a time in a folder: a non-blocking ``flock`` held while a command writes there.

``compare`` (its ``--out``) and ``train`` (its run folder) hold one: a second process that
starts meanwhile is refused at once with the command's own message, instead of both checking the
folder, then writing into it together. The lock file stays; the lock goes when its holder ends,
however it ends. Where the platform has no ``flock`` nothing is locked.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from pathlib import Path

from .errors import RestorekitError


@contextlib.contextmanager
def held_alone(folder: Path, lock_name: str, refused: Callable[[], RestorekitError]) -> Iterator[None]:
    """Hold ``folder/lock_name`` exclusively for the block (``folder`` is made if missing); when
    another process holds it, raise ``refused()``."""
    try:
        import fcntl
    except ImportError:  # not a POSIX system
        yield
        return
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder / lock_name, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise refused() from None
        yield
    finally:
        os.close(fd)
