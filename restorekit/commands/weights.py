"""``restorekit weights``: list, show, pull, import, verify, locate, remove and convert weights.

Exit codes: 0 success; 1 a file was refused or failed to verify or download; 2 usage
(unknown name, bad arguments).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.table import Table

from .. import weights as W
from ..errors import RestorekitError, UnknownNameError

_err = Console(stderr=True, highlight=False, soft_wrap=True)


def _human(size: int | None) -> str:
    if size is None:
        return "?"
    value = float(size)
    for unit in ("B", "KB", "MB", "GB"):
        if value < 1000 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    return f"{size} B"


class WeightsGroup(click.Group):
    """Reports restorekit errors as one line: exit 2 for unknown names, 1 otherwise."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except UnknownNameError as exc:
            _err.print(f"[red]error:[/] {exc}")
            ctx.exit(2)
        except RestorekitError as exc:
            _err.print(f"[red]error:[/] {exc}")
            ctx.exit(1)


def _license(spec: W.WeightSpec) -> str:
    return f"{spec.license} ({spec.license_note})" if spec.license_note else spec.license


def _license_short(spec: W.WeightSpec) -> str:
    nc = "non-commercial" in spec.license_note.lower() or spec.license.endswith("-NC")
    return f"{spec.license} (non-commercial)" if nc else spec.license


def _status(spec: W.WeightSpec) -> str:
    have = W.cached_files(spec.name)
    if not have:
        return "no"
    return "yes" if W.is_cached(spec.name) else "partial" if len(have) < len(spec.files) else "damaged"


@click.group("weights", cls=WeightsGroup)
def weights_group() -> None:
    """Pretrained weights: registry, cache, integrity checks."""


@weights_group.command("list")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def list_cmd(as_json: bool) -> None:
    """List known weights with architecture, license, size and whether they are cached."""
    specs = W.all_specs()
    rows = [{"name": s.name, "architecture": s.architecture, "plugin": s.plugin, "license": s.license,
             "license_note": s.license_note, "size": s.total_size, "cached": _status(s)} for s in specs.values()]
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    t = Table(title=f"weights (cache: {W.cache_dir() / 'weights'})")
    for c in ("name", "architecture", "license", "size", "cached"):
        t.add_column(c)
    for r, s in zip(rows, specs.values()):
        t.add_row(r["name"], r["architecture"], _license_short(s), _human(r["size"]), r["cached"])
    Console().print(t)


@weights_group.command("show")
@click.argument("name")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def show_cmd(name: str, as_json: bool) -> None:
    """Show a spec: files, hashes, sources, license, and what the cache holds."""
    spec = W.get_spec(name)
    data = spec.model_dump(mode="json")
    data["cache_dir"] = str(W.weights_dir(name))
    data["cached"] = {k: v.as_dict() for k, v in W.cached_files(name).items()}
    if as_json:
        click.echo(json.dumps(data, indent=2))
        return
    out = Console()
    out.print(f"[bold]{spec.name}[/] — {spec.description or spec.architecture}")
    out.print(f"architecture: {spec.architecture}   plugin: {spec.plugin}")
    out.print(f"license: {_license(spec)}")
    for label, value in (("source", spec.source), ("paper", spec.paper)):
        if value:
            out.print(f"{label}: {value}", soft_wrap=True)
    for f in spec.files:
        rec = data["cached"].get(f.filename)
        out.print(f"file {f.filename}: {_human(f.size)}, sha256 {f.sha256 or 'unknown'}"
                  + (f", cached ({rec['sha256'][:12]}…{' trusted' if rec['trusted'] else ''})" if rec else ", not cached"))
        for url in f.urls:
            out.print(f"  url: {url}", soft_wrap=True)
        if f.package_source is not None:
            ps = f.package_source
            out.print(f"  from package {ps.package}=={ps.version}, member {ps.member} "
                      f"(sha256 {ps.member_sha256}), converter {ps.converter}", soft_wrap=True)
    out.print(f"cache: {data['cache_dir']}")


