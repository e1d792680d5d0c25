"""An output folder that refuses new files midway (``chmod a-w``, ``chattr +i``: ``EACCES``/``EPERM``
when a file is made in it) stops a batch as a full disk does; a refusal of one file does not.
And a write the OS refuses for being too large (``EFBIG``, ``ulimit -f``) says so.

Folders are made to refuse by patching the lowest call the code makes (``os.open`` of the temp file,
``os.replace``, a file object's ``write``), so each case runs anywhere, without root.
"""

from __future__ import annotations

import errno
import json
import os
import re
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

import restorekit.harness.runner as runner
import restorekit.images as images
from restorekit.batch import process_files
from restorekit.cli import build_cli
from restorekit.errors import FileSystemError
from restorekit.images import storage_errno, storage_path
from restorekit.plugins import registry
from test_storage_failures import _items  # the same small input folder

_PNG_TEMP = re.compile(r"\..+\.png\.")  # the temp file of an output PNG (not a sweep's clock file, a lock)


def _refusing_folder(monkeypatch: pytest.MonkeyPatch, folder: Path, code: int, after: int) -> list[str]:
    """``folder`` refuses new PNG files with ``code`` once ``after`` were made there, as the system
    does for a folder made unwritable (or immutable) midway: the temp file's ``os.open`` fails, naming
    it. Returns the temp names tried there."""
    real = os.open
    tried: list[str] = []

    def in_folder(path: str, dir_fd: int | None) -> bool:
        if dir_fd is None:
            return os.path.abspath(os.path.dirname(path)) == os.path.abspath(folder)
        here, there = os.fstat(dir_fd), os.stat(folder)
        return (here.st_dev, here.st_ino) == (there.st_dev, there.st_ino)

    def open_(path, flags, mode=0o777, *, dir_fd=None):  # type: ignore[no-untyped-def]
        name = os.path.basename(os.fspath(path))
        if flags & os.O_CREAT and flags & os.O_EXCL and _PNG_TEMP.match(name) and folder.is_dir() \
                and in_folder(os.fspath(path), dir_fd):
            tried.append(name)
            if len(tried) > after:
                raise OSError(code, os.strerror(code), path)  # (a PermissionError, as the system's)
        return real(path, flags, mode, dir_fd=dir_fd)

    monkeypatch.setattr(os, "open", open_)
    return tried


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob(".*"))


# -- run: the output folder made unwritable midway ------------------------------------------------

@pytest.mark.parametrize("code", [errno.EACCES, errno.EPERM])
def test_a_batch_stops_when_its_output_folder_refuses_new_files(tmp_path, monkeypatch, code):
    """chmod a-w OUT after 2 outputs: every later input was read, restored and failed, one error line
    each (549 of them in the audit). Now the third fails and the two left are not processed."""
    items = _items(tmp_path, 5)
    out = tmp_path / "out"
    tried = _refusing_folder(monkeypatch, out, code, after=2)
    restored: list[str] = []
    said: list[str] = []

    def fn(image, item):  # type: ignore[no-untyped-def]
        restored.append(item.stem)
        return [(item.stem, image)]

    r = process_files(items, out, fn, max_pixels=10**6, quiet=True, on_error=said.append)
    assert restored == ["im0", "im1", "im2"]  # im3, im4 never read nor restored
    assert sorted({t.split(".png.")[0] for t in tried}) == [".im0", ".im1", ".im2"]  # (im2's: tried again once)
    assert [Path(p).name for p in r.written] == ["im0.png", "im1.png"]
    assert [Path(f["path"]).name for f in r.failed] == ["im2.png", "im3.png", "im4.png"]
    assert r.failed[0]["error"] == (f"{items[2].path}: cannot write {out / 'im2.png'}: {os.strerror(code)}; check "
                                    "its permissions or choose another location")
    assert all("not processed" in f["error"] for f in r.failed[1:])
    assert r.exit_code == 1
    assert len(said) == 2
    assert said[1] == (f"stopped: 2 inputs not processed, as {out} refuses new files ({os.strerror(code)}), so "
                       "every output would fail the same way; make it writable for this user (or use another "
                       "--output), then run the same command again: it goes on from there")
    assert _leftovers(out) == []


