"""``restorekit methods`` and ``restorekit plugins``: what is installed."""

from __future__ import annotations

import shutil
import textwrap
from typing import Any, Literal, get_args, get_origin

import click

from ..cli import emit_json, fail_usage, json_output, listing
from ..command_group import CommandGroup
from ..errors import RestorekitError, UnknownNameError
from ..interfaces import Method
from ..plugins import BUILTIN, registry

#: A plugin taking this long to import and register is named by `restorekit plugins`.
SLOW_LOAD_S = 1.0


def method_summary(cls: type[Method], plugin: str) -> dict[str, Any]:
    i = cls.info
    return {"name": i.name, "plugin": plugin, "task": i.task, "summary": i.summary, "license": i.license,
            "paper": i.paper, "deterministic": i.deterministic,
            "one_sample_ignores_seed": i.one_sample_ignores_seed, "requires_weights": list(i.requires_weights),
            "scales": list(i.scales) if i.scales is not None else "any", "input_kind": i.input_kind}


def options_schema(cls: type[Method]) -> list[dict[str, Any]]:
    out = []
    for name, f in cls.Options.model_fields.items():
        ann = f.annotation
        if get_origin(ann) is Literal:  # the choices are what a user needs to know
            type_name = " | ".join(repr(a) for a in get_args(ann))
        else:
            type_name = getattr(ann, "__name__", None) or str(ann).replace("typing.", "")
        out.append({"name": name, "type": type_name,
                    "default": None if f.is_required() else f.get_default(call_default_factory=True),
                    "required": f.is_required(), "description": f.description or "",
                    "examples": list(f.examples or [])})
    return out


@click.group("methods", cls=CommandGroup, invoke_without_command=True)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
@json_output
def methods_group(ctx: click.Context, as_json: bool) -> None:
    """List restoration methods (`methods show NAME` for one)."""
    if ctx.invoked_subcommand is not None:
        return
    reg = registry()
    rows = [method_summary(reg.items["methods"][n], reg.owner["methods"][n]) for n in reg.names("methods")]
    if as_json:
        emit_json(rows)
        return
    listing("Methods (`restorekit methods show NAME` for one in full)",
            ["name", "plugin", "scales", "weights", "license", "summary"],
            [[r["name"], r["plugin"], ",".join(map(str, r["scales"])) if r["scales"] != "any" else "any",
              method_weights_state(reg.items["methods"][r["name"]]), r["license"], r["summary"]] for r in rows],
            cut=("summary",))


def method_weights_state(cls: type[Method]) -> str:
    """What a method's weights need before it runs: ``none``, ``shipped``, ``cached``, ``pull needed``
    (a download is known) or ``missing`` (import or train them; for a method with a ``weights``
    option and no default, pass ``--weights``)."""
    from ..options import weights_option
    from .weights import names_state

    names = list(cls.info.requires_weights)
    if cls.info.default_weights:
        names.append(cls.info.default_weights)
    if names:
        return names_state(names)
    return "missing" if weights_option(cls.Options) is not None else "none"


@methods_group.command("show")
@click.argument("name")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@json_output
def methods_show(name: str, as_json: bool) -> None:
    """Show one method's metadata and options."""
    parent = click.get_current_context().parent
    as_json = as_json or bool(parent and parent.params.get("as_json"))  # `methods --json show NAME` too
    reg = registry()
    try:
        cls = reg.method(name)
    except UnknownNameError as exc:  # as run and compare say it: a usage error, exit 2
        fail_usage(str(exc))
    data = method_summary(cls, reg.owner["methods"][name])
    data["options"] = options_schema(cls)
    data["weights_licenses"] = _weights_licenses(cls)
    if as_json:
        emit_json(data)
        return
    for key in ("name", "plugin", "task", "summary", "paper", "license", "deterministic", "scales",
                "input_kind", "requires_weights"):
        value = data[key]
        if key == "deterministic" and not value and data["one_sample_ignores_seed"]:
            value = "False, except for one sample per input (the same for every seed: compare runs it once)"
        click.echo(f"{key:>17}: {value}")
    if cls.info.default_weights:
        click.echo(f"{'default_weights':>17}: {cls.info.default_weights}")
    try:
        state = method_weights_state(cls)
    except RestorekitError as exc:  # (an unreadable registry entry: the rest of the page still says what it can)
        state = f"unknown ({exc})"
    click.echo(f"{'weights state':>17}: {state}")
    for weights_name, weights_license in data["weights_licenses"].items():  # (``license`` is the code's)
        click.echo(f"{'weights license':>17}: {weights_name}: {weights_license}")
    echo_options(data["options"])


