"""What the three distributions declare (read from the pyproject files; no wheel is built here) and the
build hook that ships registry/ inside the restorekit wheel."""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
PYPROJECTS = {"restorekit": ROOT / "pyproject.toml",
              "psp_sr": ROOT / "plugins" / "psp_sr" / "pyproject.toml",
              "baselines": ROOT / "plugins" / "baselines" / "pyproject.toml"}
PLUGIN_PACKAGES = {"psp_sr": "restorekit_psp_sr", "baselines": "restorekit_baselines"}
TEMPLATE = ROOT / "restorekit" / "templates" / "plugin"

# Oldest releases with what restorekit calls: torch.serialization.safe_globals and
# torch.onnx.export(dynamo=...) (2.5), torch.amp.GradScaler("cuda") and torch.uint16 (2.3).
TORCH_MIN, TORCHVISION_MIN = Version("2.5"), Version("0.20")
# Import name -> distribution, for the plugins' direct imports.
IMPORT_TO_DIST = {"PIL": "pillow", "torch": "torch", "numpy": "numpy", "pydantic": "pydantic",
                  "safetensors": "safetensors", "click": "click", "rich": "rich", "restorekit": "restorekit",
                  "torchvision": "torchvision", "pluggy": "pluggy", "packaging": "packaging",
                  "platformdirs": "platformdirs", "lpips": "lpips"}


def project(which: str) -> dict:
    return tomllib.loads(PYPROJECTS[which].read_text())


def requirements(proj: dict) -> dict[str, list[Requirement]]:
    """``{distribution: its requirements}``: several where python_version markers give each Python its bound."""
    found: dict[str, list[Requirement]] = {}
    for req in (Requirement(r) for r in proj["project"]["dependencies"]):
        found.setdefault(req.name.lower(), []).append(req)
    return found


def lower_bound(req: Requirement) -> Version:
    bounds = [Version(s.version) for s in req.specifier if s.operator in (">=", "==", "~=")]
    assert bounds, f"{req} has no lower bound"
    return max(bounds)


@pytest.mark.parametrize("which", PYPROJECTS)
def test_build_system_can_read_spdx_license_expressions(which):
    proj = project(which)
    [req] = [Requirement(r) for r in proj["build-system"]["requires"] if r.startswith("setuptools")]
    # PEP 639 `license = "SPDX expression"` and `license-files` need setuptools 77.
    assert isinstance(proj["project"]["license"], str) and lower_bound(req) >= Version("77")


@pytest.mark.parametrize("which", PYPROJECTS)
def test_torch_lower_bound_covers_the_apis_used(which):
    reqs = requirements(project(which))
    assert reqs["torch"] and all(lower_bound(r) >= TORCH_MIN for r in reqs["torch"])
    assert all(lower_bound(r) >= TORCHVISION_MIN for r in reqs.get("torchvision", []))


def test_the_plugin_template_asks_for_the_same_torch():
    text = (TEMPLATE / "pyproject.toml.tmpl").read_text()
    torch_reqs = [Requirement(r) for r in re.findall(r'"(torch[^"]*)"', text)]
    core = requirements(project("restorekit"))["torch"]
    assert [(r.specifier, r.marker) for r in torch_reqs] == [(r.specifier, r.marker) for r in core]
    assert 'requires = ["setuptools>=77"]' in text


@pytest.mark.parametrize("which", PYPROJECTS)
def test_license_files_exist(which):
    proj = project(which)["project"]
    files = proj["license-files"]
    assert "LICENSE" in files
    for name in files:
        assert (PYPROJECTS[which].parent / name).is_file(), name
    text = (PYPROJECTS[which].parent / "LICENSE").read_text()
    assert "Apache License" in text and "Version 2.0, January 2004" in text


