"""The core's own plugin: what restorekit registers without any plugin installed."""

from __future__ import annotations

from .hookspecs import Register, hookimpl


@hookimpl
def register_degradations(register: Register) -> None:
    from .degradations import BUILTIN_DEGRADATIONS

    for cls in BUILTIN_DEGRADATIONS:
        register(cls)
