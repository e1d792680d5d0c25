"""Several processes at once on one output folder, and a full disk under compare's result store.

``run`` (and ``degrade``, ``generate``) into one folder from two processes at once had both
checked the folder while it was empty, then skipped each other's outputs as their own: a folder
of mixed settings, both exit 0. Now the folder is held for one run at a time. compare's result
store let a full disk's ``OSError`` out naming no file, and left a cut-off line that the next
run's first record was glued onto (and lost with it)."""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path

import pytest
from click.testing import CliRunner

import restorekit.batch as batch
import restorekit.harness.store as store_mod
from restorekit.cli import build_cli
from restorekit.errors import FileSystemError, ImageError
from restorekit.harness.store import Record, ResultStore
from restorekit.images import list_inputs, read_image
from restorekit.safe_open import open_append

fcntl = pytest.importorskip("fcntl")

LOCK = ".output.lock"


def invoke(*args: object):
    return CliRunner().invoke(build_cli(), [str(a) for a in args])


def error_lines(text: str) -> list[str]:
    return [ln for ln in text.splitlines() if ln.startswith("error:")]


def hold(folder: Path, text: str = "") -> int:
    """Take ``folder``'s output lock as another process would (its own open file): the fd."""
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    os.write(fd, text.encode())
    return fd


def command(kind: str, hr: Path, out: Path, *extra: str) -> list[str]:
    if kind == "run":
        return ["run", "bicubic", "--scale", "2", "--input", str(hr), "--output", str(out), "-q", *extra]
    return ["degrade", "--spec", "bicubic:2", "--input", str(hr), "--output", str(out), "-q", *extra]


@pytest.mark.parametrize("kind", ["run", "degrade"])
def test_a_folder_another_process_writes_into_is_refused(hr_folder, tmp_path, kind):
    out = tmp_path / "out"
    fd = hold(out, "4242 run\n")
    try:
        r = invoke(*command(kind, hr_folder, out))
    finally:
        os.close(fd)
    assert r.exit_code == 2, r.output
    assert "Usage:" not in r.output
    lines = error_lines(r.stderr)
    assert len(lines) == 1 and str(out) in lines[0] and "another restorekit run (process 4242)" in lines[0]
    assert "--output" in lines[0]
    assert [p.name for p in out.iterdir()] == [LOCK]  # nothing written
    # Once the other one has ended, the same command runs, and leaves no lock file behind.
    r = invoke(*command(kind, hr_folder, out))
    assert r.exit_code == 0, r.output
    assert sorted(p.name for p in out.iterdir()) == ["img0.png", "img1.png", "img2.png", "img3.png"]


def test_a_holder_that_wrote_nothing_is_still_refused(hr_folder, tmp_path):
    out = tmp_path / "out"
    fd = hold(out)
    try:
        r = invoke(*command("run", hr_folder, out))
    finally:
        os.close(fd)
    assert r.exit_code == 2 and "another restorekit command is writing into this folder" in r.stderr


@pytest.mark.parametrize("kind", ["run", "degrade"])
def test_a_second_run_started_mid_way_is_refused_and_mixes_nothing(hr_folder, tmp_path, monkeypatch, kind):
    """The audit's race, made deterministic: a second run (other settings) starts while the first
    writes its first output. It had been accepted (the folder held no output when it checked),
    and counted the first's files as its own skipped ones."""
    out = tmp_path / "out"
    real_save = batch.save_image
    second: list = []

    def save_then_race(image, dest, **kw):
        if not second:
            extra = ["--opt", "antialias=false"] if kind == "run" else ["--seed", "7"]
            second.append(invoke(*command(kind, hr_folder, out, "--json", *extra)))
        return real_save(image, dest, **kw)

    monkeypatch.setattr(batch, "save_image", save_then_race)
    first = invoke(*command(kind, hr_folder, out, "--json"))
    assert first.exit_code == 0, first.output
    assert len(json.loads(first.stdout)["written"]) == 4
    (r,) = second
    assert r.exit_code == 2, r.output
    lines = error_lines(r.stderr)
    assert len(lines) == 1 and f"another restorekit {kind} (process {os.getpid()})" in lines[0]
    assert not r.stdout  # no summary claiming the first run's files
    assert not (out / LOCK).exists()
    monkeypatch.undo()
    # The folder holds the first run's outputs only: a rerun of the first skips all four.
    again = invoke(*command(kind, hr_folder, out, "--json"))
    assert again.exit_code == 0 and len(json.loads(again.stdout)["skipped"]) == 4


