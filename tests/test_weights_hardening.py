"""Weights files that are not what they claim, caches that cannot be written, interrupted imports.

A damaged checkpoint is one line naming the file (exit 2), never an "unexpected KeyError"; a file
whose hash would be trusted on first use must at least be readable as its format; a pull or
import with nothing to do works in a read-only cache; an import killed midway leaves nothing
that stays; ``weights convert`` never writes over a file unasked; the refusal of a pickle of
objects names the routes that exist.
"""

from __future__ import annotations

import argparse
import errno
import io
import subprocess
import zipfile
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from PIL import Image
from safetensors.torch import load as st_load, save as st_save

from restorekit import weights as W
from restorekit.cli import build_cli
from restorekit.commands.weights import weights_group
from restorekit.errors import RestorekitError, UnsafeFileError
from restorekit.weights import cache
from test_weights import Files, ckpt_bytes, home, server, sha, spec_for, specs  # noqa: F401 (fixtures)

# What torch's weights-only unpickler raises for a few damaged files, and how it is reported.
DAMAGED = [(b"junk\n", "unpickling failed: KeyError 174812789"),
           (b"hello world\n", "unpickling failed: KeyError 101"),
           (b"QG", "unpickling failed: IndexError pop from empty list"),
           (b"X\xd9", "unpickling failed: struct.error unpack requires a buffer of 4 bytes")]


def _unreadable(path: Path, detail: str) -> str:
    return (f"cannot read weights file {path}: not a readable PyTorch checkpoint/weights file ({detail}); "
            "it is damaged, truncated or not a weights file")


# --- 1. a damaged checkpoint is one line, exit 2 ---------------------------------------------


@pytest.mark.parametrize(("data", "detail"), DAMAGED)
def test_damaged_checkpoint_is_one_line(tmp_path: Path, data: bytes, detail: str) -> None:
    bad = tmp_path / "junk.pt"
    bad.write_bytes(data)
    with pytest.raises(RestorekitError) as err:
        W.load_checkpoint(bad)
    assert str(err.value) == _unreadable(bad, detail)


@pytest.mark.parametrize("command", ["run", "convert"])
def test_damaged_checkpoint_on_the_command_line_exits_2(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                        command: str) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("RESTOREKIT_HOME", str(tmp_path / "home"))
    Path("junk.pt").write_bytes(b"junk\n")
    if command == "run":
        Image.new("RGB", (32, 32), (90, 60, 30)).save("in.png")
        r = CliRunner().invoke(build_cli(), ["run", "psp_sr", "--weights", "junk.pt", "--scale", "8",
                                             "--input", "in.png", "--output", "out.png"])
    else:
        r = CliRunner().invoke(weights_group, ["convert", "junk.pt"])
    assert r.exit_code == 2, r.output
    assert r.output == f"error: {_unreadable(Path('junk.pt'), 'unpickling failed: KeyError 174812789')}\n"
    assert not Path("junk.safetensors").exists()


def test_damaged_stylegan2_checkpoint_exits_2(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The stylegan2 generator reads its file with the plugin's own reader (rosinality's layout)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("RESTOREKIT_HOME", str(tmp_path / "home"))
    Path("junk.pt").write_bytes(b"junk\n")
    r = CliRunner().invoke(build_cli(), ["generate", "--generator", "stylegan2", "--weights", "junk.pt",
                                         "--output", "g.png"])
    assert (r.exit_code, r.output) == (2, "error: junk.pt: not a readable PyTorch checkpoint (174812789)\n")


def test_a_pickle_of_objects_is_still_refused_as_unsafe(tmp_path: Path) -> None:
    """The wider net for damaged files does not turn a checkpoint of objects into 'damaged'."""
    path = tmp_path / "train.pt"
    torch.save({"g_ema": {"w": torch.ones(2)}, "args": argparse.Namespace(size=8)}, path)
    with pytest.raises(UnsafeFileError, match="would import 'argparse.Namespace'"):
        W.load_checkpoint(path)


# --- 6. the refusal of a pickle of objects names the routes that exist -----------------------


