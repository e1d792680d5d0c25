"""The ``restorekit`` command.

Exit codes, the same in every command: 0 all good; 1 some inputs failed, or all of them (each
named on stderr); 2 usage error (bad arguments, unknown names, bad options, weights not installed,
unwritable output or cache), said before any work; 130 Ctrl-C; 143 SIGTERM; 141 stdout's reader
went away (``restorekit … | head``), quietly.

Streams: stdout holds only what a command promises (tables, JSON, paths); notes, progress,
warnings and errors go to stderr, each warning and error one line (``warning: …``, ``error: …``),
never wrapped at the terminal's width; a table on stdout takes the terminal's width, and in a log
or a pipe its own (:func:`table_console`). Python's own warnings (a library's, a plugin's) are said as
such a line too (:func:`warning_line`). With ``--json`` stdout is the JSON document alone: what
the command and plugin code print meanwhile goes to stderr (:func:`json_output`).

No traceback reaches a user: restorekit's own errors and file-system errors are one line naming
the path and the fix; anything unexpected is one line asking for ``--debug`` (or
``RESTOREKIT_DEBUG=1``), which shows the traceback instead. Ctrl-C ends a command with
"interrupted" and exit 130, SIGTERM (a scheduler's stop) with "terminated" and exit 143; the line
goes on with what was kept where the command knows (``kept: …`` notes on the exception, see
:func:`restorekit.errors.note_kept`); atomic writes clean up their temporary files either way. Such a stop
is never raised inside an import (nor while the command starts): there it would be swallowed by the
importing library (torch imports numpy so, and goes on without it), end a plugin's loading as if the
plugin were broken, or abort the process in C++ (pybind11); it is delivered again as soon as the
import has ended (a second Ctrl-C or TERM meanwhile stops at once).

An installed distribution whose ``entry_points.txt`` cannot be parsed (torch and pydantic fail on
it when imported) is named with its file and line: in a warning where the command can run beside
it, else in the one error line (exit 2).
"""

from __future__ import annotations

import contextlib
import functools
import os
import re
import signal
import sys
import threading
import time
import warnings
from typing import Any, Callable, Literal

import click
from rich.console import Console, Group
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from . import __version__
from .command_group import CommandGroup
from .errors import PluginError, RestorekitError, describe_os_error


def _error_console() -> Console:
    """The console of ``error:`` and ``warning:`` lines and progress bars (stderr), each line whole."""
    return Console(stderr=True, highlight=False, soft_wrap=True)


err_console = _error_console()


class UsageProblem(click.UsageError):
    """A usage error with restorekit's one-line message (exit 2)."""


def fail_usage(msg: str) -> None:
    raise UsageProblem(msg)


#: The documents :func:`emit_json` holds back while a :func:`json_output` command runs (in the
#: process, not a context: a command may emit from a thread of its own, which starts with no context).
_documents: list[str] | None = None
_DOCUMENTS_LOCK = threading.Lock()


def emit_json(data: Any) -> None:
    """``data`` printed as strict JSON (what jq and every parser read): a number that is not finite
    as results.json writes it (``"Infinity"``, ``"-Infinity"``, NaN ``null``), other objects as text.
    Inside a :func:`json_output` command it is printed when the command ends, on the real stdout."""
    from .harness.store import dumps

    text = dumps(data, indent=2)
    with _DOCUMENTS_LOCK:
        if _documents is not None:
            _documents.append(text)
            return
    click.echo(text)


def json_output(command: Callable[..., Any]) -> Callable[..., Any]:
    """Decorator for the callback of a command with a ``--json`` flag (parameter ``as_json``): with
    the flag, stdout holds the JSON document alone. The whole command runs inside
    :func:`restorekit.plugins.output_to_stderr` — whatever it and the plugin code it calls print
    (``print()``, ``sys.__stdout__``, file descriptor 1, a C library's ``printf``) goes to stderr, from
    its first line to its last — and what it passes to :func:`emit_json` (from any thread) is printed after,
    also when it ends in ``SystemExit`` (some inputs failed). Every restorekit command with
    ``--json`` has it; a plugin's command may use it too."""

    @functools.wraps(command)
    def run(*args: Any, **kwargs: Any) -> Any:
        if not (kwargs.get("as_json") or _group_asked_json()):
            return command(*args, **kwargs)
        global _documents
        from .plugins import output_to_stderr

        with _DOCUMENTS_LOCK:
            outer, _documents = _documents, []
        try:
            with output_to_stderr():
                return command(*args, **kwargs)
        finally:
            with _DOCUMENTS_LOCK:
                documents, _documents = _documents, outer
            for text in documents or []:
                click.echo(text)

    run.restorekit_json_output = True  # type: ignore[attr-defined]
    return run