def _weights_licenses(cls: type[Method]) -> dict[str, str]:
    """The licence of each weights the method needs or loads by default, by name: the method's own
    ``license`` is its code's, and shipped weights may be narrower (research use only)."""
    from ..weights import all_specs

    names = list(dict.fromkeys([*cls.info.requires_weights, *filter(None, [cls.info.default_weights])]))
    if not names:
        return {}
    try:
        specs = all_specs()
    except RestorekitError:  # (an unreadable registry: the page is still shown; `weights list` says why)
        return dict.fromkeys(names, "unknown (the weights registry cannot be read)")
    return {n: (f"{specs[n].license} ({specs[n].license_note})" if specs[n].license_note else specs[n].license)
            for n in names if n in specs}


def echo_options(options: list[dict[str, Any]]) -> None:
    """The options as a definition list: ``name  type = default`` with the description wrapped
    beneath at the terminal's width (a four-column table squeezed descriptions into a few characters)."""
    click.echo("\nOptions (--opt KEY=VALUE):" if options else "\nOptions: none")
    width = max(40, min(shutil.get_terminal_size((100, 24)).columns, 120))
    pad = max((len(o["name"]) for o in options), default=0)
    for o in options:
        default = "required" if o["required"] else f"= {o['default']!r}"
        examples = f" (e.g. {', '.join(repr(e) for e in o['examples'])})" if o.get("examples") else ""
        click.echo(f"  {o['name']:<{pad}}  {o['type']} {default}{examples}")
        if o["description"]:
            click.echo(textwrap.fill(o["description"], width=width, initial_indent=" " * 6, subsequent_indent=" " * 6))


@click.command("plugins")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@json_output
def plugins_cmd(as_json: bool) -> None:
    """List plugins: distribution, version, what each registers, health."""
    reg = registry()
    recs = [r.as_dict() for r in reg.plugins.values()]
    if as_json:
        emit_json(recs)
        return
    listing("Plugins (`--json` lists everything each registers)",
            ["name", "distribution", "version", "status", "load", "registers"],
            [[r["name"], r["distribution"], r["version"], "broken" if r["status"] != "ok" else "ok",
              "-" if r["load_seconds"] is None else f"{r['load_seconds']:.2f} s",
              "; ".join(f"{k}: {', '.join(v)}" for k, v in r["registers"].items()) or "-"] for r in recs],
            cut=("registers",))
    for r in recs:  # errors in full: they are what a plugin developer needs to read
        if r["status"] != "ok":
            click.echo(f"{r['name']} ({r['distribution']}): {r['status']}")
    if reg.not_installed:
        click.echo(f"RESTOREKIT_LOAD_PLUGINS names {', '.join(reg.not_installed)}, which no installed plugin declares")
    for r in recs:
        if r["name"] != BUILTIN and (r["load_seconds"] or 0) >= SLOW_LOAD_S:
            click.echo(f"{r['name']} ({r['distribution']}) took {r['load_seconds']:.1f} s to import and register, "
                       "and every restorekit command pays it: import heavy libraries inside the functions that "
                       "use them (docs/plugins.md)")


def attach(cli: click.Group) -> None:
    cli.add_command(methods_group)
    cli.add_command(plugins_cmd)