def test_generate_started_mid_way_is_refused(tmp_path, monkeypatch):
    """Two generates at once had each read no manifest, then each rewritten it from its own images:
    generate.json listed images of the other truncation under its own."""
    pytest.importorskip("restorekit_psp_sr")
    import restorekit.commands.generate as generate_mod

    out = tmp_path / "gen"
    real_read = generate_mod._read_manifest
    second: list = []

    def args(truncation: str) -> list[str]:
        return ["generate", "--generator", "stylegan2", "--seeds", "0-1", "--output", str(out), "--device", "cpu",
                "-q", "--truncation", truncation]

    def read_then_race(path):
        found = real_read(path)
        if not second:  # the first has found no manifest: the second starts before it writes one
            second.append(invoke(*args("0.3")))
        return found

    monkeypatch.setattr(generate_mod, "_read_manifest", read_then_race)
    first = invoke(*args("0.7"))
    assert first.exit_code == 0, first.output
    (r,) = second
    assert r.exit_code == 2 and f"another restorekit generate (process {os.getpid()})" in r.stderr
    manifest = json.loads((out / "generate.json").read_text())
    assert manifest["settings"]["truncation"] == 0.7 and manifest["images"] == ["seed0000.png", "seed0001.png"]
    assert not [p for p in out.iterdir() if p.name.startswith(".")]


# -- a finished folder, read-only since ------------------------------------------------------------
def test_rerun_of_a_finished_folder_writes_nothing_so_needs_no_write_access(hr_folder, tmp_path, monkeypatch):
    """Every output exists and is skipped: the folder's write check had failed the rerun (exit 2)."""
    out = tmp_path / "out"
    assert invoke(*command("run", hr_folder, out)).exit_code == 0

    def unwritable(folder):
        raise FileSystemError(f"{folder}: output folder cannot be written (Permission denied); check its "
                              "permissions or choose another location")

    monkeypatch.setattr(batch, "check_writable", unwritable)
    r = invoke(*command("run", hr_folder, out, "--json"))
    assert r.exit_code == 0, r.output
    assert len(json.loads(r.stdout)["skipped"]) == 4
    # Something to write: the one-line error, as before.
    (out / "img2.png").unlink()
    r = invoke(*command("run", hr_folder, out))
    assert r.exit_code == 2 and error_lines(r.stderr) == [
        f"error: {out}: output folder cannot be written (Permission denied); check its permissions or choose "
        "another location"]


def test_rerun_into_a_read_only_folder(hr_folder, tmp_path):
    out = tmp_path / "out"
    assert invoke(*command("run", hr_folder, out)).exit_code == 0
    out.chmod(0o555)
    try:
        if os.access(out, os.W_OK):
            pytest.skip("file modes do not apply to this user (root)")
        r = invoke(*command("run", hr_folder, out))
        assert r.exit_code == 0, r.output
        (out.chmod(0o755), (out / "img2.png").unlink(), out.chmod(0o555))
        r = invoke(*command("run", hr_folder, out))
        assert r.exit_code == 2 and "output folder cannot be written" in r.stderr
    finally:
        out.chmod(0o755)


def test_the_lock_of_a_folder_this_process_cannot_write_to(tmp_path, monkeypatch):
    """read_only_ok: an existing lock file is locked through a read-only open; none at all, no lock."""
    from restorekit.folder_lock import held_alone

    folder = tmp_path / "f"
    folder.mkdir()
    real_open = os.open

    def no_write(path, flags, *a):
        if flags & (os.O_RDWR | os.O_WRONLY | os.O_CREAT):
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real_open(path, flags, *a)

    def busy():
        return FileSystemError("busy")

    monkeypatch.setattr(os, "open", no_write)
    with held_alone(folder, LOCK, busy, read_only_ok=True, remove=True):  # no lock file: goes on
        pass
    with pytest.raises(PermissionError):  # without read_only_ok: the error, as before
        with held_alone(folder, LOCK, busy):
            pass
    monkeypatch.undo()
    fd = hold(folder, "99 run\n")
    try:
        monkeypatch.setattr(os, "open", no_write)
        with pytest.raises(FileSystemError, match="busy"):  # locked through the read-only open
            with held_alone(folder, LOCK, busy, read_only_ok=True):
                pass
    finally:
        os.close(fd)
    with held_alone(folder, LOCK, busy, read_only_ok=True, remove=True):
        pass
    assert (folder / LOCK).exists()  # not this process's to remove


# -- compare's result store on a full disk -----------------------------------------------------------
def rec(image: str) -> Record:
    return Record(method="m", image=image, seed=None, settings="s", input="i", status="ok", ms=1.0,
                  metrics={"psnr": 30.0})