def _group_asked_json() -> bool:
    """Whether the group around the running subcommand was given ``--json`` (``methods --json show X``)."""
    ctx = click.get_current_context(silent=True)
    parent = ctx.parent if ctx is not None else None
    return bool(parent is not None and parent.params.get("as_json"))


def shown(text: str) -> str:
    """``text`` safe to print on a terminal as the one line it is: control and other unprintable
    characters (a file named with an escape sequence that would clear the screen or retitle the
    window) as ``\\xNN`` / ``\\uNNNN``, and line breaks as ``\\n`` / ``\\r`` (a file named
    ``x\\nnote: all inputs verified OK`` would otherwise print a line of its own making) — the
    rule of ``restorekit.images.shown_name``."""
    if text.isprintable():
        return text
    return "".join(ch if ch.isprintable() else ascii(ch)[1:-1] for ch in text)


def warn(msg: str) -> None:
    # escape: a message is plain text ('restorekit[web]' is not a style tag)
    err_console.print(f"[yellow]warning:[/] {escape(shown(msg))}")


def error_line(msg: str) -> None:
    err_console.print(f"[red]error:[/] {escape(shown(msg))}")


def warning_line(message: Warning | str, category: type[Warning], filename: str, lineno: int,
                 file: Any = None, line: str | None = None) -> None:
    """``warnings.showwarning`` for the command: a Python warning (a library's, a plugin's) as one
    ``warning:`` line, its text then its kind and where it was raised — Python's own format takes
    two lines (the source line under it) and begins with the file's path, which ``grep '^warning'``
    of a log misses."""
    text = " | ".join(ln.strip() for ln in str(message).splitlines() if ln.strip()) or category.__name__
    where = f"{category.__name__}, {os.path.basename(str(filename))}:{lineno}"
    if file is not None and file is not sys.stderr:  # (explicitly elsewhere: the same line there)
        with contextlib.suppress(OSError, ValueError):
            file.write(f"warning: {shown(text)} ({where})\n")
        return
    warn(f"{text} ({where})")


_DEBUG = False


def debugging() -> bool:
    """Whether tracebacks should be shown (``--debug`` or ``RESTOREKIT_DEBUG=1``)."""
    return _DEBUG or os.environ.get("RESTOREKIT_DEBUG", "").lower() in ("1", "true", "yes")


def _printable(exc: click.ClickException) -> None:
    """A usage error quotes what was typed (`--input $'a\x1bb'`): made printable, as restorekit's own
    lines are; not the help a bare group prints (:class:`click.exceptions.NoArgsIsHelpError`), whose
    message is the help text, lines and all."""
    if not isinstance(exc, click.exceptions.NoArgsIsHelpError):
        exc.message = shown(exc.message)


class RestorekitGroup(CommandGroup):
    """Turns restorekit and file-system errors into one-line messages with exit code 2."""

    def make_context(self, info_name: str | None, args: list[str], parent: click.Context | None = None,
                     **extra: Any) -> click.Context:
        try:
            return super().make_context(info_name, args, parent, **extra)
        except click.ClickException as exc:  # the root's own options
            _printable(exc)
            raise

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except click.ClickException as exc:
            _printable(exc)
            raise
        except RestorekitError as exc:
            error_line(str(exc))
            ctx.exit(2)
        except BrokenPipeError as exc:
            if _stdout_is_broken():  # not a file problem: the reader of stdout left (`restorekit … | head`)
                _silence_stdout()
                ctx.exit(BROKEN_PIPE)
            if debugging():
                raise
            error_line(describe_os_error(exc, action="use"))  # a socket, a child's stdin: a real failure
            ctx.exit(2)
        except OSError as exc:
            if debugging():
                raise
            error_line(describe_os_error(exc, action="use"))
            ctx.exit(2)
        except KeyboardInterrupt as exc:  # before click's 'Aborted!' with exit 1, the code of 'some inputs failed'
            if debugging():
                raise
            _interrupted(exc)
            ctx.exit(INTERRUPTED)


