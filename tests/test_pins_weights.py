"""Pins for cache-integrity checks that the mutation audit found unguarded: each check must
refuse on its own, with the file's mtime unchanged (so no full re-hash hides a missing check)."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

import pytest

from restorekit import weights as W
from restorekit.errors import IntegrityError, UnsafeFileError
from restorekit.weights import cache
from test_weights import ckpt_bytes, home, spec_for, specs  # noqa: F401 (fixtures)


def _rewrite_record(name: str, filename: str, **changes: Any) -> None:
    """Change fields of a manifest record, leaving the cached file (and its mtime) alone."""
    folder = W.weights_dir(name)
    recs = cache.read_manifest(folder)
    recs[filename] = dataclasses.replace(recs[filename], **changes)
    cache.write_manifest(folder, name, recs)


def _trusted_unpinned(tmp_path: Path, specs: dict[str, W.WeightSpec], seed: int) -> tuple[bytes, Path]:
    """A 100-byte checkpoint imported with --trust under the unpinned spec 'nohash' (n.pt)."""
    data = ckpt_bytes(seed, 100)
    src = tmp_path / "n.pt"
    src.write_bytes(data)
    specs["nohash"] = spec_for("nohash", "n.pt", known_hash=False, size=False)
    dest, _ = W.import_file("nohash", src, trust=True)
    return data, dest


def test_pin_manifest_sha_differing_from_the_pinned_sha_is_refused(tmp_path: Path, specs) -> None:
    data = ckpt_bytes(1)
    src = tmp_path / "w.pt"
    src.write_bytes(data)
    specs["pinned"] = spec_for("pinned", "w.pt", data=data)
    dest, _ = W.import_file("pinned", src)
    assert W.resolve("pinned") == dest
    mtime = dest.stat().st_mtime_ns
    _rewrite_record("pinned", "w.pt", sha256="0" * 64)
    assert dest.stat().st_mtime_ns == mtime
    with pytest.raises(IntegrityError, match="recorded with sha256"):
        W.resolve("pinned")


def test_pin_manifest_sha_differing_from_the_first_use_record_is_refused(tmp_path: Path, specs) -> None:
    _, dest = _trusted_unpinned(tmp_path, specs, 2)
    assert W.resolve("nohash") == dest
    _rewrite_record("nohash", "n.pt", sha256="1" * 64)
    with pytest.raises(IntegrityError, match="first copy"):
        W.resolve("nohash")


def test_pin_unpinned_cached_file_of_another_size_than_recorded_is_refused(tmp_path: Path, specs) -> None:
    data, dest = _trusted_unpinned(tmp_path, specs, 3)
    st = dest.stat()
    mode = st.st_mode
    os.chmod(dest, 0o644)
    with open(dest, "r+b") as f:
        f.truncate(len(data) - 10)
    os.chmod(dest, mode & 0o7777)
    os.utime(dest, ns=(st.st_atime_ns, st.st_mtime_ns))  # mtime as recorded: only the size tells
    assert dest.stat().st_mtime_ns == st.st_mtime_ns
    with pytest.raises(IntegrityError, match=rf"{len(data) - 10} bytes"):
        W.resolve("nohash")


def _hash_then(f: Path, change, monkeypatch: pytest.MonkeyPatch) -> None:
    from restorekit.weights import checksum

    hash_file = checksum.sha256_file

    def hashing(path: Any, *a: Any) -> str:
        digest = hash_file(path, *a)
        if Path(path).resolve() == f.resolve():
            change()
        return digest

    monkeypatch.setattr(checksum, "sha256_file", hashing)


@pytest.mark.parametrize("from_folder", [False, True])
def test_pin_linked_file_rewritten_in_place_at_the_same_size_is_refused(
        tmp_path: Path, specs, monkeypatch: pytest.MonkeyPatch, from_folder: bool) -> None:
    folder = tmp_path / "pack"
    folder.mkdir()
    f = folder / "n.pt"
    f.write_bytes(b"first version")

    def overwrite() -> None:
        st = f.stat()
        with open(f, "r+b") as out:
            out.write(b"other version")  # same length, same inode
        os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns + 10_000_000))

    _hash_then(f, overwrite, monkeypatch)
    specs["nohash"] = spec_for("nohash", "n.pt", known_hash=False, size=False)
    with pytest.raises(IntegrityError, match="changed while it was being imported"):
        if from_folder:
            W.import_archive("nohash", folder, link=True, trust=True)
        else:
            W.import_file("nohash", f, link=True, trust=True)
    assert W.first_use("nohash", "n.pt") is None and W.cached_files("nohash") == {}


def test_pin_linked_file_replaced_by_another_of_the_same_size_and_mtime_is_refused(
        tmp_path: Path, specs, monkeypatch: pytest.MonkeyPatch) -> None:
    f = tmp_path / "n.pt"
    f.write_bytes(b"first version")
    keep = tmp_path / "keep"  # holds the old inode, so the new file cannot reuse its number

    def replace() -> None:
        st = f.stat()
        os.link(f, keep)
        new = tmp_path / "n.new"
        new.write_bytes(b"other version")
        os.utime(new, ns=(st.st_atime_ns, st.st_mtime_ns))
        os.replace(new, f)  # only the inode differs now

    _hash_then(f, replace, monkeypatch)
    specs["nohash"] = spec_for("nohash", "n.pt", known_hash=False, size=False)
    with pytest.raises(IntegrityError, match="changed while it was being imported"):
        W.import_file("nohash", f, link=True, trust=True)
    assert W.cached_files("nohash") == {}


def test_pin_refuse_unsafe_runs_the_unpickler_when_the_scan_sees_only_safe_globals(tmp_path: Path) -> None:
    from restorekit.weights.load import refuse_unsafe

    def sbs(text: str) -> bytes:  # SHORT_BINSTRING
        return b"U" + bytes([len(text)]) + text.encode()

    # numpy.dtype only (a global the scan accepts), but BUILD sets a non-array's state
    path = tmp_path / "build.pkl"
    path.write_bytes(b"\x80\x02" + sbs("numpy") + sbs("dtype") + b"\x93" + sbs("f8") + b"\x85R"
                     + b"}" + sbs("x") + b"K\x01s" + b"b.")
    assert W.unsafe_globals(path) == []
    with pytest.raises(UnsafeFileError, match="holds pickled Python objects"):
        refuse_unsafe(path, "build.pkl")
    refuse_unsafe(path, "build.pkl", allow_unsafe=True)  # a file the user trusts