@weights_group.command("pull")
@click.argument("names", nargs=-1, required=True)
@click.option("-q", "--quiet", is_flag=True, help="No progress bar.")
@click.option("--trust", is_flag=True, help="Accept files whose spec has no sha256 and record their hash.")
@click.option("--retries", default=2, show_default=True, help="Resume attempts per mirror.")
def pull_cmd(names: tuple[str, ...], quiet: bool, trust: bool, retries: int) -> None:
    """Download weights (verified by sha256, moved into the cache atomically)."""
    for name in names:
        spec = W.get_spec(name)
        if spec.license_note and not quiet:
            _err.print(f"note: '{name}' are licensed {_license(spec)}")
        paths = W.pull(name, quiet=quiet, trust=trust, retries=retries)
        untrusted = [f for f in spec.files if f.sha256 is None and f.package_source is None]
        if trust and untrusted:
            _err.print(f"[yellow]warning:[/] '{name}' had no reference sha256; recorded what was downloaded")
        for p in paths:
            click.echo(str(p))


@weights_group.command("import")
@click.argument("name")
@click.argument("file", type=click.Path(exists=True, path_type=Path))
@click.option("--filename", default=None, help="Which file of a multi-file spec this is.")
@click.option("--link", is_flag=True, help="Symlink instead of copying.")
@click.option("--trust", is_flag=True, help="Accept a file for a spec without sha256 and record its hash.")
def import_cmd(name: str, file: Path, filename: str | None, link: bool, trust: bool) -> None:
    """Put a weights FILE you already have into the cache after checking it.

    FILE may also be a .zip archive or a folder holding the spec's files (a model pack)."""
    from ..weights_archive import import_archive, wants_archive_import

    if filename is None and wants_archive_import(W.get_spec(name), file):
        done = import_archive(name, file, link=link, trust=trust)
        for w in done.warnings:
            _err.print(f"[yellow]warning:[/] {w}")
        for p in done.paths:
            click.echo(str(p))
        return
    dest, warning = W.import_file(name, file, filename=filename, link=link, trust=trust)
    if warning:
        _err.print(f"[yellow]warning:[/] {warning}")
    click.echo(str(dest))


@weights_group.command("verify")
@click.argument("names", nargs=-1)
def verify_cmd(names: tuple[str, ...]) -> None:
    """Recompute sha256 of cached weights (all cached ones without NAMES); exit 1 on mismatch."""
    targets = list(names) or [n for n in W.all_specs() if W.cached_files(n)]
    bad = 0
    for name in targets:
        problems = W.verify(name)
        for p in problems:
            _err.print(f"[red]FAIL[/] {p}")
        if not problems:
            click.echo(f"ok {name}")
        bad += bool(problems)
    if not targets:
        click.echo("nothing cached")
    if bad:
        raise click.exceptions.Exit(1)


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
    for name in names:
        W.get_spec(name)
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
@click.option("--to", "fmt", type=click.Choice(["safetensors"]), default="safetensors", show_default=True)
@click.option("--key", default=None, help="Sub-dict to keep (e.g. g_ema, state_dict; dotted for deeper).")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Output file (default: FILE with .safetensors).")
def convert_cmd(file: Path, fmt: str, key: str | None, output: Path | None) -> None:
    """Convert a weights-only-loadable checkpoint to safetensors (nested dicts → dotted keys)."""
    out = output or file.with_suffix(".safetensors")
    if out.resolve() == file.resolve():
        raise click.UsageError("output would overwrite the input; pass -o")
    n, dropped = W.convert_to_safetensors(file, out, key=key)
    if dropped:
        _err.print(f"[yellow]warning:[/] left out non-tensor entries: {', '.join(dropped)}")
    click.echo(f"wrote {out} ({n} tensors, sha256 {W.sha256_file(out)})")


def attach(cli: click.Group) -> None:
    """Add the ``weights`` group to the main command."""
    cli.add_command(weights_group)
