"""The click group of restorekit's commands and sub-command groups (``train``, ``bench`` …):
an unknown subcommand is refused with the likely name, with why it is missing where that is known
(a plugin that would add it is broken or not installed), else with the commands there are — not
click's bare "No such command"."""

from __future__ import annotations

import click

__all__ = ["CommandGroup"]


def _group_path(ctx: click.Context) -> list[str]:
    """The words after ``restorekit`` that reach this group (``["train"]``; ``[]`` for the root)."""
    names: list[str] = []
    while ctx.parent is not None:
        names.append(ctx.info_name or "")
        ctx = ctx.parent
    return names[::-1]


class CommandGroup(click.Group):
    """A group whose refusal of an unknown subcommand says what is known about it."""

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        cmd = super().get_command(ctx, name)
        if cmd is None and not ctx.resilient_parsing:
            from .plugins import missing_command, suggest

            known = self.list_commands(ctx)
            hint = suggest(name, known)
            why = missing_command(" ".join([*_group_path(ctx), name]))
            ctx.fail(f"no such command '{name}'{hint}{why}" if hint or why else
                     f"no such command '{name}'; known: {', '.join(known) or 'none'}")
        return cmd
