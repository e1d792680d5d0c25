"""Registration of the baseline methods (uses only restorekit's public plugin API)."""

from __future__ import annotations

from typing import Any

from restorekit.hookspecs import Register, hookimpl


@hookimpl
def register_methods(register: Register) -> None:
    from .bicubic import Bicubic
    from .pix2pixhd import Pix2PixHD
    from .pulse import Pulse

    register(Bicubic)
    register(Pix2PixHD)
    register(Pulse)


@hookimpl
def register_commands(cli: Any) -> None:
    """``restorekit train pix2pixhd`` (when the core has the ``train`` group)."""
    group = getattr(cli, "commands", {}).get("train")
    if group is None:
        return
    from .train_pix2pixhd import make_command

    group.add_command(make_command())
