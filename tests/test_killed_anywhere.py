"""Stopped at any moment (Ctrl-C, a scheduler's SIGTERM, a kill): the stop is never lost, the
command says in one line what it kept, and nothing half-written is left where it would be taken
as finished."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from click.testing import CliRunner

from restorekit import weights as W
from restorekit.cli import build_cli
from test_weights import Files, home, server, spec_for, specs  # noqa: F401 (fixtures)

posix_only = pytest.mark.skipif(os.name != "posix", reason="signals sent with os.kill")

# A stand-in for the console script: restorekit's main() around a tiny group, so that what is
# tested (the stop handlers main() installs) costs no start-up of the real commands and plugins.
# ``stopper`` sends the signal to its own process while it is imported; ``BUILD_IMPORT`` imports it
# as torch imports numpy (swallowing what fails) while the command is built, ``WORK_IMPORT`` does so
# while the command runs, ``FINALIZER`` sends it from a __del__ (where Python can only ignore it).
DRIVER = textwrap.dedent("""
    import gc, os, signal, sys, time
    import click
    import restorekit.cli as c

    scenario, sig = sys.argv[1], getattr(signal, sys.argv[2])
    sys.path.insert(0, sys.argv[3])

    @click.group(cls=c.RestorekitGroup)
    def group():
        pass

    class Finalized:
        def __del__(self):
            os.kill(os.getpid(), sig)
            for _ in range(1000):  # the handler runs here: what it raises is 'ignored'
                pass

    @group.command("work")
    def work():
        if scenario == "work_import":
            try:
                import stopper
            except BaseException:
                pass
        if scenario == "finalizer":
            Finalized()
            gc.collect()
        click.echo("started")
        for _ in range(500):  # 5 s: a stop delivered again lands here
            time.sleep(0.01)
        click.echo("finished")

    def build():
        if scenario == "build_import":
            try:
                import stopper
            except BaseException:
                pass
        if scenario == "second":
            import stopper
        return group

    c.build_cli = build
    sys.argv = ["restorekit", "work"]
    c.main()
""")


def _run_driver(tmp_path: Path, scenario: str, sig: str, stopper: str) -> subprocess.CompletedProcess[str]:
    (tmp_path / "stopper.py").write_text(textwrap.dedent(stopper).replace("SIGNAL", sig))
    return subprocess.run([sys.executable, "-c", DRIVER, scenario, sig, str(tmp_path)], capture_output=True,
                          text=True, timeout=60,
                          preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))  # as in a terminal


ONE_SIGNAL = """
    import os, signal
    os.kill(os.getpid(), signal.SIGNAL)
    total = sum(range(10_000))  # the handler runs here, inside the import
