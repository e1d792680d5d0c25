"""Files restorekit writes in folders other local users may write to (a shared ``--out`` or
``--output``, a lab's group folder), and the state files it reads back from them.

Whoever can write such a folder can plant a symbolic link, a hard link or a FIFO where a file is
about to be written, or swap a temporary file for a link mid-write. compare's result store
appended through a link at ``results/<method>.jsonl`` (a shell start-up file, say, which then ran
the commands in an image's name); a chmod by name after writing made any file of the user's
world-readable; a FIFO named like the output lock hung ``run``; a file name with a line break
printed a line of its own making under ``error:``; a crafted result line ended compare with
"unexpected TypeError". Each is refused or skipped now, in one line naming the path."""

from __future__ import annotations

import errno
import json
import os
import stat
import threading
from pathlib import Path

import pytest
from click.testing import CliRunner

import restorekit.images as images
from restorekit.cli import build_cli, shown
from restorekit.errors import FileSystemError
from restorekit.harness.store import Record, ResultStore

if not getattr(os, "O_NOFOLLOW", 0) or not hasattr(os, "mkfifo"):
    pytest.skip("needs O_NOFOLLOW and FIFOs (POSIX)", allow_module_level=True)

LOCK = ".output.lock"
VICTIM_TEXT = "export PATH=/usr/bin\n"


def invoke(*args: object):
    return CliRunner().invoke(build_cli(), [str(a) for a in args])


def rec(image: str, **kw: object) -> Record:
    return Record(method="m", image=image, seed=None, settings="s", input="i", status="ok", ms=1.0,
                  metrics={"psnr": 30.0}, **kw)


@pytest.fixture
def victim(tmp_path: Path) -> Path:
    p = tmp_path / "victim_bashrc"
    p.write_text(VICTIM_TEXT)
    p.chmod(0o600)
    return p


@pytest.fixture
def umask022():
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


def finishes(fn, timeout: float = 10.0, unblock: Path | None = None):
    """``fn()``'s result (or exception) when it returns within ``timeout``; else the test fails —
    after writing to the FIFO ``unblock`` so that the thread stuck on it ends."""
    box: dict[str, object] = {}

    def body() -> None:
        try:
            box["value"] = fn()
        except BaseException as exc:  # noqa: BLE001 (handed back to the test)
            box["error"] = exc

    t = threading.Thread(target=body, daemon=True)
    t.start()
    t.join(timeout)
    if t.is_alive():
        if unblock is not None:
            fd = os.open(unblock, os.O_RDWR | os.O_NONBLOCK)  # (a reader and a writer, on Linux)
            os.close(fd)
            t.join(5)
        pytest.fail(f"{fn} hung (blocked on a FIFO)")
    if "error" in box:
        raise box["error"]  # type: ignore[misc]
    return box.get("value")


# -- #1: compare's result store ---------------------------------------------------------------------
@pytest.mark.parametrize("part", [None, "rank1"])
def test_the_result_store_does_not_append_through_a_planted_symbolic_link(tmp_path, victim, part):
    store = ResultStore(tmp_path / "out", part=part)
    path = store._append_path("m")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.symlink_to(victim)
    with pytest.raises(FileSystemError) as caught:
        store.append(rec("a$(touch PWNED)"))
    msg = str(caught.value)
    assert msg.startswith(f"cannot write {path}: a symbolic link") and "\n" not in msg, msg
    assert victim.read_text() == VICTIM_TEXT and path.is_symlink()
    store.close()


def test_the_result_store_does_not_append_to_a_hard_linked_file(tmp_path, victim):
    store = ResultStore(tmp_path / "out")
    os.link(victim, store.path("m"))
    with pytest.raises(FileSystemError, match="hard link"):
        store.append(rec("a"))
    assert victim.read_text() == VICTIM_TEXT


def test_the_result_store_does_not_hang_on_a_planted_fifo(tmp_path):
    store = ResultStore(tmp_path / "out")
    os.mkfifo(store.path("m"))
    with pytest.raises(FileSystemError, match="not a regular file"):
        finishes(lambda: store.append(rec("a")), unblock=store.path("m"))


