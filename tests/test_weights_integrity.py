"""Integrity states and trust on first use (TOFU) for weights whose spec publishes no sha256.

The first pull or import (with ``--trust``) records the file's sha256 outside the weights folder;
from then on every pull and import must match it, even after ``weights rm``, until ``weights
forget``. ``weights list``/``show`` say which files are pinned, TOFU-recorded or not yet known.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from click.testing import CliRunner

from restorekit import weights as W
from restorekit.commands.weights import weights_group
from restorekit.errors import IntegrityError
from test_weights import Files, ckpt_bytes, home, server, sha, spec_for, specs  # noqa: F401 (fixtures)


def _cli(*args: str) -> tuple[int, str]:
    r = CliRunner().invoke(weights_group, list(args), env={"COLUMNS": "200"})
    return r.exit_code, r.output


def test_import_records_first_use_and_checks_it_from_then_on(tmp_path: Path, specs: dict[str, W.WeightSpec]) -> None:
    first, other = tmp_path / "first.pt", tmp_path / "other.pt"
    first.write_bytes(ckpt_bytes(1, 500))
    other.write_bytes(ckpt_bytes(2, 500))
    specs["nohash"] = spec_for("nohash", "n.pt", known_hash=False, size=False)
    assert W.integrity(specs["nohash"], specs["nohash"].files[0]) == "unknown"
    with pytest.raises(IntegrityError, match="--trust"):
        W.import_file("nohash", first)
    _, warning = W.import_file("nohash", first, trust=True)
    assert warning is not None and sha(first.read_bytes()) in warning
    rec = W.first_use("nohash", "n.pt")
    assert rec is not None and (rec.sha256, rec.size) == (sha(first.read_bytes()), first.stat().st_size)
    assert rec.source == f"import:{first.resolve()}"
    stored = json.loads((W.cache_dir() / W.TOFU_FILE).read_text())["files"]
    assert stored["nohash/n.pt"]["sha256"] == rec.sha256
    assert W.integrity(specs["nohash"], specs["nohash"].files[0]) == "tofu"
    # weights rm drops the copy, not the record: another file is refused, even with --trust
    assert W.remove("nohash")
    for trust in (False, True):
        with pytest.raises(IntegrityError, match=r"first 'nohash' \(n.pt\) this cache took.*weights forget nohash"):
            W.import_file("nohash", other, trust=trust)
    assert not W.weights_dir("nohash").exists()
    # the same file needs no --trust any more: its recorded hash checks it
    dest, warning = W.import_file("nohash", first)
    assert warning is None and dest.read_bytes() == first.read_bytes()
    # forget drops the record and the copy checked against it; then a new file can be trusted
    assert W.forget("nohash") == ["n.pt"]
    assert W.first_use("nohash", "n.pt") is None and not (W.weights_dir("nohash") / "n.pt").exists()
    W.import_file("nohash", other, trust=True)
    assert W.first_use("nohash", "n.pt").sha256 == sha(other.read_bytes())  # type: ignore[union-attr]


def test_pull_checks_first_use(server: tuple[str, Files], specs: dict[str, W.WeightSpec]) -> None:
    base, files = server
    blob, changed = os.urandom(4096), os.urandom(4096)
    files.content["/toy.bin"] = blob
    specs["toy"] = spec_for("toy", "toy.bin", data=blob, urls=(f"{base}/toy.bin",), known_hash=False, size=False)
    W.pull("toy", quiet=True, trust=True)
    assert W.first_use("toy", "toy.bin").sha256 == sha(blob)  # type: ignore[union-attr]
    W.remove("toy")
    files.content["/toy.bin"] = changed  # the mirror now serves something else
    for trust in (False, True):
        with pytest.raises(IntegrityError, match="trust on first use.*weights forget toy"):
            W.pull("toy", quiet=True, trust=trust)
        assert not W.weights_dir("toy").exists()
    files.content["/toy.bin"] = blob
    assert W.pull("toy", quiet=True)[0].read_bytes() == blob  # no --trust needed: the record checks it
    # a cached copy that no longer matches the record is caught
    path = W.weights_dir("toy") / "toy.bin"
    path.write_bytes(changed)
    assert W.verify("toy") and "sha256" in W.verify("toy")[0]


def test_manifest_trust_from_older_caches_counts_as_first_use(tmp_path: Path, specs: dict[str, W.WeightSpec]) -> None:
    f = tmp_path / "a.pt"
    f.write_bytes(ckpt_bytes(1))
    specs["old"] = spec_for("old", "a.pt", known_hash=False, size=False)
    W.import_file("old", f, trust=True)
    (W.cache_dir() / W.TOFU_FILE).unlink()  # a cache from before the record existed
    assert W.first_use("old", "a.pt").sha256 == sha(ckpt_bytes(1))  # type: ignore[union-attr]
    g = tmp_path / "b.pt"
    g.write_bytes(ckpt_bytes(2))
    with pytest.raises(IntegrityError, match="first 'old'"):
        W.import_file("old", g, trust=True)


def test_list_and_show_state_integrity(tmp_path: Path, specs: dict[str, W.WeightSpec]) -> None:
    pinned_blob = b"p" * 64
    specs["pinned-net"] = spec_for("pinned-net", "p.pt", data=pinned_blob, urls=("https://example.org/p.pt",))
    specs["tofu-net"] = spec_for("tofu-net", "t.pt", known_hash=False, size=False)
    specs["unknown-net"] = spec_for("unknown-net", "u.pt", known_hash=False, size=False,
                                    urls=("https://example.org/u.pt",))
    f = tmp_path / "t.pt"
    f.write_bytes(ckpt_bytes(7))
    W.import_file("tofu-net", f, trust=True)
    code, out = _cli("list", "--json")
    rows = {r["name"]: r for r in json.loads(out)}
    assert {n: (r["state"], r["integrity"], r["cached"]) for n, r in rows.items()} == {
        "pinned-net": ("pull needed", "pinned", "no"), "tofu-net": ("cached", "tofu", "yes"),
        "unknown-net": ("pull needed", "unknown", "no")}
    code, out = _cli("list")
    assert code == 0
    lines = {l.split()[0]: l.split() for l in out.splitlines() if l.split()[:1] and l.split()[0] in rows}
    assert lines["pinned-net"][1:4] == ["pull", "needed", "pinned"]
    assert lines["tofu-net"][1:3] == ["cached", "tofu"]
    assert lines["unknown-net"][1:4] == ["pull", "needed", "unknown"]
    code, out = _cli("show", "tofu-net")
    assert code == 0 and "trust on first use" in out and sha(ckpt_bytes(7)) in out and "verified against it" in out
    code, out = _cli("show", "unknown-net")
    assert "none recorded yet" in out and "--trust" in out
    code, out = _cli("show", "pinned-net")
    assert f"pinned: sha256 {sha(pinned_blob)} (published)" in out
    data = json.loads(_cli("show", "tofu-net", "--json")[1])
    assert data["integrity"]["t.pt"]["kind"] == "tofu"
    assert data["integrity"]["t.pt"]["first_use"]["sha256"] == sha(ckpt_bytes(7))
    # forget through the command line
    code, out = _cli("forget", "tofu-net")
    assert code == 0 and "forgot t.pt of tofu-net" in out
    assert json.loads(_cli("list", "--json")[1])[1]["integrity"] == "unknown"
    assert _cli("forget", "tofu-net")[1].strip() == "nothing recorded for tofu-net"


def test_unwritable_first_use_record_is_one_line(tmp_path: Path, specs: dict[str, W.WeightSpec]) -> None:
    f = tmp_path / "t.pt"
    f.write_bytes(ckpt_bytes(7))
    specs["tofu-net"] = spec_for("tofu-net", "t.pt", known_hash=False, size=False)
    (W.cache_dir() / W.TOFU_FILE).mkdir(parents=True)  # a folder where the record goes
    code, out = _cli("import", "tofu-net", str(f), "--trust")
    assert code == 2 and "Traceback" not in out
    assert f"cannot be written at {W.cache_dir() / W.TOFU_FILE}" in out and "RESTOREKIT_HOME" in out


def test_first_use_records_of_concurrent_imports_are_all_kept(tmp_path: Path, specs: dict[str, W.WeightSpec],
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """Two first imports of different unpinned weights at once each add a record to the one
    trust-on-first-use file; neither may write over the other's (read, add, write in turns)."""
    import threading
    import time

    from restorekit.weights import tofu

    write = tofu._write_tofu

    def slow_write(records):  # widen the gap between reading the file and writing it back
        time.sleep(0.3)
        write(records)

    monkeypatch.setattr(tofu, "_write_tofu", slow_write)
    start = threading.Barrier(2)
    errors: list[BaseException] = []

    def first_import(name: str) -> None:
        f = tmp_path / f"{name}.pt"
        f.write_bytes(ckpt_bytes(len(name) + ord(name[-1])))
        start.wait(timeout=10)
        try:
            W.import_file(name, f, trust=True)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    for name in ("tofu-a", "tofu-b"):
        specs[name] = spec_for(name, "w.pt", known_hash=False, size=False)
    threads = [threading.Thread(target=first_import, args=(n,)) for n in ("tofu-a", "tofu-b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=20)
    assert errors == []
    stored = json.loads((W.cache_dir() / W.TOFU_FILE).read_text())["files"]
    assert sorted(stored) == ["tofu-a/w.pt", "tofu-b/w.pt"]
    W.remove("tofu-a")  # the record outlives the copy: another file is refused
    other = tmp_path / "other.pt"
    other.write_bytes(b"other")
    with pytest.raises(IntegrityError, match="first 'tofu-a'"):
        W.import_file("tofu-a", other, trust=True)