@click.group(cls=RestorekitGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="restorekit")
@click.option("--strict", is_flag=True, help="Fail when any plugin is broken (plugin development).")
@click.option("--debug", is_flag=True, help="Show the traceback of unexpected errors (for bug reports).")
@click.pass_context
def cli(ctx: click.Context, strict: bool, debug: bool) -> None:
    """restorekit: plugin-based image restoration (pSp face super-resolution and baselines)."""
    global _DEBUG
    _DEBUG = _DEBUG or debug
    if strict and not _STRICT_FROM_START:
        # Called in-process (a test's CliRunner) after a lenient build: load everything again,
        # strictly, the plugins' command hooks included. From the console script main() has
        # made the whole start strict already, so nothing loads twice.
        from .plugins import add_commands, registry, reset

        reset()
        try:
            add_commands(registry(strict=True), cli, strict=True)
        except PluginError as exc:
            error_line(str(exc))
            ctx.exit(2)


#: Whether main() saw ``--strict`` before the subcommand and loaded the plugins strictly from the start.
_STRICT_FROM_START = False


def _global_flags(argv: list[str]) -> set[str]:
    """The options given before the subcommand (``restorekit --strict plugins``)."""
    flags: set[str] = set()
    for arg in argv:
        if not arg.startswith("-"):
            break
        flags.add(arg)
    return flags


def _load_plugin_commands() -> None:
    """Let plugins add subcommands; a failing plugin is listed as broken, not fatal."""
    from .plugins import add_commands, registry

    try:
        add_commands(registry(), cli)
    except PluginError as exc:  # strict mode from the environment
        error_line(str(exc))
        sys.exit(2)


_BUILT = False


def build_cli() -> click.Group:
    """The full command: core subcommands, then what plugins add (once per process)."""
    global _BUILT
    if not _BUILT:
        import importlib

        for mod in CORE_COMMAND_MODULES:
            importlib.import_module(f"restorekit.commands.{mod}").attach(cli)
        _load_plugin_commands()
        _BUILT = True
    return cli


# Each module has ``attach(cli)``; kept as names so a missing optional one is easy to see.
CORE_COMMAND_MODULES = ("run", "info", "degrade", "generate", "bench", "faces_bench", "bench_method", "compare", "weights", "train", "plugin_new", "export", "demo", "realism", "serve")


class Terminated(SystemExit):
    """What SIGTERM raises in the command (exit 128 + 15 = 143, as a shell reports it); SIGHUP
    alike (129: the terminal closed, an ssh session dropped), so a server deletes its folder of
    uploads and a run its lock, as on SIGTERM."""


#: The signals that stop a command with its one line: Ctrl-C, a scheduler's or service manager's
#: SIGTERM, and (where there is one) SIGHUP.
STOP_SIGNALS: tuple[signal.Signals, ...] = (signal.SIGINT, signal.SIGTERM) + (
    (signal.SIGHUP,) if hasattr(signal, "SIGHUP") else ())


def _terminate(signum: int, frame: Any) -> None:
    raise Terminated(128 + signum)


INTERRUPTED = 128 + signal.SIGINT  # 130, as a shell reports a command ended by Ctrl-C


def _interrupted(exc: BaseException | None = None) -> None:
    err_console.print(escape(shown(stop_line("interrupted", exc))))


def stop_line(word: str, exc: BaseException | None) -> str:
    """``word`` ("interrupted", "terminated"), then what the command kept, as the code that kept it
    noted on the exception that stopped it (its innermost ``kept: …`` note,
    :func:`restorekit.errors.note_kept`)."""
    from .errors import kept_note

    kept = kept_note(exc) if exc is not None else None
    return f"{word}; {kept}" if kept else word


# --- stop signals (Ctrl-C, SIGTERM) ----------------------------------------------------------------
# A stop raises in the command at once (KeyboardInterrupt, Terminated), except where raising is
# unsafe: while the command starts (its modules and the plugins load: plugin isolation would take
# the stop for the plugin's failure) and while any import runs (torch's C++ start-up swallows an
# exception raised in the numpy it imports, or aborts the process on it). There the signal is kept
# and sent again every _RESEND_S until it lands where it can be raised. A stop raised in a finalizer
# or callback that Python can only report as "Exception ignored" is sent again the same way.

_RESEND_S = 0.05
_starting = False  # main() is building the command (modules and plugins load)
_deferred: set[int] = set()  # stop signals waiting to be delivered again
_resending: dict[int, int] = {}  # 1 while a re-sent signal (not a second one from outside) is on its way
_resender: threading.Thread | None = None


