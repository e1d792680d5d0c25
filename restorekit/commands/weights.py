"""``restorekit weights``: list, show, pull, import, forget, verify, locate, remove and convert weights.

Exit codes: 0 success; 1 a file was refused or failed to verify or download; 2 usage
(unknown name, bad arguments, weights that are not installed, a file that is not readable as
weights, an output that exists, an unusable cache), as every command says weights it lacks.

``weights show`` prints each line whole, at any terminal width (a script reads ``weights show NAME |
grep '^license:'``); the listing of ``weights list`` fits the terminal (``--json`` has it all).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, TypedDict

import click
from pydantic import BaseModel, ConfigDict, Field
from rich.console import Console
from rich.markup import escape
from rich.text import Text

from .. import weights as W
from ..cli import UsageProblem, emit_json, json_output, print_table_text, shown, table_console
from ..command_group import CommandGroup
from ..errors import CacheError, FileSystemError, IntegrityError, RestorekitError, UnknownNameError, WeightsMissing
from ..weights.load import OutputExistsError, UnreadableWeightsError

_err = Console(stderr=True, highlight=False, soft_wrap=True)


def _plain(text: str) -> str:
    """``text`` as literal, printable console text: registry fields, server replies and archive
    member names are not ours, and an escape sequence in one would act on the terminal (:func:`shown`)."""
    return escape(shown(text))


def _human(size: int | None) -> str:
    if size is None:
        return "?"
    value = float(size)
    for unit in ("B", "KB", "MB", "GB"):
        if value < 1000 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    return f"{size} B"


class WeightsCommand(click.Command):
    """A ``weights`` subcommand: an unknown weights name is a usage error (exit 2), in click's usage
    style as ``run`` and ``compare`` say an unknown method."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except UnknownNameError as exc:
            raise UsageProblem(str(exc), ctx=ctx) from None


class WeightsGroup(CommandGroup):
    """Reports restorekit errors as one line: exit 2 for weights that are not installed (``weights path``
    of a name never pulled, as ``run`` says them), a file that is not readable as weights, an output that
    exists and an unusable cache; 1 otherwise (unknown names: :class:`WeightsCommand`)."""

    command_class = WeightsCommand

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (UnknownNameError, WeightsMissing, FileSystemError, UnreadableWeightsError, OutputExistsError) as exc:
            _err.print(f"[red]error:[/] {_plain(str(exc))}")
            ctx.exit(2)
        except RestorekitError as exc:
            _err.print(f"[red]error:[/] {_plain(str(exc))}")
            ctx.exit(1)


def _license(spec: W.WeightSpec) -> str:
    return f"{spec.license} ({spec.license_note})" if spec.license_note else spec.license


def _license_brief(spec: W.WeightSpec) -> str:
    """What a listing has room for (`weights show` has all): ``research-only`` (narrower than
    non-commercial: a note naming some source's non-commercial licence must not widen it),
    ``non-commercial``, or the SPDX expression."""
    if "research-only" in spec.license.lower():
        return "research-only"
    nc = "non-commercial" in spec.license_note.lower() or spec.license.endswith("-NC")
    return "non-commercial" if nc else spec.license


def _status(spec: W.WeightSpec) -> str:
    """``no``, ``yes``, ``partial`` or ``damaged`` (a file failing its check, or a manifest that is
    no manifest: listed as such, not failing the whole listing)."""
    try:
        have = W.cached_files(spec.name)
    except IntegrityError:
        return "damaged"
    if not have:
        return "no"
    return "yes" if W.is_cached(spec.name) else "partial" if len(have) < len(spec.files) else "damaged"


# Worst first: a spec's state is the worst of its files'.
_STATES = ("damaged", "missing", "pull needed", "cached", "shipped")


def file_state(spec: W.WeightSpec, wf: W.WeightFile) -> str:
    """``shipped`` (inside an installed package), ``cached``, ``damaged`` (cached or shipped but failing
    its check, or recorded in the manifest while the file is gone, as ``weights verify`` fails it),
    ``pull needed`` (a download or package source is known) or ``missing`` (import it; or, for a file
    a package ships, install that package)."""
    try:
        W.resolve(spec.name, wf.filename)
        return "shipped" if wf.bundled else "cached"
    except WeightsMissing:
        if not wf.bundled and _recorded(spec, wf):
            return "damaged"
        return "pull needed" if (wf.urls or wf.package_source) else "missing"
    except IntegrityError:  # (a shipped file: reinstall its package, as the error of using it says)
        return "damaged"