@pytest.mark.parametrize("linked", ["results", "results/parts", "results/parts/m"])
def test_the_result_store_does_not_write_into_a_symlinked_folder(tmp_path, linked, monkeypatch):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    out = tmp_path / "out"
    (out / linked).parent.mkdir(parents=True, exist_ok=True)
    (out / linked).symlink_to(elsewhere, target_is_directory=True)
    uid = os.geteuid()
    monkeypatch.setattr(os, "geteuid", lambda: uid + 1)  # planted by another user (the user's own is followed)
    store = ResultStore(out, part="rank0")
    with pytest.raises(FileSystemError, match="is a symbolic link; restorekit does not write through links"):
        store.append(rec("a"))
    assert list(elsewhere.rglob("*.jsonl")) == []


def test_the_result_store_reads_no_planted_link_or_fifo(tmp_path, victim):
    """A link to a file of the user's at the result (or meta) file would have its records (or its
    JSON) taken in and written back out into --out; a FIFO would hang the resume."""
    store = ResultStore(tmp_path / "out")
    secret = tmp_path / "secret.json"
    secret.write_text('{"token": "s3cret"}')
    store.meta_path("m").symlink_to(secret)
    with pytest.raises(FileSystemError, match="a symbolic link stands where restorekit keeps its result file"):
        store.save_meta("m", "s", {"device": "cpu"})
    assert store.meta_path("m").is_symlink() and "s3cret" not in "".join(
        p.read_text() for p in store.folder.iterdir() if not p.is_symlink())
    store.path("m").symlink_to(victim)
    with pytest.raises(FileSystemError, match=f"cannot read {store.path('m')}: a symbolic link"):
        store.load("m")
    store.path("m").unlink()
    os.mkfifo(store.path("m"))
    with pytest.raises(FileSystemError, match="not a regular file"):
        finishes(lambda: store.load("m"), unblock=store.path("m"))


def test_a_torn_line_is_still_ended_through_the_open_file(tmp_path):
    """The check for a cut-off last line reads the file just opened, not the name again."""
    store = ResultStore(tmp_path)
    store.append(rec("a"))
    store.close()
    path = store.path("m")
    path.write_bytes(path.read_bytes() + b'{"method": "m", "ima')
    again = ResultStore(tmp_path)
    again.append(rec("b"))
    again.close()
    assert sorted(k[1] for k in ResultStore(tmp_path).load("m")) == ["a", "b"]


def test_compare_refuses_a_planted_result_file_link_in_one_line(hr_folder, tmp_path, victim):
    """The audit's end-to-end case: a link at OUT/results/<method>.jsonl and an image whose name
    holds a command; the record (and the command) never reach the linked file."""
    data = tmp_path / "data"
    data.mkdir()
    (hr_folder / "img0.png").rename(data / "face $(touch PWNED).png")
    out = tmp_path / "out"
    (out / "results").mkdir(parents=True)
    (out / "results" / "bicubic.jsonl").symlink_to(victim)
    r = invoke("compare", "--methods", "bicubic", "--scale", "4", "--data", data, "--out", out,
               "--metrics", "psnr_rgb", "--device", "cpu")
    assert victim.read_text() == VICTIM_TEXT, r.output
    assert r.exit_code != 0 and "symbolic link" in r.output and "unexpected" not in r.output, r.output


# -- #10: crafted result lines ----------------------------------------------------------------------
GOOD = {"method": "m", "image": "good", "seed": 0, "settings": "s", "input": "i", "status": "ok"}


@pytest.mark.parametrize("bad", [
    {**GOOD, "image": "a", "seed": [1]},
    {**GOOD, "image": "a", "seed": {"x": 1}},
    {**GOOD, "image": "a", "seed": 10 ** 400},
    {**GOOD, "image": "a", "metrics": [1]},
    {**GOOD, "image": "a", "metrics": {"psnr": 10 ** 400}},
    {**GOOD, "image": "a", "metrics": {"psnr": "x"}},
    {**GOOD, "image": "a", "metrics": {"psnr": [1]}},
    {**GOOD, "image": "a", "metric_errors": 5},
    {**GOOD, "image": "a", "metric_versions": [1, 2]},
    {**GOOD, "image": "a", "report": [1]},
    {**GOOD, "image": "a", "ms": 10 ** 400},
    {**GOOD, "image": "a", "peak_mem_mb": "lots"},
    {**GOOD, "image": ["a"]},
    {**GOOD, "image": "a", "output": 5},
    [1, 2],
    "just a string",
], ids=lambda b: json.dumps(b)[:60])
def test_a_crafted_result_line_is_skipped_like_a_cut_off_one(tmp_path, bad):
    store = ResultStore(tmp_path)
    store.path("m").write_text(json.dumps(GOOD) + "\n" + json.dumps(bad) + "\n")
    loaded = store.load("m")
    assert [k[1] for k in loaded] == ["good"]
    assert loaded[("m", "good", 0, "s", "i")].metrics == {}


