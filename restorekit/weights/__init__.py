"""Weight specs, the local cache, sha256 verification and loading that never runs code.

The package is layered; each module imports only those listed before it::

    spec            what a weight spec is (pydantic schema; no I/O)
    st_bytes        safetensors bytes with sorted metadata: the same file for the same contents
    cache           where cached files live; the per-folder manifest
    tofu            trust on first use: hashes recorded for files whose spec pins none
    checksum        sha256; checks that a cached or bundled file is still the right one
    safe_pickle     numpy-only unpickler (for converters of pickled numpy weights)
    load            safe loading of a path (safetensors, torch.load(weights_only=True)), pickle scanning
    download        HTTP mirrors: resume, sha256, atomic move
    package_member  a member of a pinned package distribution, converted to safetensors
    fetch           pull a spec's files from their source, or import a file the user has
    archive         import a multi-file spec from a zip archive or a folder
    catalogue       which specs exist (registry/ + plugins) and every operation by weights name

Only the catalogue asks the plugin registry for anything, inside its functions: importing this
package loads no plugin. Cached files live at ``<cache>/weights/<name>/<filename>`` (``<cache>``
is ``$RESTOREKIT_HOME`` or the platform cache dir). :func:`resolve` returns a cached, verified
path or raises :class:`~restorekit.errors.WeightsMissing` naming the commands that fix it;
:func:`load_checkpoint` and :func:`load_state_dict` read safetensors, or torch pickles with
``weights_only=True`` only.

This module re-exports the public names of the layers. Assigning one of them here (a test's
``monkeypatch.setattr(restorekit.weights, "registry_specs", ...)``) also assigns it in the module
that defines it, and modules call across layers through the module (``cache.weights_dir(...)``),
so such a patch reaches every caller, as it did when this package was one module.
"""

from __future__ import annotations

import sys
import types
from typing import Any

from . import archive, cache, catalogue, checksum, load, spec, tofu
from .archive import ArchiveImport, wants_archive_import
from .cache import (CachedFile, cache_dir, cache_error, cache_folder, cached_files, onnx_cache_dir, remove,
                    stray_imports, weights_dir)
from .catalogue import (all_specs, convert_to_safetensors, forget, get_spec, import_archive, import_file, is_cached,
                        iter_specs, load_checkpoint, load_state_dict, looks_like_path, not_a_file_error, plugin_specs, pull,
                        registered_name, registry_dirs, registry_specs, resolve, verify, weights_file,
                        weights_source)
from .checksum import bundled_path, file_version, package_folders, sha256_file
from .load import flatten_state_dict, pickle_globals, safetensors_metadata, state_mismatch, unsafe_globals
from .spec import MANIFEST, PackageSource, WeightFile, WeightSpec
from .tofu import TOFU_FILE, FirstUse, check_first_use, first_use, integrity

__all__ = [
    "PackageSource", "WeightFile", "WeightSpec", "CachedFile", "MANIFEST", "TOFU_FILE",
    "cache_dir", "cache_error", "cache_folder", "onnx_cache_dir", "weights_dir", "registry_dirs", "registry_specs",
    "plugin_specs", "all_specs", "iter_specs", "get_spec", "resolve", "registered_name", "weights_source", "weights_file", "looks_like_path", "not_a_file_error", "is_cached",
    "cached_files", "stray_imports", "verify", "pull",
    "import_file", "import_archive", "wants_archive_import", "ArchiveImport", "FirstUse", "first_use",
    "check_first_use", "forget", "integrity", "remove", "sha256_file", "file_version", "bundled_path", "package_folders", "pickle_globals",
    "unsafe_globals", "load_checkpoint", "load_state_dict", "flatten_state_dict", "convert_to_safetensors",
    "safetensors_metadata", "state_mismatch",
]

# The module that defines each re-exported name (where an assignment here is forwarded).
_HOMES: dict[str, types.ModuleType] = {
    name: module for module in (spec, cache, tofu, checksum, load, archive, catalogue)
    for name in module.__all__ if name in __all__}


class _Facade(types.ModuleType):
    """The package's module type: setting or deleting a re-exported name also does it where the
    name is defined, so the package stays one namespace for callers that patch it."""

    def __setattr__(self, name: str, value: Any) -> None:
        home = _HOMES.get(name)
        if home is not None:
            setattr(home, name, value)
        super().__setattr__(name, value)

    def __delattr__(self, name: str) -> None:
        home = _HOMES.get(name)
        if home is not None and hasattr(home, name):
            delattr(home, name)
        super().__delattr__(name)


sys.modules[__name__].__class__ = _Facade
