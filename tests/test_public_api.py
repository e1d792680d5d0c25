"""The first-party plugins use restorekit as a third party would: no private name of the core."""

from __future__ import annotations

import ast
from pathlib import Path

PLUGINS = Path(__file__).resolve().parents[1] / "plugins"


def core_imports() -> list[tuple[str, str, str]]:
    """``(file, module, name)`` of every import from the ``restorekit`` core in the plugins' packages."""
    found = []
    for path in sorted(PLUGINS.glob("*/restorekit_*/**/*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0 \
                    and node.module.split(".")[0] == "restorekit":
                found += [(path.name, node.module, a.name) for a in node.names]
            elif isinstance(node, ast.Import):
                found += [(path.name, a.name, "") for a in node.names if a.name.split(".")[0] == "restorekit"]
    return found


def test_first_party_plugins_import_no_private_core_name() -> None:
    imports = core_imports()
    assert len(imports) > 50  # the scan sees the plugins' imports
    private = [(f, m, n) for f, m, n in imports
               if n.startswith("_") or any(part.startswith("_") for part in m.split("."))]
    assert private == []
