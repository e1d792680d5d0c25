"""Ctrl-C: a command stops with exit 130 and one line, keeps what it finished, leaves no temp file."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

from plugin_sources import GOOD_PLUGIN

# nearest3p, but the second image's restore is interrupted by a real SIGINT (what Ctrl-C sends).
INTERRUPTING_PLUGIN = GOOD_PLUGIN.replace('''        self.check_scale(scale)
''', '''        self.check_scale(scale)
        import os, signal, time
        self.calls = getattr(self, "calls", 0) + 1
        if self.calls == 2:
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(5)
''')


def _sigint_as_in_a_terminal() -> None:
    """In the child before exec: SIGINT at its default action, as for a command run in a terminal.

    A process started with SIGINT ignored (inherited from a background job of a non-interactive
    shell, `pytest ... &` in a CI script) keeps it ignored: Python then installs no handler, the
    plugin's SIGINT is lost and the run finishes every image (exit 0), which is right for the
    command but not what this test asks about."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_ctrl_c_during_run_exits_130_with_one_line(plugin_site, hr_folder, tmp_path):
    assert INTERRUPTING_PLUGIN != GOOD_PLUGIN
    plugin_site("thirdparty-interrupt", "thirdparty_interrupt", INTERRUPTING_PLUGIN)
    out = tmp_path / "out"
    r = subprocess.run([sys.executable, "-m", "restorekit", "run", "nearest3p", "--scale", "2", "--input",
                        str(hr_folder), "--output", str(out), "--json"], capture_output=True, text=True,
                       env=dict(os.environ), timeout=300,  # a 3 s run; 120 s was exceeded on a starved CPU
                       preexec_fn=_sigint_as_in_a_terminal if os.name == "posix" else None)
    assert r.returncode == 130, r.stderr  # not 1, the code of 'some inputs failed'
    assert r.stdout == ""  # no summary claims a finished run
    assert r.stderr.strip().splitlines()[-1].startswith("interrupted")
    assert "Traceback" not in r.stderr and "Aborted!" not in r.stderr
    assert sorted(p.name for p in out.iterdir()) == ["img0.png"]  # the finished output, no temp files


def test_ctrl_c_while_the_command_starts_exits_130_with_one_line():
    """Ctrl-C while plugins and commands are being imported: no traceback either."""
    code = ("import restorekit.cli as c\n"
            "def build():\n"
            "    raise KeyboardInterrupt\n"
            "c.build_cli = build\n"
            "c.main()\n")
    r = subprocess.run([sys.executable, "-c", code, "methods"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 130, r.stderr
    assert r.stderr.strip() == "interrupted"


def test_a_ctrl_c_during_plugin_loading_goes_to_the_commands_handler():
    """plugins.user_interrupts raised KeyboardInterrupt itself, inside the plugin's import, past the
    command's handler that holds a stop until an import has ended."""
    from restorekit.plugins import user_interrupts

    seen = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: seen.append(signum))  # keeps it, raises nothing
    try:
        try:
            with user_interrupts() as pressed:
                signal.raise_signal(signal.SIGINT)
                assert seen == [signal.SIGINT] and pressed()
        except KeyboardInterrupt:
            raise AssertionError("raised past the command's handler") from None
        signal.signal(signal.SIGINT, signal.default_int_handler)
        with user_interrupts() as pressed:  # Python's own handler: raised here, and known as the user's
            try:
                signal.raise_signal(signal.SIGINT)
            except KeyboardInterrupt:
                assert pressed()
            else:
                raise AssertionError("no KeyboardInterrupt")
    finally:
        signal.signal(signal.SIGINT, previous)
