"""Every command of the CLI as built (core and installed plugins), for tests that check them all."""

from __future__ import annotations

import click

from restorekit.cli import build_cli


def all_commands() -> list[tuple[str, click.Command]]:
    """``(path, command)`` for the root (path ``""``) and every subcommand, depth first (``"bench method"``)."""
    root = build_cli()
    out: list[tuple[str, click.Command]] = []

    def walk(cmd: click.Command, path: list[str], ctx: click.Context) -> None:
        out.append((" ".join(path), cmd))
        if isinstance(cmd, click.Group):
            for name in cmd.list_commands(ctx):
                sub = cmd.get_command(ctx, name)
                if sub is not None:
                    walk(sub, [*path, name], click.Context(sub, parent=ctx, info_name=name))

    walk(root, [], click.Context(root, info_name="restorekit"))
    return out
