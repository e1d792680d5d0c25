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
        copy_registry(Path(self.build_lib, "restorekit", "_registry"))


def copy_registry(dest: Path, src: Path | None = None) -> list[Path]:
    """Make ``dest`` hold exactly ``src/{weights,plugins}/*.toml`` (``src``: this folder); returns the copies.

    ``dest`` is emptied first: ``build/lib`` outlives a build, so an entry removed from
    ``registry/`` would otherwise still ship in the next wheel.
    """
    src = Path(__file__).resolve().parent if src is None else Path(src)
    dest = Path(dest)
    if dest.is_symlink() or dest.is_file():
        dest.unlink()
    elif dest.exists():
        shutil.rmtree(dest)
    copied = []
    for sub in SUBFOLDERS:
        for entry in sorted((src / sub).glob("*.toml")):
            target = dest / sub / entry.name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(entry, target)
            copied.append(target)
    return copied