"""


@posix_only
@pytest.mark.parametrize("scenario", ["build_import", "work_import", "finalizer"])
@pytest.mark.parametrize("sig, code, word", [("SIGTERM", 143, "terminated"), ("SIGINT", 130, "interrupted")])
def test_a_stop_inside_an_import_or_a_finalizer_is_not_lost(tmp_path: Path, scenario: str, sig: str, code: int,
                                                            word: str) -> None:
    """Raised inside an import, the stop was swallowed by the importer (torch's start-up, importing
    numpy) or by plugin isolation (the plugin listed as broken), and the command ran to its end with
    exit 0; raised in a finalizer it was printed as 'Exception ignored' and lost the same way. (Inside
    torch's C++ start-up it aborted the process: exit -6 and a C++ trace.) Now it is delivered once
    the import has ended: the command stops there, with its code and one line."""
    r = _run_driver(tmp_path, scenario, sig, ONE_SIGNAL)
    assert r.returncode == code, (r.returncode, r.stdout, r.stderr)
    assert "finished" not in r.stdout
    if scenario == "finalizer":
        # Sent again every _RESEND_S from the finalizer's end: it lands before or after 'started'
        # depending on how long the gc.collect() that follows takes (long once torch is imported,
        # which main() does first to cap its threads at the CPU budget).
        assert r.stdout in ("", "started\n"), r.stdout
    else:
        assert r.stdout == ("" if scenario == "build_import" else "started\n")
    assert r.stderr == f"{word}\n", r.stderr  # no 'Exception ignored', no traceback


@posix_only
def test_a_second_ctrl_c_stops_at_once_even_inside_an_import(tmp_path: Path) -> None:
    """A stop waits for the import to end, but an import that never ends (a plugin hanging on the
    network) must not make Ctrl-C powerless: a second one raises where it lands."""
    r = _run_driver(tmp_path, "second", "SIGINT", """
        import os, signal
        os.kill(os.getpid(), signal.SIGINT)
        total = sum(range(10_000))
        os.kill(os.getpid(), signal.SIGINT)
        total = sum(range(10_000))
        raise AssertionError("not reached")
    """)
    assert (r.returncode, r.stderr) == (130, "interrupted\n"), (r.returncode, r.stderr)


def test_an_interrupted_run_says_what_it_kept_and_a_rerun_finishes_it(hr_folder: Path, tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """The line said only "interrupted"; now it names the folder whose finished outputs are kept."""
    import restorekit.batch as batch

    args = ["run", "bicubic", "--scale", "2", "--input", str(hr_folder), "--device", "cpu", "-q"]
    clean = tmp_path / "clean"
    assert CliRunner().invoke(build_cli(), [*args, "--output", str(clean)]).exit_code == 0
    out = tmp_path / "out"
    real, calls = batch.save_image, []

    def save_then_stop(*a: object, **kw: object) -> object:
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt  # Ctrl-C while the third output is written
        return real(*a, **kw)

    with monkeypatch.context() as m:
        m.setattr(batch, "save_image", save_then_stop)
        r = CliRunner().invoke(build_cli(), [*args, "--output", str(out)])
    assert r.exit_code == 130, r.output
    assert r.output.strip().splitlines() == [
        f"interrupted; what run finished in {out} is kept, none of it half-written; the same command again goes "
        "on from there"]
    assert sorted(p.name for p in out.iterdir()) == ["img0.png", "img1.png"]  # no lock file, no temp file
    assert CliRunner().invoke(build_cli(), [*args, "--output", str(out)]).exit_code == 0
    assert {p.name: p.read_bytes() for p in out.iterdir()} == {p.name: p.read_bytes() for p in clean.iterdir()}


def _stop_mid_transfer(monkeypatch: pytest.MonkeyPatch) -> None:
    """Ctrl-C after the first block of a download is written."""
    from restorekit.weights import download

    real = download._write_all

    def write_then_stop(f: object, block: bytes) -> None:
        real(f, block)  # type: ignore[arg-type]
        raise KeyboardInterrupt

    monkeypatch.setattr(download, "_write_all", write_then_stop)


def test_an_interrupted_pull_keeps_what_it_can_resume_and_says_so(server: tuple[str, Files],
                                                                  specs: dict[str, W.WeightSpec],
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    url, files = server
    blob = os.urandom(3 << 20)  # three blocks of the download
    files.content["/big.bin"] = blob
    specs["big"] = spec_for("big", "big.bin", data=blob, urls=(f"{url}/big.bin",))
    part = W.weights_dir("big") / "big.bin.part"
    with monkeypatch.context() as m:
        _stop_mid_transfer(m)
        with pytest.raises(KeyboardInterrupt) as stopped:
            W.pull("big", quiet=True)
    assert part.stat().st_size == 1 << 20
    assert stopped.value.__notes__ == [f"kept: the partial download {part} (1,048,576 bytes); pulling again "
                                       "resumes it"]
    from restorekit.cli import stop_line

    assert stop_line("interrupted", stopped.value).startswith(f"interrupted; the partial download {part} ")
    files.log.clear()
    path = W.pull("big", quiet=True)[0]
    assert path.read_bytes() == blob and not part.exists()
    assert files.log[-1][1] == "bytes=1048576-"  # resumed, not started over


def test_an_interrupted_unpinned_pull_leaves_no_partial_download(server: tuple[str, Files],
                                                                 specs: dict[str, W.WeightSpec],
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """With no sha256 to check the rest against, the next pull starts over: the .part (up to
    gigabytes) was kept for nothing."""
    from test_weights import ckpt_bytes

    url, files = server
    blob = ckpt_bytes(1, 600_000)  # a checkpoint of about 2.4 MB: what --trust accepts
    files.content["/free.pt"] = blob
    specs["free"] = spec_for("free", "free.pt", data=blob, urls=(f"{url}/free.pt",), known_hash=False, size=False)
    with monkeypatch.context() as m:
        _stop_mid_transfer(m)
        with pytest.raises(KeyboardInterrupt) as stopped:
            W.pull("free", quiet=True, trust=True)
    assert not getattr(stopped.value, "__notes__", None)
    folder = W.weights_dir("free")
    assert not folder.exists() or not any(folder.iterdir())
    assert W.pull("free", quiet=True, trust=True)[0].read_bytes() == blob


def test_a_killed_writers_temp_record_is_removed_by_the_next_write(tmp_path: Path) -> None:
    """A kill between creating a manifest's temp file and renaming it left it in the cache for good."""
    from restorekit.weights.cache import write_text_atomic

    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True,
                          check=True)
    dead = int(gone.stdout)
    left = tmp_path / f".manifest-{dead}-0123456789ab.tmp"
    alive = tmp_path / f".manifest-{os.getppid()}-0123456789ab.tmp"  # a writer still at work: kept
    other = tmp_path / f".first_use-{dead}-0123456789ab.tmp"  # another record's: not this write's business
    for p in (left, alive, other):
        p.write_text("{half")
    write_text_atomic(tmp_path / "manifest.json", "{}\n")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["manifest.json", alive.name, other.name])
