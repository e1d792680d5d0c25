"""Plugin discovery and the registry of everything plugins provide.

Built-ins (``restorekit.builtin``) are registered like any plugin; third parties and the
first-party plugins come from the ``restorekit`` entry-point group. A plugin whose import or
registration raises is recorded as broken and the others keep working, unless strict mode
(``--strict`` / ``RESTOREKIT_STRICT_PLUGINS=1``) turns that into an error.
"""

from __future__ import annotations

import difflib
import importlib
import os
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from collections.abc import Mapping
from typing import Any, Callable

import pluggy
from pydantic import BaseModel

from . import hookspecs
from .errors import PluginError, UnknownNameError

GROUP = "restorekit"
KINDS = ("methods", "generators", "encoders", "losses", "degradations", "metrics", "weights",
         "face_embedders", "face_detectors")
# Kinds whose register() takes a (name, factory) pair instead of a class or spec.
FACTORY_KINDS = ("generators", "encoders", "face_embedders", "face_detectors")
BUILTIN = "restorekit"


@dataclass(frozen=True)
class Factory:
    """A named constructor registered for a factory kind, with the pydantic model of its options.

    A factory registered without ``options`` gets a model derived from its signature (typed
    keyword parameters, see :func:`restorekit.options.model_from_signature`), built on first use.
    """

    name: str
    build: Callable[..., Any]
    summary: str = ""
    options: type[BaseModel] | None = None

    def options_model(self) -> type[BaseModel]:
        """The model that user options for this factory are validated against."""
        if self.options is None:
            from .options import model_from_signature

            object.__setattr__(self, "options", model_from_signature(self.build, self.name))
        assert self.options is not None
        return self.options

    def create(self, values: Mapping[str, Any], *, label: str | None = None, **extra: Any) -> Any:
        """Build from user option values (strings read by the model's field types) plus ``extra``
        keyword arguments that are not user options (a device); bad options raise ``OptionError``."""
        from .options import validate

        opts = validate(self.options_model(), values, label=label or self.name)
        kwargs = {k: getattr(opts, k) for k in opts.model_fields_set}
        return self.build(**kwargs, **extra)


@dataclass
class PluginRecord:
    """What `restorekit plugins` shows about one plugin."""

    name: str
    distribution: str
    version: str
    status: str = "ok"  # "ok" or "broken: <error>"
    registers: dict[str, list[str]] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "distribution": self.distribution, "version": self.version,
                "status": self.status, "registers": self.registers}


def _name_of(obj: Any) -> str:
    info = getattr(obj, "info", None)
    if info is not None and hasattr(info, "name"):
        return str(info.name)
    name = getattr(obj, "name", None)
    if isinstance(name, str):
        return name
    raise PluginError(f"cannot tell the name of {obj!r}: give it `name` or `info.name`")