def _recorded(spec: W.WeightSpec, wf: W.WeightFile) -> bool:
    """Whether ``spec``'s manifest records ``wf`` (a manifest that cannot be read counts as one that does)."""
    try:
        return wf.filename in W.cached_files(spec.name)
    except IntegrityError:
        return True


def spec_state(spec: W.WeightSpec) -> str:
    """The worst state among ``spec``'s files (see :func:`file_state`)."""
    return min((file_state(spec, wf) for wf in spec.files), key=_STATES.index)


def names_state(names: list[str]) -> str:
    """The worst state of several weights names; an unregistered name is ``missing``."""
    specs = W.all_specs()
    states = [spec_state(specs[n]) if n in specs else "missing" for n in names]
    return min(states, key=_STATES.index) if states else "none"


def spec_integrity(spec: W.WeightSpec) -> str:
    """``pinned`` when every file's sha256 is published; else ``tofu`` when every unpinned file's
    hash was recorded at its first pull/import, ``unknown`` while one is not yet (or while the
    record is only in a damaged manifest)."""
    kinds = {_file_integrity(spec, wf) for wf in spec.files}
    return "unknown" if "unknown" in kinds else "tofu" if "tofu" in kinds else "pinned"


def _file_integrity(spec: W.WeightSpec, wf: W.WeightFile) -> str:
    """:func:`W.integrity`, ``unknown`` where the first-use hash could only come from a damaged manifest."""
    try:
        return W.integrity(spec, wf)
    except IntegrityError:
        return "unknown"


INTEGRITY_NOTE = ("integrity: pinned = sha256 published in the registry, checked on pull and import; tofu = "
                  "trust on first use: no published hash, the one recorded at the first pull/import is checked "
                  "from then on; unknown = nothing recorded yet (the first pull/import needs --trust). Cached "
                  "files are re-hashed whenever they change; `weights verify` re-hashes all.")


@click.group("weights", cls=WeightsGroup)
def weights_group() -> None:
    """Pretrained weights: registry, cache, integrity checks."""


class _ListRow(TypedDict):
    """One weight spec as ``weights list --json`` writes it."""

    name: str
    architecture: str
    plugin: str
    license: str
    license_note: str
    size: int | None
    cached: str
    state: str
    integrity: str


@weights_group.command("list")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@json_output
def list_cmd(as_json: bool) -> None:
    """List known weights with architecture, license, size and whether they are cached.

    Without a usable cache folder (no HOME and a user id the password database does not know) the
    registry is still listed: what only the cache can tell (cached, damaged, first-use hashes) shows
    as unknown, and one warning line says how to give restorekit a cache (RESTOREKIT_HOME)."""
    from ..cli import warn

    try:
        cache: Path | None = W.cache_dir() / "weights"
    except CacheError as exc:
        cache = None
        warn(f"{exc}; cache states are listed as unknown")

    def known(state: Callable[[W.WeightSpec], str], spec: W.WeightSpec) -> str:
        try:
            return state(spec)
        except CacheError:
            if cache is not None:
                raise
            return "unknown"

    specs = W.all_specs()
    rows: list[_ListRow] = [
        {"name": s.name, "architecture": s.architecture, "plugin": s.plugin, "license": s.license,
         "license_note": s.license_note, "size": s.total_size, "cached": known(_status, s),
         "state": known(spec_state, s), "integrity": known(spec_integrity, s)} for s in specs.values()]
    if as_json:
        emit_json(rows)
        return
    from ..cli import listing

    listing(f"weights (cache: {cache if cache is not None else 'none usable'})",
            ["name", "state", "integrity", "size", "license"],
            [[r["name"], r["state"], r["integrity"], _human(r["size"]), _license_brief(s)]
             for r, s in zip(rows, specs.values())], cut=("license",))
    print_table_text(table_console(), Text(INTEGRITY_NOTE))  # (a log or a pipe: one line, as the rows)


