"""The weights cache when the disk fails it: full, unreadable, or emptied by ``weights rm`` meanwhile.

A ``.part`` that cannot be written is the disk's fault, not the connection's: one line naming the
path, no retry, the ``.part`` removed. A pull or import whose records (manifest, first-use record)
cannot be written leaves nothing under the file's final name. The record files get the usual
permissions. A file removed while it is looked up is "not cached", never a raw FileNotFoundError.
No root, no mount, no network: writes are made to fail by monkeypatching.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from restorekit import weights as W
from restorekit.commands.weights import weights_group
from restorekit.errors import CacheError, WeightsMissing
from restorekit.weights import cache, download, tofu
from restorekit.weights.download import part_path
from test_weights import Files, ckpt_bytes, home, server, sha, spec_for, specs  # noqa: F401 (fixtures)


def _enospc(path: object = None) -> OSError:
    return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


class _FillsUp:
    """A binary file whose writes fail with ENOSPC once ``room`` bytes are written (a full disk)."""

    def __init__(self, f: Any, room: int) -> None:
        self.f, self.room = f, room

    def write(self, data: bytes) -> int:
        if len(data) > self.room:
            self.f.write(data[:self.room])
            self.room = 0
            raise _enospc()
        self.room -= len(data)
        return self.f.write(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.f, name)

    def __enter__(self) -> _FillsUp:
        return self

    def __exit__(self, *exc: object) -> None:
        self.f.close()


@pytest.fixture
def full_disk(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The download's ``.part`` takes 1000 bytes, then the disk is full (a new one or a resumed one)."""
    fresh, resumed = download._fresh_part, download._resumed_part

    def resumed_fills_up(part: Path) -> Any:
        f = resumed(part)
        return None if f is None else _FillsUp(f, 1000)

    monkeypatch.setattr(download, "_fresh_part", lambda part: _FillsUp(fresh(part), 1000))
    monkeypatch.setattr(download, "_resumed_part", resumed_fills_up)
    yield


# --- 1. a full disk during a pull ---------------------------------------------------------------


def test_a_full_disk_during_a_pull_is_one_cache_error_not_retried_and_frees_the_space(
        server: tuple[str, Files], specs: dict[str, W.WeightSpec], full_disk: None) -> None:
    base, files = server
    blob = ckpt_bytes(3, 2000)
    files.content["/toy.pt"] = blob
    specs["toy"] = spec_for("toy", "toy.pt", data=blob, urls=(f"{base}/toy.pt",))
    dest = W.weights_dir("toy") / "toy.pt"
    with pytest.raises(CacheError) as err:
        W.pull("toy", quiet=True, retries=2)
    assert str(err.value).startswith(f"the restorekit cache cannot be written at {part_path(dest)}: No space left "
                                     f"on device (the file needs {len(blob)} bytes; the partial download was "
                                     "removed); RESTOREKIT_HOME is ")
    assert len(files.log) == 1  # not retried: another try cannot make room
    assert not part_path(dest).exists() and not dest.exists() and not W.weights_dir("toy").exists()


def test_a_full_disk_during_a_pull_on_the_command_line(server: tuple[str, Files], specs: dict[str, W.WeightSpec],
                                                      full_disk: None) -> None:
    base, files = server
    blob = ckpt_bytes(4, 2000)
    files.content["/toy.pt"] = blob
    specs["toy"] = spec_for("toy", "toy.pt", known_hash=False, size=False, urls=(f"{base}/toy.pt",))
    r = CliRunner().invoke(weights_group, ["pull", "toy", "--trust", "-q"], env={"COLUMNS": "300"})
    part = part_path(W.weights_dir("toy") / "toy.pt")
    assert r.exit_code == 2 and r.output.count("\n") == 1, r.output
    assert r.output.startswith(f"error: the restorekit cache cannot be written at {part}: No space left on device")
    assert "connection ended" not in r.output and "warning" not in r.output
    assert len(files.log) == 1 and not part.exists() and W.first_use("toy", "toy.pt") is None


def test_a_dropped_connection_still_keeps_the_part_to_resume(server: tuple[str, Files],
                                                             specs: dict[str, W.WeightSpec]) -> None:
    base, files = server
    blob = ckpt_bytes(5, 300_000)
    files.content["/toy.pt"] = blob
    files.drop_after["/toy.pt"] = 100_000
    specs["toy"] = spec_for("toy", "toy.pt", data=blob, urls=(f"{base}/toy.pt",))
    (path,) = W.pull("toy", quiet=True, retries=1)
    assert path.read_bytes() == blob
    assert [rng for _, rng, _ in files.log] == [None, "bytes=100000-"]


# --- 2. records that cannot be written: nothing left under the final name ---------------------