def suggest(name: str, choices: list[str]) -> str:
    """' (did you mean X?)' when a close match exists, else ''."""
    close = difflib.get_close_matches(name, choices, n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


class Registry:
    """Everything registered, by kind and name, with the plugin that registered it."""

    def __init__(self) -> None:
        self.items: dict[str, dict[str, Any]] = {k: {} for k in KINDS}
        self.owner: dict[str, dict[str, str]] = {k: {} for k in KINDS}
        self.plugins: dict[str, PluginRecord] = {}
        self.commands: list[Callable[[Any], None]] = []

    def add(self, kind: str, name: str, obj: Any, plugin: str) -> None:
        if name in self.items[kind]:
            other = self.owner[kind][name]
            raise PluginError(f"{kind[:-1]} '{name}' is registered by both '{other}' and '{plugin}'")
        self.items[kind][name] = obj
        self.owner[kind][name] = plugin

    def get(self, kind: str, name: str) -> Any:
        try:
            return self.items[kind][name]
        except KeyError:
            names = sorted(self.items[kind])
            label = kind[:-1].replace("_", " ")
            known = ", ".join(names) if names else "none registered"
            raise UnknownNameError(
                f"unknown {label} '{name}'{suggest(name, names)}; known: {known}") from None

    def names(self, kind: str) -> list[str]:
        return sorted(self.items[kind])

    # Convenience accessors for the common kinds.
    def method(self, name: str) -> Any:
        return self.get("methods", name)

    def metric(self, name: str) -> Any:
        return self.get("metrics", name)


def _strict_from_env() -> bool:
    return os.environ.get("RESTOREKIT_STRICT_PLUGINS", "").lower() in ("1", "true", "yes")


def _allowed_from_env() -> set[str] | None:
    raw = os.environ.get("RESTOREKIT_LOAD_PLUGINS")
    if raw is None:
        return None
    return {p.strip() for p in raw.split(",") if p.strip()}


def _make_register(reg: Registry, kind: str, plugin: str, record: PluginRecord) -> Callable[..., None]:
    def register(obj: Any, factory: Callable[..., Any] | None = None, *, summary: str = "",
                 options: type[BaseModel] | None = None) -> None:
        if kind in FACTORY_KINDS:
            if not isinstance(obj, str) or factory is None:
                raise PluginError(f"register_{kind}: call register(name, factory, summary=..., options=Model)")
            if options is not None and not (isinstance(options, type) and issubclass(options, BaseModel)):
                raise PluginError(f"register_{kind}: options of '{obj}' must be a pydantic model class")
            name, value = obj, Factory(obj, factory, summary, options)
        else:
            name, value = _name_of(obj), obj
        reg.add(kind, name, value, plugin)
        record.registers.setdefault(kind, []).append(name)

    return register


def _register_plugin(pm: pluggy.PluginManager, reg: Registry, plugin_obj: Any, record: PluginRecord) -> None:
    """Call every hook this plugin implements; undo partial work on failure."""
    added: list[tuple[str, str]] = []
    try:
        for kind in KINDS:
            fn = getattr(plugin_obj, f"register_{kind}", None)
            if fn is None:
                continue
            register = _make_register(reg, kind, record.name, record)

            def tracking(obj: Any, factory: Any = None, *, summary: str = "", options: Any = None,
                         _r=register, _k=kind) -> None:
                _r(obj, factory, summary=summary, options=options)
                added.append((_k, record.registers[_k][-1]))

            fn(register=tracking)
        cmd = getattr(plugin_obj, "register_commands", None)
        if cmd is not None:
            reg.commands.append(cmd)
    except Exception:
        for kind, name in added:
            if reg.owner[kind].get(name) == record.name:
                del reg.items[kind][name]
                del reg.owner[kind][name]
        record.registers = {}
        raise


def load_registry(strict: bool | None = None) -> Registry:
    """Discover built-ins and entry-point plugins and collect their registrations."""
    strict = _strict_from_env() if strict is None else strict
    allowed = _allowed_from_env()
    pm = pluggy.PluginManager(GROUP)
    pm.add_hookspecs(hookspecs)
    reg = Registry()

    from . import __version__, builtin

    rec = PluginRecord(BUILTIN, "restorekit", __version__)
    reg.plugins[BUILTIN] = rec
    pm.register(builtin, name=BUILTIN)
    _register_plugin(pm, reg, builtin, rec)

    for ep in sorted(entry_points(group=GROUP), key=lambda e: e.name):
        if allowed is not None and ep.name not in allowed:
            continue
        dist = ep.dist
        rec = PluginRecord(ep.name, dist.name if dist else "?", dist.version if dist else "?")
        if ep.name in reg.plugins:
            rec.status = f"broken: plugin name '{ep.name}' is already taken by {reg.plugins[ep.name].distribution}"
            reg.plugins[f"{ep.name} ({rec.distribution})"] = rec
            continue
        reg.plugins[ep.name] = rec
        try:
            module = ep.load()
            pm.register(module, name=ep.name)
            _register_plugin(pm, reg, module, rec)
        except Exception as exc:  # isolation: one broken plugin must not take the rest down
            rec.status = f"broken: {type(exc).__name__}: {exc}"
            if strict:
                raise PluginError(f"plugin '{ep.name}' ({rec.distribution}) is broken: {exc}") from exc
    return reg


_REGISTRY: Registry | None = None


def registry(strict: bool | None = None) -> Registry:
    """The process-wide registry, loaded on first use."""
    global _REGISTRY
    if _REGISTRY is None:
        _REGISTRY = load_registry(strict)
    return _REGISTRY


def reset() -> None:
    """Forget the loaded registry (tests, or after installing a plugin)."""
    global _REGISTRY
    _REGISTRY = None
    importlib.invalidate_caches()