def _counted_bicubic(monkeypatch) -> list[int]:  # type: ignore[no-untyped-def]
    """bicubic's restore, counted: the batch size of each call, in the list returned."""
    cls = registry().method("bicubic")
    real_restore = cls.restore
    calls: list[int] = []

    def restore(self, lr, scale, **kw):  # type: ignore[no-untyped-def]
        calls.append(lr.shape[0])
        return real_restore(self, lr, scale, **kw)

    monkeypatch.setattr(cls, "restore", restore)
    return calls


def test_run_stops_when_its_output_folder_refuses_new_files(tmp_path, monkeypatch):
    """The command: one error line, one stop line, exit 1, and the method called for no input after."""
    src = tmp_path / "in"
    src.mkdir()
    for i in range(6):
        images.save_image(torch.full((1, 3, 16, 16), i / 10), src / f"im{i}.png")
    out = tmp_path / "out"
    calls = _counted_bicubic(monkeypatch)
    _refusing_folder(monkeypatch, out, errno.EACCES, after=2)
    r = CliRunner().invoke(build_cli(), ["run", "bicubic", "--scale", "2", "--input", str(src), "--output", str(out),
                                         "--device", "cpu", "-q", "--json"], catch_exceptions=False)
    assert r.exit_code == 1, r.output
    assert len(calls) == 3  # not 6: the 3 inputs left after the refused one were never restored
    lines = [ln for ln in r.stderr.splitlines() if ln.startswith("error:")]
    assert len(lines) == 2, r.stderr
    assert lines[0] == (f"error: {src / 'im2.png'}: cannot write {out / 'im2.png'}: Permission denied; check its "
                        "permissions or choose another location")
    assert lines[1] == (f"error: stopped: 3 inputs not processed, as {out} refuses new files (Permission denied), "
                        "so every output would fail the same way; make it writable for this user (or use another "
                        "--output), then run the same command again: it goes on from there")
    doc = json.loads(r.stdout)
    assert len(doc["written"]) == 2 and len(doc["failed"]) == 4


def test_a_refusal_of_one_file_does_not_stop_the_batch(tmp_path, monkeypatch):
    """EACCES/EPERM that is one file's — a rename refused (a sticky folder, another user's output),
    an input that cannot be read — fails that input only; a read-only output is replaced as ever."""
    items = _items(tmp_path, 4)
    out = tmp_path / "out"
    out.mkdir()
    (out / "im3.png").write_bytes(b"old")
    (out / "im3.png").chmod(0o444)  # a read-only output: replaced by the rename all the same
    real_replace = os.replace

    def replace(src, dst, **kw):  # type: ignore[no-untyped-def]
        if os.path.basename(os.fspath(dst)) == "im1.png":
            raise OSError(errno.EPERM, os.strerror(errno.EPERM), src, None, dst)
        return real_replace(src, dst, **kw)

    monkeypatch.setattr(os, "replace", replace)
    restored: list[str] = []
    said: list[str] = []

    def fn(image, item):  # type: ignore[no-untyped-def]
        restored.append(item.stem)
        if item.stem == "im0":  # (as reading a file the user may not read fails)
            raise OSError(errno.EACCES, os.strerror(errno.EACCES), str(item.path))
        return [(item.stem, image)]

    r = process_files(items, out, fn, max_pixels=10**6, quiet=True, on_error=said.append, overwrite=True)
    assert restored == ["im0", "im1", "im2", "im3"]
    assert [Path(p).name for p in r.written] == ["im2.png", "im3.png"]
    assert [Path(f["path"]).name for f in r.failed] == ["im0.png", "im1.png"]
    assert not any(s.startswith("stopped:") for s in said) and len(said) == 2
    assert images.read_image(out / "im3.png").shape == (1, 3, 8, 8)
    assert _leftovers(out) == []


