"""Build hook: ship this registry in the wheel as ``restorekit/_registry`` (package data).

``registry/`` stays the one source of truth at the repository root. Wheels get a copy under
the package so ``restorekit.weights.registry_dirs()`` finds it after a normal install; source
checkouts and editable installs read ``registry/`` directly. Wired in ``pyproject.toml``:
``[tool.setuptools] cmdclass = {build_py = "registry._build.BuildPyWithRegistry"}``.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from setuptools.command.build_py import build_py

SUBFOLDERS = ("weights", "plugins")


class BuildPyWithRegistry(build_py):
    """``build_py`` that also copies ``registry/{weights,plugins}/*.toml`` into the build."""

    def run(self) -> None:
        super().run()
        if getattr(self, "editable_mode", False):
            return  # editable installs read registry/ in place
        src = Path(__file__).resolve().parent
        dest = Path(self.build_lib, "restorekit", "_registry")
        for sub in SUBFOLDERS:
            for entry in sorted((src / sub).glob("*.toml")):
                target = dest / sub / entry.name
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(entry, target)