def test_unsafe_refusal_names_the_real_routes(tmp_path: Path) -> None:
    path = tmp_path / "train.pt"
    torch.save({"g_ema": {"w": torch.ones(2)}, "args": argparse.Namespace(size=8)}, path)
    with pytest.raises(UnsafeFileError) as err:
        W.load_checkpoint(path)
    assert str(err.value) == (
        f"refusing to load {path}: it would import 'argparse.Namespace' and could run code when loaded, so it is "
        "not unpickled here. Where you trust the file, re-save its tensors (torch.save of a dict of tensors, e.g. "
        "{'g_ema': state_dict, 'latent_avg': ...}) and use that; or, for a file you trust, `restorekit weights "
        "import NAME FILE --opt allow_unsafe=true` and a loader's allow_unsafe option (the stylegan2 generator: "
        "--opt allow_unsafe=true)")
    r = CliRunner().invoke(weights_group, ["convert", str(path)])  # not a route: convert refuses it too
    assert r.exit_code == 1 and "weights convert" not in r.output


# --- 2. a first-use hash is recorded only for a file readable as its format -------------------


@pytest.mark.parametrize(("data", "detail"), [
    (b"", "the file is empty"),
    (b"junk!", "its pickle does not parse: ValueError: pickle exhausted before seeing STOP")])
def test_trust_refuses_a_file_that_is_no_checkpoint(tmp_path: Path, specs: dict[str, W.WeightSpec],
                                                    data: bytes, detail: str) -> None:
    bad = tmp_path / "have.pt"
    bad.write_bytes(data)
    specs["nohash"] = spec_for("nohash", "n.pt", known_hash=False, size=False)
    r = CliRunner().invoke(weights_group, ["import", "nohash", str(bad), "--trust"])
    assert r.exit_code == 2, r.output
    assert r.output == (f"error: {bad} is not a readable PyTorch checkpoint/weights file ({detail}), which n.pt "
                        "must be; refused, nothing recorded\n")
    assert W.first_use("nohash", "n.pt") is None and not W.weights_dir("nohash").exists()
    good = tmp_path / "good.pt"  # the genuine file is still welcome
    good.write_bytes(ckpt_bytes(3))
    W.import_file("nohash", good, trust=True)
    assert W.first_use("nohash", "n.pt").sha256 == sha(ckpt_bytes(3))  # type: ignore[union-attr]


def test_trust_checks_each_format(tmp_path: Path, specs: dict[str, W.WeightSpec]) -> None:
    st_good = st_save({"w": torch.ones(3)})
    zipped = tmp_path / "z.pt"
    with zipfile.ZipFile(zipped, "w") as zf:
        zf.writestr("archive/readme.txt", "not a checkpoint")
    legacy = io.BytesIO()
    torch.save({"w": torch.ones(3)}, legacy, _use_new_zipfile_serialization=False)
    cases = [("a.safetensors", b"\x10" + bytes(7) + b"{}", False), ("b.safetensors", st_good, True),
             ("c.onnx", b"junk!", False), ("d.pt", zipped.read_bytes(), False), ("e.pt", legacy.getvalue(), True),
             ("f.pt", ckpt_bytes(1)[:-200], False), ("g.dat", b"dlib data", True)]
    for filename, data, ok in cases:
        name = "w-" + filename.replace(".", "-")
        specs[name] = spec_for(name, filename, known_hash=False, size=False)
        src = tmp_path / filename
        src.write_bytes(data)
        if ok:
            W.import_file(name, src, trust=True)
            assert W.first_use(name, filename) is not None
        else:
            with pytest.raises(RestorekitError, match=f"^{src} is not a readable .*, which {filename} must be"):
                W.import_file(name, src, trust=True)
            assert W.first_use(name, filename) is None


