"""Defects an audit of the ``weights`` commands found: a damaged manifest listed and shown as
``damaged`` (not failing the whole listing or the spec's page), a cached file gone from under its manifest entry ``damaged``
everywhere, ``weights convert`` output with the umask's mode, and a relative RESTOREKIT_HOME
resolved once to an absolute folder.
"""

from __future__ import annotations

import json
import os
import stat
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner, Result

from restorekit import weights as W
from restorekit.errors import WeightsMissing
from restorekit.commands.weights import weights_group
from test_weights import ckpt_bytes, home, sha, spec_for, specs  # noqa: F401 (fixtures)


def _cli(*args: str) -> Result:
    return CliRunner().invoke(weights_group, list(args), env={"COLUMNS": "200"})


def _pinned(specs: dict[str, W.WeightSpec], name: str, tmp_path: Path, fill: float) -> bytes:
    """Register ``name`` (one pinned file with a download URL) and import it into the cache."""
    blob = ckpt_bytes(fill)
    specs[name] = spec_for(name, "g.pt", data=blob, urls=(f"https://example.org/{name}.pt",))
    src = tmp_path / f"{name}.pt"
    src.write_bytes(blob)
    W.import_file(name, src)
    return blob


def _table_states(out: str, names: set[str]) -> dict[str, str]:
    """The state column of ``weights list`` rows, by name."""
    return {parts[0]: parts[1] for parts in (line.split() for line in out.splitlines())
            if parts[:1] and parts[0] in names}


def test_damaged_manifest_is_listed_and_verified_with_the_rest(tmp_path: Path, specs: dict[str, W.WeightSpec]) -> None:
    _pinned(specs, "good-net", tmp_path, 1)
    _pinned(specs, "bad-net", tmp_path, 2)
    specs["unknown-net"] = spec_for("unknown-net", "u.pt", known_hash=False, size=False,
                                    urls=("https://example.org/u.pt",))
    for name in ("bad-net", "unknown-net"):  # (unknown-net: no first-use record, so its manifest is asked)
        W.weights_dir(name).mkdir(parents=True, exist_ok=True)
        (W.weights_dir(name) / W.MANIFEST).write_text('{"name": "tw-p\n', encoding="utf-8")

    r = _cli("list", "--json")
    assert r.exit_code == 0, r.output
    rows = {row["name"]: (row["cached"], row["state"], row["integrity"]) for row in json.loads(r.stdout)}
    assert rows == {"good-net": ("yes", "cached", "pinned"), "bad-net": ("damaged", "damaged", "pinned"),
                    "unknown-net": ("damaged", "damaged", "unknown")}
    r = _cli("list")
    assert r.exit_code == 0, r.output
    assert _table_states(r.stdout, set(rows)) == {"good-net": "cached", "bad-net": "damaged", "unknown-net": "damaged"}

    r = _cli("verify")
    assert r.exit_code == 1
    assert r.stdout.splitlines() == ["ok good-net"]
    fails = [line for line in r.stderr.splitlines() if line.startswith("FAIL")]
    assert len(fails) == 2 and fails[0].startswith(f"FAIL bad-net/g.pt: cache manifest {W.weights_dir('bad-net')}")
    assert "run `restorekit weights rm bad-net` and pull or import it again" in fails[0]
    assert fails[1].startswith("FAIL unknown-net/u.pt:") and "`restorekit weights rm unknown-net`" in fails[1]
    r = _cli("verify", "good-net")
    assert (r.exit_code, r.stdout) == (0, "ok good-net\n")


def test_show_of_a_damaged_manifest_shows_the_spec_and_the_damage(tmp_path: Path,
                                                                  specs: dict[str, W.WeightSpec]) -> None:
    _pinned(specs, "bad-net", tmp_path, 2)
    specs["unknown-net"] = spec_for("unknown-net", "u.pt", known_hash=False, size=False,
                                    urls=("https://example.org/u.pt",))
    for name in ("bad-net", "unknown-net"):
        W.weights_dir(name).mkdir(parents=True, exist_ok=True)
        (W.weights_dir(name) / W.MANIFEST).write_text('{"name": "tw-p\n', encoding="utf-8")
    files = {"bad-net": f"file g.pt: {len(ckpt_bytes(2)) / 1000:.1f} KB, damaged", "unknown-net": "file u.pt: ?, damaged"}
    for name, kind in (("bad-net", "pinned"), ("unknown-net", "unknown")):
        r = _cli("show", name)
        assert r.exit_code == 0, r.output
        lines = r.stdout.splitlines()
        assert lines[0].startswith(f"{name} — ")
        assert [ln for ln in lines if ln.startswith("file ")] == [files[name]]
        assert lines[-1].startswith(f"damaged: cache manifest {W.weights_dir(name) / W.MANIFEST} is unreadable")
        assert lines[-1].endswith(f"run `restorekit weights rm {name}` and pull or import it again")
        shown = json.loads(_cli("show", name, "--json").stdout)
        assert (shown["state"], shown["cached"]) == ("damaged", {})
        assert shown["cache_error"].startswith("cache manifest ")
        assert [v["kind"] for v in shown["integrity"].values()] == [kind]
    _pinned(specs, "good-net", tmp_path, 1)
    assert json.loads(_cli("show", "good-net", "--json").stdout)["cache_error"] is None
    assert not _cli("show", "good-net").stdout.splitlines()[-1].startswith("damaged")


