"""Stops at the edges of a command: SIGTERM while serve loads its methods stopped nothing (the load
took it for a broken plugin's sys.exit), a Ctrl-C or SIGTERM after the work was done ended the
process by the signal, silently and with exit 130/143, and SIGHUP (the terminal closed) killed a
run or a server without its clean-up."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

posix_only = pytest.mark.skipif(os.name != "posix" or not hasattr(signal, "SIGHUP"), reason="POSIX signals")


def test_a_stop_while_serve_loads_a_method_stops_the_server(monkeypatch: pytest.MonkeyPatch) -> None:
    from restorekit.web import catalogue as cat_module
    from restorekit.web.catalogue import Catalogue
    from restorekit.web.config import ServeConfig

    def terminated(*args, **kwargs):  # type: ignore[no-untyped-def]
        raise SystemExit(143)  # what restorekit.cli raises on SIGTERM

    monkeypatch.setattr(cat_module, "build_method", terminated)
    cat = Catalogue(ServeConfig(device="cpu", methods=["bicubic"], metrics=["psnr_y_crop"]))
    with pytest.raises(SystemExit) as stop:
        cat.load()
    assert stop.value.code == 143
    # A plugin's own sys.exit (no signal's code) is still a reason, not the server's end.
    monkeypatch.setattr(cat_module, "build_method", lambda *a, **k: sys.exit("bye"))
    cat = Catalogue(ServeConfig(device="cpu", methods=["bicubic"], metrics=["psnr_y_crop"]))
    cat.load()
    assert "bicubic" in str(cat.methods["bicubic"].reason)


# restorekit's main() around a tiny group whose command signals its own process as it returns:
# the signal lands after the work, while the process ends.
DRIVER = textwrap.dedent("""
    import os, signal, sys, time
    import click
    import restorekit.cli as c

    sig = getattr(signal, sys.argv[1])

    @click.group(cls=c.RestorekitGroup)
    def group():
        pass

    @group.command("work")
    def work():
        click.echo("done")

    def build():
        return group

    real = c._ignore_late_stops

    def late():
        real()
        os.kill(os.getpid(), sig)  # as if sent in the teardown that follows
        time.sleep(0.2)

    c._ignore_late_stops = late
    c.build_cli = build
    sys.argv = ["restorekit", "work"]
    c.main()
""")


@posix_only
@pytest.mark.parametrize("sig", ["SIGINT", "SIGTERM", "SIGHUP"])
def test_a_stop_after_the_work_keeps_the_commands_exit(sig: str) -> None:
    r = subprocess.run([sys.executable, "-c", DRIVER, sig], capture_output=True, text=True, timeout=60,
                       preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    assert (r.returncode, r.stdout, r.stderr) == (0, "done\n", "")


HANGUP = textwrap.dedent("""
    import os, signal, sys, time
    import click
    import restorekit.cli as c

    mark = sys.argv[1]

    @click.group(cls=c.RestorekitGroup)
    def group():
        pass

    @group.command("work")
    def work():
        try:
            os.kill(os.getpid(), signal.SIGHUP)
            time.sleep(5)
            click.echo("not stopped")
        finally:
            open(mark, "w").write("cleaned up")

    c.build_cli = lambda: group
    sys.argv = ["restorekit", "work"]
    c.main()
""")


@posix_only
def test_a_hang_up_stops_the_command_with_its_clean_up(tmp_path: Path) -> None:
    mark = tmp_path / "mark"
    r = subprocess.run([sys.executable, "-c", HANGUP, str(mark)], capture_output=True, text=True, timeout=60,
                       preexec_fn=lambda: signal.signal(signal.SIGHUP, signal.SIG_DFL))
    assert r.returncode == 128 + signal.SIGHUP and "not stopped" not in r.stdout, (r.returncode, r.stderr)
    assert mark.read_text() == "cleaned up" and r.stderr.strip().startswith("terminated"), r.stderr
    # nohup: a hang-up stays ignored, the command runs to its end.
    r = subprocess.run([sys.executable, "-c", HANGUP.replace("time.sleep(5)", "time.sleep(0.3)"), str(mark)],
                       capture_output=True, text=True, timeout=60,
                       preexec_fn=lambda: signal.signal(signal.SIGHUP, signal.SIG_IGN))
    assert (r.returncode, r.stdout) == (0, "not stopped\n"), r.stderr


HUNG_UP_TERMINAL = textwrap.dedent("""
    import sys, time
    import click
    import restorekit.cli as c

    @click.group(cls=c.RestorekitGroup)
    def group():
        pass

    @group.command("work")
    def work():
        try:
            for _ in range(3000):
                time.sleep(0.01)
        finally:  # as a progress bar's last refresh: to the terminal, gone by now
            click.echo("closing the bar", err=True)
            click.echo("last note")

    c.build_cli = lambda: group
    sys.argv = ["restorekit", "work"]
    c.main()
""")


def _on_a_terminal(code: str) -> tuple[int, subprocess.Popen[bytes]]:
    """``code`` run with stdout and stderr on a new pseudo-terminal (SIGHUP at its default), three
    seconds on (started, in its loop): the terminal's master side and the process."""
    import pty
    import time

    master, slave = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.DEVNULL, stdout=slave, stderr=slave,
                            preexec_fn=lambda: signal.signal(signal.SIGHUP, signal.SIG_DFL))
    os.close(slave)
    time.sleep(3)
    return master, proc


@posix_only
def test_a_hang_up_is_129_though_the_terminal_is_gone() -> None:
    """The terminal closed: its writes fail with EIO, which replaced the stop's 129 with exit 1."""
    master, proc = _on_a_terminal(HUNG_UP_TERMINAL)
    os.close(master)  # the terminal goes: writes to it fail with EIO
    proc.send_signal(signal.SIGHUP)
    assert proc.wait(60) == 128 + signal.SIGHUP


@posix_only
def test_a_hang_up_sent_while_the_terminal_is_there_keeps_the_last_lines() -> None:
    """``kill -HUP`` with the terminal still open: its output must still reach it (the stop line too)."""
    import select

    master, proc = _on_a_terminal(HUNG_UP_TERMINAL)
    proc.send_signal(signal.SIGHUP)
    assert proc.wait(60) == 128 + signal.SIGHUP
    seen = b""
    while select.select([master], [], [], 1)[0]:
        try:
            chunk = os.read(master, 4096)
        except OSError:  # (EIO once the last writer has gone)
            break
        if not chunk:
            break
        seen += chunk
    os.close(master)
    text = seen.decode()
    assert "closing the bar" in text and "last note" in text and "terminated" in text, text
