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
    """``restorekit train pix2pixhd`` on the shared training command."""
    from restorekit.commands.train import add_trainer

    def load() -> Any:
        from .train_pix2pixhd import load_trainer

        return load_trainer()

    add_trainer(cli, "pix2pixhd", "Train pix2pixHD super-resolution (global generator, multi-scale "
                "LSGAN, feature matching, VGG16 loss) on a folder of HR images.", load)