def _stop_signal(signum: int, frame: Any) -> None:
    """The handler of SIGINT and SIGTERM that main() installs (see above)."""
    if _resending.get(signum):
        _resending[signum] = 0  # this very delivery is the re-sent one
        if signum not in _deferred:  # raised meanwhile (the command was built, or a second one came)
            return
    elif signum in _deferred:  # a second Ctrl-C (or TERM) while the first waits: stop now
        _raise_stop(signum)
    if _starting or _in_import(frame):
        _defer(signum)
        return
    _raise_stop(signum)


def _raise_stop(signum: int) -> None:
    _deferred.discard(signum)
    if signum == signal.SIGINT:
        raise KeyboardInterrupt
    if signum == getattr(signal, "SIGHUP", None):
        from .terminals import leave_hung_up_terminal

        leave_hung_up_terminal()
    _terminate(signum, None)


def _in_import(frame: Any) -> bool:
    """Whether ``frame`` runs inside an import (importlib's bootstrap is on the stack)."""
    while frame is not None:
        if frame.f_code.co_filename.startswith("<frozen importlib."):
            return True
        frame = frame.f_back
    return False


def _defer(signum: int) -> None:
    """Keep ``signum`` and send it again shortly (a thread re-sends every deferred signal until
    the handler raises it)."""
    global _resender
    _deferred.add(signum)
    if _resender is not None and _resender.is_alive():
        return

    def resend() -> None:
        while _deferred:
            time.sleep(_RESEND_S)
            for sig in list(_deferred):
                if not _resending.get(sig):  # (the one sent before has been taken)
                    _resending[sig] = 1
                    _send_again(sig)

    _resender = threading.Thread(target=resend, name="restorekit-stop-resend", daemon=True)
    _resender.start()


def _send_again(sig: int) -> None:
    """Deliver ``sig`` to this process once more: ``os.kill`` on POSIX systems, which interrupts a
    main thread blocked in a system call; on Windows ``os.kill`` with SIGINT/SIGTERM would end the
    process outright (TerminateProcess, no handler, no clean-up), so the signal is raised in-process."""
    if sys.platform == "win32":
        signal.raise_signal(sig)
    else:
        os.kill(os.getpid(), sig)


_late_stopped = False  # a stop came after the command had ended
_exit_hook = False


def _late_stop(signum: int, frame: Any) -> None:
    """The handler once the command has ended: a first stop is let pass (the command's exit code
    stands), a second ends the process at once with the signal's code (a teardown that hangs on
    another thread, which a plugin may have left running, can still be stopped)."""
    global _late_stopped
    if _late_stopped:  # (any second stop: Ctrl-C after a SIGTERM too)
        os._exit(128 + signum)
    _late_stopped = True


def _ignore_stops_at_exit() -> None:
    """At exit (after other threads are joined): the stops are ignored outright — Python resets
    its handlers before it tears its modules down (0.5–1.5 s with torch), and leaves ignored ones
    ignored."""
    try:
        for sig in STOP_SIGNALS:
            if signal.getsignal(sig) is _late_stop:
                signal.signal(sig, signal.SIG_IGN)
    except (ValueError, OSError):
        pass


def _ignore_late_stops() -> None:
    """The command has ended — its work done, or its stop said: a Ctrl-C or SIGTERM now, while
    Python and torch tear down, ended the process by the signal, silently and with another exit
    code than the command's (130 after a finished compare). From here a first one is let pass
    (:func:`_late_stop`; a second stops at once), and at exit they are ignored. Where main()
    installed its handlers only (main() is the console script's entry: a process that calls it
    hands it its stop handlers)."""
    try:
        installed = [sig for sig in STOP_SIGNALS if signal.getsignal(sig) is _stop_signal]
        for sig in installed:
            signal.signal(sig, _late_stop)
    except (ValueError, OSError):  # not the main thread
        return
    global _exit_hook
    if installed and not _exit_hook:
        import atexit

        atexit.register(_ignore_stops_at_exit)
        _exit_hook = True


def _started() -> None:
    """The command is built (its modules and the plugins are loaded): a stop kept meanwhile is raised now."""
    global _starting
    if not _starting:
        return
    _starting = False
    for sig in STOP_SIGNALS:
        if sig in _deferred:
            _raise_stop(sig)


def _unraisable(info: Any) -> None:
    """``sys.unraisablehook``: a stop raised where Python can only ignore it (a finalizer, a weakref
    callback) is sent again instead of being lost with an 'Exception ignored' traceback."""
    exc = info.exc_value
    if isinstance(exc, KeyboardInterrupt):
        _defer(signal.SIGINT)
    elif isinstance(exc, Terminated) and isinstance(exc.code, int):
        _defer(exc.code - 128)
    else:
        _previous_unraisable(info)