def test_trusted_pull_of_a_file_that_is_no_checkpoint_records_nothing(server: tuple[str, Files],
                                                                      specs: dict[str, W.WeightSpec]) -> None:
    base, files = server
    files.content["/toy.pt"] = b"<html>sign in to download</html>"
    specs["toy"] = spec_for("toy", "toy.pt", urls=(f"{base}/toy.pt",), known_hash=False, size=False)
    r = CliRunner().invoke(weights_group, ["pull", "toy", "--trust", "-q"])
    assert r.exit_code == 2, r.output
    assert r.output == (f"error: the download from {base}/toy.pt is not a readable PyTorch checkpoint/weights file "
                        "(its pickle does not parse: ValueError: at position 0, opcode b'<' unknown), which toy.pt "
                        "must be; refused, nothing recorded\n")
    assert W.first_use("toy", "toy.pt") is None and not W.weights_dir("toy").exists()
    files.content["/toy.pt"] = ckpt_bytes(5)
    assert W.pull("toy", quiet=True, trust=True)[0].read_bytes() == ckpt_bytes(5)


def test_trusted_archive_import_of_a_member_that_is_no_checkpoint(tmp_path: Path,
                                                                  specs: dict[str, W.WeightSpec]) -> None:
    folder = tmp_path / "pack"
    folder.mkdir()
    (folder / "g.pt").write_bytes(b"")
    (folder / "notes.txt").write_bytes(b"pack notes")
    specs["pack"] = W.WeightSpec(name="pack", architecture="toy", plugin="tests", license="MIT",
                                 files=[{"filename": "g.pt"}, {"filename": "notes.txt"}])
    with pytest.raises(RestorekitError) as err:
        W.import_archive("pack", folder, trust=True)
    assert str(err.value) == (f"{folder}/g.pt is not a readable PyTorch checkpoint/weights file (the file is "
                              "empty), which g.pt must be; refused, nothing recorded")
    assert W.first_use("pack", "g.pt") is None and not W.weights_dir("pack").exists()


# --- 3. nothing to do: no lock, so a read-only cache answers ---------------------------------


def _read_only_cache(monkeypatch: pytest.MonkeyPatch) -> None:
    """Taking a lock (creating the lock file) fails as on a read-only file system."""
    def refuse(name: str) -> None:
        path = cache.weights_dir(name).with_name(f".{name}.lock")
        raise cache.cache_error(OSError(errno.EROFS, "Read-only file system"), path)

    monkeypatch.setattr(cache, "locked", refuse)


