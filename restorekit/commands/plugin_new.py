"""``restorekit plugin new NAME``: write a ready-to-publish plugin project (and ``plugin check NAME``).

The project (``DIR/restorekit-NAME``) has a ``pyproject.toml`` with the ``restorekit`` entry
point, a working method (bicubic upscaling followed by an unsharp mask), tests that run the
conformance suite, a README on testing, publishing and getting listed, the entry for
``registry/plugins/`` and a LICENSE. The templates live in ``restorekit/templates/plugin``
(package data); ``__module__`` and ``__dist__`` in their paths and ``{{key}}`` in their text are
filled in (GitHub's dotted ``${{ matrix.x }}`` expressions are not placeholders and stay), and
``.tmpl`` is dropped.
"""

from __future__ import annotations

import datetime as _dt
import json
import keyword
import os
import re
import shutil
import tempfile
from dataclasses import asdict, dataclass
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Any

import click

from ..cli import emit_json, fail_usage, json_output
from ..command_group import CommandGroup

LICENSES = ("Apache-2.0", "MIT", "BSD-3-Clause")
# Letters, digits and single separators ('-', '_', '.'), starting with a letter.
NAME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9]*(?:[-_.][A-Za-z0-9]+)*$")
MAX_NAME = 40
PLACEHOLDER = re.compile(r"\{\{\s*([a-z_]+)\s*\}\}")


@dataclass(frozen=True)
class PluginNames:
    """Every name derived from ``NAME``: distribution, module, entry point, method."""

    name: str  # PEP 503 normalised: lower case, runs of -_. become '-'
    distribution: str  # restorekit-NAME
    module: str  # restorekit_NAME (underscores)
    entry_point: str  # NAME with underscores (an identifier)
    method: str  # the registered method name (= entry point)


def plugin_names(raw: str) -> PluginNames:
    """Validate ``raw`` and derive the names; raises ``ValueError`` with a one-line reason."""
    if not NAME_RE.fullmatch(raw):
        raise ValueError(f"plugin name '{raw}' must start with a letter and use letters, digits and single "
                         "'-', '_' or '.' separators (e.g. 'sharpen' or 'my-sr')")
    norm = re.sub(r"[-_.]+", "-", raw).lower()
    if norm == "restorekit" or norm.startswith("restorekit-"):
        raise ValueError(f"plugin name '{raw}': give it without the 'restorekit-' prefix "
                         "(the distribution becomes restorekit-NAME)")
    if len(norm) > MAX_NAME:
        raise ValueError(f"plugin name '{raw}' is longer than {MAX_NAME} characters")
    ident = norm.replace("-", "_")
    if keyword.iskeyword(ident):
        raise ValueError(f"plugin name '{raw}' is a Python keyword")
    return PluginNames(norm, f"restorekit-{norm}", f"restorekit_{ident}", ident, ident)


def _check_free(names: PluginNames) -> None:
    """Refuse names an installed plugin or method already uses (the new one would clash), every
    installed plugin's: one RESTOREKIT_LOAD_PLUGINS leaves out is installed all the same."""
    from ..plugins import load_registry, registry

    if os.environ.get("RESTOREKIT_LOAD_PLUGINS") is None:
        reg = registry()
    else:
        limit = os.environ.pop("RESTOREKIT_LOAD_PLUGINS")
        try:
            reg = load_registry(strict=False)
        finally:
            os.environ["RESTOREKIT_LOAD_PLUGINS"] = limit
    rec = reg.plugins.get(names.entry_point)
    if rec is not None:
        raise ValueError(f"plugin name '{names.entry_point}' is already taken by the installed "
                         f"distribution {rec.distribution}")
    declared = sorted(r.distribution for r in reg.plugins.values() if r.name == names.entry_point)
    if declared:  # two distributions declare it: listed apart as 'NAME (dist)', both broken
        raise ValueError(f"plugin name '{names.entry_point}' is already taken by the installed "
                         f"distributions {' and '.join(declared)} (broken: they clash)")
    if names.method in reg.items["methods"]:
        owner = reg.owner["methods"][names.method]
        raise ValueError(f"method '{names.method}' is already registered by plugin '{owner}'; choose another name")
    claimants = reg.clashed.get(("methods", names.method))
    if claimants:  # registered by two plugins: neither serves it, but a third would clash with both
        raise ValueError(f"method '{names.method}' is already registered by plugins "
                         f"{' and '.join(repr(p) for p in claimants)} (broken by that clash); choose another name")


