"""The resumable result store of ``compare``: one JSON line per (method, image, seed) under ``--out``.

A record is reused by a later run when its key (method, image stem, seed, settings hash, input
hash) matches, it succeeded, and the output PNG it names still has the recorded sha256. Later
lines supersede earlier ones; :meth:`ResultStore.compact` rewrites a file to one line per key.

Under ``torchrun`` each rank appends to its own part, ``results/parts/<method>/rank<R>.jsonl``
(one writer per file, whatever the file system), and rank 0 compacts the parts into
``<method>.jsonl`` once every rank is done. Reading takes the main file, then the parts oldest
first, so a job killed before that still resumes — under any number of processes.

Non-finite numbers are written the same way everywhere (store, results.json): ``+inf`` as the
string ``"Infinity"``, ``-inf`` as ``"-Infinity"``, NaN (a missing value) as ``null``.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import FileSystemError, describe_os_error
from ..images import atomic_write_bytes, name_key
from ..safe_open import Folder, LinkedFolderError, ends_line, open_append, open_folder, read_plain
from ..weights.checksum import sha256_file

Key = tuple[str, str, "int | None", str, str]


def encode_float(v: float | None) -> float | str | None:
    """A float for strict JSON: inf as "Infinity"/"-Infinity", NaN and None as null."""
    if v is None:
        return None
    v = float(v)
    if math.isnan(v):
        return None
    if math.isinf(v):
        return "Infinity" if v > 0 else "-Infinity"
    return v


def decode_float(v: Any) -> float:
    """Inverse of :func:`encode_float` (null reads back as NaN)."""
    if v is None:
        return math.nan
    if v == "Infinity":
        return math.inf
    if v == "-Infinity":
        return -math.inf
    return float(v)


def jsonable(obj: Any) -> Any:
    """Recursively make ``obj`` strict-JSON safe (floats through :func:`encode_float`)."""
    if isinstance(obj, float):
        return encode_float(obj)
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, (str, int, bool)) or obj is None:
        return obj
    if isinstance(obj, Path):
        return str(obj)
    item = getattr(obj, "item", None)  # numpy / torch scalars
    if callable(item):
        try:
            return jsonable(item())
        except (TypeError, ValueError):
            pass
    return str(obj)


def dumps(obj: Any, **kw: Any) -> str:
    return json.dumps(jsonable(obj), allow_nan=False, **kw)


def safe_name(name: str) -> str:
    """A file-system safe version of a method name (``@`` kept: a variant's folder is not its method's)."""
    return re.sub(r"[^A-Za-z0-9_.@-]", "_", name) or "_"


def file_key(name: str) -> str:
    """What :func:`safe_name` of ``name`` is on a case-insensitive, normalising file system (macOS,
    Windows): two methods with the same key would share their outputs folder and result files."""
    return name_key(safe_name(name))


def settings_hash(settings: dict[str, Any]) -> str:
    """A short stable hash of the settings that determine a method's outputs."""
    return hashlib.sha256(dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


@dataclass
class Record:
    """One (method, image, seed) result, as stored."""

    method: str
    image: str
    seed: int | None
    settings: str
    input: str
    status: str  # "ok" or "failed"
    error: str | None = None
    ms: float | None = None
    warmup: bool = False
    peak_mem_mb: float | None = None
    output: str | None = None
    output_sha256: str | None = None
    metrics: dict[str, float] | None = None
    metric_errors: dict[str, str] | None = None
    metric_versions: dict[str, str] | None = None  # metric -> the fingerprint of the code that scored it
    report: dict[str, Any] | None = None
    reused: bool = False

    @property
    def key(self) -> Key:
        return (self.method, self.image, self.seed, self.settings, self.input)

    def to_json(self) -> dict[str, Any]:
        d = {k: getattr(self, k) for k in ("method", "image", "seed", "settings", "input", "status", "error",
                                           "ms", "warmup", "peak_mem_mb", "output", "output_sha256")}
        d["metrics"] = {k: encode_float(v) for k, v in (self.metrics or {}).items()}
        d["metric_errors"] = self.metric_errors or {}
        d["metric_versions"] = self.metric_versions or {}
        d["report"] = self.report or {}
        return jsonable(d)

    @classmethod
    def from_json(cls, d: Any) -> Record:
        """A record read back; ``ValueError`` for a line that is not one (a damaged or crafted file:
        a field of the wrong type, a number no float holds), which :meth:`ResultStore.load` skips
        like a line cut short."""
        if not isinstance(d, dict):
            raise ValueError("not a record")
        seed = d.get("seed")
        if seed is not None and (type(seed) is not int or not -2**63 <= seed < 2**64):
            raise ValueError("not a seed")
        return cls(method=_text(d["method"]), image=_text(d["image"]), seed=seed, settings=_text(d["settings"]),
                   input=_text(d["input"]), status=_text(d["status"]), error=_text_or_none(d.get("error")),
                   ms=_number_or_none(d.get("ms")), warmup=bool(d.get("warmup", False)),
                   peak_mem_mb=_number_or_none(d.get("peak_mem_mb")), output=_text_or_none(d.get("output")),
                   output_sha256=_text_or_none(d.get("output_sha256")),
                   metrics={k: _number(v) for k, v in _mapping(d.get("metrics")).items()},
                   metric_errors={k: _text(v) for k, v in _mapping(d.get("metric_errors")).items()},
                   metric_versions={k: _text(v) for k, v in _mapping(d.get("metric_versions")).items()},
                   report=_mapping(d.get("report")))


def _line(rec: Record) -> str:
    """``rec`` as one line of a store. (:meth:`Record.to_json` is strict JSON already: through
    :func:`dumps` it was walked a second time, for every record a run appends and compacts.)"""
    return json.dumps(rec.to_json(), allow_nan=False)


def _text(v: Any) -> str:
    if not isinstance(v, str):
        raise ValueError("not a string")
    return v


def _text_or_none(v: Any) -> str | None:
    return None if v is None else _text(v)


def _mapping(v: Any) -> dict[str, Any]:
    """A JSON object (missing or null: empty); anything else is ``ValueError``."""
    if v is None:
        return {}
    if not isinstance(v, dict):
        raise ValueError("not an object")
    return v


def _number(v: Any) -> float:
    """:func:`decode_float` of a stored number; ``ValueError`` for anything else (a bool, a list,
    a string other than the infinities, an integer too large for a float)."""
    if isinstance(v, bool) or not (v is None or isinstance(v, (int, float)) or v in ("Infinity", "-Infinity")):
        raise ValueError("not a number")
    try:
        return decode_float(v)
    except OverflowError:
        raise ValueError("a number too large for a float") from None


def _number_or_none(v: Any) -> float | None:
    return None if v is None else _number(v)


def _ends_line(f: Any) -> bool:
    """Whether the open file ``f`` is empty or ends with a line break (read through ``f`` itself, not
    by its name again; an unreadable one is taken to)."""
    try:
        return ends_line(f)
    except OSError:
        return True


def _read_plain(p: Path, folder: Folder | None = None) -> str | None:
    """The text of the regular file ``p`` (None when there is none), read without following a
    symbolic link or waiting on a FIFO planted there (:func:`~restorekit.safe_open.read_plain`;
    ``FileSystemError``, one line): a link to a file of the user's would have that file's records
    (or, for the meta file, its JSON) taken in and written back out into ``--out``. ``folder``:
    ``p``'s folder, open (read by name there)."""
    try:
        data = read_plain(p) if folder is None else read_plain(folder.at(p.name), dir_fd=folder.fd)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise FileSystemError(f"cannot read {p}: a symbolic link stands where restorekit keeps its result "
                                  "file; it is not followed (it could point at any file): remove it, or use "
                                  "another --out") from None
        if exc.errno == errno.EINVAL:
            raise FileSystemError(f"cannot read {p}: not a regular file (something else stands where restorekit "
                                  "keeps its result file): remove it, or use another --out") from None
        raise FileSystemError(describe_os_error(exc, p, action="read")) from exc
    return None if data is None else data.decode("utf-8", errors="replace")


class ResultStore:
    """``OUT/results/<method>.jsonl`` files, appended to as results arrive (crash-safe resume).

    ``part``: this process appends to ``results/parts/<method>/<part>.jsonl`` instead (one rank
    of a ``torchrun`` job); :meth:`compact` folds every part into the main file.
    """

    def __init__(self, out: Path, part: str | None = None) -> None:
        self.out = out
        self.folder = out / "results"
        with contextlib.suppress(LinkedFolderError), open_folder(out, "results"):
            pass  # made here (a link there is refused by each use below)
        self.part = part
        self._handles: dict[str, Any] = {}

    def path(self, method: str) -> Path:
        return self.folder / f"{safe_name(method)}.jsonl"

    def parts_folder(self, method: str) -> Path:
        return self.folder / "parts" / safe_name(method)

    def _open(self, folder: Path, create: bool = False) -> Folder:
        """``folder`` (``results/`` or below) open, reached from ``--out`` without following a
        symbolic link another user owns (:func:`~restorekit.safe_open.open_folder`): a file written
        or removed there can land in no other folder. Such a link on the way is refused
        (:class:`~restorekit.safe_open.LinkedFolderError`, a ``FileSystemError``: one line)."""
        return open_folder(self.out, folder.relative_to(self.out), create=create)

    def _parts(self, method: str) -> Folder | None:
        """``method``'s parts folder, open; None when there is none."""
        try:
            return self._open(self.parts_folder(method))
        except (FileNotFoundError, NotADirectoryError):
            return None

    def part_paths(self, method: str) -> list[Path]:
        """The parts of ``method`` that ranks appended to, oldest first."""
        folder = self._parts(method)
        if folder is None:
            return []
        with folder:
            found = [(e.stat(follow_symlinks=False).st_mtime_ns, e.name) for e in folder.entries()
                     if e.name.endswith(".jsonl")]
        return [self.parts_folder(method) / name for _, name in sorted(found)]

    def load(self, method: str) -> dict[Key, Record]:
        """The latest record per key for ``method``: main file, then parts (unreadable lines are ignored)."""
        out: dict[Key, Record] = {}
        for p in [self.path(method), *self.part_paths(method)]:
            try:
                with self._open(p.parent) as folder:
                    text = _read_plain(p, folder)  # (a bad line is skipped below)
            except (FileNotFoundError, NotADirectoryError):
                text = None
            if text is None:
                continue
            for line in text.splitlines():
                try:
                    rec = Record.from_json(json.loads(line))
                except (ValueError, KeyError, TypeError, RecursionError):
                    continue  # a line cut short by a crash (or not a record: wrong types)
                out[rec.key] = rec
        return out

    def reusable(self, rec: Record | None) -> bool:
        """A stored success whose output file is still the one it scored."""
        if rec is None or rec.status != "ok" or not rec.output or not rec.output_sha256:
            return False
        p = self.out / rec.output
        return p.is_file() and sha256_file(p) == rec.output_sha256

    def meta_path(self, method: str) -> Path:
        return self.folder / f"{safe_name(method)}.meta.json"

    def save_meta(self, method: str, settings: str, meta: dict[str, Any]) -> None:
        """What is only known once a method is built (device, precision, weights), per settings hash."""
        data = self._read_meta(method)
        data[settings] = meta
        atomic_write_bytes(self.meta_path(method), dumps(data, indent=1).encode(), root=self.out)

    def load_meta(self, method: str, settings: str) -> dict[str, Any] | None:
        found = self._read_meta(method).get(settings)
        return found if isinstance(found, dict) else None

    def _read_meta(self, method: str) -> dict[str, Any]:
        p = self.meta_path(method)
        try:
            with self._open(p.parent) as folder:
                text = _read_plain(p, folder)
            data = json.loads(text) if text is not None else {}
        except (ValueError, RecursionError, FileNotFoundError, NotADirectoryError):
            data = {}
        return data if isinstance(data, dict) else {}

    def clear(self, method: str) -> None:
        self.close(method)
        try:
            with self._open(self.folder) as folder:
                folder.unlink(self.path(method).name)
                folder.unlink(self.meta_path(method).name)
        except (FileNotFoundError, NotADirectoryError):
            pass
        self._remove_parts(method)

    def _remove_parts(self, method: str) -> None:
        folder = self._parts(method)
        if folder is None:
            return
        with folder:
            for e in folder.entries():
                if e.name.endswith(".jsonl"):
                    folder.unlink(e.name)
        with contextlib.suppress(OSError), self._open(self.folder / "parts") as parts:
            if parts.rmdir(safe_name(method)):  # (absent, or not empty: left)
                with self._open(self.folder) as results:
                    results.rmdir("parts")  # once no other method's parts are there

    def append(self, rec: Record) -> None:
        """Add one line to ``method``'s file (or this rank's part), written through at once.

        A write that fails (a full disk) leaves no cut-off line: the file is cut back to where it
        was, and raises :class:`~restorekit.errors.FileSystemError` naming it. A file that ends in a
        cut-off line all the same (a crash mid-write) gets a line break first, so that the line
        added is never glued onto it (each loads, the cut-off one is skipped)."""
        path = self._append_path(rec.method)
        line = (_line(rec) + "\n").encode("utf-8")
        f = self._handles.get(rec.method)
        opened = f is None
        try:
            if f is None:
                # its folders from --out down never through a symbolic link, nor the file through a
                # link, onto a FIFO or into a hard-linked file that someone who can write --out
                # planted there (safe_open): refused in one line naming it
                with self._open(path.parent, create=True) as folder:
                    f = self._handles[rec.method] = open_append(folder.at(path.name), dir_fd=folder.fd)
            start = os.fstat(f.fileno()).st_size  # where this line goes (one writer per file)
        except OSError as exc:
            self.close(rec.method)
            if isinstance(exc, FileSystemError):
                raise
            raise FileSystemError(describe_os_error(exc, path)) from exc
        if opened and start and not _ends_line(f):  # (later: this handle's own whole lines)
            line = b"\n" + line
        try:
            view = memoryview(line)
            while view:  # a raw write may take part of it
                view = view[f.write(view):]
        except OSError as exc:
            try:
                os.ftruncate(f.fileno(), start)  # no cut-off line left for the next run to glue onto
            except OSError:
                pass  # the next append starts a fresh line (above)
            self.close(rec.method)
            raise FileSystemError(describe_os_error(exc, path)) from exc

    def _append_path(self, method: str) -> Path:
        if self.part is None:
            return self.path(method)
        return self.parts_folder(method) / f"{self.part}.jsonl"

    def close(self, method: str | None = None) -> None:
        for m in [method] if method is not None else list(self._handles):
            f = self._handles.pop(m, None)
            if f is not None:
                f.close()

    def compact(self, method: str, keep: list[Record]) -> None:
        """Rewrite ``method``'s file with ``keep`` plus older successes for other settings; drop its parts.

        Under ``torchrun`` only rank 0 calls this, after every rank is done appending.
        """
        self.close(method)
        current = {r.key for r in keep}
        others = [r for k, r in self.load(method).items() if k not in current and r.status == "ok"]
        lines = [_line(r) for r in others + keep]
        atomic_write_bytes(self.path(method), ("\n".join(lines) + "\n").encode() if lines else b"", root=self.out)
        self._remove_parts(method)
