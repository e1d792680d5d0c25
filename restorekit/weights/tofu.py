"""Trust on first use: the hash of a file whose spec pins none, kept beside the cache.

Some publishers give no sha256 (the Google-Drive pSp and StyleGAN2 files). The first pull or
import of such a file needs ``--trust``; its hash is then recorded in
``<cache>/trust-on-first-use.json`` — outside the weights folders, so ``weights rm`` does not
forget it — and every later pull, import and cache check must match it until
``restorekit weights forget NAME``. :func:`record_cached` is the one place a file entering the
cache is written down (manifest entry, and first use when unpinned).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from ..errors import IntegrityError, RestorekitError
from . import cache
from .cache import CachedFile
from .spec import MANIFEST, WeightFile, WeightSpec

__all__ = ["TOFU_FILE", "FirstUse", "first_use", "check_first_use", "integrity", "record_cached", "forget_spec",
           "forget_first_use"]

TOFU_FILE = "trust-on-first-use.json"


@dataclass(frozen=True)
class FirstUse:
    """The sha256 of an unpinned file, recorded when it first entered the cache.

    Kept in ``<cache>/trust-on-first-use.json``, outside the weights folders, so removing the
    cached copy (``weights rm``) does not forget it: a later pull or import must match it until
    ``restorekit weights forget NAME``.
    """

    sha256: str
    size: int
    time: str
    source: str


def _tofu_path() -> Path:
    return cache.cache_dir() / TOFU_FILE


def _read_tofu() -> dict[str, FirstUse]:
    path = _tofu_path()
    try:
        text = cache.read_record(path)
        if text is None:
            return {}
        raw = json.loads(text)
        return {k: FirstUse(**v) for k, v in raw.get("files", {}).items()}
    except (ValueError, TypeError, AttributeError) as exc:
        raise IntegrityError(f"first-use record {path} is unreadable ({exc}); fix or delete it (the hashes "
                             "it recorded are then forgotten)") from exc


def _write_tofu(records: Mapping[str, FirstUse]) -> None:
    data = {"about": "sha256 of weights files whose spec pins none, recorded at their first pull or import",
            "files": {k: dict(v.__dict__) for k, v in sorted(records.items())}}
    cache.write_text_atomic(_tofu_path(), json.dumps(data, indent=2) + "\n")


def _records_locked() -> AbstractContextManager[None]:
    """Hold while reading, changing and writing back the record file: it is shared by every
    weights name, so two first pulls or imports at once must not write over each other."""
    path = _tofu_path()
    return cache.file_lock(path.with_name(f".{path.name}.lock"))


def _remember_first_use(name: str, filename: str, rec: FirstUse) -> bool:
    """Record ``rec`` as the first use of ``name``'s ``filename``; False when one is recorded already."""
    with _records_locked():
        records = _read_tofu()
        if f"{name}/{filename}" in records:  # the first use stays the first
            return False
        records[f"{name}/{filename}"] = rec
        _write_tofu(records)
    return True


def _drop_first_use(name: str, filename: str, sha: str) -> None:
    """Take back the first-use record of ``name``'s ``filename`` if it still holds ``sha``."""
    with _records_locked():
        records = _read_tofu()
        rec = records.get(f"{name}/{filename}")
        if rec is not None and rec.sha256 == sha:
            del records[f"{name}/{filename}"]
            _write_tofu(records)


def first_use(name: str, filename: str) -> FirstUse | None:
    """The hash recorded when ``name``'s unpinned ``filename`` first entered the cache, if any.

    Caches filled before this record existed count their manifest's trusted entry as the first use.
    """
    rec = _read_tofu().get(f"{name}/{filename}")
    if rec is not None:
        return rec
    cached = cache.read_manifest(cache.weights_dir(name)).get(filename)
    if cached is not None and cached.trusted:
        return FirstUse(cached.sha256, cached.size, cached.time, cached.source)
    return None


def check_first_use(spec: WeightSpec, wf: WeightFile, sha: str, where: str, *, trust: bool) -> str | None:
    """Accept an unpinned file: it must match the hash recorded at first use; with no record yet
    it needs ``trust`` (its hash is then recorded by :func:`record_cached`). Returns a warning or None."""
    rec = first_use(spec.name, wf.filename)
    if rec is not None:
        if sha != rec.sha256:
            raise IntegrityError(
                f"{where} has sha256 {sha}, but the first '{spec.name}' ({wf.filename}) this cache took "
                f"(on {rec.time}, from {rec.source}) had {rec.sha256}; refused (trust on first use). If the "
                f"publisher really changed the file, `restorekit weights forget {spec.name}` drops that record")
        return None
    if not trust:
        raise IntegrityError(f"weights '{spec.name}' ({wf.filename}) have no known sha256, so {where} cannot be "
                             f"checked; pass --trust to accept it (its sha256 is {sha}) and have it recorded: "
                             "later pulls and imports must match it")
    return (f"accepted {where} for '{spec.name}' without a reference hash (--trust); recorded sha256 {sha}: "
            "later pulls and imports must match it")