def _toml_string(value: str) -> str:
    """A TOML basic string (JSON escapes are valid TOML escapes)."""
    return json.dumps(value, ensure_ascii=False)


def _parse_author(author: str) -> tuple[str, str]:
    """``"Ada Lovelace <ada@example.org>"`` or ``"Ada Lovelace"`` to (name, email)."""
    m = re.match(r"^\s*(.*?)\s*(?:<([^<>\s]+@[^<>\s]+)>)?\s*$", author)
    name, email = (m.group(1), m.group(2) or "") if m else (author.strip(), "")
    if not name and not email:
        raise ValueError("--author is empty")
    return name, email


def template_values(names: PluginNames, *, description: str, author: str, license_id: str) -> dict[str, str]:
    """The ``{{key}}`` values the templates use."""
    from .. import __version__

    if "\n" in description or "\r" in description:
        raise ValueError("--description must be one line")
    authors_toml, holder = "", "the authors of " + names.distribution
    if author:
        name, email = _parse_author(author)
        parts = ([f"name = {_toml_string(name)}"] if name else []) + ([f"email = {_toml_string(email)}"] if email else [])
        authors_toml = "authors = [{ " + ", ".join(parts) + " }]\n"
        holder = name or email
    major, minor = (__version__.split(".") + ["0"])[:2]
    core = f"{major}.{minor}"
    # The minor version it was made with: a later minor release of restorekit may change the plugin API.
    core_next = f"{major}.{int(''.join(ch for ch in minor if ch.isdigit()) or 0) + 1}"
    return {
        "dist": names.distribution, "dist_underscore": names.distribution.replace("-", "_"),
        "module": names.module, "ep": names.entry_point, "method": names.method,
        "description": description, "description_toml": _toml_string(description),
        # In a Python docstring: backslashes and quotes escaped, so no text ends it early.
        "description_docstring": description.replace("\\", "\\\\").replace('"', '\\"'),
        "authors_toml": authors_toml, "holder": holder, "license": license_id,
        "year": str(_dt.date.today().year), "core_version": core, "core_next": core_next,
    }


def render(text: str, values: dict[str, str], where: str) -> str:
    """Fill ``{{key}}`` placeholders; an unknown key is an error (a template bug, not user input)."""
    def sub(m: re.Match[str]) -> str:
        key = m.group(1)
        if key not in values:
            raise KeyError(f"template {where}: unknown placeholder {{{{{key}}}}}")
        return values[key]

    return PLACEHOLDER.sub(sub, text)


def _templates() -> Traversable:
    return resources.files("restorekit").joinpath("templates", "plugin")


def _walk(node: Traversable, prefix: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], Traversable]]:
    out = []
    for child in sorted(node.iterdir(), key=lambda t: t.name):
        if child.is_dir():
            out.extend(_walk(child, (*prefix, child.name)))
        elif child.name.endswith(".tmpl"):
            out.append(((*prefix, child.name[:-len(".tmpl")]), child))
    return out


def _target_path(parts: tuple[str, ...], names: PluginNames, license_id: str) -> str | None:
    """Where a template goes in the project (None: not for this project)."""
    if parts[0] == "licenses":
        return "LICENSE" if parts[-1] == license_id else None
    mapped = [p.replace("__module__", names.module).replace("__dist__", names.distribution) for p in parts]
    if mapped == ["gitignore"]:
        mapped = [".gitignore"]
    elif mapped[0] == "github":
        mapped[0] = ".github"
    return "/".join(mapped)


def write_project(names: PluginNames, parent: Path, *, description: str, author: str = "",
                  license_id: str = "Apache-2.0") -> tuple[Path, list[str]]:
    """Write the project into ``parent/restorekit-NAME``; returns the folder and its files.

    The project is assembled in a hidden sibling folder and renamed into place, so a failure
    leaves nothing half-written; an existing folder is never touched.
    """
    if license_id not in LICENSES:
        raise ValueError(f"license '{license_id}' is not offered; choose one of {', '.join(LICENSES)}")
    dest = parent / names.distribution
    if dest.exists() or dest.is_symlink():
        raise FileExistsError(f"{dest} already exists; remove it or choose another --dir (nothing was written)")
    values = template_values(names, description=description, author=author, license_id=license_id)
    parent.mkdir(parents=True, exist_ok=True)
    # Assembled in a fresh hidden folder of a random name (never one that exists: a link planted at
    # a predictable name had the project written wherever it pointed); the project folder inside it
    # is made plainly, so it has the permissions the umask gives.
    holder = Path(tempfile.mkdtemp(prefix=f".{names.distribution}.tmp-", dir=parent))
    tmp = holder / names.distribution
    written = []
    try:
        tmp.mkdir()
        for parts, node in _walk(_templates()):
            rel = _target_path(parts, names, license_id)
            if rel is None:
                continue
            text = render(node.read_text(encoding="utf-8"), values, "/".join(parts))
            path = tmp / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
            written.append(rel)
        if "LICENSE" not in written:
            raise FileNotFoundError(f"no license template for {license_id} (restorekit installation incomplete)")
        os.rename(tmp, dest)  # fails rather than merging when dest appeared meanwhile
    finally:
        shutil.rmtree(holder, ignore_errors=True)
    return dest, sorted(written)