@weights_group.command("show")
@click.argument("name")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@json_output
def show_cmd(name: str, as_json: bool) -> None:
    """Show a spec: files, hashes, sources, license, and what the cache holds."""
    spec = W.get_spec(name)
    data = spec.model_dump(mode="json")
    data["cache_dir"] = str(W.weights_dir(name))
    try:
        data["cached"] = {k: v.as_dict() for k, v in W.cached_files(name).items()}
        data["cache_error"] = None
    except IntegrityError as exc:  # a damaged manifest: the spec is still shown, and what is wrong
        data["cached"], data["cache_error"] = {}, str(exc)
    data["state"] = spec_state(spec)
    data["integrity"] = {}
    for f in spec.files:
        rec = _first_use(name, f) if f.sha256 is None and f.package_source is None else None
        data["integrity"][f.filename] = {"kind": _file_integrity(spec, f), "state": file_state(spec, f),
                                         "first_use": dict(rec.__dict__) if rec else None}
    if as_json:
        emit_json(data)
        return
    out = Console(soft_wrap=True)  # whole lines, whatever the width: `grep '^license:'` reads them
    out.print(f"[bold]{_plain(spec.name)}[/] — {_plain(spec.description or spec.architecture)}")
    out.print(_plain(f"architecture: {spec.architecture}   plugin: {spec.plugin}"))
    out.print(_plain(f"license: {_license(spec)}"))
    for label, value in (("source", spec.source), ("paper", spec.paper)):
        if value:
            out.print(_plain(f"{label}: {value}"), soft_wrap=True)
    for f in spec.files:
        out.print(_plain(f"file {f.filename}: {_human(f.size)}, {data['integrity'][f.filename]['state']}"), soft_wrap=True)
        out.print(_plain(f"  integrity: {_integrity_line(spec, f, data['integrity'][f.filename], data['cached'].get(f.filename))}"),
                  soft_wrap=True)
        for url in f.urls:
            out.print(_plain(f"  url: {url}"), soft_wrap=True)
        if f.package_source is not None:
            ps = f.package_source
            out.print(_plain(f"  from package {ps.package}=={ps.version}, member {ps.member} "
                             f"(sha256 {ps.member_sha256}), converter {ps.converter}"), soft_wrap=True)
    out.print(_plain(f"cache: {data['cache_dir']}"))
    if data["cache_error"]:
        out.print(_plain(f"damaged: {data['cache_error']}"), soft_wrap=True)


def _first_use(name: str, f: W.WeightFile) -> Any:
    """The first-use record of ``f``; None also where only a damaged manifest could hold it."""
    try:
        return W.first_use(name, f.filename)
    except IntegrityError:
        return None


def _integrity_line(spec: W.WeightSpec, f: W.WeightFile, info: dict[str, Any], rec: dict[str, Any] | None) -> str:
    """One plain sentence: how this file is checked, and whether the cached copy passed."""
    kind = info["kind"]
    if f.bundled:
        text = f"pinned: ships inside the '{f.bundled.partition(':')[0]}' package, sha256 {f.sha256}, checked on use"
    elif f.package_source is not None:
        ps = f.package_source
        text = (f"pinned: member {ps.member} of {ps.package}=={ps.version} must have sha256 {ps.member_sha256}"
                + (f" (archive {ps.archive_sha256})" if ps.archive_sha256 else ""))
    elif kind == "pinned":
        text = f"pinned: sha256 {f.sha256} (published), checked on pull and import"
    elif kind == "tofu":
        fu = info["first_use"]
        text = (f"trust on first use: no published sha256; {fu['sha256']} was recorded on {fu['time']} "
                f"(from {fu['source']}) and every later pull or import must match it")
    else:
        text = ("unknown: no published sha256 and none recorded yet; the first pull or import needs --trust, "
                "and its hash is then recorded and checked from then on (trust on first use)")
    if rec is not None and info["state"] == "damaged":
        text += f"; the cached copy (sha256 {rec['sha256'][:12]}…) FAILS its check: `restorekit weights verify {spec.name}`"
    elif rec is not None and f.package_source is not None:
        text += (f"; cached as converted (sha256 {rec['sha256'][:12]}…, the hash recorded when it was made, "
                 "checked on use)")
    elif rec is not None:
        text += f"; cached copy verified against it (sha256 {rec['sha256'][:12]}…)"
    return text


