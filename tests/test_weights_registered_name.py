"""A ``--weights NAME|PATH`` value that is exactly a registered weights name (no folder in it) means
the registered, sha256-checked weights even when a file of that name lies in the current folder; the
file is used only when written as a path (``./NAME``)."""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

import pytest
import torch

from restorekit import weights as W
from restorekit.errors import RestorekitError, UnknownNameError


def _checkpoint(value: float) -> bytes:
    buf = io.BytesIO()
    torch.save({"x": torch.full((3,), value)}, buf)
    return buf.getvalue()


REGISTERED = _checkpoint(1.0)
DECOY = _checkpoint(2.0)


@pytest.fixture
def registered(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Registered weights 'test-prior' (one file, pinned), cached; the cwd is a fresh folder."""
    root = tmp_path / "registry"
    (root / "weights").mkdir(parents=True)
    (root / "weights" / "test-prior.toml").write_text(
        'name = "test-prior"\nkind = "weights"\narchitecture = "test"\nplugin = "test"\nlicense = "MIT"\n'
        f'[[files]]\nfilename = "w.pt"\nsize = {len(REGISTERED)}\n'
        f'sha256 = "{hashlib.sha256(REGISTERED).hexdigest()}"\n')
    monkeypatch.setenv("RESTOREKIT_REGISTRY", str(root))
    monkeypatch.setenv("RESTOREKIT_HOME", str(tmp_path / "home"))
    src = tmp_path / "download" / "w.pt"
    src.parent.mkdir()
    src.write_bytes(REGISTERED)
    W.import_file("test-prior", src)
    cwd = tmp_path / "work"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    return cwd


def test_a_registered_name_loads_the_registered_weights_not_a_same_named_file(registered, capsys):
    (registered / "test-prior").write_bytes(DECOY)
    capsys.readouterr()
    assert torch.equal(W.load_state_dict("test-prior")["x"], torch.full((3,), 1.0))
    assert W.weights_file("test-prior") == W.resolve("test-prior")
    assert torch.equal(W.load_checkpoint("test-prior")["x"], torch.full((3,), 1.0))
    err = capsys.readouterr().err
    note = ("note: 'test-prior' is the registered weights; for the file of that name in this folder "
            "write ./test-prior")
    assert err.splitlines() == [note], err  # said once, however often the name is used
    # Written as a path, the file is what loads.
    assert torch.equal(W.load_state_dict("./test-prior")["x"], torch.full((3,), 2.0))
    assert torch.equal(W.load_state_dict(registered / "test-prior")["x"], torch.full((3,), 2.0))
    assert torch.equal(W.load_state_dict(Path("test-prior"))["x"], torch.full((3,), 2.0))
    assert W.weights_source("test-prior") == (W.resolve("test-prior"), "test-prior")
    assert W.weights_source("./test-prior") == (Path("test-prior"), None)
    assert capsys.readouterr().err == ""


def test_without_a_same_named_file_nothing_is_said(registered, capsys):
    assert torch.equal(W.load_state_dict("test-prior")["x"], torch.full((3,), 1.0))
    assert capsys.readouterr().err == ""


def test_a_same_named_file_does_not_stand_in_for_registered_weights_not_cached(registered, tmp_path):
    """Registered but not cached: the missing-weights error, not the file beside it."""
    (registered / "test-prior").write_bytes(DECOY)
    for f in (tmp_path / "home").rglob("w.pt"):
        f.unlink()
    with pytest.raises(RestorekitError) as err:
        W.load_state_dict("test-prior")
    assert "test-prior" in str(err.value) and "./test-prior" not in str(err.value)


def test_any_other_value_keeps_existing_file_first(registered):
    (registered / "mine").write_bytes(DECOY)
    (registered / "test-prio").write_bytes(DECOY)
    assert torch.equal(W.load_state_dict("mine")["x"], torch.full((3,), 2.0))
    assert torch.equal(W.load_state_dict("test-prio")["x"], torch.full((3,), 2.0))
    with pytest.raises(UnknownNameError, match=r"^unknown weights 'test-pri' \(did you mean 'test-prior'"):
        W.load_state_dict("test-pri")
    with pytest.raises(RestorekitError, match=r"^\./test-pri: no such file"):
        W.load_state_dict("./test-pri")


def test_a_run_saves_a_registered_name_as_a_name_beside_a_same_named_file(registered):
    """A checkpoint saves ``name_or_path`` settings absolute only when they name a file: a
    registered name beside a same-named file stays the name, ``./NAME`` becomes the file."""
    from restorekit.training.config import absolute_settings

    class Settings:
        PATH_SETTINGS = {"generator": "name_or_path", "init": "name_or_path"}

    (registered / "test-prior").write_bytes(DECOY)
    saved = absolute_settings(Settings, {"generator": "test-prior", "init": "./test-prior"})  # type: ignore[arg-type]
    assert saved == {"generator": "test-prior", "init": str(registered / "test-prior")}
