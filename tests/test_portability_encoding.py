"""Text is read and written as UTF-8 everywhere, never in the platform's default encoding (cp1252
on Windows, which cannot even hold every file name): every text-mode ``open``, ``read_text``,
``write_text``, ``fdopen`` and ``subprocess`` call in ``restorekit`` names its ``encoding``."""

from __future__ import annotations

import ast
from pathlib import Path

import restorekit

ROOT = Path(restorekit.__file__).parent
REPO = ROOT.parent

# Calls this scan cannot see to be binary, by file and call text.
ALLOWED = {
    ("restorekit/weights/download.py", "open(part, mode)"),  # mode is "ab" or "wb"
    # importlib.metadata's Distribution.read_text, which reads its files as UTF-8 itself
    ("restorekit/entry_points.py", "dist.read_text('entry_points.txt')"),
}
_SUBPROCESS = {"run", "Popen", "check_output", "check_call", "call"}


def _mode(call: ast.Call, pos: int) -> str | None:
    """The mode argument as written (its default "r" when left out); None when not a constant."""
    arg = call.args[pos] if len(call.args) > pos else next((k.value for k in call.keywords if k.arg == "mode"), None)
    if arg is None:
        return "r"
    return arg.value if isinstance(arg, ast.Constant) and isinstance(arg.value, str) else None


def _text_mode(mode: str | None) -> bool:
    return mode is None or "b" not in mode


def _needs_encoding(call: ast.Call) -> bool:
    if any(k.arg == "encoding" or k.arg is None for k in call.keywords):  # named, or **kwargs
        return False
    fn = call.func
    if isinstance(fn, ast.Name):
        return fn.id == "open" and _text_mode(_mode(call, 1))
    if not isinstance(fn, ast.Attribute):
        return False
    if fn.attr in ("read_text", "write_text"):
        return True
    if fn.attr == "fdopen":
        return _text_mode(_mode(call, 1))
    if fn.attr == "open":
        owner = fn.value.id if isinstance(fn.value, ast.Name) else None
        if owner in ("io", "codecs"):
            return _text_mode(_mode(call, 1))
        if owner == "os":
            return False  # os.open: a descriptor, no text
        # Path.open(mode): its first argument is the mode. zipfile/urllib .open(name) take a name.
        if not call.args:
            return not any(k.arg == "mode" for k in call.keywords) or _text_mode(_mode(call, 0))
        first = call.args[0]
        return isinstance(first, ast.Constant) and isinstance(first.value, str) and "b" not in first.value
    if fn.attr in _SUBPROCESS:
        return any(k.arg in ("text", "universal_newlines") and not (isinstance(k.value, ast.Constant)
                                                                    and not k.value.value) for k in call.keywords)
    return False


def _unencoded(path: Path, base: Path = REPO) -> list[tuple[str, int, str]]:
    rel = path.relative_to(base).as_posix()
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    return [(rel, node.lineno, ast.unparse(node)) for node in ast.walk(tree)
            if isinstance(node, ast.Call) and _needs_encoding(node)]


def test_the_scan_finds_what_it_should(tmp_path: Path) -> None:
    src = tmp_path / "restorekit" / "m.py"
    src.parent.mkdir()
    src.write_text(
        "import os, subprocess\n"
        "open(p)\nopen(p, 'w')\nopen(p, 'rb')\nopen(p, 'w', encoding='utf-8')\n"
        "p.read_text()\np.read_text(encoding='utf-8')\np.write_bytes(b'')\n"
        "os.fdopen(fd, 'w')\nos.fdopen(fd, 'wb')\np.open()\np.open('a')\np.open('rb')\nzf.open(member)\n"
        "subprocess.run(c, text=True)\nsubprocess.run(c, text=True, encoding='utf-8')\nsubprocess.run(c)\n",
        encoding="utf-8")
    assert sorted(line for _, line, _ in _unencoded(src, tmp_path)) == [2, 3, 6, 9, 11, 12, 15]


def test_every_text_file_call_names_its_encoding() -> None:
    found = [f"{rel}:{line}: {code}" for p in sorted(ROOT.rglob("*.py")) for rel, line, code in _unencoded(p)
             if (rel, code) not in ALLOWED]
    assert not found, "text I/O in the platform's default encoding (add encoding=\"utf-8\"):\n" + "\n".join(found)