@weights_group.command("pull")
@click.argument("names", nargs=-1, required=True)
@click.option("-q", "--quiet", is_flag=True, help="No progress bar.")
@click.option("--trust", is_flag=True, help="Accept files whose spec has no sha256 and record their hash.")
@click.option("--retries", type=click.IntRange(min=0), default=2, show_default=True,
              help="Resume attempts per mirror.")
def pull_cmd(names: tuple[str, ...], quiet: bool, trust: bool, retries: int) -> None:
    """Download weights (verified by sha256, moved into the cache atomically)."""
    specs = {name: W.get_spec(name) for name in names}  # every name checked before any download
    for name in names:
        spec = specs[name]
        if spec.license_note and not quiet:
            _err.print(_plain(f"note: '{name}' are licensed {_license(spec)}"))
        # Files with no reference sha256 and none recorded yet: those this pull records on the user's word
        unrecorded = [f.filename for f in spec.files if f.sha256 is None and f.package_source is None
                      and not f.bundled and W.first_use(name, f.filename) is None] if trust else []
        paths = W.pull(name, quiet=quiet, trust=trust, retries=retries)
        for filename in unrecorded:  # (not when it was cached already and nothing was downloaded)
            rec = W.first_use(name, filename)
            if rec is not None:
                _err.print("[yellow]warning:[/] " + _plain(f"'{name}' had no reference sha256; recorded what was "
                                                        f"downloaded ({filename}: sha256 {rec.sha256}); later "
                                                        "pulls and imports must match it"))
        for p in paths:
            click.echo(str(p))


class ImportOptions(BaseModel):
    """``weights import --opt`` options."""

    model_config = ConfigDict(extra="forbid")

    allow_unsafe: bool = Field(False, description="accept a PyTorch checkpoint that holds pickled Python objects "
                                                  "beyond tensors (loading it still needs allow_unsafe=true)")


@weights_group.command("import")
@click.argument("name")
@click.argument("file", type=click.Path(exists=True, path_type=Path))
@click.option("--filename", default=None, help="Which file of a multi-file spec this is.")
@click.option("--link", is_flag=True, help="Symlink instead of copying.")
@click.option("--trust", is_flag=True, help="Accept a file for a spec without sha256 and record its hash.")
@click.option("--opt", "opts", multiple=True, metavar="KEY=VALUE",
              help="Import option (repeatable): allow_unsafe=true accepts a checkpoint holding pickled Python "
                   "objects (only a file you trust).")
def import_cmd(name: str, file: Path, filename: str | None, link: bool, trust: bool, opts: tuple[str, ...]) -> None:
    """Put a weights FILE you already have into the cache after checking it.

    FILE may also be a .zip archive or a folder holding the spec's files (a model pack)."""
    from ..options import parse_pairs, validate
    from ..weights import import_archive, wants_archive_import

    try:
        options = validate(ImportOptions, parse_pairs(opts), label="weights import")
    except RestorekitError as exc:
        raise click.UsageError(str(exc)) from None
    assert isinstance(options, ImportOptions)

    if filename is None and wants_archive_import(W.get_spec(name), file):
        done = import_archive(name, file, link=link, trust=trust, allow_unsafe=options.allow_unsafe)
        for w in done.warnings:
            _err.print(f"[yellow]warning:[/] {_plain(str(w))}")
        for p in done.paths:
            click.echo(str(p))
        return
    dest, warning = W.import_file(name, file, filename=filename, link=link, trust=trust,
                                  allow_unsafe=options.allow_unsafe)
    if warning:
        _err.print(f"[yellow]warning:[/] {_plain(str(warning))}")
    click.echo(str(dest))


@weights_group.command("forget")
@click.argument("name")
def forget_cmd(name: str) -> None:
    """Forget the sha256 recorded at NAME's first pull/import (trust on first use), and its cached copy.

    For when the publisher of a file with no published hash really replaced it; the next pull or
    import with --trust records the new hash. (`weights rm` keeps the record.)"""
    gone = W.forget(name)
    click.echo(f"forgot {', '.join(gone)} of {name}" if gone else f"nothing recorded for {name}")