def test_only_a_folder_refusing_a_new_file_counts_as_every_file_refused(tmp_path):
    tmp = tmp_path / ".x.png.4242-1a2b3c4d-5e6f7a8b.part"
    made = OSError(errno.EACCES, os.strerror(errno.EACCES), str(tmp))
    wrapped = images.fs_error(made, tmp_path / "x.png")
    wrapped.__cause__ = made
    assert storage_errno(made) == errno.EACCES and storage_errno(wrapped) == errno.EACCES
    assert storage_path(wrapped) == str(tmp_path / "x.png")  # the output's, as fs_error noted it
    ckpt = OSError(errno.EPERM, os.strerror(errno.EPERM), ".step_00000002.pt.7-1a2b3c4d-5e6f7a8b.tmp")
    assert storage_errno(ckpt) == errno.EPERM  # (relative to the folder's descriptor: the name alone)
    renamed = OSError(errno.EPERM, os.strerror(errno.EPERM), str(tmp), None, str(tmp_path / "x.png"))
    assert storage_errno(renamed) is None
    assert storage_errno(OSError(errno.EACCES, os.strerror(errno.EACCES), str(tmp_path / "in.png"))) is None
    assert storage_errno(images.fs_error(OSError(errno.EACCES, "Permission denied"), tmp_path / "x.png")) is None
    assert storage_errno(OSError(errno.EISDIR, os.strerror(errno.EISDIR), str(tmp))) is None


# -- compare ---------------------------------------------------------------------------------------

def _three_faces(tmp_path: Path) -> Path:
    data = tmp_path / "hr"
    data.mkdir()
    for i in range(3):
        images.save_image(torch.full((1, 3, 16, 16), i / 4), data / f"img{i}.png")
    return data


def _compare(data: Path, out: Path):  # type: ignore[no-untyped-def]
    return CliRunner().invoke(build_cli(), ["compare", "--methods", "bicubic", "--scale", "2", "--data", str(data),
                                            "--out", str(out), "--metrics", "psnr_rgb", "--device", "cpu", "-q"],
                              catch_exceptions=False)


def test_compare_stops_when_a_method_folder_refuses_new_files(tmp_path, monkeypatch):
    """Each image left failed with its own line (19 of them in the audit); now compare stops as on a
    full disk, in one line, and a rerun once the folder can be written goes on."""
    data, out = _three_faces(tmp_path), tmp_path / "cmp"
    (out / "outputs" / "bicubic").mkdir(parents=True)
    calls = _counted_bicubic(monkeypatch)
    with monkeypatch.context() as m:
        _refusing_folder(m, out / "outputs" / "bicubic", errno.EPERM, after=1)
        r = _compare(data, out)
    assert r.exit_code == 2, r.output
    assert r.stderr.count("\n") == 1, r.stderr
    failed = out / "outputs" / "bicubic" / "img1.png"
    assert r.stderr.startswith(f"error: cannot write {failed}: Operation not permitted; check its permissions"), \
        r.stderr
    assert "compare stopped there" in r.stderr and f"once {out} can be written goes on from there" in r.stderr
    assert len(calls) == 2  # img2 never restored
    assert not (out / "results.json").exists()
    calls.clear()
    r = _compare(data, out)
    assert r.exit_code == 0, r.output
    assert len(calls) == 2  # img0 reused
    doc = json.loads((out / "results.json").read_text())
    assert {i["image"]: i["reused"] for i in doc["images"]} == {"img0": True, "img1": False, "img2": False}