_previous_unraisable = sys.unraisablehook


def _install_stop_handlers() -> None:
    global _starting, _previous_unraisable
    try:
        for sig in STOP_SIGNALS:
            if signal.getsignal(sig) is not signal.SIG_IGN:  # (nohup, a background job: stays ignored)
                signal.signal(sig, _stop_signal)
    except (ValueError, OSError):  # not the main thread
        return
    _starting = True
    if sys.unraisablehook is not _unraisable:
        _previous_unraisable = sys.unraisablehook
        sys.unraisablehook = _unraisable


BROKEN_PIPE = 128 + getattr(signal, "SIGPIPE", 13)  # 141, as a shell reports a command whose reader went away


def _stdout_is_broken() -> bool:
    """Whether stdout's reader has gone (a pipe whose read end is closed polls as an error): what
    a ``BrokenPipeError`` means only then — one from a socket or a child's stdin is a real failure.
    Where stdout cannot be polled, a broken pipe is taken to be stdout's, as before."""
    if _stdout_went_away():
        return True
    try:
        import select

        fd = sys.stdout.fileno()
        poller = select.poll()
        poller.register(fd, select.POLLOUT)
        return any(ev & (select.POLLERR | select.POLLHUP) for _, ev in poller.poll(0))
    except (AttributeError, ValueError, OSError):
        return True


#: The wrapper click puts around a closed stdout: ``_PacifyFlushWrapper`` since click 8.2, where
#: ``PacifyFlushWrapper`` is a deprecated alias (a DeprecationWarning on every use; gone in click 9).
_PACIFIED: tuple[type, ...] = tuple(w for w in (getattr(click.utils, "_PacifyFlushWrapper", None),)
                                    if isinstance(w, type)) or (click.utils.PacifyFlushWrapper,)


def _stdout_went_away() -> bool:
    """Whether a library has already handled a closed stdout: click wraps it to ignore the failed
    flush, rich points it at /dev/null."""
    if isinstance(sys.stdout, _PACIFIED):
        return True
    now = _stdout_identity()
    try:
        null = os.stat(os.devnull)
    except OSError:
        return False
    return now is not None and now == (null.st_dev, null.st_ino) and now != _STDOUT_AT_START


def _stdout_identity() -> tuple[int, int] | None:
    """``(device, inode)`` of the file stdout writes to, or None."""
    try:
        st = os.fstat(sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):
        return None
    return st.st_dev, st.st_ino


_STDOUT_AT_START = _stdout_identity()


