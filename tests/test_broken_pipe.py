"""`restorekit … | head`: when the reader of stdout leaves, the command ends quietly with 141 (as
a shell reports a command ended by SIGPIPE), not with a file error and exit 2."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest


@pytest.mark.parametrize("args", [["methods", "show", "psp_sr"], ["methods", "--json"], ["weights", "list"], ["--help"]])
def test_a_closed_stdout_ends_the_command_quietly_with_141(args: list[str]) -> None:
    read_end, write_end = os.pipe()
    os.close(read_end)  # every write to stdout fails with EPIPE
    try:
        r = subprocess.run([sys.executable, "-m", "restorekit", *args], stdout=write_end, stderr=subprocess.PIPE,
                           text=True, timeout=120)
    finally:
        os.close(write_end)
    assert r.returncode == 141, r.stderr
    assert r.stderr == ""
