"""A concurrency audit's two findings on busy folders.

``generate`` built (loaded and hashed) its generator before it took its output folder, so a second
one into a busy folder printed the generator's notes and was refused only seconds later (a 1024-px
checkpoint: many seconds), not at once as ``run`` is. ``compare``'s refusal of a busy ``--out``
named no process, though its lock file (or, without file locks, its marker) says which holds it."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest
from click.testing import CliRunner

from restorekit.cli import UsageProblem, build_cli

fcntl = pytest.importorskip("fcntl")

OUTPUT_LOCK = ".output.lock"


def invoke(*args: object):
    return CliRunner().invoke(build_cli(), [str(a) for a in args])


def hold(folder: Path, name: str, text: str) -> int:
    """Take ``folder/name`` as another process would (its own open file, its line written): the fd."""
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder / name, os.O_RDWR | os.O_CREAT, 0o644)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    os.write(fd, text.encode())
    return fd


def generate_args(out: Path) -> list[str]:
    return ["generate", "--generator", "stylegan2", "--seeds", "0-40", "--output", str(out), "--device", "cpu", "-q"]


# -- generate: refused before its generator is built -----------------------------------------------
def test_generate_into_a_busy_folder_is_refused_before_building_its_generator(tmp_path, monkeypatch):
    pytest.importorskip("restorekit_psp_sr")  # (registers stylegan2)
    import restorekit.commands.generate as generate_mod

    def never(*a, **kw):  # type: ignore[no-untyped-def]
        pytest.fail("the generator was built for a folder another generate holds")

    monkeypatch.setattr(generate_mod, "build_generator", never)
    monkeypatch.setattr(generate_mod, "_state_sha256", never)
    out = tmp_path / "gl"
    fd = hold(out, OUTPUT_LOCK, "25662 generate\n")
    try:
        r = invoke(*generate_args(out))
    finally:
        os.close(fd)
    assert r.exit_code == 2, r.output
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ")
    assert f"{out}: another restorekit generate (process 25662) is writing into this folder" in lines[0]
    assert "--output" in lines[0] and "Usage:" not in r.output
    assert [p.name for p in out.iterdir()] == [OUTPUT_LOCK]  # nothing written, the holder's lock untouched


def test_generate_holds_its_folder_while_it_builds_and_a_failed_build_leaves_no_folder(tmp_path, monkeypatch):
    pytest.importorskip("restorekit_psp_sr")
    import restorekit.commands.generate as generate_mod
    from restorekit.folder_lock import holder

    out = tmp_path / "new" / "gen"
    seen: list[object] = []

    def failing_build(*a, **kw):  # type: ignore[no-untyped-def]
        seen.append(holder(out, OUTPUT_LOCK))
        raise UsageProblem("generator 'stylegan2': no such weights file")

    monkeypatch.setattr(generate_mod, "build_generator", failing_build)
    r = invoke(*generate_args(out))
    assert r.exit_code == 2, r.output
    assert "no such weights file" in r.stderr
    assert seen == [(os.getpid(), "generate")]  # held from before the build: a second one is refused at once
    # Stopped before any work: the folders it made for the lock are gone, as a usage error leaves none.
    assert not (tmp_path / "new").exists()


# -- compare: the refusal names the process holding --out ------------------------------------------
def test_a_busy_compare_folder_is_refused_naming_the_process_that_holds_it(tmp_path):
    from restorekit.harness.outdir import LOCK_FILE, exclusive
    from restorekit.harness.runner import CompareUsageError

    out = tmp_path / "c1"
    fd = hold(out, LOCK_FILE, "25662 compare\n")
    try:
        with pytest.raises(CompareUsageError) as info:
            with exclusive(out):
                pytest.fail("entered a folder another compare holds")
    finally:
        os.close(fd)
    msg = str(info.value)
    assert msg.startswith(f"{out}: another compare is writing into this folder (process 25662); wait for it")
    assert msg.endswith("or use another --out") and "\n" not in msg
    # A holder that has written no line yet is refused all the same, naming no process.
    other = tmp_path / "c2"
    fd = hold(other, LOCK_FILE, "")
    try:
        with pytest.raises(CompareUsageError, match=r"another compare is writing into this folder; wait"):
            with exclusive(other):
                pass
    finally:
        os.close(fd)


def test_compare_refused_on_the_command_line_names_the_holder(hr_folder, tmp_path):
    from restorekit.harness.outdir import LOCK_FILE

    out = tmp_path / "cmp"
    fd = hold(out, LOCK_FILE, f"{os.getppid()} compare\n")
    try:
        r = invoke("compare", "--methods", "bicubic", "--scale", "2", "--data", hr_folder, "--out", out,
                   "--metrics", "psnr_rgb", "--device", "cpu", "-q")
    finally:
        os.close(fd)
    assert r.exit_code == 2, r.output
    errors = [ln for ln in r.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1
    assert f"{out}: another compare is writing into this folder (process {os.getppid()})" in errors[0]
    assert sorted(p.name for p in out.iterdir()) == [LOCK_FILE]  # nothing written


def test_a_compare_marker_of_another_host_is_named_with_its_host_and_file(tmp_path, monkeypatch):
    """Without file locks (NFS without its lock service) compare holds --out by a marker file; the
    refusal names its process and host as run's does, and the marker to remove once it has ended."""
    from restorekit.folder_lock import MARKER_SUFFIX
    from restorekit.harness.outdir import LOCK_FILE, exclusive
    from restorekit.harness.runner import CompareUsageError

    def no_locks(fd, op):  # type: ignore[no-untyped-def]
        raise OSError(errno.ENOLCK, os.strerror(errno.ENOLCK))

    monkeypatch.setattr(fcntl, "flock", no_locks)
    out = tmp_path / "c1"
    out.mkdir()
    marker = out / (LOCK_FILE + MARKER_SUFFIX)
    marker.write_bytes(b"4242 compare\nnode7 0123abcd\n")
    with pytest.raises(CompareUsageError) as info:
        with exclusive(out):
            pytest.fail("entered a folder another host's compare holds")
    msg = str(info.value)
    assert msg.startswith(f"{out}: another compare on node7 is writing into this folder (process 4242); wait")
    assert f"this file system has no file locks: {marker} says process 4242 on node7 holds the folder" in msg
    assert msg.endswith("remove that file)") and "\n" not in msg
    assert marker.read_bytes() == b"4242 compare\nnode7 0123abcd\n"  # not ours to remove