@pytest.mark.parametrize("which", PLUGIN_PACKAGES)
def test_plugins_declare_their_bundled_research_only_weights(which):
    from restorekit.registry_schema import load_dir
    from restorekit.weights import WeightSpec

    proj = project(which)["project"]
    folder = PYPROJECTS[which].parent
    assert proj["license"] == "Apache-2.0 AND LicenseRef-research-only"
    assert "WEIGHTS-LICENSE.md" in proj["license-files"]
    notice = (folder / "WEIGHTS-LICENSE.md").read_text()
    bundled = sorted((folder / PLUGIN_PACKAGES[which] / "weights").glob("*.safetensors"))
    assert bundled
    specs = {f.filename: e for e in load_dir(ROOT / "registry") if isinstance(e, WeightSpec)
             for f in e.files if f.bundled}
    for path in bundled:  # every bundled file named, with its registry entry and that entry's license
        spec = specs[path.name]
        assert f"{PLUGIN_PACKAGES[which]}/weights/{path.name}" in notice and spec.name in notice
        assert spec.license == "LicenseRef-research-only" and spec.license in notice
    assert "CC BY-NC-SA 4.0" in notice and "All-Age-Faces" in notice


@pytest.mark.parametrize("which", PLUGIN_PACKAGES)
def test_plugins_pin_the_core_minor_and_declare_what_they_import(which):
    from restorekit import __version__

    proj = project(which)
    reqs = requirements(proj)
    [core] = reqs["restorekit"]
    major, minor = Version(__version__).release[:2]
    assert Version(__version__) in core.specifier
    assert Version(f"{major}.{minor + 1}") not in core.specifier  # lockstep: a new minor may change the plugin API
    package = PYPROJECTS[which].parent / PLUGIN_PACKAGES[which]
    imported: set[str] = set()
    for path in package.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                imported.update(a.name.split(".")[0] for a in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                imported.add(node.module.split(".")[0])
    third_party = {m for m in imported if m not in sys.stdlib_module_names and m != PLUGIN_PACKAGES[which]}
    unknown = third_party - set(IMPORT_TO_DIST)
    assert not unknown, f"{which} imports {sorted(unknown)}: add them to IMPORT_TO_DIST and the dependencies"
    missing = {IMPORT_TO_DIST[m] for m in third_party} - set(reqs)
    assert not missing, f"{which} imports {sorted(missing)} without declaring them"


@pytest.mark.parametrize("which", PLUGIN_PACKAGES)
def test_plugins_ship_py_typed(which):
    package = PLUGIN_PACKAGES[which]
    assert (PYPROJECTS[which].parent / package / "py.typed").is_file()
    assert "py.typed" in project(which)["tool"]["setuptools"]["package-data"][package]


def test_pytest_plugin_module_imports_nothing_heavy_at_module_level():
    """restorekit.testing.fixtures is loaded by every pytest run where restorekit is installed."""
    tree = ast.parse((ROOT / "restorekit" / "testing" / "fixtures.py").read_text())
    top = []
    for node in tree.body:
        if isinstance(node, ast.If):  # `if TYPE_CHECKING:` imports are never executed
            continue
        if isinstance(node, ast.Import):
            top += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            top.append("." * node.level + (node.module or ""))
    assert not [m for m in top if m.split(".")[0] in ("torch", "numpy") or m.startswith(".")], top


def test_pytest_plugin_does_not_import_torch():
    """What a plugin author's `pytest` pays for restorekit's fixtures: no torch import (~2 s)."""
    code = "import sys, restorekit.testing.fixtures; print(sorted(m for m in ('torch', 'numpy') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


def run_python(code: str, cwd: Path) -> str:
    """``code`` in a fresh interpreter (setuptools is not imported here: it patches distutils)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run([sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    return out.stdout


def test_registry_build_hook_removes_stale_entries(tmp_path):
    src = tmp_path / "registry"
    for sub in ("weights", "plugins"):
        (src / sub).mkdir(parents=True)
    (src / "weights" / "kept.toml").write_text('name = "kept"\n')
    (src / "plugins" / "restorekit-x.toml").write_text('name = "restorekit-x"\n')
    (src / "weights" / "notes.txt").write_text("not an entry")
    dest = tmp_path / "build" / "lib" / "restorekit" / "_registry"
    (dest / "weights").mkdir(parents=True)
    (dest / "weights" / "removed.toml").write_text('name = "removed"\n')  # left by an earlier build
    (dest / "weights" / "kept.toml").write_text('name = "old"\n')
    (dest / "leftover").mkdir()
    code = ("from pathlib import Path; from registry._build import copy_registry; "
            f"copy_registry(Path({str(dest)!r}), Path({str(src)!r}))")
    run_python(code, tmp_path)
    shipped = sorted(p.relative_to(dest).as_posix() for p in dest.rglob("*"))
    assert shipped == ["plugins", "plugins/restorekit-x.toml", "weights", "weights/kept.toml"]
    assert (dest / "weights" / "kept.toml").read_text() == 'name = "kept"\n'

    # By default the source is the repository's registry/: the build holds exactly its entries.
    run_python(f"from pathlib import Path; from registry._build import copy_registry; copy_registry(Path({str(dest)!r}))",
               tmp_path)
    want = sorted(p.relative_to(ROOT / "registry").as_posix() for sub in ("weights", "plugins")
                  for p in (ROOT / "registry" / sub).glob("*.toml"))
    assert sorted(p.relative_to(dest).as_posix() for p in dest.rglob("*.toml")) == want


def test_restorekit_testing_submodules_stay_attributes():
    """The lazy package still hands out its submodules as attributes (``restorekit.testing.cases``)."""
    import restorekit.testing as t

    assert t.cases.collect_cases is t.collect_cases and t.conformance.check_method is t.check_method


@pytest.mark.parametrize("which", ["psp_sr", "baselines"])
def test_registry_entry_provides_what_the_plugin_registers(which):
    """The first-party entries left out "commands" (both plugins add `train …`/`bench …` commands)."""
    pytest.importorskip(PLUGIN_PACKAGES[which])
    import json

    from restorekit.registry_schema import load_entry

    dist = project(which)["project"]["name"]
    entry = load_entry(ROOT / "registry" / "plugins" / f"{dist}.toml")
    # (a fresh process: a CLI built once per process records plugin commands for its first registry only)
    listed = json.loads(subprocess.run([sys.executable, "-m", "restorekit", "plugins", "--json"], capture_output=True,
                                       text=True, check=True, timeout=120).stdout)
    registers = {kind for kind, names in next(p for p in listed if p["name"] == which)["registers"].items() if names}
    assert set(entry.provides) == registers | ({"weights"} if entry.weights else set())


def test_sdists_hold_no_tests_that_cannot_run(tmp_path):
    """The sdists shipped test files without conftest.py and helper modules (ModuleNotFoundError
    when run from the unpacked sdist); the plugins' shipped weights stay in."""
    import tarfile

    for which, folder in (("restorekit", ROOT), ("psp_sr", ROOT / "plugins" / "psp_sr"),
                          ("baselines", ROOT / "plugins" / "baselines")):
        built = subprocess.run([sys.executable, "-c", "import sys, setuptools.build_meta as b; "
                                "print(b.build_sdist(sys.argv[1]))", str(tmp_path)],
                               cwd=folder, capture_output=True, text=True, check=True).stdout.split()[-1]
        with tarfile.open(tmp_path / built) as tar:
            names = [n.split("/", 1)[1] for n in tar.getnames() if "/" in n]
        assert not [n for n in names if n.startswith(("tests/", "recipes/"))], which
        if which != "restorekit":
            shipped = [n for n in names if n.endswith(".safetensors")]
            assert shipped and all(n.startswith(f"{PLUGIN_PACKAGES[which]}/weights/") for n in shipped), which


def test_importing_the_main_module_runs_nothing():
    """`import restorekit.__main__` (pydoc, autodoc, --doctest-modules) ran the CLI: usage, exit 2."""
    done = subprocess.run([sys.executable, "-c", "import restorekit.__main__; print('imported')"],
                          capture_output=True, text=True, timeout=120)
    assert (done.returncode, done.stdout, done.stderr) == (0, "imported\n", "")
    ran = subprocess.run([sys.executable, "-m", "restorekit", "--version"], capture_output=True, text=True, timeout=120)
    assert ran.returncode == 0 and ran.stdout.startswith("restorekit, version ")
