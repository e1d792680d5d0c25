"""Registration of the baseline methods (uses only restorekit's public plugin API)."""

from __future__ import annotations

from restorekit.hookspecs import Register, hookimpl


@hookimpl
def register_methods(register: Register) -> None:
    from .bicubic import Bicubic
    from .pulse import Pulse

    register(Bicubic)
    register(Pulse)