def test_a_line_nested_too_deep_for_the_json_reader_is_skipped(tmp_path):
    store = ResultStore(tmp_path)
    store.path("m").write_text(json.dumps(GOOD) + "\n" + "[" * 100000 + "\n")
    assert [k[1] for k in store.load("m")] == ["good"]


def test_stored_numbers_read_back_as_written(tmp_path):
    store = ResultStore(tmp_path)
    store.append(rec("a", peak_mem_mb=12.5))
    store.append(Record(method="m", image="b", seed=7, settings="s", input="i", status="failed", error="boom",
                        metrics={"psnr": float("inf"), "ssim": float("nan"), "lpips": 3}))
    store.close()
    got = ResultStore(tmp_path).load("m")
    a, b = got[("m", "a", None, "s", "i")], got[("m", "b", 7, "s", "i")]
    assert a.ms == 1.0 and a.peak_mem_mb == 12.5 and a.metrics == {"psnr": 30.0}
    assert b.metrics["psnr"] == float("inf") and b.metrics["ssim"] != b.metrics["ssim"] and b.metrics["lpips"] == 3
    assert b.error == "boom" and b.status == "failed"


# -- #4: the mode of a written file is set on its open file, not by name ---------------------------
def test_atomic_write_sets_the_mode_on_the_open_file_not_by_name(tmp_path, victim, monkeypatch, umask022):
    """Someone who can write the folder renames the temporary file away once written and leaves
    a link to a file of the user's in its place: a chmod by name then made that file 0644."""
    real_fdopen = os.fdopen
    swapped: list[str] = []

    class Swapped:
        def __init__(self, f):
            self.f = f

        def __enter__(self):
            return self.f.__enter__()

        def __exit__(self, *exc):
            res = self.f.__exit__(*exc)
            tmp = next(p for p in tmp_path.iterdir() if p.name.endswith(".part"))
            os.rename(tmp, tmp_path / "stolen")
            os.symlink(victim, tmp)
            swapped.append(tmp.name)
            return res

    monkeypatch.setattr(images.os, "fdopen", lambda fd, *a, **kw: Swapped(real_fdopen(fd, *a, **kw)))
    out = tmp_path / "out.png"
    with pytest.raises(FileSystemError, match="was replaced by something else while being written") as caught:
        images.atomic_write_bytes(out, b"data")
    assert swapped and str(caught.value).startswith(f"{out}: its temporary file ")
    assert stat.S_IMODE(victim.stat().st_mode) == 0o600
    assert victim.read_text() == VICTIM_TEXT
    assert not out.exists() and not out.is_symlink()  # the planted link is not moved into place
    assert stat.S_IMODE((tmp_path / "stolen").stat().st_mode) == 0o644  # (the mode went to our own file)


def test_atomic_write_still_gives_the_usual_permissions(tmp_path, umask022):
    images.atomic_write_bytes(tmp_path / "out.png", b"data")
    assert stat.S_IMODE((tmp_path / "out.png").stat().st_mode) == 0o644


def test_onnx_export_sets_the_mode_on_the_open_file_not_by_name(tmp_path, victim, monkeypatch, umask022):
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    import torch
    from torch import nn

    from restorekit import onnx_export

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = nn.Conv2d(3, 3, 3, padding=1)

        def forward(self, x):
            return torch.sigmoid(self.a(x))

    real_new_temp = images._new_temp
    swapped: list[Path] = []

    def new_temp_then_swap(folder, name, suffix):  # the graph's temp file, made: swapped before its mode is set
        fd, tmp = real_new_temp(folder, name, suffix)
        p = folder.path / tmp
        # (the graph is staged under a hidden name beside m.onnx before the pair is put in place)
        if name.startswith(".m.onnx.") and not name.startswith(".m.onnx.json") and not swapped:
            os.rename(p, tmp_path / "stolen.onnx")
            os.symlink(victim, p)
            swapped.append(p)
        return fd, tmp

    monkeypatch.setattr(images, "_new_temp", new_temp_then_swap)
    spec = onnx_export.ExportSpec(Net().eval(), torch.full((1, 3, 8, 8), 0.5), metadata={"method": "tiny"})
    try:
        onnx_export.export_onnx(spec, tmp_path / "m.onnx", overwrite=True)
    except Exception:  # noqa: BLE001 (what happens to the export itself is not the point here)
        pass
    assert swapped
    assert stat.S_IMODE(victim.stat().st_mode) == 0o600 and victim.read_text() == VICTIM_TEXT
    monkeypatch.undo()
    res = onnx_export.export_onnx(spec, tmp_path / "n.onnx")  # and the usual permissions, both files
    assert stat.S_IMODE(res.path.stat().st_mode) == stat.S_IMODE(res.sidecar.stat().st_mode) == 0o644


