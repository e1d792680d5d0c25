"""Subcommands of the `restorekit` CLI, one module per command family."""