def test_cached_file_gone_under_its_manifest_entry_is_damaged_everywhere(
        tmp_path: Path, specs: dict[str, W.WeightSpec]) -> None:
    _pinned(specs, "gone-net", tmp_path, 3)
    _pinned(specs, "kept-net", tmp_path, 4)
    specs["never-net"] = spec_for("never-net", "n.pt", data=b"n" * 32, urls=("https://example.org/n.pt",))
    (W.weights_dir("gone-net") / "g.pt").unlink()  # the manifest still records it

    rows = {row["name"]: (row["cached"], row["state"]) for row in json.loads(_cli("list", "--json").stdout)}
    assert rows == {"gone-net": ("damaged", "damaged"), "kept-net": ("yes", "cached"),
                    "never-net": ("no", "pull needed")}
    r = _cli("list")
    assert r.exit_code == 0
    assert _table_states(r.stdout, set(rows)) == {"gone-net": "damaged", "kept-net": "cached", "never-net": "pull"}
    shown = json.loads(_cli("show", "gone-net", "--json").stdout)
    assert (shown["state"], shown["integrity"]["g.pt"]["state"]) == ("damaged", "damaged")
    assert [line for line in _cli("show", "gone-net").stdout.splitlines() if line.startswith("file ")] == [
        f"file g.pt: {len(ckpt_bytes(3)) / 1000:.1f} KB, damaged"]
    r = _cli("verify", "gone-net")
    assert r.exit_code == 1 and "FAIL gone-net/g.pt" in r.stderr
    assert "damaged: its manifest records it, but the file is gone; run `restorekit weights rm gone-net`" in r.stderr


@pytest.fixture
def umask() -> Iterator[None]:
    """Put the process umask back after a test that sets it."""
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


@pytest.mark.parametrize(("mask", "mode"), [(0o022, 0o644), (0o027, 0o640), (0o002, 0o664)])
@pytest.mark.parametrize("overwrite", [False, True])
def test_convert_output_has_the_mode_of_a_new_file(tmp_path: Path, umask: None, mask: int, mode: int,
                                                   overwrite: bool) -> None:
    src, out = tmp_path / "c.pt", tmp_path / "c.safetensors"
    torch.save({"g_ema": {"w": torch.arange(6, dtype=torch.float32)}}, src)
    if overwrite:
        out.write_bytes(b"old")
        out.chmod(0o600)
    os.umask(mask)
    r = _cli("convert", str(src), "-o", str(out), *(["--overwrite"] if overwrite else []))
    assert r.exit_code == 0, r.output
    assert r.stdout.strip() == f"wrote {out} (1 tensors, sha256 {sha(out.read_bytes())})"
    assert stat.S_IMODE(out.stat().st_mode) == mode
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.pt", "c.safetensors"]  # no temporary file left


def test_relative_home_is_one_absolute_cache_for_the_process(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                             specs: dict[str, W.WeightSpec]) -> None:
    first, second = tmp_path / "first", tmp_path / "second"
    first.mkdir()
    second.mkdir()
    monkeypatch.chdir(first)
    rel = f"rel-cache-{tmp_path.name}"  # a value no other test uses: it is resolved once per process
    monkeypatch.setenv("RESTOREKIT_HOME", rel)
    assert W.cache_dir() == first / rel
    blob = _pinned(specs, "rel-net", tmp_path, 5)
    monkeypatch.chdir(second)
    assert W.cache_dir() == first / rel and W.weights_dir("rel-net") == first / rel / "weights" / "rel-net"
    r = _cli("path", "rel-net")
    assert (r.exit_code, r.stdout) == (0, f"{first / rel / 'weights' / 'rel-net' / 'g.pt'}\n")
    assert (first / rel / "weights" / "rel-net" / "g.pt").read_bytes() == blob
    assert not (second / rel).exists()
    assert json.loads(_cli("list", "--json").stdout)[0]["state"] == "cached"
    monkeypatch.setenv("RESTOREKIT_HOME", str(tmp_path / "abs"))  # an absolute value is taken as it is
    assert W.cache_dir() == tmp_path / "abs"