def _fail(what: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Make writing the manifest or the first-use record fail as on a full disk."""
    if what == "manifest":
        def no_manifest(folder: Path, *a: Any, **k: Any) -> None:
            raise cache.cache_error(_enospc(), folder / W.MANIFEST)
        monkeypatch.setattr(cache, "write_manifest", no_manifest)
    else:
        def no_tofu(records: Any) -> None:
            raise cache.cache_error(_enospc(), cache.cache_dir() / W.TOFU_FILE)
        monkeypatch.setattr(tofu, "_write_tofu", no_tofu)


@pytest.mark.parametrize("what", ["manifest", "tofu"])
def test_an_import_whose_records_cannot_be_written_leaves_nothing(what: str, tmp_path: Path,
                                                                  specs: dict[str, W.WeightSpec],
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    src = tmp_path / "n.pt"
    src.write_bytes(ckpt_bytes(6, 500))
    specs["nohash"] = spec_for("nohash", "n.pt", known_hash=False, size=False)
    with monkeypatch.context() as m:
        _fail(what, m)
        r = CliRunner().invoke(weights_group, ["import", "nohash", str(src), "--trust"], env={"COLUMNS": "300"})
    assert r.exit_code == 2 and "No space left on device" in r.output and r.output.count("\n") == 1, r.output
    assert not W.weights_dir("nohash").exists()  # the copy is gone, and its folder
    assert W.first_use("nohash", "n.pt") is None  # and a failed import trusted nothing
    assert W.integrity(specs["nohash"], specs["nohash"].files[0]) == "unknown"
    dest, _ = W.import_file("nohash", src, trust=True)  # with room, it works
    assert W.resolve("nohash") == dest and W.first_use("nohash", "n.pt") is not None


def test_a_pull_whose_manifest_cannot_be_written_leaves_nothing(server: tuple[str, Files],
                                                                 specs: dict[str, W.WeightSpec],
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    base, files = server
    blob = ckpt_bytes(7, 500)
    files.content["/toy.pt"] = blob
    specs["toy"] = spec_for("toy", "toy.pt", data=blob, urls=(f"{base}/toy.pt",))
    with monkeypatch.context() as m:
        _fail("manifest", m)
        with pytest.raises(CacheError, match="No space left on device"):
            W.pull("toy", quiet=True)
    assert not W.weights_dir("toy").exists()
    assert W.pull("toy", quiet=True)[0].read_bytes() == blob


def test_an_archive_import_whose_manifest_cannot_be_written_leaves_nothing(tmp_path: Path,
                                                                            specs: dict[str, W.WeightSpec],
                                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / "pack"
    folder.mkdir()
    (folder / "g.pt").write_bytes(ckpt_bytes(8, 100))
    specs["pack"] = W.WeightSpec(name="pack", architecture="toy", plugin="tests", license="MIT",
                                 files=[{"filename": "g.pt", "sha256": sha((folder / "g.pt").read_bytes())}])
    with monkeypatch.context() as m:
        _fail("manifest", m)
        with pytest.raises(CacheError):
            W.import_archive("pack", folder)
    assert not W.weights_dir("pack").exists()


def test_a_file_cached_before_stays_when_a_reimport_cannot_write_its_records(tmp_path: Path,
                                                                              specs: dict[str, W.WeightSpec],
                                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    src = tmp_path / "n.pt"
    src.write_bytes(ckpt_bytes(9, 500))
    specs["nohash"] = spec_for("nohash", "n.pt", known_hash=False, size=False)
    dest, _ = W.import_file("nohash", src, trust=True)
    stray = dest.parent / ".n.pt.import-0"  # a leftover: the import below takes the lock and copies again
    stray.write_bytes(b"x")
    with monkeypatch.context() as m:
        _fail("manifest", m)
        with pytest.raises(CacheError):
            W.import_file("nohash", src, trust=True)
    assert W.resolve("nohash", full_check=True) == dest and dest.read_bytes() == src.read_bytes()
    assert W.first_use("nohash", "n.pt") is not None


# --- 3. the record files get the usual permissions; one that cannot be read is one line --------


@pytest.fixture
def umask_022() -> Iterator[None]:
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


@pytest.mark.skipif(os.name == "nt", reason="POSIX permissions")
def test_manifest_and_first_use_record_are_readable_by_others_like_the_weights(
        tmp_path: Path, specs: dict[str, W.WeightSpec], umask_022: None) -> None:
    src = tmp_path / "n.pt"
    src.write_bytes(ckpt_bytes(10, 100))
    specs["nohash"] = spec_for("nohash", "n.pt", known_hash=False, size=False)
    dest, _ = W.import_file("nohash", src, trust=True)
    modes = {p.name: stat.S_IMODE(p.stat().st_mode)
             for p in (dest, dest.parent / W.MANIFEST, W.cache_dir() / W.TOFU_FILE)}
    assert modes == {"n.pt": 0o644, W.MANIFEST: 0o644, W.TOFU_FILE: 0o644}
    W.forget("nohash")  # rewrites the first-use record
    assert stat.S_IMODE((W.cache_dir() / W.TOFU_FILE).stat().st_mode) == 0o644
    leftovers = [p.name for p in W.cache_dir().rglob("*.tmp")]
    assert leftovers == []


def _read_text_failing(monkeypatch: pytest.MonkeyPatch, name: str, exc: OSError) -> None:
    """``Path.read_text`` of a file called ``name`` raises ``exc``."""
    real = Path.read_text

    def read_text(self: Path, *a: Any, **k: Any) -> str:
        if self.name == name:
            raise exc
        return real(self, *a, **k)

    monkeypatch.setattr(Path, "read_text", read_text)


@pytest.mark.parametrize("which", [W.MANIFEST, W.TOFU_FILE])
def test_an_unreadable_record_is_one_line_naming_it(which: str, tmp_path: Path, specs: dict[str, W.WeightSpec],
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    src = tmp_path / "n.pt"
    src.write_bytes(ckpt_bytes(11, 100))
    specs["nohash"] = spec_for("nohash", "n.pt", known_hash=False, size=False)
    dest, _ = W.import_file("nohash", src, trust=True)
    path = dest.parent / W.MANIFEST if which == W.MANIFEST else W.cache_dir() / W.TOFU_FILE
    _read_text_failing(monkeypatch, which, PermissionError(errno.EACCES, "Permission denied"))
    with pytest.raises(CacheError) as err:
        W.resolve("nohash")
    assert str(err.value).startswith(f"the restorekit cache cannot be read at {path}: Permission denied; "
                                     "RESTOREKIT_HOME is ")
    r = CliRunner().invoke(weights_group, ["path", "nohash"], env={"COLUMNS": "300"})
    assert r.exit_code == 2 and r.output.count("\n") == 1 and f"cannot be read at {path}" in r.output, r.output


# --- 4. `weights rm` while a load looks: "not cached", never a raw FileNotFoundError ----------


def toy_file(tmp_path: Path, specs: dict[str, W.WeightSpec], seed: int) -> Path:
    """A small checkpoint file registered as ``toy`` (pinned to its bytes), to import."""
    blob = ckpt_bytes(seed, 100)
    src = tmp_path / "toy.pt"
    src.write_bytes(blob)
    specs["toy"] = spec_for("toy", "toy.pt", data=blob)
    return src


def test_a_manifest_removed_while_it_is_read_is_not_cached(tmp_path: Path, specs: dict[str, W.WeightSpec],
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    src = toy_file(tmp_path, specs, 12)
    W.import_file("toy", src)
    # the manifest is there when looked for, and gone when read (rmtree in between)
    _read_text_failing(monkeypatch, W.MANIFEST, FileNotFoundError(errno.ENOENT, "No such file or directory"))
    with pytest.raises(WeightsMissing):
        W.resolve("toy")
    with pytest.raises(WeightsMissing):
        W.load_checkpoint("toy")


@pytest.mark.parametrize("full", [False, True])
def test_a_weights_file_removed_while_it_is_checked_is_not_cached(full: bool, tmp_path: Path,
                                                                  specs: dict[str, W.WeightSpec],
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    src = toy_file(tmp_path, specs, 13)
    dest, _ = W.import_file("toy", src)
    dest.unlink()  # removed after is_file() said it was there
    real = Path.is_file
    monkeypatch.setattr(Path, "is_file", lambda self: True if self == dest else real(self))
    with pytest.raises(WeightsMissing):
        W.resolve("toy", full_check=full)
    assert not W.is_cached("toy")


def test_a_weights_file_removed_between_its_check_and_its_load_is_not_cached(tmp_path: Path,
                                                                            specs: dict[str, W.WeightSpec],
                                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    src = toy_file(tmp_path, specs, 15)
    W.import_file("toy", src)
    real = W.resolve

    def resolve_then_rm(*a: Any, **k: Any) -> Path:
        path = real(*a, **k)
        W.remove("toy")
        return path

    monkeypatch.setattr(W, "resolve", resolve_then_rm)
    with pytest.raises(WeightsMissing):
        W.load_checkpoint("toy")


# --- 5. `weights pull --trust` of cached weights: no "recorded what was downloaded" -------------


def test_pull_trust_warns_only_when_it_recorded_a_download(server: tuple[str, Files],
                                                           specs: dict[str, W.WeightSpec]) -> None:
    base, files = server
    blob = ckpt_bytes(14, 100)
    files.content["/toy.pt"] = blob
    specs["toy"] = spec_for("toy", "toy.pt", known_hash=False, size=False, urls=(f"{base}/toy.pt",))
    runner = CliRunner()
    r = runner.invoke(weights_group, ["pull", "toy", "--trust", "-q"], env={"COLUMNS": "300"})
    dest = W.weights_dir("toy") / "toy.pt"
    assert r.exit_code == 0, r.output
    assert r.output == (f"warning: 'toy' had no reference sha256; recorded what was downloaded (toy.pt: sha256 "
                        f"{sha(blob)}); later pulls and imports must match it\n{dest}\n")
    r = runner.invoke(weights_group, ["pull", "toy", "--trust", "-q"], env={"COLUMNS": "300"})
    assert (r.exit_code, r.output) == (0, f"{dest}\n")  # cached: nothing downloaded, nothing to warn about
    assert len(files.log) == 1
    W.remove("toy")  # downloaded again, but checked against the hash recorded the first time
    r = runner.invoke(weights_group, ["pull", "toy", "--trust", "-q"], env={"COLUMNS": "300"})
    assert (r.exit_code, r.output) == (0, f"{dest}\n") and len(files.log) == 2
