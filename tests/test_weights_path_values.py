"""A ``--weights NAME|PATH`` value that is clearly a path (a folder in it, or a weights file
suffix) and names no file is reported as a missing file, not as a mistyped registry name."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from restorekit import weights as W
from restorekit.errors import RestorekitError, UnknownNameError

DATA = b"restorekit test weights\n"


@pytest.fixture
def registry(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "registry"
    (root / "weights").mkdir(parents=True)
    sha = hashlib.sha256(DATA).hexdigest()
    (root / "weights" / "test-prior.toml").write_text(
        'name = "test-prior"\nkind = "weights"\narchitecture = "test"\nplugin = "test"\nlicense = "MIT"\n'
        f'[[files]]\nfilename = "w.bin"\nsize = {len(DATA)}\nsha256 = "{sha}"\n')
    monkeypatch.setenv("RESTOREKIT_REGISTRY", str(root))
    monkeypatch.setenv("RESTOREKIT_HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    return root


@pytest.mark.parametrize("value", ["/nonexistent/model.pt", "./missing.safetensors", "missing.pth", "missing.PT",
                                   "missing.pkl", "missing.onnx", "missing.npz", "missing.bin", "runs/x/generator",
                                   "runs\\x\\generator"])
def test_a_missing_path_is_no_such_file(registry, value):
    with pytest.raises(RestorekitError) as err:
        W.resolve(value)
    msg = str(err.value)
    assert not isinstance(err.value, UnknownNameError)
    assert msg == f"{value}: no such file", msg


def test_the_registered_name_it_might_have_meant_is_named(registry):
    with pytest.raises(RestorekitError) as err:
        W.resolve("test-prior.safetensors")
    assert str(err.value) == "test-prior.safetensors: no such file (did you mean the registered weights 'test-prior'?)"
    with pytest.raises(RestorekitError, match=r"^models/test-prio\.pt: no such file \(did you mean .*'test-prior'"):
        W.resolve("models/test-prio.pt")


def test_a_folder_is_not_a_weights_file(registry, tmp_path):
    (tmp_path / "run").mkdir()
    with pytest.raises(RestorekitError, match=r"^run/: a folder, not a weights file$"):
        W.resolve("run/")
    with pytest.raises(RestorekitError, match=r"^run/: a folder, not a weights file$"):
        W.load_checkpoint("run/")


def test_an_unknown_name_keeps_the_registry_message(registry):
    known = r"^unknown weights 'test-prio' \(did you mean 'test-prior'\?\); known: "
    with pytest.raises(UnknownNameError, match=known):
        W.resolve("test-prio")
    with pytest.raises(UnknownNameError, match="unknown weights 'no-such-weights'"):
        W.resolve("no-such-weights")


def test_load_checkpoint_of_a_missing_file_names_it(registry):
    with pytest.raises(RestorekitError, match=r"^/nonexistent/model\.pt: no such file$"):
        W.load_checkpoint("/nonexistent/model.pt")
    with pytest.raises(RestorekitError, match=r"^missing\.safetensors: no such file$"):
        W.load_state_dict("missing.safetensors")
