"""A weights cache that other users may write to (``RESTOREKIT_HOME`` on a group folder).

Whoever can write it can plant a symbolic link, a hard link or a FIFO where a pull or import is
about to write: the download's ``.part``, an import's temporary copy, a converted package member's
temporary file, the spec's lock file, or the spec's folder itself. None of them is followed: the
victim's files stay as they were, the cache ends up holding a regular file, and what cannot be
done is refused in one line naming the path. No root needed: the links are planted here.
"""

from __future__ import annotations

import os
import zipfile
from pathlib import Path
from typing import Any

import pytest

from restorekit import weights as W
from restorekit.errors import CacheError
from restorekit.weights import cache
from restorekit.weights.download import part_path
from test_weights import (Files, ckpt_bytes, home, package_spec, sdist, server, sha, spec_for,  # noqa: F401
                          specs)

pytestmark = pytest.mark.skipif(not hasattr(os, "O_NOFOLLOW") or os.name == "nt",
                                reason="needs O_NOFOLLOW and POSIX links")

SECRET = b"IMPORTANT USER DATA\n" * 3


def _victim(tmp_path: Path) -> Path:
    victim = tmp_path / "victim_file"
    victim.write_bytes(SECRET)
    return victim


def _plant(how: str, at: Path, victim: Path) -> None:
    at.parent.mkdir(parents=True, exist_ok=True)
    if how == "symlink":
        at.symlink_to(victim)
    else:
        os.link(victim, at)


def _one_line(err: BaseException, path: Path) -> str:
    msg = str(err)
    assert "\n" not in msg and str(path) in msg, msg
    return msg


# --- the download's .part ------------------------------------------------------------------------


@pytest.mark.parametrize("how", ["symlink", "hardlink"])
def test_a_planted_part_is_removed_not_written_through(how: str, server: tuple[str, Files],
                                                       specs: dict[str, W.WeightSpec], tmp_path: Path) -> None:
    base, files = server
    blob = ckpt_bytes(3, 2000)
    files.content["/toy.pt"] = blob
    specs["toy"] = spec_for("toy", "toy.pt", data=blob, urls=(f"{base}/toy.pt",))
    victim = _victim(tmp_path)
    dest = W.weights_dir("toy") / "toy.pt"
    _plant(how, part_path(dest), victim)
    (path,) = W.pull("toy", quiet=True, retries=0)
    assert victim.read_bytes() == SECRET  # neither overwritten nor appended to
    assert path == dest and not dest.is_symlink() and dest.read_bytes() == blob
    assert dest.stat().st_ino != victim.stat().st_ino and not part_path(dest).exists()
    assert [rng for _, rng, _ in files.log] == [None]  # the planted bytes were not resumed from


def test_a_real_part_is_still_resumed(server: tuple[str, Files], specs: dict[str, W.WeightSpec]) -> None:
    base, files = server
    blob = ckpt_bytes(4, 3000)
    files.content["/toy.pt"] = blob
    specs["toy"] = spec_for("toy", "toy.pt", data=blob, urls=(f"{base}/toy.pt",))
    part = part_path(W.weights_dir("toy") / "toy.pt")
    part.parent.mkdir(parents=True)
    part.write_bytes(blob[:1000])
    (path,) = W.pull("toy", quiet=True, retries=0)
    assert path.read_bytes() == blob and [rng for _, rng, _ in files.log] == ["bytes=1000-"]


def test_only_the_file_written_is_moved_into_place(tmp_path: Path) -> None:
    """A file swapped (for a link to any file) after it was written and checked is not moved."""
    victim = _victim(tmp_path)
    tmp, dest = tmp_path / ".w.part", tmp_path / "w.bin"
    tmp.write_bytes(b"checked")
    written = os.stat(tmp)
    os.rename(tmp, tmp_path / "stolen")
    tmp.symlink_to(victim)
    with pytest.raises(CacheError) as err:
        cache.move_into_place(tmp, dest, written)
    assert "something else was put in its place" in _one_line(err.value, tmp)
    assert not dest.exists() and not dest.is_symlink()


# --- an import's temporary copy -------------------------------------------------------------------