def test_pull_and_import_of_cached_weights_work_in_a_read_only_cache(tmp_path: Path, specs: dict[str, W.WeightSpec],
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    blob = ckpt_bytes(2)
    src = tmp_path / "toy.pt"
    src.write_bytes(blob)
    specs["toy"] = spec_for("toy", "toy.pt", data=blob, urls=("https://example.org/toy.pt",))
    dest, _ = W.import_file("toy", src)
    _read_only_cache(monkeypatch)
    r = CliRunner().invoke(weights_group, ["pull", "toy", "-q"])
    assert (r.exit_code, r.output) == (0, f"{dest}\n")
    r = CliRunner().invoke(weights_group, ["import", "toy", str(src)])
    assert (r.exit_code, r.output) == (0, f"{dest}\n")
    # something to do still says why it cannot be done, in one line
    other = tmp_path / "other.pt"
    other.write_bytes(ckpt_bytes(9))
    specs["two"] = spec_for("two", "two.pt", known_hash=False, size=False)
    r = CliRunner().invoke(weights_group, ["import", "two", str(other), "--trust"])
    lock = W.weights_dir("two").with_name(".two.lock")
    assert r.exit_code == 2 and r.output.startswith(
        f"error: the restorekit cache cannot be written at {lock}: Read-only file system;")


# --- 4. an import killed midway leaves nothing that stays ------------------------------------


def _dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


@pytest.mark.parametrize("how", ["file", "folder"])
def test_leftover_of_a_killed_import_is_named_then_removed(tmp_path: Path, specs: dict[str, W.WeightSpec],
                                                           how: str) -> None:
    blob = ckpt_bytes(4)
    src_dir = tmp_path / "src"
    src_dir.mkdir()
    src = src_dir / "n.pt"
    src.write_bytes(blob)
    specs["toy"] = spec_for("toy", "n.pt", data=blob)
    W.import_file("toy", src)
    pid = _dead_pid()
    stray = W.weights_dir("toy") / f".n.pt.import-{pid}"
    stray.write_bytes(blob[:100])  # what SIGKILL during the copy leaves
    live = subprocess.Popen(["sleep", "60"])  # an import still running elsewhere is not named
    try:
        (W.weights_dir("toy") / f".n.pt.import-{live.pid}").write_bytes(b"")
        r = CliRunner().invoke(weights_group, ["verify", "toy"])
    finally:
        live.kill()
        live.wait()
    assert r.exit_code == 0, r.output
    assert r.output.splitlines() == [
        f"note: {stray} is the partial copy of an interrupted import (process {pid}, gone); the next "
        "`restorekit weights import toy` removes it, or delete it", "ok toy"]
    r = CliRunner().invoke(weights_group, ["verify"])  # every cached weights: named there too
    assert r.exit_code == 0 and str(stray) in r.output
    if how == "file":
        W.import_file("toy", src)  # the same file again: the leftover goes all the same
    else:
        W.import_archive("toy", src_dir)
    assert not stray.exists()
    assert sorted(p.name for p in W.weights_dir("toy").iterdir()) == ["manifest.json", "n.pt"]
    r = CliRunner().invoke(weights_group, ["verify", "toy"])
    assert (r.exit_code, r.output) == (0, "ok toy\n")


def test_leftover_of_a_first_import_killed_midway(tmp_path: Path, specs: dict[str, W.WeightSpec]) -> None:
    """A first import killed during its copy leaves a folder holding only the partial copy: `verify`
    (no names) still names it, though nothing of those weights is cached."""
    specs["toy"] = spec_for("toy", "n.pt", data=ckpt_bytes(4))
    folder = W.weights_dir("toy")
    folder.mkdir(parents=True)
    pid = _dead_pid()
    (folder / f".n.pt.import-{pid}").write_bytes(b"partial")
    r = CliRunner().invoke(weights_group, ["verify"])
    assert r.exit_code == 0 and r.output.splitlines() == [
        f"note: {folder}/.n.pt.import-{pid} is the partial copy of an interrupted import (process {pid}, gone); "
        "the next `restorekit weights import toy` removes it, or delete it", "nothing cached"]


# --- 5. convert never writes over a file unasked ---------------------------------------------


def test_convert_refuses_an_existing_output_unless_overwrite(tmp_path: Path) -> None:
    src = tmp_path / "ckpt.pt"
    torch.save({"w": torch.ones(2)}, src)
    out = tmp_path / "photo.png"
    Image.new("RGB", (8, 8), (1, 2, 3)).save(out)
    before = out.read_bytes()
    r = CliRunner().invoke(weights_group, ["convert", str(src), "-o", str(out)])
    assert r.exit_code == 2
    assert r.output.splitlines()[-1] == f"Error: {out} already exists; pass --overwrite to replace it, or choose another -o"
    assert out.read_bytes() == before
    with pytest.raises(RestorekitError, match="already exists; pass --overwrite"):  # the API refuses it too
        W.convert_to_safetensors(src, out, overwrite=False)
    assert out.read_bytes() == before
    r = CliRunner().invoke(weights_group, ["convert", str(src), "-o", str(out), "--overwrite"])
    assert r.exit_code == 0, r.output
    assert list(st_load(out.read_bytes())) == ["w"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt.pt", "photo.png"]  # no temporary file left
    # the default output too
    (tmp_path / "ckpt.safetensors").write_bytes(b"keep me")
    r = CliRunner().invoke(weights_group, ["convert", str(src)])
    assert r.exit_code == 2 and (tmp_path / "ckpt.safetensors").read_bytes() == b"keep me"


def test_convert_onto_its_input_names_the_real_problem(tmp_path: Path) -> None:
    src = tmp_path / "w.safetensors"
    src.write_bytes(st_save({"w": torch.ones(2)}))
    for extra in ([], ["--overwrite"]):  # never, not even with --overwrite
        r = CliRunner().invoke(weights_group, ["convert", str(src), "-o", str(src), *extra])
        assert r.exit_code == 2
        assert r.output.splitlines()[-1] == f"Error: -o {src} is the input file; choose another output file"
    r = CliRunner().invoke(weights_group, ["convert", str(src)])
    assert r.exit_code == 2
    assert r.output.splitlines()[-1] == f"Error: the default output {src} is the input file itself; choose one with -o"
