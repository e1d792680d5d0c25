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


def test_a_broken_pipe_that_is_not_stdout_is_still_a_one_line_failure() -> None:
    """A socket whose peer left (or a child's stdin) is a real failure: one line, exit 2 — only a
    closed stdout ends the command quietly."""
    code = (
        "import socket, sys\n"
        "import restorekit.cli as c\n"
        "a, b = socket.socketpair()\n"
        "b.close()\n"
        "@c.build_cli().command('sockwrite')\n"
        "def sockwrite():\n"
        "    a.sendall(b'x' * 100000)\n"
        "sys.argv = ['restorekit', 'sockwrite']\n"
        "c.main()\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2, r.stderr
    assert r.stderr.strip().splitlines() == ["error: cannot use a file: Broken pipe; check the path and its permissions"]
