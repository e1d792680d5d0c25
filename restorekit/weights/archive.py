"""Importing a multi-file weight spec from a zip archive or a folder (``restorekit weights import``).

Model packs are often shipped as one archive holding several files (insightface's
``buffalo_l.zip``) or unpacked into a folder. :func:`import_spec_archive` finds each file of the spec
by its base name anywhere in the zip or below the folder (macOS ``__MACOSX``/``._*`` entries are
ignored), checks size, sha256 and pickled content exactly like :func:`.fetch.import_spec_file`, and only
then moves every file into the cache: a mismatch anywhere leaves the cache as it was. Members
of the archive that the spec does not name are not extracted. Extraction never uses the
member's path (only the spec's file name), so an archive cannot write outside the cache.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO

from .. import safe_open
from ..errors import IntegrityError, RestorekitError
from . import cache, checksum, download, fetch, load, tofu
from .spec import WeightFile, WeightSpec

__all__ = ["wants_archive_import", "import_spec_archive", "ArchiveImport"]

_CHUNK = 1 << 20


def wants_archive_import(spec: WeightSpec, path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is to be imported with :func:`import_spec_archive`: a folder, or a ``.zip``
    that is not itself one of the spec's files (nor the pinned package archive a file is taken from)."""
    p = Path(path)
    if p.is_dir():
        return True
    if not (p.suffix.lower() == ".zip" and p.name not in {f.filename for f in spec.files} and zipfile.is_zipfile(p)):
        return False
    pinned = {f.package_source.archive_sha256 for f in spec.files if f.package_source is not None}
    return not pinned or checksum.sha256_file(p) not in pinned  # a package's zip sdist: its member is converted


@dataclass(frozen=True)
class ArchiveImport:
    """What :func:`import_spec_archive` did: cached paths, warnings (``--trust``), members left out."""

    paths: list[Path]
    warnings: list[str]
    ignored: list[str]


def _skip(member: str) -> bool:
    parts = PurePosixPath(member).parts
    return not parts or "__MACOSX" in parts or parts[-1].startswith("._")


def _members_zip(zf: zipfile.ZipFile) -> dict[str, list[str]]:
    by_name: dict[str, list[str]] = {}
    for info in zf.infolist():
        if info.is_dir() or _skip(info.filename):
            continue
        by_name.setdefault(PurePosixPath(info.filename).name, []).append(info.filename)
    return by_name


def _members_dir(root: Path) -> dict[str, list[str]]:
    by_name: dict[str, list[str]] = {}
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root).as_posix()
        if p.is_file() and not _skip(rel):
            by_name.setdefault(p.name, []).append(rel)
    return by_name


def _check(spec: WeightSpec, wf: WeightFile, where: str, size: int, sha: str, trust: bool) -> str | None:
    if wf.size is not None and size != wf.size:
        raise IntegrityError(f"{where} has {size} bytes but weights '{spec.name}' ({wf.filename}) have {wf.size}; refused")
    if wf.sha256 is None:  # trust on first use: the recorded hash, or --trust to record one
        return tofu.check_first_use(spec, wf, sha, where, trust=trust)
    if sha != wf.sha256:
        raise IntegrityError(f"{where} has sha256 {sha} but weights '{spec.name}' ({wf.filename}) need "
                             f"{wf.sha256}; refused")
    return None


def _too_large(spec: WeightSpec, wf: WeightFile, where: str, limit: int, *, pinned: bool) -> IntegrityError:
    if pinned:
        return IntegrityError(f"{where} has more than the {limit} bytes of weights '{spec.name}' ({wf.filename}); refused")
    return IntegrityError(f"{where} has more than the {limit} bytes weights '{spec.name}' ({wf.filename}) may have "
                          "with no size in their spec; refused, nothing copied into the cache")


def _copy_hashing(src: IO[bytes], dest: Path | None, limit: int | None) -> tuple[int, str]:
    """``(bytes read, sha256)`` of ``src``, copied to the new file ``dest`` (None: hashed only),
    which is made with ``O_EXCL`` and never through a link (the cache may be a folder other users
    write to); ``""`` for the hash when more than ``limit`` bytes come (reading stops there)."""
    h = hashlib.sha256()
    n = 0
    with safe_open.create_exclusive(dest) if dest is not None else contextlib.nullcontext() as out:
        while block := src.read(_CHUNK):
            n += len(block)
            if limit is not None and n > limit:  # larger than the spec allows: stop reading (zip bombs)
                return n, ""
            h.update(block)
            if out is not None:
                out.write(block)
        if out is not None:
            out.flush()
            safe_open.sync_data(out.fileno())  # on the disk before it is renamed into the cache
    return n, h.hexdigest()


def import_spec_archive(spec: WeightSpec, path: str | os.PathLike[str], *, link: bool = False,
                        trust: bool = False, allow_unsafe: bool = False) -> ArchiveImport:
    """Import every file of ``spec`` from a zip archive or a folder.

    ``link`` (folders only) makes the cache hold symlinks to the folder's files. ``trust``
    accepts files of a spec without sha256 and records their hash (a warning per file is
    returned). A file missing from the archive, of the wrong size or hash, or a PyTorch
    checkpoint holding pickled objects beyond tensors (unless ``allow_unsafe``, as for a single
    file), is refused with nothing changed in the cache. Runs under the spec's lock
    (:func:`.cache.locked`), as pulls and single-file imports do.
    """
    with cache.locked(spec.name):
        cache.refuse_linked_folder(cache.weights_dir(spec.name))
        cache.remove_stray_imports(spec.name)  # copies of imports killed midway (none runs: we hold the lock)
        return _import_archive(spec, path, link=link, trust=trust, allow_unsafe=allow_unsafe)


