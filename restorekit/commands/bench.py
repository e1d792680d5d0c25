"""``restorekit bench``: performance measurements; plugins add their own subcommands."""

from __future__ import annotations

import click


@click.group("bench")
def bench_group() -> None:
    """Benchmarks (figures are reported as ratios against a reference measured in the same run)."""


def attach(cli: click.Group) -> None:
    cli.add_command(bench_group)