@pytest.mark.parametrize("how", ["file", "folder", "zip"])
def test_an_import_never_writes_through_a_planted_temp_name(how: str, tmp_path: Path,
                                                           specs: dict[str, W.WeightSpec]) -> None:
    blob = ckpt_bytes(5)
    src_dir = tmp_path / "src"
    src_dir.mkdir()
    src = src_dir / "n.pt"
    src.write_bytes(blob)
    specs["toy"] = spec_for("toy", "n.pt", data=blob)
    victim = _victim(tmp_path)
    folder = W.weights_dir("toy")
    planted = folder / f".n.pt.import-{os.getpid()}"  # the name this process's import used to write
    _plant("symlink", planted, victim)
    if how == "file":
        W.import_file("toy", src)
    elif how == "folder":
        W.import_archive("toy", src_dir)
    else:
        with zipfile.ZipFile(tmp_path / "pack.zip", "w") as zf:
            zf.write(src, "pack/n.pt")
        W.import_archive("toy", tmp_path / "pack.zip")
    dest = folder / "n.pt"
    assert victim.read_bytes() == SECRET
    assert not dest.is_symlink() and dest.read_bytes() == blob and W.verify("toy") == []
    # (this process's own temp name is not removed as stray while it runs; nothing was written to it)
    assert sorted(p.name for p in folder.iterdir()) == sorted([planted.name, "manifest.json", "n.pt"])


def test_temps_have_random_names_and_a_killed_imports_leftover_is_still_found(
        tmp_path: Path, specs: dict[str, W.WeightSpec], monkeypatch: pytest.MonkeyPatch) -> None:
    a, b = cache.import_temp(tmp_path, "n.pt"), cache.import_temp(tmp_path, "n.pt")
    assert a != b and a.name.startswith(f".n.pt.import-{os.getpid()}-")
    blob = ckpt_bytes(6)
    src = tmp_path / "n.pt"
    src.write_bytes(blob)
    specs["toy"] = spec_for("toy", "n.pt", data=blob)
    folder = W.weights_dir("toy")
    folder.mkdir(parents=True)
    dead = 0x7FFFFFF0
    monkeypatch.setattr(cache, "pid_alive", lambda pid: pid == os.getpid())
    left = folder / f".n.pt.import-{dead}-0123456789ab"  # a killed import's partial copy
    left.write_bytes(blob[:10])
    mine = cache.import_temp(folder, "n.pt")  # one this process is writing now
    mine.write_bytes(b"")
    assert cache.stray_imports("toy") == [(left, dead)]
    W.import_file("toy", src)  # removes the leftover under the lock, keeps its own process's
    assert not left.exists() and mine.exists()


def test_a_converted_package_member_never_writes_through_a_planted_temp_name(
        sdist: tuple[Path, bytes, list[dict[str, Any]]], specs: dict[str, W.WeightSpec], tmp_path: Path) -> None:
    archive, member, _ = sdist
    specs["tiny"] = package_spec(sha(member), sha(archive.read_bytes()))
    victim = _victim(tmp_path)
    folder = W.weights_dir("tiny")
    _plant("symlink", folder / f".tiny.safetensors.tmp-{os.getpid()}", victim)
    (path,) = W.pull("tiny", quiet=True)
    assert victim.read_bytes() == SECRET
    assert not path.is_symlink() and W.verify("tiny") == []


# --- the lock file and the spec's folder -----------------------------------------------------------


@pytest.mark.parametrize("what", ["symlink", "fifo"])
def test_a_planted_lock_file_is_refused_in_one_line(what: str, tmp_path: Path, home: Path) -> None:
    lock = home / "weights" / ".toy.lock"
    lock.parent.mkdir(parents=True)
    target = tmp_path / "created_by_victim"
    if what == "symlink":
        lock.symlink_to(target)  # dangling: the victim would create the file it names
    else:
        os.mkfifo(lock)
    with pytest.raises(CacheError) as err:
        with cache.locked("toy"):
            pytest.fail("locked through a planted lock file")
    msg = _one_line(err.value, lock)
    assert ("symbolic link" in msg) if what == "symlink" else ("not a regular file" in msg)
    assert not target.exists()


@pytest.mark.parametrize("how", ["import", "pull"])
def test_a_spec_folder_that_is_a_symlink_is_refused_not_written_through(
        how: str, tmp_path: Path, server: tuple[str, Files], specs: dict[str, W.WeightSpec]) -> None:
    base, files = server
    blob = ckpt_bytes(7)
    files.content["/n.pt"] = blob
    src = tmp_path / "n.pt"
    src.write_bytes(blob)
    specs["toy"] = spec_for("toy", "n.pt", data=blob, urls=(f"{base}/n.pt",))
    elsewhere = tmp_path / "victim_dir"
    elsewhere.mkdir()
    (elsewhere / "keep.txt").write_bytes(SECRET)
    folder = W.weights_dir("toy")
    folder.parent.mkdir(parents=True)
    folder.symlink_to(elsewhere)
    with pytest.raises(CacheError) as err:
        if how == "import":
            W.import_file("toy", src)
        else:
            W.pull("toy", quiet=True, retries=0)
    assert "a symbolic link stands where a cache folder is needed" in _one_line(err.value, folder)
    assert sorted(p.name for p in elsewhere.iterdir()) == ["keep.txt"] and files.log == []
