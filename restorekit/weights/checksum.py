"""sha256 of files, and the checks that a cached or bundled file is still the one its spec names.

A cached file is checked against its spec (size, sha256 when pinned), its manifest record and,
for an unpinned file, the hash recorded at first use. The size and recorded hash are always
compared; the full sha256 is recomputed when the file's mtime changed since it was recorded, or
on request (``weights verify``). Bundled files (shipped inside an installed package) are small
and always hashed in full.
"""

from __future__ import annotations

import errno
import hashlib
import importlib.machinery
import importlib.util
import os
from pathlib import Path

from ..entry_points import FIRST_PARTY
from ..errors import IntegrityError, RestorekitError, WeightsMissing
from . import cache, tofu
from .cache import CachedFile
from .spec import WeightFile, WeightSpec

__all__ = ["sha256_file", "file_version", "sha256_fd", "checked_copy", "package_folders", "bundled_path", "missing_fix",
           "check_cached", "spec_is_cached", "spec_problems", "unchanged_since"]


def sha256_file(path: str | os.PathLike[str], chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def sha256_fd(fd: int, chunk: int = 1 << 20) -> str:
    """Hex sha256 of the whole file open as ``fd`` (read from its start, not by its name again;
    the file's position is moved)."""
    h = hashlib.sha256()
    os.lseek(fd, 0, os.SEEK_SET)
    while block := os.read(fd, chunk):
        h.update(block)
    return h.hexdigest()


def checked_copy(tmp: Path, sha256: str, where: str) -> os.stat_result:
    """The copy an import just wrote at ``tmp`` (in the cache, a folder other users may write to),
    opened without following a link: it must be a regular file with one name, this user's, whose
    sha256 is ``sha256`` (else :class:`IntegrityError`, "the copy of ``where``"); returns its
    ``fstat``, for :func:`.cache.move_into_place` to move that file and no other. A link, a FIFO
    or another user's file found there instead is a one-line :class:`~restorekit.errors.CacheError`."""
    from .. import safe_open

    try:
        fd = os.open(tmp, os.O_RDONLY | safe_open.NOFOLLOW | safe_open.NONBLOCK | getattr(os, "O_CLOEXEC", 0)
                     | getattr(os, "O_BINARY", 0))
    except OSError as exc:
        raise cache.cache_error(exc, tmp) from exc
    try:
        try:
            safe_open.check_plain_file(fd, tmp)
            st = os.fstat(fd)
            if hasattr(os, "geteuid") and st.st_uid != os.geteuid():
                raise OSError(errno.EPERM, "another user's file stands where this import's copy was written", str(tmp))
            digest = sha256_fd(fd)
        except OSError as exc:
            raise cache.cache_error(exc, tmp) from exc
        if digest != sha256:  # the copy itself went wrong (disk, a concurrent write)
            raise IntegrityError(f"copy of {where} into the cache does not match its hash; refused")
    finally:
        os.close(fd)
    return st


def file_version(path: Path) -> tuple[int, ...]:
    """What changes when ``path`` is rewritten, replaced or renamed over (device, inode, size,
    mtime, ctime): equal before and after reading a file, the bytes read are the file's bytes then
    (a checkpoint saved meanwhile by a trainer is noticed). Follows a link, as opening the file does."""
    st = os.stat(path)
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def unchanged_since(path: Path, before: os.stat_result, where: str) -> None:
    """Refuse (:class:`IntegrityError`) a file whose size, mtime or inode differ from ``before``,
    the stat taken before its hash: the hash would then describe content the file no longer has."""
    after = path.stat()
    if (after.st_size, after.st_mtime_ns, after.st_ino) != (before.st_size, before.st_mtime_ns, before.st_ino):
        raise IntegrityError(f"{where} changed while it was being imported ({before.st_size} bytes when its "
                             f"hash was taken, {after.st_size} now); refused: import it again once it is complete")


def _expected_sha(wf: WeightFile, rec: CachedFile | None) -> str | None:
    return wf.sha256 if wf.sha256 is not None else (rec.sha256 if rec is not None else None)


def package_folders(dotted: str) -> list[str]:
    """The folders of an installed package, located without running any code: a registry entry is
    data, and ``find_spec`` of a dotted name imports its parents (``venv.x`` would run venv's
    ``__init__``). The top-level name is only located; each subpackage is looked for in its parent's
    folders. Empty when it is not an installed package."""
    top, *subs = dotted.split(".")
    try:
        found = importlib.util.find_spec(top)
    except (ImportError, ValueError):
        return []
    folders = list(found.submodule_search_locations or []) if found is not None else []
    for sub in subs:
        if not folders:
            break
        inner = importlib.machinery.PathFinder.find_spec(sub, folders)
        folders = list(inner.submodule_search_locations or []) if inner is not None else []
    return folders


def bundled_path(wf: WeightFile, name: str | None = None) -> Path:
    """Where an installed package keeps a bundled file (found without importing the package);
    ``name``: the weights it belongs to, for the error when it is not there."""
    assert wf.bundled is not None
    package, _, rel = wf.bundled.partition(":")
    for loc in package_folders(package):
        path = Path(loc) / rel
        if path.is_file():
            return path
    top = package.partition(".")[0]
    dist = top.replace("_", "-") if top.replace("_", "-") in FIRST_PARTY else None
    raise WeightsMissing(name or wf.filename, f"it ships inside the '{package}' package, which is not installed "
                                      f"or lacks {rel}",
                         fix=(f"pip install {dist} (or reinstall it)" if dist else
                              f"(re)install the distribution that provides '{package}'")
                         + " — nothing to pull: the file comes with the package")


def _check_bundled(spec: WeightSpec, wf: WeightFile) -> Path:
    """A bundled file after a full size + sha256 check (bundled files are small)."""
    path = bundled_path(wf, spec.name)
    size = path.stat().st_size
    actual = sha256_file(path)
    if size != wf.size or actual != wf.sha256:
        raise IntegrityError(f"{path} (bundled '{spec.name}') has {size} bytes and sha256 {actual}; the registry "
                             f"says {wf.size} bytes, {wf.sha256}: reinstall the package that ships it")
    return path


def missing_fix(spec: WeightSpec) -> str | None:
    """How to get ``spec`` into the cache when that needs more than the usual pull or import: an
    unpinned file never recorded needs ``--trust`` (a pull without it is refused). None: the usual."""
    def untrusted(wf: WeightFile) -> bool:
        try:
            return tofu.integrity(spec, wf) == "unknown"
        except IntegrityError:  # (a first-use record only a damaged manifest could hold)
            return True

    if not any(untrusted(wf) for wf in spec.files):
        return None
    return (f"run `restorekit weights pull --trust {spec.name}` (needs network; no sha256 is published, so "
            f"--trust records the one downloaded) or `restorekit weights import --trust {spec.name} FILE` "
            "(a file you already have)")


def check_cached(spec: WeightSpec, wf: WeightFile, *, full: bool) -> Path:
    """Path of a cached (or bundled) file after checks; raises WeightsMissing or IntegrityError."""
    if wf.bundled is not None:
        return _check_bundled(spec, wf)
    folder = cache.weights_dir(spec.name)
    path = folder / wf.filename
    rec = cache.read_manifest(folder).get(wf.filename)
    missing = WeightsMissing(spec.name, "" if len(spec.files) == 1 else f"file {wf.filename} not cached",
                             fix=missing_fix(spec))
    if not path.is_file() or rec is None:
        raise missing
    try:
        st = path.stat()
    except FileNotFoundError:  # removed this instant (`weights rm` while a load looks)
        raise missing from None
    if (wf.size is not None and st.st_size != wf.size) or st.st_size != rec.size:
        raise IntegrityError(f"cached {path} has {st.st_size} bytes, expected {wf.size or rec.size}; "
                             f"run `restorekit weights rm {spec.name}` and pull or import it again")
    if wf.sha256 is not None and rec.sha256 != wf.sha256:
        raise IntegrityError(f"cached {path} was recorded with sha256 {rec.sha256}, spec says {wf.sha256}; "
                             f"run `restorekit weights rm {spec.name}` and pull or import it again")
    first = tofu.first_use(spec.name, wf.filename) if wf.sha256 is None and wf.package_source is None else None
    if first is not None and rec.sha256 != first.sha256:
        raise IntegrityError(f"cached {path} was recorded with sha256 {rec.sha256}, but the first copy this cache "
                             f"took ({first.time}) had {first.sha256}; run `restorekit weights rm {spec.name}` and "
                             f"pull or import it again (or `restorekit weights forget {spec.name}`)")
    if full or st.st_mtime_ns != rec.mtime_ns:
        try:
            actual = sha256_file(path)
        except FileNotFoundError:
            raise missing from None
        expected = _expected_sha(wf, rec)
        if actual != expected:
            raise IntegrityError(f"cached {path} has sha256 {actual}, expected {expected} (modified or "
                                 f"corrupted); run `restorekit weights rm {spec.name}` and pull or import it again")
    return path


def spec_is_cached(spec: WeightSpec) -> bool:
    """Whether every file of ``spec`` is in the cache (cheap checks only)."""
    try:
        for wf in spec.files:
            check_cached(spec, wf, full=False)
    except (WeightsMissing, IntegrityError):
        return False
    return True


def spec_problems(spec: WeightSpec) -> list[str]:
    """Recompute the sha256 of every cached file of ``spec``; one line per problem."""
    problems = []
    for wf in spec.files:
        try:
            check_cached(spec, wf, full=True)
        except WeightsMissing:
            try:
                recorded = wf.filename in cache.read_manifest(cache.weights_dir(spec.name))
            except (RestorekitError, OSError):
                recorded = False
            problems.append(f"{spec.name}/{wf.filename}: " + (
                f"damaged: its manifest records it, but the file is gone; run `restorekit weights rm {spec.name}` "
                "and pull or import it again" if recorded else "not cached"))
        except IntegrityError as exc:
            problems.append(f"{spec.name}/{wf.filename}: {exc}")
    return problems