def test_text_that_is_not_ours_prints_as_literal_characters(tmp_path: Path, specs: dict[str, W.WeightSpec]) -> None:
    """Registry fields and archive member names reached the terminal raw: an escape sequence in one
    cleared the screen or coloured a forged 'OK'; rich markup in one was applied."""
    zero = "0" * 64
    specs["esc-net"] = W.WeightSpec(
        name="esc-net", architecture="x\x1b]0;title\x07", plugin="tests", license="MIT",
        description="desc \x1b[2Jcleared [bold]notbold[/]", source="https://example.org/\x1b[31m",
        files=[{"filename": "a.bin", "size": 3, "sha256": zero}, {"filename": "b.bin", "size": 3, "sha256": zero}])
    out = _cli("show", "esc-net").stdout
    assert "\x1b" not in out and "\x07" not in out
    assert out.splitlines()[0] == "esc-net — desc \\x1b[2Jcleared [bold]notbold[/]"
    assert "architecture: x\\x1b]0;title\\x07   plugin: tests" in out.splitlines()
    pack = tmp_path / "pack.zip"
    with zipfile.ZipFile(pack, "w") as z:
        z.writestr("x\x1b[2J\x1b[32mOK.bin", b"abc")
    r = _cli("import", "esc-net", str(pack))
    assert r.exit_code != 0 and "\x1b" not in r.stderr
    assert r.stderr.strip().endswith("(it holds: x\\x1b[2J\\x1b[32mOK.bin)")


def test_listing_cells_are_literal_text(capsys: pytest.CaptureFixture[str]) -> None:
    from restorekit.cli import listing

    listing("t", ["name", "summary"], [["[bold]x[/]", "y\x1b[2J"], ["z", "w"]], cut=("summary",))
    lines = capsys.readouterr().out.splitlines()
    assert [ln.split() for ln in lines[2:]] == [["[bold]x[/]", "y\\x1b[2J"], ["z", "w"]]


def test_a_damaged_shipped_file_is_damaged_and_cannot_be_imported_beside_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, specs: dict[str, W.WeightSpec]) -> None:
    """A flipped byte in a shipped file read 'missing' (README: import it), and an import then
    succeeded into a cache copy that is never used while the damaged file stayed in use."""
    pkg = tmp_path / "site" / "shippkg_3p"
    (pkg / "weights").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    data = bytes(range(256)) * 4
    (pkg / "weights" / "m.bin").write_bytes(data)
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    specs["ship-net"] = W.WeightSpec(name="ship-net", architecture="x", plugin="p", license="MIT", files=(
        W.WeightFile(filename="m.bin", size=len(data), sha256=sha(data), bundled="shippkg_3p:weights/m.bin"),))
    rows = {row["name"]: row["state"] for row in json.loads(_cli("list", "--json").stdout)}
    assert rows["ship-net"] == "shipped"
    (pkg / "weights" / "m.bin").write_bytes(data[:-1] + b"\x00")
    rows = {row["name"]: row["state"] for row in json.loads(_cli("list", "--json").stdout)}
    assert rows["ship-net"] == "damaged"
    assert [ln for ln in _cli("show", "ship-net").stdout.splitlines() if ln.startswith("file ")] == [
        "file m.bin: 1.0 KB, damaged"]
    good = tmp_path / "m.bin"
    good.write_bytes(data)
    r = _cli("import", "ship-net", str(good))
    assert r.exit_code == 1
    assert r.stderr.strip() == ("error: 'ship-net' ships inside the 'shippkg_3p' package and is used from there: "
                                "nothing to import; if it is missing or damaged, reinstall the distribution that "
                                "provides 'shippkg_3p'")
    assert not W.weights_dir("ship-net").exists()


def test_the_fix_for_missing_unpinned_weights_includes_trust(tmp_path: Path, specs: dict[str, W.WeightSpec]) -> None:
    """The hint said `weights pull NAME`, which is refused for a file with no published sha256 and
    none recorded ("pass --trust")."""
    blob = ckpt_bytes(5)
    specs["open-net"] = spec_for("open-net", "o.pt", data=blob, known_hash=False, urls=("https://example.org/o.pt",))
    _pinned(specs, "pin-net", tmp_path, 6)
    W.remove("pin-net")
    with pytest.raises(WeightsMissing) as info:
        W.resolve("open-net")
    assert str(info.value) == (
        "weights 'open-net' are not available; run `restorekit weights pull --trust open-net` (needs network; no "
        "sha256 is published, so --trust records the one downloaded) or `restorekit weights import --trust "
        "open-net FILE` (a file you already have)")
    with pytest.raises(WeightsMissing, match=r"weights pull pin-net` \(needs network\)"):
        W.resolve("pin-net")
    src = tmp_path / "o.pt"
    src.write_bytes(blob)
    W.import_file("open-net", src, trust=True)
    W.remove("open-net")  # the first-use record stays: a plain pull or import is checked against it
    with pytest.raises(WeightsMissing, match=r"run `restorekit weights pull open-net` \(needs network\)"):
        W.resolve("open-net")