def _silence_stdout() -> None:
    """Point stdout at /dev/null, so that the flush at exit does not fail on the closed pipe again."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError, AttributeError):
        pass


def _tolerant_streams() -> None:
    """Tables and messages use a few non-ASCII signs (↑ ↓ Δ →); where stdout or stderr cannot encode
    them (Windows' cp1252 when redirected, ``PYTHONIOENCODING=ascii``) they are written as ASCII
    stand-ins (:mod:`restorekit.plain_signs`: tables stay aligned), other characters escaped,
    instead of ending the command with a UnicodeEncodeError after its work is done."""
    from .plain_signs import register

    errors = register()
    for stream in (sys.stdout, sys.stderr):
        encoding = (getattr(stream, "encoding", None) or "").lower().replace("-", "").replace("_", "")
        if encoding in ("utf8", "utf8sig"):
            continue
        try:
            stream.reconfigure(errors=errors)  # type: ignore[union-attr]
        except (AttributeError, ValueError, OSError):  # not a TextIOWrapper (a test's capture)
            pass


def _plain_log_environment() -> None:
    """Drop what rich would misread in a CI job's environment, for every console made after (the
    commands' and plugins'), and make :data:`err_console` again: a ``COLUMNS`` that is not a width
    (rich took 0 for one: no ``error:`` or ``warning:`` line, no ``weights show``, was printed), and
    ``FORCE_COLOR`` under ``NO_COLOR`` (which wins, as in Python's own colour rule): with both rich took
    a log for a terminal and, colour off, still wrote bold and underline codes into it."""
    global err_console
    dropped = [name for name in ("COLUMNS",) if name in os.environ and columns_width() is None]
    if os.environ.get("NO_COLOR") and "FORCE_COLOR" in os.environ:
        dropped.append("FORCE_COLOR")
    for name in dropped:
        del os.environ[name]
    if dropped:
        err_console = _error_console()


def main() -> None:
    """Console-script entry point: one-line errors, tracebacks only with ``--debug``."""
    global _DEBUG, _STRICT_FROM_START, _late_stopped
    _DEBUG = _DEBUG or "--debug" in sys.argv[1:]  # also for failures before options are parsed
    if "--strict" in _global_flags(sys.argv[1:]):  # plugins load strictly, command hooks included
        os.environ["RESTOREKIT_STRICT_PLUGINS"] = "1"
        _STRICT_FROM_START = True
    _late_stopped = False  # (a process that calls main() again: its first late stop is let pass again)
    _install_stop_handlers()
    try:
        _run_main()
    finally:
        _ignore_late_stops()


def _run_main() -> None:
    """:func:`main` from its streams on, to the command's exit."""
    _tolerant_streams()
    _plain_log_environment()
    warnings.showwarning = warning_line  # one `warning:` line each, as restorekit's own
    _skip_malformed_entry_points()
    try:
        from .sharding import use_cpu_budget

        # A container's CPU quota (docker --cpus, a Kubernetes limit) or Slurm's CPUs per task caps
        # torch's threads: torch starts one per core it may run on, and 64 threads sharing 2 CPUs'
        # time run several times slower. OMP_NUM_THREADS, --threads and num_threads still win.
        use_cpu_budget()
        command = build_cli()
        _started()  # a stop kept while the modules and plugins loaded is raised here
        command(prog_name="restorekit")
    except SystemExit as done:
        if isinstance(done, Terminated):
            try:
                err_console.print(escape(shown(stop_line("terminated", done))))
            except OSError:  # (SIGHUP: the terminal stderr wrote to has gone)
                pass
            raise
        # click (help, usage) and rich (tables) end a write to a closed stdout with exit 1, the code
        # of 'some inputs failed'; say what happened instead, as everywhere else in restorekit.
        if done.code == 1 and _stdout_went_away():
            sys.exit(BROKEN_PIPE)
        raise
    except KeyboardInterrupt as exc:  # while plugins and commands load (RestorekitGroup handles the rest)
        if debugging():
            raise
        _interrupted(exc)
        sys.exit(INTERRUPTED)
    except BrokenPipeError as exc:  # the reader of stdout left while output was still being written
        if _stdout_is_broken():
            _silence_stdout()
            sys.exit(BROKEN_PIPE)
        if debugging():
            raise
        error_line(describe_os_error(exc, action="use"))
        sys.exit(2)
    except Exception as exc:  # SystemExit passes (click handled the rest)
        if debugging():
            raise
        if isinstance(exc, RestorekitError):
            error_line(str(exc))
            sys.exit(2)
        if isinstance(exc, OSError):
            error_line(describe_os_error(exc, action="use"))
            sys.exit(2)
        broken = metadata_failure(exc)
        if broken is not None:
            error_line(broken)
            sys.exit(2)
        error_line(describe_unexpected(exc))
        sys.exit(1)


def describe_unexpected(exc: BaseException) -> str:
    """One line for an error nobody anticipated (a bug here or in a plugin), pointing at ``--debug``;
    an installed distribution's malformed ``entry_points.txt`` is named instead where it is the cause
    (:func:`metadata_failure`)."""
    broken = metadata_failure(exc)
    if broken is not None:
        return broken
    text = str(exc).strip().splitlines()
    return (f"unexpected {type(exc).__name__}{': ' + text[0] if text else ''} (rerun with --debug for "
            "the traceback, and report it)")


#: Libraries the commands import that read every installed distribution's entry points when they
#: are imported (``importlib.metadata.entry_points(group=…)`` parses them all, and fails on one
#: malformed ``entry_points.txt``): (library, the group it looks for, its own switch that turns
#: the looking off, the value that does).
ENTRY_POINT_READERS = (("torch", "torch.backends", "TORCH_DEVICE_BACKEND_AUTOLOAD", "0"),
                       ("pydantic", "pydantic", "PYDANTIC_DISABLE_PLUGINS", "__all__"))


def _skip_malformed_entry_points() -> None:
    """Let the commands run beside an installed distribution whose ``entry_points.txt`` cannot be
    parsed, on which importing torch or pydantic would fail: where no installed distribution (the
    malformed files' sections included) declares a group those libraries look for, their own
    switches (:data:`ENTRY_POINT_READERS`) tell them not to look, which loses nothing, and each such
    distribution is named in one warning. Otherwise nothing changes and :func:`metadata_failure`
    names the file when the import fails. Child processes inherit the switches."""
    try:
        from .entry_points import scan_entry_points

        scan = scan_entry_points()
    except Exception:  # never worse than without the check
        return
    if not scan.malformed or any(group in scan.groups for _, group, _, _ in ENTRY_POINT_READERS):
        return
    for _, _, variable, value in ENTRY_POINT_READERS:
        os.environ[variable] = value
    from . import ENTRY_POINT_GROUP

    for bad in scan.malformed:
        if ENTRY_POINT_GROUP not in bad.sections:  # a plugin's: the plugin registry names it
            warn(f"ignoring the installed distribution {bad.dist}: its entry_points.txt cannot be parsed "
                 f"({bad.problem_at()}), which fails `import torch` elsewhere (restorekit runs with torch's and "
                 f"pydantic's entry-point plugins off, none being installed); {bad.fix()}")


def metadata_failure(exc: BaseException) -> str | None:
    """The one line for ``exc`` when it came out of :mod:`importlib.metadata` while a library read
    every installed distribution's entry points, and some distribution's ``entry_points.txt`` is
    indeed malformed: which distribution, the file and the line, and what to do. None otherwise."""
    reader = _entry_point_reader(exc)
    if reader is None:
        return None
    try:
        from .entry_points import scan_entry_points

        malformed = scan_entry_points().malformed
    except Exception:
        return None
    if not malformed:
        return None
    library, at_import = reader
    bad, others = malformed[0], malformed[1:]
    also = f" (also malformed: {'; '.join(f'{o.dist}, {o.problem_at()}' for o in others)})" if others else ""
    return (f"the installed distribution {bad.dist} has a malformed entry_points.txt ({bad.problem_at()}), and "
            f"{library} reads every installed distribution's entry points{' when it is imported' if at_import else ''}"
            f"; {bad.fix()}{also}")


def _entry_point_reader(exc: BaseException) -> tuple[str, bool] | None:
    """``(library, during its import)`` when ``exc`` (or an error it was raised from) was raised
    inside :mod:`importlib.metadata` (or its backport ``importlib_metadata``): the package of the
    code that called it ('a library' when none shows), and whether that package was being imported
    then. None when it was not."""
    seen: set[int] = set()
    error: BaseException | None = exc
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        frames: list[tuple[str, str]] = []
        tb = error.__traceback__
        while tb is not None:
            frames.append((str(tb.tb_frame.f_globals.get("__name__") or ""), tb.tb_frame.f_code.co_name))
            tb = tb.tb_next
        inside = [i for i, (mod, _) in enumerate(frames)
                  if mod.startswith(("importlib.metadata", "importlib_metadata"))]
        if inside:
            callers = [mod for mod, _ in frames[:inside[0]] if mod and not mod.startswith("importlib")]
            if not callers:
                return "a library", False
            package = callers[-1].split(".")[0]
            return package, any(mod.split(".")[0] == package and code == "<module>" for mod, code in frames)
        error = error.__cause__ or error.__context__
    return None


def listing(title: str | None, columns: list[str], rows: list[list[str]], *, cut: tuple[str, ...] = ()) -> None:
    """A listing that reads at any terminal width (rich honours ``COLUMNS``): one line per row.

    Columns not named in ``cut`` (names, states, sizes) keep their full width; the ``cut`` ones
    (summaries) share what is left and end in '…' when it is not enough — the ``show`` commands
    and ``--json`` give them whole. In a log or a pipe nothing is cut (:func:`table_console`).
    """
    console = table_console()
    rows = [[shown(v) for v in r] for r in rows]  # a cell is data (a registry field, a plugin's summary)
    gap = 2  # padding (0, 1) between columns, none at the edges
    natural = [max([len(c), *(len(r[i]) for r in rows)]) for i, c in enumerate(columns)]
    fixed = sum(n for c, n in zip(columns, natural) if c not in cut) + gap * (len(columns) - 1)
    share = max(8, (console.width - fixed) // max(1, len(cut))) if cut else 0
    t = Table(box=None, pad_edge=False, padding=(0, 1), header_style="bold", expand=False)
    for c, n in zip(columns, natural):
        if c in cut:
            t.add_column(c, no_wrap=True, overflow="ellipsis", max_width=min(n, share))
        else:
            t.add_column(c, no_wrap=True, min_width=n)
    for r in rows:  # (as Text: literal, never markup)
        t.add_row(*(Text(_cut(v, min(n, share)) if c in cut else v) for c, n, v in zip(columns, natural, r)))
    # The title on a line of its own: as the table's it was wrapped to the table's width, which an
    # empty listing (RESTOREKIT_LOAD_PLUGINS naming no plugin) makes narrow, even in a pipe.
    print_table_text(console, t if title is None else Group(Text(title, style="bold"), t))


def _cut(text: str, width: int) -> str:
    return text if len(text) <= width else text[: max(0, width - 1)].rstrip() + "…"


def table(title: str | None, columns: list[str], rows: list[list[str]], *,
          overflow: Literal["ellipsis", "fold"] = "ellipsis") -> None:
    """A rich table on stdout; ``overflow="fold"`` folds a cell too wide for its column onto the next
    line instead of ending it in an ellipsis (a range such as ``41.70–52.10`` is one word)."""
    t = Table(title=title, show_lines=False)
    for c in columns:
        t.add_column(c, overflow=overflow)
    for r in rows:
        t.add_row(*r)
    print_table_text(table_console(), t)


#: The width a table may take where stdout is a log or a pipe: its natural width, in practice.
UNBOUNDED_WIDTH = 100_000


def stdout_is_terminal() -> bool:
    """Whether stdout is a terminal (:mod:`restorekit.terminals`: not because colour is forced)."""
    from .terminals import stream_is_terminal

    return stream_is_terminal(sys.stdout)


def stderr_is_terminal() -> bool:
    """Whether stderr is a terminal (:mod:`restorekit.terminals`)."""
    from .terminals import stream_is_terminal

    return stream_is_terminal(sys.stderr)


def stderr_animates() -> bool:
    """Whether a progress bar may redraw itself on stderr: a terminal, not ``TERM=dumb``, unless
    ``TTY_INTERACTIVE`` says (in a log, even one with colour forced, it wrote cursor codes and a line
    per refresh; in an editor's shell buffer one line cut at 80 columns)."""
    from .terminals import stream_animates

    return stream_animates(sys.stderr)


def table_console() -> Console:
    """The console a table is printed on: ``COLUMNS`` wide where that is a width, else a terminal's
    width; else — a log, a pipe, ``| less`` — as wide as the table itself, so that no header or cell
    is broken across lines in a file that is read or parsed later (rich's default there is 80
    columns). Whether stdout is a terminal is asked of stdout itself: rich takes ``FORCE_COLOR`` (set
    in many CI services) for one."""
    columns = columns_width()
    if columns is not None:
        return sized_console(columns)
    if stdout_is_terminal():  # (its size as the OS says; a COLUMNS of 0 or 'abc' made rich print nothing or cut at 80)
        import shutil

        return sized_console(shutil.get_terminal_size((80, 24)).columns)
    return sized_console(UNBOUNDED_WIDTH)


def columns_width() -> int | None:
    """``COLUMNS`` where it is a width (a positive whole number); None where unset, 0 or 'abc'."""
    columns = os.environ.get("COLUMNS", "").strip()
    return int(columns) if columns.isascii() and columns.isdigit() and int(columns) >= 1 else None


def sized_console(width: int) -> Console:
    """A console on stdout ``width`` columns wide. Its height is given too: without one rich takes a
    console that is forced to be a terminal (``FORCE_COLOR``, ``TTY_COMPATIBLE``) under ``TERM=dumb``
    for an 80×25 one, whatever the width, and cut or turned every table in the log at 80 columns."""
    return Console(width=width, height=25)


def print_table_text(console: Console, renderable: Any) -> None:
    """``renderable`` on ``console``; on an unbounded one (:func:`table_console`) each line without
    the spaces rich pads it with to the table's width, which a log or ``grep`` has no use for."""
    if console.width != UNBOUNDED_WIDTH:
        console.print(renderable)
        return
    with console.capture() as captured:
        console.print(renderable)
    # Colour codes are there only where rich was told to colour a log (FORCE_COLOR): keep them, as
    # click.echo would strip them from what is not a terminal.
    click.echo("\n".join(_PADDING.sub(r"\1", line) for line in captured.get().splitlines()),
               color=True if console.color_system else None)


#: The spaces at the end of a line, before any colour codes that end it (``FORCE_COLOR``).
_PADDING = re.compile(r"\s+((?:\x1b\[[0-9;]*m)*)$")