# -- #6: a FIFO named like the output lock ----------------------------------------------------------
def no_write_opens(monkeypatch):
    """This process cannot write the folder (another user's, 0755): read-only opens only."""
    real_open = os.open

    def no_write(path, flags, *a, **kw):
        if flags & (os.O_RDWR | os.O_WRONLY | os.O_CREAT):
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real_open(path, flags, *a, **kw)

    monkeypatch.setattr(os, "open", no_write)


@pytest.mark.parametrize("writable", [True, False])
def test_a_fifo_lock_file_is_refused_not_waited_on(tmp_path, monkeypatch, writable):
    from restorekit.folder_lock import held_alone

    folder = tmp_path / "shared"
    folder.mkdir()
    os.mkfifo(folder / LOCK)
    if not writable:
        no_write_opens(monkeypatch)

    def take():
        with held_alone(folder, LOCK, lambda: FileSystemError("busy"), read_only_ok=True, remove=True):
            pass

    with pytest.raises(OSError, match="not a regular file"):
        finishes(take, unblock=folder / LOCK)


def test_run_refuses_a_fifo_lock_file_in_one_line(hr_folder, tmp_path):
    out = tmp_path / "shared"
    out.mkdir()
    os.mkfifo(out / LOCK)
    r = finishes(lambda: invoke("run", "bicubic", "--scale", "2", "--input", hr_folder, "--output", out, "-q"),
                 unblock=out / LOCK)
    errors = [ln for ln in r.output.splitlines() if ln.startswith("error:")]
    assert r.exit_code == 2 and len(errors) == 1 and "not a regular file" in errors[0], r.output


def test_the_holder_of_a_lock_is_read_without_waiting_or_crashing(tmp_path):
    from restorekit.folder_lock import holder

    os.mkfifo(tmp_path / LOCK)
    assert finishes(lambda: holder(tmp_path, LOCK), unblock=tmp_path / LOCK) is None
    os.unlink(tmp_path / LOCK)
    (tmp_path / LOCK).write_text("9" * 5000 + " run\n")  # more digits than int() takes
    assert holder(tmp_path, LOCK) is None
    (tmp_path / LOCK).write_text("123 degrade\n")
    assert holder(tmp_path, LOCK) == (123, "degrade")


def test_a_lock_holder_with_a_huge_process_id_is_still_a_refusal(hr_folder, tmp_path):
    fcntl = pytest.importorskip("fcntl")
    out = tmp_path / "shared"
    out.mkdir()
    fd = os.open(out / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.write(fd, b"9" * 5000 + b" run\n")
        r = invoke("run", "bicubic", "--scale", "2", "--input", hr_folder, "--output", out, "-q")
    finally:
        os.close(fd)
    assert r.exit_code == 2 and "another restorekit command is writing" in r.output, r.output
    assert "unexpected" not in r.output


# -- #9: line breaks in names shown in one-line errors ----------------------------------------------
def test_shown_escapes_line_breaks():
    assert shown("x\nnote: all inputs verified OK\r\x1b[31m.png") == \
        "x\\nnote: all inputs verified OK\\r\\x1b[31m.png"
    assert shown("faces/café 01.png") == "faces/café 01.png"


def test_a_file_name_with_a_line_break_forges_no_line(tmp_path):
    data = tmp_path / "in"
    data.mkdir()
    (data / "x\nnote: all inputs verified OK.png").write_bytes(b"not an image")
    r = invoke("run", "bicubic", "--scale", "2", "--input", data, "--output", tmp_path / "out", "-q")
    assert r.exit_code == 1, r.output
    assert not any(ln.startswith("note: all inputs verified OK") for ln in r.output.splitlines()), r.output
    assert "x\\nnote: all inputs verified OK.png" in r.output, r.output
