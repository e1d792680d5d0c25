"""The repository's scripts (``scripts/…``), which are no package's modules, imported for tests."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType


def script_module(path: Path) -> ModuleType:
    """The script at ``path`` as the module named for its stem, imported once per process
    (monkeypatch restores what a test changes in it); registered in ``sys.modules`` before it
    runs, where dataclasses look their module up."""
    name = path.stem
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module