def test_compare_says_a_method_s_images_failed_for_one_reason_in_one_line(tmp_path, monkeypatch):
    """A refusal of each file (not the folder's: compare goes on) named each image's own output, so
    the images were not grouped: one line per image. The folder is said once; a lone error keeps
    its path."""
    data, out = _three_faces(tmp_path), tmp_path / "cmp"
    real = runner.atomic_write_bytes
    refused = {"img0.png", "img1.png", "img2.png"}

    def write(path, data, **kw):  # type: ignore[no-untyped-def]
        if path.name in refused and path.parent.name == "bicubic":  # (a rename of it refused, as in a sticky folder)
            tmp = f".{path.name}.4242-1a2b3c4d-5e6f7a8b.part"
            exc = OSError(errno.EPERM, os.strerror(errno.EPERM), tmp, None, path.name)
            raise images.fs_error(exc, path) from exc
        return real(path, data, **kw)

    monkeypatch.setattr(runner, "atomic_write_bytes", write)
    r = _compare(data, out)
    assert r.exit_code == 1, r.output
    lines = [ln for ln in r.stderr.splitlines() if "failed on" in ln]
    assert lines == [f"error: bicubic failed on 3 image(s) [img0, img1, img2]: cannot write each image's output in "
                     f"{out / 'outputs' / 'bicubic'}: Operation not permitted; check its permissions or choose "
                     "another location"], r.stderr
    doc = json.loads((out / "results.json").read_text())
    assert [f["error"] for f in doc["failures"]] == [
        f"cannot write {out / 'outputs' / 'bicubic' / n}: Operation not permitted; check its permissions or choose "
        "another location" for n in ("img0.png", "img1.png", "img2.png")]  # (each record keeps its own path)

    refused.clear()
    refused.add("img1.png")
    r = CliRunner().invoke(build_cli(), ["compare", "--methods", "bicubic", "--scale", "2", "--data", str(data),
                                         "--out", str(tmp_path / "cmp2"), "--metrics", "psnr_rgb", "--device", "cpu",
                                         "-q"], catch_exceptions=False)
    assert r.exit_code == 1, r.output
    assert [ln for ln in r.stderr.splitlines() if "failed on" in ln] == [
        f"error: bicubic failed on 1 image(s) [img1]: cannot write {tmp_path / 'cmp2' / 'outputs' / 'bicubic'}"
        f"{os.sep}img1.png: Operation not permitted; check its permissions or choose another location"]


# -- a file too large for the file system or the process's limit (EFBIG, ulimit -f) -----------------

def _too_large(monkeypatch: pytest.MonkeyPatch, after: int) -> None:
    """Every file written through :func:`write_via_temp` fails past ``after`` bytes as under ``ulimit -f``
    (Python ignores SIGXFSZ, so the write fails with EFBIG instead of killing the process)."""
    real = images.write_via_temp

    class Limited:
        def __init__(self, f):  # type: ignore[no-untyped-def]
            self.f, self.n = f, 0

        def write(self, data) -> int:  # type: ignore[no-untyped-def]
            if self.n + len(data) > after:
                raise OSError(errno.EFBIG, os.strerror(errno.EFBIG))
            self.n += len(data)
            return self.f.write(data)

        def flush(self) -> None:
            self.f.flush()

    def limited(path, write, **kw):  # type: ignore[no-untyped-def]
        return real(path, lambda f: write(Limited(f)), **kw)

    monkeypatch.setattr(images, "write_via_temp", limited)


def test_a_file_too_large_says_what_limits_it(tmp_path, monkeypatch):
    _too_large(monkeypatch, after=10)
    dest = tmp_path / "seed0000.png"
    with pytest.raises(FileSystemError) as info:
        images.atomic_write_bytes(dest, b"x" * 100)
    assert str(info.value) == (f"cannot write {dest}: File too large; it would be larger than the file system or "
                               "this process's file-size limit allows (`ulimit -f`): raise the limit or choose "
                               "another location")
    assert storage_errno(info.value) is None  # (a smaller file may still fit: not a stop)


def test_a_checkpoint_too_large_says_so_not_a_full_disk(tmp_path, monkeypatch):
    """torch.save raises its zip writer's RuntimeError over the file's EFBIG: the save guessed "a
    full disk?" with the free space, hiding "File too large"."""
    from restorekit.training import trainer as T

    _too_large(monkeypatch, after=1000)
    monkeypatch.setattr(T, "write_via_temp", images.write_via_temp)  # (trainer's own name of it)
    target = tmp_path / "checkpoints" / "step_00000002.pt"
    with pytest.raises(FileSystemError) as info:
        T.atomic_save({"x": torch.zeros(10_000)}, target)
    assert str(info.value) == (f"cannot write {target}: File too large; it would be larger than the file system or "
                               "this process's file-size limit allows (`ulimit -f`): raise the limit or choose "
                               "another location")
    assert info.value.errno == errno.EFBIG and "full disk" not in str(info.value)
    assert isinstance(info.value.__cause__, RuntimeError)  # torch's, kept for --debug
    assert list(target.parent.iterdir()) == []  # nothing left behind