@weights_group.command("verify")
@click.argument("names", nargs=-1)
def verify_cmd(names: tuple[str, ...]) -> None:
    """Recompute sha256 of cached weights (all cached ones without NAMES); exit 1 on mismatch."""
    for name in names:  # every name checked before any work
        W.get_spec(name)
    targets = list(names) or [n for n in W.all_specs() if _has_cache(n)]
    for name in names or W.all_specs():  # leftovers of imports killed midway: named, not counted as failures
        for path, pid in W.stray_imports(name):
            _err.print(_plain(f"note: {path} is the partial copy of an interrupted import"
                              + (f" (process {pid}, gone)" if pid is not None else "")
                              + f"; the next `restorekit weights import {name}` removes it, or delete it"))
    bad = 0
    for name in targets:
        problems = W.verify(name)
        for p in problems:
            _err.print(f"[red]FAIL[/] {_plain(str(p))}")
        if not problems:
            click.echo(f"ok {name}")
        bad += bool(problems)
    if not targets:
        click.echo("nothing cached")
    if bad:
        raise click.exceptions.Exit(1)


def _has_cache(name: str) -> bool:
    """Whether ``name`` has cached files to verify (a damaged manifest: yes, it fails)."""
    try:
        return bool(W.cached_files(name))
    except IntegrityError:
        return True


@weights_group.command("path")
@click.argument("name")
@click.option("--filename", default=None, help="Which file of a multi-file spec.")
def path_cmd(name: str, filename: str | None) -> None:
    """Print the path of a cached, verified weights file."""
    click.echo(str(W.resolve(name, filename)))


@weights_group.command("rm")
@click.argument("names", nargs=-1)
@click.option("--onnx", "onnx_cache", is_flag=True,
              help="Also remove the ONNX exports cached by `--backend onnxruntime` (re-exported on next use).")
def rm_cmd(names: tuple[str, ...], onnx_cache: bool) -> None:
    """Remove weights from the cache (and, with --onnx, the cached ONNX exports)."""
    if not names and not onnx_cache:
        raise click.UsageError("name the weights to remove, or pass --onnx")
    for name in names:  # every name checked before anything is removed
        W.get_spec(name)
    for name in names:
        click.echo(f"removed {name}" if W.remove(name) else f"{name} was not cached")
    if onnx_cache:
        folder = W.onnx_cache_dir()
        files = sorted(p for p in folder.glob("*") if p.is_file()) if folder.is_dir() else []
        freed = sum(p.stat().st_size for p in files)
        for p in files:
            p.unlink()
        click.echo(f"removed {len(files)} cached ONNX file(s), {freed / 2**20:.1f} MiB ({folder})")


@weights_group.command("convert")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--to", "fmt", type=click.Choice(["safetensors"]), default="safetensors", show_default=True,
              help="Output format.")
@click.option("--key", default=None, help="Sub-dict to keep (e.g. g_ema, state_dict; dotted for deeper).")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Output file (default: FILE with .safetensors).")
@click.option("--overwrite", is_flag=True, help="Replace an existing output file (never the input).")
def convert_cmd(file: Path, fmt: str, key: str | None, output: Path | None, overwrite: bool) -> None:
    """Convert a weights-only-loadable checkpoint to safetensors (nested dicts → dotted keys).

    The output is written atomically; an existing one is refused unless --overwrite."""
    out = output or file.with_suffix(".safetensors")
    if out.resolve() == file.resolve():
        raise click.UsageError(f"-o {out} is the input file; choose another output file" if output is not None
                               else f"the default output {out} is the input file itself; choose one with -o")
    if not overwrite and (out.exists() or out.is_symlink()):
        raise click.UsageError(f"{out} already exists; pass --overwrite to replace it, or choose another -o")
    n, dropped = W.convert_to_safetensors(file, out, key=key, overwrite=overwrite)
    if dropped:
        _err.print(f"[yellow]warning:[/] left out non-tensor entries: {_plain(', '.join(dropped))}")
    click.echo(f"wrote {out} ({n} tensors, sha256 {W.sha256_file(out)})")


def attach(cli: click.Group) -> None:
    """Add the ``weights`` group to the main command."""
    cli.add_command(weights_group)