@click.group("plugin", cls=CommandGroup)
def plugin_group() -> None:
    """Tools for plugin authors: `plugin new NAME` starts a project, `plugin check NAME` runs the conformance suite."""


@plugin_group.command("new")
@click.argument("name")
@click.option("--dir", "parent", type=click.Path(file_okay=False, path_type=Path), default=Path("."),
              show_default=True, help="Folder in which the project folder restorekit-NAME is created.")
@click.option("--author", default="", help='Author, "Name" or "Name <email>" (pyproject and LICENSE).')
@click.option("--description", default="", help="One-line description (default: a sentence naming the method).")
@click.option("--license", "license_id", type=click.Choice(LICENSES), default="Apache-2.0", show_default=True,
              help="License of the new project (SPDX id).")
@click.option("--json", "as_json", is_flag=True, help="Print what was written as JSON.")
@json_output
def plugin_new(name: str, parent: Path, author: str, description: str, license_id: str, as_json: bool) -> None:
    """Write a ready-to-publish plugin project restorekit-NAME with a working method and tests.

    The method is registered as NAME (with '_' for '-'); the module is restorekit_NAME.
    """
    try:
        names = plugin_names(name)
        _check_free(names)
        desc = description.strip() or f"restorekit plugin: the {names.method} method (bicubic + unsharp mask)"
        dest, files = write_project(names, parent, description=desc, author=author, license_id=license_id)
    except (ValueError, FileExistsError, OSError) as exc:
        fail_usage(str(exc))
        return
    info = {**asdict(names), "path": str(dest), "license": license_id, "files": files}
    if as_json:
        emit_json(info)
        return
    click.echo(f"Created {dest}: distribution {names.distribution}, module {names.module}, "
               f"method '{names.method}' ({len(files)} files).")
    click.echo("Next:")
    click.echo(f"  cd {dest}")
    click.echo('  pip install -e ".[test]"')
    click.echo("  pytest")
    click.echo(f"  restorekit run {names.method} --scale 4 --input LR_DIR --output OUT_DIR")
    click.echo("README.md says how to publish it and get it listed in restorekit's registry.")


@plugin_group.command("check")
@click.argument("name")
@click.option("--missing-weights", type=click.Choice(["skip", "fail"]), default="skip", show_default=True,
              help="What a component whose weights are not cached counts as.")
@click.option("--opt", "opts", multiple=True, metavar="COMPONENT.KEY=VALUE",
              help="A value for one component's checks (repeatable), e.g. pulse.steps=2: a slow method checked "
                   "at cheap settings. It sets a method's option, a degradation's parameter, a loss's or a "
                   "generator/encoder/face embedder/face detector's constructor argument; metrics and weights "
                   "take none.")
@click.option("--quiet", "-q", is_flag=True, help="No line per component as it starts.")
@click.option("--json", "as_json", is_flag=True, help="Print the results as JSON.")
@json_output
def plugin_check(name: str, missing_weights: str, opts: tuple[str, ...], quiet: bool, as_json: bool) -> None:
    """Run the conformance suite over everything plugin NAME registers (default options, or --opt).

    Each component's checks call it a few dozen times (batches, seeds, samples, scales), so a slow
    method at its defaults takes long (PULSE: many minutes): give it cheap settings with --opt, or
    check it from the plugin's tests with conformance_cases(configs=...). A line on stderr names
    each component as it starts. Exit code 1 when any check fails.
    """
    from rich.markup import escape

    from ..cli import table
    from ..options import OptionError, parse_targeted_pairs
    from ..testing.cases import run_conformance
    from ..testing.conformance import ConformanceError

    try:
        configs = _check_configs(name, parse_targeted_pairs(opts, "COMPONENT"))
    except OptionError as exc:
        fail_usage(str(exc))
        return

    def starting(case_id: str) -> None:
        if not quiet:
            click.echo(f"checking {case_id} …", err=True)

    try:
        results = run_conformance(name, missing_weights=missing_weights,  # type: ignore[arg-type]
                                  configs=configs, starting=starting)
    except ConformanceError as exc:
        fail_usage(str(exc))
        return
    if as_json:
        emit_json([asdict(r) for r in results])
    else:  # fold, not cut: the detail names the contract and the setting that broke it
        table(f"Conformance of plugin '{name}'", ["component", "status", "seconds", "detail"],
              [[r.id, r.status, f"{r.seconds:.1f}", escape(r.detail)] for r in results], overflow="fold")
    if any(r.status == "failed" for r in results):
        raise SystemExit(1)


