"""The core's layers: the weights package imports nothing above it, each of its modules imports
only the layers below, and faces never reach up into the commands."""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

import restorekit.weights as W
from restorekit.weights import cache, catalogue

CORE = Path(__file__).resolve().parents[1] / "restorekit"
WEIGHTS = CORE / "weights"
# What the weights layers may import from the rest of the core: the version string, the error
# types, the host-name helpers, the openers that refuse planted links, the file locks, the entry-point reader
# and whether a stream is a terminal,
# none of which imports a restorekit module but the error types.
BOTTOM = ("restorekit", "restorekit.errors", "restorekit.hosts", "restorekit.safe_open", "restorekit.file_locks",
          "restorekit.entry_points", "restorekit.terminals")


def imports(path: Path) -> list[tuple[str, bool]]:
    """Every ``restorekit`` module ``path`` imports, absolute, with whether the import is nested in a
    function (lazy). ``from PKG import NAME`` counts as ``PKG.NAME`` when NAME is a module of PKG."""
    package = ".".join(path.relative_to(CORE.parent).with_suffix("").parts[:-1])
    tree = ast.parse(path.read_text(encoding="utf-8"))
    nested = {id(n) for f in ast.walk(tree) if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef))
              for n in ast.walk(f) if n is not f}
    found: list[tuple[str, bool]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(a.name, id(node) in nested) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[:len(parts) - node.level + 1] + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            folder = CORE.parent.joinpath(*base.split("."))
            for a in node.names:
                is_module = (folder / f"{a.name}.py").is_file() or (folder / a.name / "__init__.py").is_file()
                found.append((f"{base}.{a.name}" if is_module else base, id(node) in nested))
    return [(m, lazy) for m, lazy in found if m == "restorekit" or m.startswith("restorekit.")]


def layer_order() -> list[str]:
    """The modules of ``restorekit.weights`` bottom-up, as its docstring lists them."""
    doc = W.__doc__ or ""
    return re.findall(r"^    ([a-z_]+) {2,}\S", doc, flags=re.MULTILINE)


def test_import_weights_loads_nothing_above_it() -> None:
    code = "import json, sys, restorekit.weights; print(json.dumps(sorted(sys.modules)))"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    loaded = set(json.loads(r.stdout))
    above = ("restorekit.plugins", "restorekit.builtin", "restorekit.losses", "restorekit.networks",
             "restorekit.commands", "restorekit.registry_schema", "torch")
    assert not {m for m in loaded if m.startswith(above)}, sorted(m for m in loaded if m.startswith(above))
    assert "restorekit.weights.catalogue" in loaded


def test_docstring_lists_every_module_once() -> None:
    modules = sorted(p.stem for p in WEIGHTS.glob("*.py") if p.stem != "__init__")
    order = layer_order()
    assert sorted(order) == modules and len(set(order)) == len(order)
    assert order[0] == "spec" and order[-1] == "catalogue"


def test_each_layer_imports_only_layers_below() -> None:
    order = layer_order()
    for i, name in enumerate(order):
        below = {f"restorekit.weights.{m}" for m in order[:i]}
        for mod, lazy in imports(WEIGHTS / f"{name}.py"):
            if mod.startswith("restorekit.weights."):
                assert mod in below, f"{name} imports {mod}, which is not below it"
            elif name == "catalogue" and lazy:
                assert mod in ("restorekit.plugins", "restorekit.registry_schema"), f"catalogue imports {mod}"
            else:  # the bottom of the core: modules that import no restorekit module themselves
                assert mod in BOTTOM, f"{name} imports {mod}"


def test_the_bottom_of_the_core_imports_nothing_of_restorekit() -> None:
    # (but the error types, which import nothing: the openers' refusals are FileSystemErrors)
    allowed = {"restorekit.safe_open": [("restorekit.errors", False)],
               "restorekit.entry_points": [("restorekit", False), ("restorekit.errors", False)]}
    for mod in BOTTOM:
        path = CORE.parent.joinpath(*mod.split("."))
        path = path / "__init__.py" if path.is_dir() else path.with_suffix(".py")
        if mod != "restorekit":
            assert imports(path) == allowed.get(mod, []), f"{mod} imports {imports(path)}"


def test_only_the_catalogue_asks_the_plugin_registry_and_only_lazily() -> None:
    for path in WEIGHTS.glob("*.py"):
        for mod, lazy in imports(path):
            if mod.startswith(("restorekit.plugins", "restorekit.builtin", "restorekit.losses")):
                assert path.stem == "catalogue" and lazy, f"{path.name} imports {mod}"


def test_faces_never_import_commands() -> None:
    files = sorted((CORE / "faces").rglob("*.py"))
    assert files
    for path in files:
        for mod, _ in imports(path):
            assert not mod.startswith("restorekit.commands"), f"{path.relative_to(CORE)} imports {mod}"
    names = [".".join(p.relative_to(CORE.parent).with_suffix("").parts) for p in files if p.stem != "__init__"]
    code = (f"import importlib, json, sys\nfor n in {names!r}: importlib.import_module(n)\n"
            "print(json.dumps(sorted(sys.modules)))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert not [m for m in json.loads(r.stdout) if m.startswith("restorekit.commands")]


def test_every_public_name_is_the_one_its_layer_defines() -> None:
    homes = W._HOMES  # type: ignore[attr-defined]
    assert set(W.__all__) == set(homes)
    for name in W.__all__:
        assert getattr(W, name) is getattr(homes[name], name), name


def test_patching_the_package_reaches_every_caller(tmp_path: Path) -> None:
    spec = W.WeightSpec(name="patched", architecture="x", plugin="test", license="MIT",
                        files=(W.WeightFile(filename="a.bin"),))
    original = catalogue.registry_specs
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(W, "registry_specs", lambda: {"patched": (spec, Path("patched.toml"))})
        mp.setattr(W, "plugin_specs", lambda: {})
        mp.setattr(W, "cache_dir", lambda: tmp_path)
        assert catalogue.registry_specs is W.registry_specs
        assert W.all_specs() == {"patched": spec} and W.get_spec("patched") is spec
        assert cache.weights_dir("patched") == tmp_path / "weights" / "patched"  # cache's own caller
        assert not W.is_cached("patched") and W.integrity(spec, spec.files[0]) == "unknown"
    assert catalogue.registry_specs is original and W.registry_specs is original
    assert cache.cache_dir is W.cache_dir