def integrity(spec: WeightSpec, wf: WeightFile) -> Literal["pinned", "tofu", "unknown"]:
    """How a file is checked: ``pinned`` (a sha256 in the spec, a package member's, or bundled),
    ``tofu`` (no published hash; the one recorded at first pull/import), ``unknown`` (nothing
    recorded yet: the first pull/import needs ``--trust``)."""
    if wf.sha256 is not None or wf.bundled is not None:
        return "pinned"
    if wf.package_source is not None:  # converted from the pinned member, unless a copy was trusted instead
        return "tofu" if _trusted_copy(spec.name, wf.filename) else "pinned"
    return "tofu" if first_use(spec.name, wf.filename) is not None else "unknown"


def _trusted_copy(name: str, filename: str) -> bool:
    """Whether the cache holds, or recorded at first use, a copy of a package member's converted
    file that a ``--trust`` import brought (an fp16 copy, one converted elsewhere): checked against
    that first use, not against the package."""
    return first_use(name, filename) is not None


def forget_first_use(name: str, filename: str) -> None:
    """Drop the first-use record of ``name``'s ``filename`` whatever it holds: a package member was
    converted into the cache from its pinned archive, which supersedes a trusted copy's hash."""
    with _records_locked():
        records = _read_tofu()
        if records.pop(f"{name}/{filename}", None) is not None:
            _write_tofu(records)


def record_cached(spec: WeightSpec, wf: WeightFile, path: Path, sha: str, source: str, *,
                  trusted: bool = False, hashed: os.stat_result | None = None,
                  undo: Callable[[], None] | None = None) -> None:
    """Write the manifest entry of a file just put into the cache (checked before the call).

    ``trusted``: the spec pins no sha256, so this hash is also kept as the file's first-use
    record (:func:`first_use`), which later downloads and imports must match. ``hashed``: the
    stat taken before ``sha`` was computed, for a file the cache does not own (a ``--link``
    import); its size and mtime are recorded, so a change since then is re-hashed on next use.
    When a record cannot be written (a full disk), ``undo`` is called (the caller takes the file
    out of the cache again, freeing its space) and then a first-use record this call made is
    taken back, so that a pull or import that failed has recorded nothing; then the error is raised.
    (An interrupt keeps the first-use record, as a kill would.)
    """
    folder = path.parent
    added = False
    try:
        manifest = cache.read_manifest(folder)
        st = hashed if hashed is not None else path.stat()
        manifest[wf.filename] = CachedFile(
            filename=wf.filename, sha256=sha, size=st.st_size, source=source, license=spec.license,
            time=cache.now(), trusted=trusted, mtime_ns=st.st_mtime_ns)
        if trusted:  # first: a kill between the two writes must not leave a trusted hash rm can forget
            added = _remember_first_use(spec.name, wf.filename, FirstUse(sha, st.st_size, cache.now(), source))
        cache.write_manifest(folder, spec.name, manifest)
    except BaseException as exc:
        if undo is not None:
            undo()
        if added and isinstance(exc, Exception):  # not after an interrupt: that stands for a kill
            try:
                _drop_first_use(spec.name, wf.filename, sha)
            except (RestorekitError, OSError):  # best effort: the hash the user trusted stays recorded
                pass
        raise


def forget_spec(spec: WeightSpec) -> list[str]:
    """Drop the first-use records of ``spec``'s unpinned files and the cached copies checked against
    them; returns the file names forgotten."""
    with cache.locked(spec.name):
        return _forget(spec)


def _forget(spec: WeightSpec) -> list[str]:
    name = spec.name
    # Package members too: a copy trusted instead of the pinned conversion has a first-use record
    # (and its cached copy goes with it; one converted from the package stays).
    unpinned = {f.filename for f in spec.files if f.sha256 is None and not f.bundled}
    from_package = {f.filename for f in spec.files if f.package_source is not None}
    with _records_locked():
        records = _read_tofu()
        gone = sorted(fn for fn in unpinned if records.pop(f"{name}/{fn}", None) is not None)
        if gone:
            _write_tofu(records)
    folder = cache.weights_dir(name)
    manifest = cache.read_manifest(folder)
    dropped = [fn for fn in unpinned if fn in manifest and (fn not in from_package or manifest[fn].trusted)]
    for fn in dropped:
        (folder / fn).unlink(missing_ok=True)
        del manifest[fn]
    if dropped:
        if manifest:
            cache.write_manifest(folder, name, manifest)
        else:
            (folder / MANIFEST).unlink(missing_ok=True)
            cache.cleanup_empty(folder)
    return sorted(set(gone) | set(dropped))