def _import_archive(spec: WeightSpec, path: str | os.PathLike[str], *, link: bool, trust: bool,
                    allow_unsafe: bool) -> ArchiveImport:
    name = spec.name
    src = Path(path).expanduser().resolve()
    is_dir = src.is_dir()
    if not is_dir and not (src.is_file() and zipfile.is_zipfile(src)):
        raise RestorekitError(f"cannot import weights '{name}' from {src}: not a folder or a zip archive")
    if link and not is_dir:
        raise RestorekitError(f"--link needs a folder; {src} is an archive (its members are copied)")
    zf = None if is_dir else zipfile.ZipFile(src)
    try:
        members = _members_dir(src) if is_dir else _members_zip(zf)  # type: ignore[arg-type]
        chosen: dict[str, str] = {}
        for wf in spec.files:
            found = members.get(wf.filename, [])
            if not found:
                have = ", ".join(sorted(members)) or "nothing"
                raise RestorekitError(f"{src} has no {wf.filename} for weights '{name}' (it holds: {have})")
            if len(found) > 1:
                raise RestorekitError(f"{src} holds {wf.filename} more than once ({', '.join(found)}); "
                                      "import the one you mean as a file with --filename")
            chosen[wf.filename] = found[0]
        folder = cache.plain_cache_folder(cache.weights_dir(name))
        # (file, its temporary name, sha256, where from, stat: the source a link points at; else the copy written)
        staged: list[tuple[WeightFile, Path, str, str, os.stat_result]] = []
        temps: list[Path] = []  # every temporary name made, removed if anything fails
        warnings: list[str] = []
        try:
            for wf in spec.files:
                member = chosen[wf.filename]
                where = f"{src}/{member}" if is_dir else f"{src}:{member}"
                # The copy never exceeds the pinned size, else the size recorded at first use, else
                # download.MAX_UNSIZED (a zip's member may inflate to anything)
                limit = wf.size if wf.size is not None else download.MAX_UNSIZED
                first_size = False
                if wf.sha256 is None and wf.size is None:  # trust on first use
                    first = tofu.first_use(name, wf.filename)
                    if first is not None:
                        limit, first_size = first.size, True  # the recorded size bounds the copy as a pinned one does
                    elif not trust:  # refused in any case: hash the member (for the message), copy nothing
                        with (open(src / member, "rb") if is_dir else zf.open(member)) as f:  # type: ignore[union-attr]
                            size, sha = _copy_hashing(f, None, limit)
                        if not sha:
                            raise _too_large(spec, wf, where, limit, pinned=False)
                        _check(spec, wf, where, size, sha, trust)
                tmp: Path | None = None
                if link:  # (a folder's file)
                    file = src / member
                    st = file.stat()
                    size, sha = st.st_size, checksum.sha256_file(file)
                    checksum.unchanged_since(file, st, where)  # the cache will read the file itself
                else:
                    tmp = cache.import_temp(folder, wf.filename)  # (a random name: none planted there)
                    temps.append(tmp)
                    with (open(src / member, "rb") if is_dir else zf.open(member)) as f:  # type: ignore[union-attr]
                        size, sha = _copy_hashing(f, tmp, limit)
                if not sha:  # the copy stopped at the limit
                    raise _too_large(spec, wf, where, limit, pinned=wf.size is not None or first_size)
                if tmp is not None:  # only the file just written, with that hash, is moved into place
                    st = checksum.checked_copy(tmp, sha, where)
                read = src / member if tmp is None else tmp
                if wf.sha256 is None and tofu.first_use(name, wf.filename) is None:  # its hash would become
                    load.check_format(read, wf.filename, where)  # the trusted one
                warning = _check(spec, wf, where, size, sha, trust)
                load.refuse_unsafe(read, where, allow_unsafe=allow_unsafe)
                if tmp is None:
                    tmp = fetch._fresh_link(folder, wf.filename, src / member)
                    temps.append(tmp)
                staged.append((wf, tmp, sha, where, st))
                if warning:
                    warnings.append(warning)
            paths = []
            for wf, tmp, sha, where, st in staged:
                dest = folder / wf.filename
                if link:
                    os.replace(tmp, dest)  # (a link this import just made, at a fresh name)
                else:
                    cache.move_into_place(tmp, dest, st)  # only the copy written and checked
                fetch.record_moved_in(spec, wf, dest, sha, f"import:{where}", trusted=wf.sha256 is None,
                                      hashed=st if link else None)
                paths.append(dest)
        except BaseException:
            for tmp in temps:
                tmp.unlink(missing_ok=True)
            cache.cleanup_empty(folder)
            raise
    finally:
        if zf is not None:
            zf.close()
    wanted = {f.filename for f in spec.files}
    ignored = sorted(m for n, ms in members.items() if n not in wanted for m in ms)
    return ArchiveImport(paths, warnings, ignored)