# The keyword argument of each kind's check that `plugin check --opt COMPONENT.KEY=VALUE` fills.
_OPT_ARGUMENT = {"methods": "options", "degradations": "params", "losses": "kwargs", "generators": "kwargs",
                 "encoders": "kwargs", "face_embedders": "kwargs", "face_detectors": "kwargs"}


def _check_configs(plugin: str, targeted: dict[str, dict[str, str]]) -> dict[str, dict[str, Any]]:
    """``--opt COMPONENT.KEY=VALUE`` values as the configs of ``plugin``'s checks, each under its
    kind's argument (a method's options, a degradation's params, a constructor's kwargs), read by
    the types of the component's options; an unknown component or key, or a kind that takes no
    options (metrics, weights), is an :class:`OptionError` naming it. An uninstalled plugin: no
    configs (the check says it is not installed)."""
    from ..options import OptionError, _field, coerce_values, model_from_signature, validate
    from ..plugins import KINDS, registry, suggest
    from ..testing.cases import _SINGULAR

    reg = registry()
    if not targeted or plugin not in reg.plugins:
        return {}
    owned = {kind: [n for n in reg.names(kind) if reg.owner[kind][n] == plugin] for kind in KINDS}
    everything = [n for names in owned.values() for n in names]
    configs: dict[str, dict[str, Any]] = {}
    for component, values in targeted.items():
        kinds = [kind for kind, names in owned.items() if component in names]
        example = f"--opt {component}.{next(iter(values))}=…"
        if not kinds:
            raise OptionError(f"{example}: plugin '{plugin}' registers no component '{component}'"
                              f"{suggest(component, everything)}; it registers: {', '.join(everything) or 'nothing'}")
        takes = [k for k in kinds if k in _OPT_ARGUMENT]
        if not takes:
            what = " and a ".join(_SINGULAR[k] for k in kinds)
            raise OptionError(f"{example}: '{component}' is a {what}, which takes no options: --opt sets a method's "
                              "options, a degradation's params or a loss's (or factory's) constructor arguments")
        for kind in takes:
            obj = reg.items[kind][component]
            if kind == "methods":
                model = obj.Options
            elif kind == "degradations":
                model = obj.Params
            elif hasattr(obj, "options_model"):
                model = obj.options_model()
            else:
                model = model_from_signature(obj, component)
            label = f"{_SINGULAR[kind]} '{component}'"
            if model.model_config.get("extra") != "allow":
                known = list(model.model_fields)
                if kind == "losses":
                    known = [k for k in known if k != "weight"]  # the check sets the weight itself
                unknown = [k for k in values if _field(model, k) is None or (kind == "losses" and k == "weight")]
                if unknown == ["weight"] and kind == "losses":
                    raise OptionError(f"--opt {component}.weight: the check sets a loss's weight itself (0.5); "
                                      f"--opt gives {label} the other arguments of its constructor: "
                                      f"{', '.join(known) or 'it takes none'}")
                if unknown:
                    raise OptionError(f"--opt {component}.{unknown[0]}: {label} has no option '{unknown[0]}'"
                                      f"{suggest(unknown[0], known)}; it takes: {', '.join(known) or 'none'}")
            if _OPT_ARGUMENT[kind] == "kwargs":  # passed to the constructor as they are: read and checked here
                opts = validate(model, values, label=label)
                given: dict[str, Any] = {k: getattr(opts, k) for k in opts.model_fields_set}
            else:  # the check validates them against the model itself; a value it refuses is the user's,
                try:  # though: said here, before any check runs, not as the component's failure
                    given = coerce_values(model, values)
                except OptionError as exc:
                    raise OptionError(f"{label}: {exc}") from None
                validate(model, given, label=label)
            configs[f"{_SINGULAR[kind]}:{component}"] = {_OPT_ARGUMENT[kind]: given}
    return configs


def attach(cli: click.Group) -> None:
    cli.add_command(plugin_group)