def appending_to(full):
    """``open_append`` for the store's module: its appends go to a ``full(file)``."""
    def fake_open_append(p, *a, **kw):
        return full(open_append(p, *a, **kw))

    return fake_open_append


def test_a_full_disk_names_the_file_and_leaves_no_cut_off_line(tmp_path, monkeypatch):
    store = ResultStore(tmp_path)
    store.append(rec("a"))
    store.append(rec("b"))
    store.close()
    path = store.path("m")

    class Full:
        """A file on a disk that fills up half-way through the next write."""

        def __init__(self, f):
            self.f = f

        def write(self, data):
            b = data.encode() if isinstance(data, str) else bytes(data)
            self.f.write(b[:len(b) // 2])
            self.f.flush()
            raise OSError(errno.ENOSPC, "No space left on device")

        def __getattr__(self, name):
            return getattr(self.f, name)

    monkeypatch.setattr(store_mod, "open_append", appending_to(Full))
    full = ResultStore(tmp_path)
    with pytest.raises(FileSystemError) as caught:
        full.append(rec("c"))
    assert str(caught.value) == (f"cannot write {path}: No space left on device; free some disk space or choose "
                                 "another location")
    assert path.read_bytes().endswith(b"\n")  # cut back: no half record
    monkeypatch.undo()
    later = ResultStore(tmp_path)
    later.append(rec("d"))
    later.close()
    assert sorted(k[1] for k in ResultStore(tmp_path).load("m")) == ["a", "b", "d"]


def test_a_torn_last_line_is_not_glued_onto_the_next_record(tmp_path):
    store = ResultStore(tmp_path)
    store.append(rec("a"))
    store.append(rec("b"))
    store.close()
    path = store.path("m")
    whole = path.read_bytes()
    path.write_bytes(whole + whole[:len(whole) // 3])  # a crash mid-line (or a cut that could not be undone)
    again = ResultStore(tmp_path)
    again.append(rec("c"))
    again.append(rec("d"))
    again.close()
    assert sorted(k[1] for k in ResultStore(tmp_path).load("m")) == ["a", "b", "c", "d"]


def test_a_cut_that_cannot_be_undone_still_leaves_the_next_record_whole(tmp_path, monkeypatch):
    store = ResultStore(tmp_path)
    store.append(rec("a"))

    class Full:
        def __init__(self, f):
            self.f = f

        def write(self, data):
            self.f.write(bytes(data)[:10])
            raise OSError(errno.ENOSPC, "No space left on device")

        def __getattr__(self, name):
            return getattr(self.f, name)

    store.close()
    monkeypatch.setattr(store_mod, "open_append", appending_to(Full))

    def no_truncate(fd, size):
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(os, "ftruncate", no_truncate)
    with pytest.raises(FileSystemError):
        store.append(rec("b"))
    monkeypatch.undo()
    store.append(rec("c"))
    store.close()
    assert sorted(k[1] for k in ResultStore(tmp_path).load("m")) == ["a", "c"]


def test_an_append_that_cannot_open_its_file_names_it(tmp_path):
    store = ResultStore(tmp_path)
    store.path("m").mkdir()  # a folder where the file goes
    with pytest.raises(FileSystemError, match=f"cannot write {store.path('m')}: "):
        store.append(rec("a"))


# -- a glob in a folder that cannot be listed ------------------------------------------------------
def test_a_glob_in_a_folder_that_cannot_be_listed_says_so(tmp_path, monkeypatch):
    folder = tmp_path / "nolist"
    folder.mkdir()
    (folder / "a.png").write_bytes(b"x")
    real_scandir = os.scandir

    def refuse(path="."):
        if Path(path) == folder:
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", refuse)
    with pytest.raises(ImageError) as caught:
        list_inputs(str(folder / "*.png"))
    assert str(caught.value) == f"cannot list {folder}: Permission denied; check its permissions or choose another " \
                                "location"
    with pytest.raises(ImageError, match="the pattern matches no file"):  # a folder that is not there: as before
        list_inputs(str(tmp_path / "absent" / "*.png"))
    monkeypatch.undo()
    assert [i.path.name for i in list_inputs(str(folder / "*.png"))] == ["a.png"]
    with pytest.raises(ImageError, match="the pattern matches no file"):
        list_inputs(str(folder / "*.jpg"))


def test_outputs_are_images_of_the_run_that_holds_the_folder(hr_folder, tmp_path):
    """A plain run still writes every output (the lock changes nothing when alone)."""
    out = tmp_path / "out"
    r = invoke(*command("run", hr_folder, out, "--json"))
    assert r.exit_code == 0
    assert read_image(out / "img0.png").shape[-1] == 128


# -- the lock's edges ----------------------------------------------------------------------------------
def test_a_read_only_lock_on_a_file_removed_meanwhile_is_taken_again(tmp_path, monkeypatch):
    """A process that can only read the lock file locks it; if its holder removed it meanwhile and
    a third process holds a new one, the lock on the removed file is no lock: it is refused."""
    from restorekit.folder_lock import held_alone

    folder = tmp_path / "f"
    folder.mkdir()
    (folder / LOCK).write_text("")
    real_open, real_flock = os.open, fcntl.flock
    other: list[int] = []

    def no_write(path, flags, *a):
        if flags & (os.O_RDWR | os.O_WRONLY | os.O_CREAT):
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real_open(path, flags, *a)

    def flock(fd, op):
        if not other:  # the holder ends (its file goes) and a third process takes a fresh one
            os.unlink(folder / LOCK)
            other.append(real_open(folder / LOCK, os.O_RDWR | os.O_CREAT, 0o644))
            real_flock(other[0], fcntl.LOCK_EX | fcntl.LOCK_NB)
        return real_flock(fd, op)

    monkeypatch.setattr(os, "open", no_write)
    monkeypatch.setattr(fcntl, "flock", flock)
    try:
        with pytest.raises(FileSystemError, match="busy"):
            with held_alone(folder, LOCK, lambda: FileSystemError("busy"), read_only_ok=True, remove=True):
                pass
    finally:
        os.close(other[0])


def test_a_file_system_without_locks_holds_the_folder_by_a_marker_file(tmp_path, monkeypatch):
    """Where ``flock`` says the file system has no locks (NFS without its lock service), the command
    still runs, the folder held by a marker file made beside the lock file and removed at the end."""
    from restorekit.folder_lock import MARKER_SUFFIX, held_alone

    def no_locks(fd, op):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", no_locks)
    marker = tmp_path / "f" / (LOCK + MARKER_SUFFIX)
    ran = []
    with held_alone(tmp_path / "f", LOCK, lambda: FileSystemError("busy"), remove=True):
        ran.append(marker.is_file())
    assert ran == [True] and not marker.exists()


def test_an_odd_lock_file_names_no_holder(tmp_path):
    from restorekit.folder_lock import holder

    (tmp_path / LOCK).write_text("\u00b2 run\n", encoding="utf-8")
    assert holder(tmp_path, LOCK) is None
    (tmp_path / LOCK).write_text("123 degrade\n", encoding="utf-8")
    assert holder(tmp_path, LOCK) == (123, "degrade")


def test_a_run_stopped_before_its_work_leaves_no_folders_it_made(hr_folder, tmp_path, monkeypatch):
    import restorekit.commands.run as run_module
    from restorekit.errors import RestorekitError

    def no_method(*a, **kw):
        raise RestorekitError("bicubic: cannot be built here")

    monkeypatch.setattr(run_module, "build_method", no_method)
    out = tmp_path / "new" / "a" / "b"
    r = invoke(*command("run", hr_folder, out))
    assert r.exit_code == 2 and "cannot be built here" in r.output, r.output
    assert not (tmp_path / "new").exists()


def test_a_run_whose_every_input_failed_keeps_the_folder_its_summary_names(tmp_path):
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "x.png").write_bytes(b"not an image")
    out = tmp_path / "new" / "out"
    r = invoke("run", "bicubic", "--scale", "2", "--input", bad, "--output", out)
    assert r.exit_code == 1 and f"1 failed → {out}" in r.output, r.output
    assert out.is_dir() and list(out.iterdir()) == []


def test_a_lock_file_that_is_a_symbolic_link_is_not_followed(hr_folder, tmp_path):
    """In a folder others can write to, a link named like the lock file could point at any file of
    the user's: it is refused in one line, and the file it points at stays as it was."""
    victim = tmp_path / "precious.txt"
    victim.write_text("keep me\n")
    out = tmp_path / "shared"
    out.mkdir()
    (out / LOCK).symlink_to(victim)
    r = invoke(*command("run", hr_folder, out))
    assert r.exit_code == 2 and "symbolic link" in r.output and len(error_lines(r.output)) == 1, r.output
    assert victim.read_text() == "keep me\n"


def test_a_hard_linked_lock_file_is_locked_but_not_written(hr_folder, tmp_path):
    victim = tmp_path / "precious.txt"
    victim.write_text("keep me\n")
    out = tmp_path / "shared"
    out.mkdir()
    os.link(victim, out / LOCK)
    r = invoke(*command("run", hr_folder, out))
    assert r.exit_code == 0, r.output
    assert victim.read_text() == "keep me\n"
