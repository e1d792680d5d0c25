"""Plugin discovery and the registry of everything plugins provide.

Built-ins (``restorekit.builtin``) are registered like any plugin; third parties and the
first-party plugins come from the ``restorekit`` entry-point group. A plugin whose import or
registration raises is recorded as broken and the others keep working, unless strict mode
(``--strict`` / ``RESTOREKIT_STRICT_PLUGINS=1``) turns that into an error.

Isolation covers every way a plugin can fail while loading or registering: any exception, also
``SystemExit`` and other ``BaseException`` escapes (a ``KeyboardInterrupt`` counts as the user's
only when a real SIGINT arrived), and any registration that :mod:`restorekit.plugin_checks`
rejects (even one the plugin catches and ignores). The plugin is then listed as ``broken: <reason>``
and every one of its registrations, commands included, is dropped.

Loading has two steps, so that the order of discovery decides nothing. First every plugin's hooks
are called in isolation and what it registers is collected apart (checked entry by entry, and
against the core's own names, ``restorekit.builtin``: a plugin taking one breaks alone). Then the
collections of the plugins that came through are merged: a name registered by two or more of them
breaks every one of them, each with one line naming the name(s) and the plugins; the others are
added. A plugin broken while collecting registers nothing, so the names it reached take no part.
The first-party plugins (:data:`FIRST_PARTY`) go through both steps before any other, so their
names are like the core's: a third-party plugin registering one breaks alone.

A plugin cannot change how the others compute either: the process-wide torch, NumPy and Python
state it changes while it is imported and registered (:mod:`restorekit.global_state`) is put
back, with a warning naming it (:func:`kept_global_state`), and what it writes to stdout, even to
file descriptor 1, goes to stderr (:func:`output_to_stderr`). Installed distributions are read one
by one, so one with unreadable entry points is skipped with a warning instead of failing every
command.
"""

from __future__ import annotations

import contextlib
import difflib
import importlib
import os
import signal
import sys
import threading
import time
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from importlib.metadata import EntryPoint
from collections.abc import Mapping
from typing import Any, Callable

import pluggy
from pydantic import BaseModel

from . import ENTRY_POINT_GROUP, hookspecs
from .entry_points import FIRST_PARTY, dist_field, dist_label, installed_entry_points
from .entry_points import normalised_name as _normalised
from .errors import PluginError, UnknownNameError, exception_line

GROUP = ENTRY_POINT_GROUP
KINDS = ("methods", "generators", "encoders", "losses", "degradations", "metrics", "weights",
         "face_embedders", "face_detectors")
# Kinds whose register() takes a (name, factory) pair instead of a class or spec.
FACTORY_KINDS = ("generators", "encoders", "face_embedders", "face_detectors")
BUILTIN = "restorekit"
# FIRST_PARTY (entry_points): this repository's plugin distributions, loaded and merged before any
# other, so a third-party plugin registering one of their names breaks alone, as for a core name.
#: What each of them registers, so that a name asked for while its distribution is not installed
#: is said to come with it (a test compares this with the installed plugins' registrations).
FIRST_PARTY_NAMES: dict[tuple[str, str], str] = {
    **{("methods", n): "restorekit-baselines" for n in ("bicubic", "pix2pixhd", "pulse")},
    **{("methods", n): "restorekit-psp-sr" for n in ("psp_sr", "psp_pulse")},
    ("generators", "stylegan2"): "restorekit-psp-sr", ("encoders", "gradual_style"): "restorekit-psp-sr",
    ("losses", "identity"): "restorekit-psp-sr", ("face_embedders", "arcface_irse50"): "restorekit-psp-sr",
    ("commands", "train pix2pixhd"): "restorekit-baselines",
    **{("commands", c): "restorekit-psp-sr"
       for c in ("bench generator", "train psp_sr", "train stylegan2", "train stylegan2_ae")},
}


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
    #: Seconds its import and registration took in this process (None: not imported). Every
    #: command pays it, so a plugin importing a heavy library at the top slows all of them.
    load_seconds: float | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "distribution": self.distribution, "version": self.version,
                "status": self.status, "registers": self.registers,
                "load_seconds": None if self.load_seconds is None else round(self.load_seconds, 3)}


def _name_of(obj: Any) -> str:
    info = getattr(obj, "info", None)
    if info is not None and hasattr(info, "name"):
        return str(info.name)
    name = getattr(obj, "name", None)
    if isinstance(name, str):
        return name
    raise PluginError(f"cannot tell the name of {obj!r}: give it `name` or `info.name`")


def suggest(name: str, choices: list[str]) -> str:
    """' (did you mean X?)' for the choice ``name`` spells in another case (``LR`` → ``lr``, which
    difflib scores 0), else a close match, else ''."""
    same = next((c for c in choices if c.lower() == name.lower()), None)
    if same is not None and same != name:
        return f" (did you mean '{same}'?)"
    close = difflib.get_close_matches(name, choices, n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


@dataclass(frozen=True)
class PluginCommands:
    """A plugin's ``register_commands`` hook, with the plugin it belongs to."""

    plugin: str
    hook: Callable[..., None]

    def __call__(self, cli: Any) -> None:
        self.hook(cli=cli)


class Registry:
    """Everything registered, by kind and name, with the plugin that registered it."""

    def __init__(self) -> None:
        self.items: dict[str, dict[str, Any]] = {k: {} for k in KINDS}
        self.owner: dict[str, dict[str, str]] = {k: {} for k in KINDS}
        self.plugins: dict[str, PluginRecord] = {}
        self.commands: list[PluginCommands] = []
        # Registrations refused per plugin (kept even when the plugin catches the error).
        self.refused: dict[str, list[str]] = {}
        # Names RESTOREKIT_LOAD_PLUGINS lists that no installed plugin declares (a typo loads nothing).
        self.not_installed: list[str] = []
        # ... and for each of them " (did you mean 'x'?)" when an installed plugin's name is close.
        self.not_installed_hints: dict[str, str] = {}
        # (kind, name) -> the plugins that all registered it (and are broken for it): nobody's name,
        # but not free either (`plugin new` refuses it).
        self.clashed: dict[tuple[str, str], list[str]] = {}
        # Whether add_commands has run the command hooks (the conformance cases run them when the
        # CLI has not), and per plugin the command paths ('hello', 'train mytrainer') it added.
        self.commands_checked = False
        self.added_commands: dict[str, list[tuple[str, Any]]] = {}
        # (kind, name) -> the broken plugins that registered it before they broke (and lost it): an
        # unknown name that one of them had is named with their reason.
        self.lost: dict[tuple[str, str], list[str]] = {}
        # Plugin -> the global settings its import and hooks changed (put back, and warned about):
        # 'torch.get_default_dtype() float32 → float64; …'.
        self.state_changes: dict[str, str] = {}
        self._registry_weights: dict[str, Any] | None = None

    def add(self, kind: str, name: str, obj: Any, plugin: str) -> None:
        """Add one entry after checking it (:mod:`restorekit.plugin_checks`) and its name's uniqueness."""
        self.check(kind, name, obj, plugin)
        self.items[kind][name] = obj
        self.owner[kind][name] = plugin

    def check(self, kind: str, name: str, obj: Any, plugin: str) -> None:
        """Raise ``PluginError`` if ``obj`` may not be registered as ``name`` by ``plugin`` beside what
        is already registered (while plugins load, that is the core alone)."""
        from .plugin_checks import check_registration

        check_registration(kind, obj, self._public_weights() if kind == "weights" else None)
        if name in self.items[kind]:
            raise PluginError(_clash_message(kind, name, [self.owner[kind][name], plugin]))

    def _public_weights(self) -> dict[str, Any]:
        """The registry folder's weight specs (read once; a broken registry is not a plugin's fault)."""
        if self._registry_weights is None:
            from .weights import registry_specs

            try:
                self._registry_weights = registry_specs()
            except Exception:
                self._registry_weights = {}
        return self._registry_weights

    def first_party(self, plugin: str) -> bool:
        """Whether ``plugin`` comes from one of this repository's distributions (:data:`FIRST_PARTY`)."""
        rec = self.plugins.get(plugin)
        return rec is not None and _normalised(rec.distribution) in FIRST_PARTY

    def note_lost(self, plugin: str, keys: Any) -> None:
        """Remember that broken ``plugin`` had registered ``keys`` (``(kind, name)`` pairs)."""
        for key in keys:
            owners = self.lost.setdefault(key, [])
            if plugin not in owners:
                owners.append(plugin)

    def drop_plugin(self, plugin: str, reason: str) -> None:
        """Mark ``plugin`` broken with ``reason`` and remove everything it registered."""
        for kind in KINDS:
            for name in [n for n, owner in self.owner[kind].items() if owner == plugin]:
                del self.items[kind][name]
                del self.owner[kind][name]
                self.note_lost(plugin, [(kind, name)])
        self.commands = [c for c in self.commands if c.plugin != plugin]
        self.note_lost(plugin, [("commands", path) for path, _ in self.added_commands.pop(plugin, [])])
        rec = self.plugins.get(plugin)
        if rec is not None:
            rec.status = f"broken: {reason}"
            rec.registers = {}

    def get(self, kind: str, name: str) -> Any:
        try:
            return self.items[kind][name]
        except KeyError:
            names = sorted(self.items[kind])
            label = kind[:-1].replace("_", " ")
            lost = self._lost_line(kind, name)
            if lost:
                raise UnknownNameError(f"{label} '{name}' is unavailable: {lost}; see `restorekit plugins`") from None
            known = ", ".join(names) if names else "none registered"
            absent = _absent_first_party(kind, name)
            if absent:
                raise UnknownNameError(f"{label} '{name}' comes with the {absent} distribution, which is not "
                                       f"installed: pip install {absent}") from None
            raise UnknownNameError(
                f"unknown {label} '{name}'{suggest(name, names)}; known: {known}{self.unsure_tail()}") from None

    def unsure_tail(self) -> str:
        """What may explain a name nobody registered, to end the refusal: ``RESTOREKIT_LOAD_PLUGINS``
        limiting the plugins loaded (and naming some not installed), broken plugins that may have had it."""
        limit = os.environ.get("RESTOREKIT_LOAD_PLUGINS")
        typos = "".join(f"; '{n}' is not installed{self.not_installed_hints.get(n, '')}" for n in self.not_installed)
        limited = f" (RESTOREKIT_LOAD_PLUGINS={limit} limits the plugins loaded{typos})" if limit is not None else ""
        broken = sorted(p for p, rec in self.plugins.items() if rec.status != "ok")
        unsure = (f"; broken plugins, which may have had it: {', '.join(repr(p) for p in broken)} (see "
                  "`restorekit plugins`)") if broken else ""
        return limited + unsure

    def _lost_line(self, kind: str, name: str) -> str:
        """Why ``name`` is missing when broken plugins had registered it: ``plugin 'x' is broken: …``."""
        for plugin in self.lost.get((kind, name), []):
            rec = self.plugins.get(plugin)
            if rec is not None and rec.status != "ok":
                return f"plugin '{plugin}' is {rec.status}"
        return ""

    def names(self, kind: str) -> list[str]:
        return sorted(self.items[kind])

    # Convenience accessors for the common kinds.
    def method(self, name: str) -> Any:
        return self.get("methods", name)

    def metric(self, name: str) -> Any:
        return self.get("metrics", name)


def _absent_first_party(kind: str, name: str) -> str | None:
    """The first-party distribution that registers ``name`` when it is not installed, else None."""
    dist = FIRST_PARTY_NAMES.get((kind, name))
    if dist is None:
        return None
    try:
        importlib.metadata.distribution(dist)
    except importlib.metadata.PackageNotFoundError:
        return dist
    return None


def missing_command(path: str) -> str:
    """Why command ``path`` (``train psp_sr``) is not there, to end click's refusal: the
    first-party distribution that adds it is not installed, or a broken plugin had added it, or
    RESTOREKIT_LOAD_PLUGINS left plugins out, or broken plugins may have; "" when none of these."""
    absent = _absent_first_party("commands", path)
    if absent:
        return f": it comes with the {absent} distribution, which is not installed: pip install {absent}"
    reg = _REGISTRY
    if reg is None:
        return ""
    lost = reg._lost_line("commands", path)
    return f": {lost}; see `restorekit plugins`" if lost else reg.unsure_tail()


def _strict_from_env() -> bool:
    return os.environ.get("RESTOREKIT_STRICT_PLUGINS", "").lower() in ("1", "true", "yes")


def _allowed_from_env() -> set[str] | None:
    raw = os.environ.get("RESTOREKIT_LOAD_PLUGINS")
    if raw is None:
        return None
    return {p.strip() for p in raw.split(",") if p.strip()}


def _clash_message(kind: str, name: str, plugins: list[str]) -> str:
    """The line for a name registered by more than one plugin (named in the order given)."""
    quoted = [f"'{p}'" for p in plugins]
    if len(quoted) == 2:
        return f"{kind[:-1]} '{name}' is registered by both {quoted[0]} and {quoted[1]}"
    return f"{kind[:-1]} '{name}' is registered by {', '.join(quoted[:-1])} and {quoted[-1]}"


@dataclass
class _Collected:
    """What one plugin's hooks registered, kept apart from the registry until the merge."""

    record: PluginRecord
    entries: dict[tuple[str, str], Any] = field(default_factory=dict)  # (kind, name) -> entry, in order
    commands: Callable[..., None] | None = None


def _make_register(reg: Registry, kind: str, collected: _Collected) -> Callable[..., None]:
    plugin = collected.record.name

    def checked(obj: Any, factory: Callable[..., Any] | None, summary: str,
                options: type[BaseModel] | None) -> tuple[str, Any]:
        if kind in FACTORY_KINDS:
            if not isinstance(obj, str) or factory is None:
                raise PluginError(f"register_{kind}: call register(name, factory, summary=..., options=Model)")
            if options is not None and not (isinstance(options, type) and issubclass(options, BaseModel)):
                raise PluginError(f"register_{kind}: options of '{obj}' must be a pydantic model class")
            return obj, Factory(obj, factory, summary, options)
        if factory is not None or summary or options is not None:
            raise PluginError(f"register_{kind}: call register(Entry) with the entry alone, got more arguments")
        return _name_of(obj), obj

    def register(obj: Any, factory: Callable[..., Any] | None = None, *, summary: str = "",
                 options: type[BaseModel] | None = None) -> None:
        try:
            name, value = checked(obj, factory, summary, options)
            reg.check(kind, name, value, plugin)
            if (kind, name) in collected.entries:  # (its own second registration: no other plugin to name)
                raise PluginError(f"plugin '{plugin}' registers {kind[:-1]} '{name}' twice")
        except PluginError as exc:  # remembered even if the plugin catches it
            reg.refused.setdefault(plugin, []).append(str(exc))
            raise
        collected.entries[(kind, name)] = value

    return register


#: The names restorekit calls hooks by (``restorekit.hookspecs``).
HOOK_NAMES = tuple(f"register_{k}" for k in KINDS) + ("register_commands",)


def unknown_hooks(plugin_obj: Any) -> list[str]:
    """The plugin's own public ``register_*`` functions that no hook is called by (a misspelt hook,
    such as ``register_method``, registers nothing), each as ``'name' (did you mean 'x'?)``.
    Functions it imports (``from pillow_heif import register_heif_opener``) are not its hooks."""
    import inspect

    module = isinstance(plugin_obj, type(sys))
    names = vars(plugin_obj) if module else {n: getattr(plugin_obj, n, None) for n in dir(plugin_obj)}
    home = plugin_obj.__name__ if module else getattr(plugin_obj, "__module__", None)
    return [f"'{n}'{suggest(n, list(HOOK_NAMES))}" for n, obj in sorted(names.items())
            if n.startswith("register_") and n not in HOOK_NAMES and inspect.isfunction(obj)
            and getattr(obj, "__module__", None) == home]


def _collect_plugin(reg: Registry, plugin_obj: Any, record: PluginRecord) -> _Collected:
    """Call every hook this plugin implements and return what it registered, leaving ``reg`` as it
    was; raises whatever broke the plugin (also a refused registration the plugin caught, a
    ``register_*`` function no hook is called by, and a plugin that registers nothing at all)."""
    unknown = unknown_hooks(plugin_obj)
    if unknown:
        what = ("is not a restorekit hook: restorekit never calls it" if len(unknown) == 1 else
                "are not restorekit hooks: restorekit never calls them")
        hooks = "" if all("did you mean" in u for u in unknown) else f" (the hooks are {', '.join(HOOK_NAMES)})"
        raise PluginError(f"{', '.join(unknown)} {what}, so it registers nothing{hooks}")
    collected = _Collected(record)
    try:
        for kind in KINDS:
            fn = getattr(plugin_obj, f"register_{kind}", None)
            if fn is not None:
                fn(register=_make_register(reg, kind, collected))
        refused = reg.refused.get(record.name)
        if refused:  # the plugin caught the error and went on: it is still broken
            raise PluginError(refused[0])
    except BaseException:
        reg.note_lost(record.name, collected.entries)  # what it had registered is named as lost with it
        raise
    collected.commands = getattr(plugin_obj, "register_commands", None)
    # No hook at all is a plugin that cannot do anything (its hooks misspelt or missing). Hooks that
    # registered nothing are fine: a plugin may register only when an optional dependency is there.
    if not any(getattr(plugin_obj, h, None) is not None for h in HOOK_NAMES):
        raise PluginError(f"registers nothing: it defines none of the hooks {', '.join(HOOK_NAMES)}")
    return collected


def _add_collected(reg: Registry, collected: _Collected) -> None:
    """Put a plugin's collected registrations into ``reg`` (its names are known to be free)."""
    record = collected.record
    record.registers = {}
    for (kind, name), value in collected.entries.items():
        reg.items[kind][name] = value
        reg.owner[kind][name] = record.name
        record.registers.setdefault(kind, []).append(name)
    if collected.commands is not None:
        reg.commands.append(PluginCommands(record.name, collected.commands))


def _clashes(collected: list[_Collected], clashed: dict[tuple[str, str], list[str]] | None = None) -> dict[str, str]:
    """Plugin -> the one line saying which of its names other plugins register too (by kind, then
    name; plugins by name), for every plugin in ``collected`` that shares a name. Depends on the
    set of plugins only, not on their order. ``clashed`` receives each shared name's claimants."""
    claims: dict[tuple[str, str], list[str]] = {}
    for c in collected:
        for key in c.entries:
            claims.setdefault(key, []).append(c.record.name)
    lines: dict[str, list[str]] = {}
    for (kind, name), owners in sorted(claims.items(), key=lambda kv: (KINDS.index(kv[0][0]), kv[0][1])):
        if len(owners) > 1:
            message = _clash_message(kind, name, sorted(owners))
            if clashed is not None:
                clashed[(kind, name)] = sorted(owners)
            for plugin in owners:
                lines.setdefault(plugin, []).append(message)
    return {plugin: "; ".join(messages) for plugin, messages in lines.items()}


def _register_plugin(reg: Registry, plugin_obj: Any, record: PluginRecord) -> None:
    """Call every hook of one plugin and add what it registers; nothing is added if it fails. A name
    already in ``reg`` stays its owner's: registering it again raises ``PluginError``."""
    _add_collected(reg, _collect_plugin(reg, plugin_obj, record))


@contextmanager
def user_interrupts() -> Iterator[Callable[[], bool]]:
    """Tell a Ctrl-C of the user from a ``KeyboardInterrupt`` a plugin raises: yields ``pressed()``.

    A real SIGINT sets a flag, then goes to the handler it replaced where that is a Python function
    other than Python's default (``restorekit.cli``'s, which holds a stop that lands inside an
    import until the import has ended: raised there, torch's start-up could swallow it or abort),
    else raises as usual. Outside the main thread (no signal handlers there) every interrupt is
    taken as the user's.
    """
    pressed = False

    def handler(signum: int, frame: Any) -> None:
        nonlocal pressed
        pressed = True
        if callable(previous) and previous is not signal.default_int_handler:
            previous(signum, frame)  # raises, or keeps the stop for later
            return
        raise KeyboardInterrupt

    previous = None
    if threading.current_thread() is threading.main_thread():
        try:
            previous = signal.signal(signal.SIGINT, handler)
        except ValueError:
            previous = None
    try:
        yield (lambda: pressed) if previous is not None else (lambda: True)
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)


def failure_reason(exc: BaseException) -> str:
    """One line for why a plugin failed, also for exceptions whose text is empty (``sys.exit()``)."""
    if isinstance(exc, SystemExit):
        return f"SystemExit({exc.code!r}): the plugin tried to end the program"
    return exception_line(exc)


def unmet_core_requirement(dist: Any, core_version: str) -> str | None:
    """Why ``dist`` (an installed plugin distribution) cannot run on restorekit ``core_version``: the
    first of its ``Requires-Dist: restorekit…`` requirements (without an unmet marker, e.g. an extra)
    that this version does not satisfy, as one line; None when all are met or none are declared.

    Checked before the plugin is imported, so a plugin built for a newer core (pip installed with
    ``--no-deps``, or the core downgraded later) is named by its requirement instead of failing on a
    name it imports that this core lacks.
    """
    from packaging.requirements import InvalidRequirement, Requirement
    from packaging.utils import canonicalize_name
    from packaging.version import InvalidVersion, Version

    try:
        installed = Version(core_version)
    except InvalidVersion:
        return None
    for line in (getattr(dist, "requires", None) or []):
        try:
            req = Requirement(line)
        except InvalidRequirement:
            continue
        if canonicalize_name(req.name) != BUILTIN:
            continue
        if req.marker is not None and not req.marker.evaluate({"extra": ""}):
            continue
        if req.specifier and not req.specifier.contains(installed, prereleases=True):
            return (f"requires restorekit{req.specifier}, but restorekit {core_version} is installed (upgrade "
                    f"restorekit, or install a release of {dist_label(dist)} made for this one)")
    return None


def _warn(line: str) -> None:
    """A warning while plugins load: one line on stderr (the CLI's console may not exist yet)."""
    print(f"warning: {line}", file=sys.stderr)


def is_first_party(dist: Any) -> bool:
    """Whether ``dist`` is one of this repository's plugin distributions (:data:`FIRST_PARTY`)."""
    name = dist_field(dist, "Name")
    return name is not None and _normalised(name) in FIRST_PARTY


_OUT_LOCK = threading.RLock()
_out_depth = 0
_out_saved: tuple[int | None, Any] = (None, None)


def _flush(*streams: Any) -> None:
    for stream in streams:
        if stream is not None:
            with contextlib.suppress(Exception):
                stream.flush()


def _flush_c_stdio() -> None:
    """Write out what the C library holds in its own ``stdout`` buffer (a native extension's
    ``printf``, C++'s ``std::cout``): where stdout is a file or a pipe it is flushed only when full
    or at exit — after file descriptor 1 is the command's again, behind the JSON document."""
    if sys.platform == "win32":  # (the MSVC runtime has no one C library to reach by name)
        return
    with contextlib.suppress(Exception):
        import ctypes

        ctypes.CDLL(None).fflush(None)


@contextmanager
def output_to_stderr() -> Iterator[None]:
    """Inside, whatever is written to stdout goes to stderr: ``print()`` and ``sys.stdout``, and also
    ``sys.__stdout__`` and file descriptor 1 (``os.write(1, …)``, a C library's ``printf``). stdout is
    the commands' (``--json``): plugin code runs inside (its import and hooks, and a method's load
    and restore under ``--json``). Nests and may be entered from several threads: the outermost
    exit puts stdout back. Where fd 1 or 2 is missing, only the Python streams are redirected."""
    global _out_depth, _out_saved
    with _OUT_LOCK:
        if _out_depth == 0:
            _flush(sys.stdout, sys.__stdout__)  # what was written before goes where it was meant to
            _flush_c_stdio()
            saved: int | None = None
            try:
                saved = os.dup(1)
                os.dup2(2, 1)
            except OSError:
                if saved is not None:
                    os.close(saved)
                saved = None
            _out_saved = (saved, sys.stdout)
            sys.stdout = sys.stderr
        _out_depth += 1
    try:
        yield
    finally:
        with _OUT_LOCK:
            _out_depth -= 1
            if _out_depth == 0:
                saved, stdout = _out_saved
                _flush(sys.stdout, sys.__stdout__)  # sys.__stdout__'s buffer holds what fd 1 (stderr) gets
                _flush_c_stdio()  # and so does the C library's, from a native printf inside
                sys.stdout = stdout
                if saved is not None:
                    os.dup2(saved, 1)
                    os.close(saved)
                _out_saved = (None, None)


@contextmanager
def kept_global_state(who: str, when: str, on_change: Callable[[str], None] | None = None) -> Iterator[None]:
    """Put back the process-wide state (:func:`restorekit.global_state.snapshot`: thread count, grad
    mode, default dtype, cuDNN and determinism flags, float32 precision, the global RNGs) that the
    code inside changes, so that one plugin cannot change how the others compute. A changed setting
    is reported as one line (``on_change``; by default a warning on stderr) naming ``who`` and what
    changed (``on_change`` gets what changed alone); the RNGs are put back without one (building a
    network draws from them).

    The block holds :data:`restorekit.global_state.LOCK` from the snapshot to the put-back: a
    build or plugin load in another thread waits for it, rather than snapshotting what this one
    changes and later putting that back for good (and being named for it)."""
    from . import global_state as gs

    with gs.LOCK:
        before = gs.snapshot()
        try:
            yield
        finally:
            after = gs.snapshot()
            changed = [k for k in gs.put_back(before, after) if not gs.is_rng_key(k)]
            if changed:
                what = "; ".join(gs.describe(before, after, changed))
                if on_change is not None:
                    on_change(what)
                else:
                    _warn(state_change_line(who, when, what))


def state_change_line(who: str, when: str, what: str) -> str:
    """The warning for global state that ``who`` changed ``when`` (``what``) and that was put back."""
    return (f"{who} changed global state {when}: {what} (put back; set such state only inside the calls "
            "that need it, and back in a finally block)")


def method_plugin(name: str) -> str:
    """The plugin that registered method ``name`` ('?' if none)."""
    return registry().owner["methods"].get(name, "?")


def _entry_point_problem(ep: EntryPoint) -> str | None:
    """Why ``ep`` cannot be loaded before trying (a value importlib would fail on with an AttributeError)."""
    pattern = getattr(ep, "pattern", None)
    if pattern is not None and pattern.match(ep.value) is None:
        return f"entry point value '{ep.value}' is not module[:attr]"
    return None


def load_registry(strict: bool | None = None) -> Registry:
    """Discover built-ins and entry-point plugins and collect their registrations: the core's, then
    the first-party plugins', then the others' (each group collected, then merged)."""
    strict = _strict_from_env() if strict is None else strict
    allowed = _allowed_from_env()
    pm = pluggy.PluginManager(GROUP)
    pm.add_hookspecs(hookspecs)
    reg = Registry()

    t0 = time.perf_counter()
    from . import __version__, builtin

    rec = PluginRecord(BUILTIN, "restorekit", __version__)
    reg.plugins[BUILTIN] = rec
    pm.register(builtin, name=BUILTIN)
    _register_plugin(reg, builtin, rec)
    rec.load_seconds = time.perf_counter() - t0

    found = sorted(installed_entry_points(GROUP, warn=_warn),
                   key=lambda e: (not is_first_party(e.dist), e.name, dist_label(e.dist)))
    claimants: dict[str, list[Any]] = {}
    for ep in found:
        claimants.setdefault(ep.name, []).append(ep.dist)
    reg.not_installed = sorted((allowed or set()) - set(claimants) - {BUILTIN})
    reg.not_installed_hints = {n: suggest(n, sorted(claimants)) for n in reg.not_installed}
    if reg.not_installed and strict:
        named = ", ".join(f"{n}{reg.not_installed_hints[n]}" for n in reg.not_installed)
        raise PluginError(f"RESTOREKIT_LOAD_PLUGINS names {named}, which no installed plugin declares (installed: "
                          f"{', '.join(sorted(claimants)) or 'none'})")
    for n in reg.not_installed:  # a typo loads nothing: say so at once, with the likely name
        _warn(f"RESTOREKIT_LOAD_PLUGINS names '{n}', which no installed plugin declares{reg.not_installed_hints[n]}")
    wanted = [ep for ep in found if allowed is None or ep.name in allowed]
    for first_party in (True, False):  # the first-party plugins' names are taken before the others collect
        collected = [c for ep in wanted if is_first_party(ep.dist) == first_party
                     for c in [_load_plugin(reg, pm, ep, claimants[ep.name], __version__, strict)] if c is not None]
        _merge(reg, pm, collected, strict)
    return reg


def _load_plugin(reg: Registry, pm: pluggy.PluginManager, ep: EntryPoint, claimants: list[Any], core_version: str,
                 strict: bool) -> _Collected | None:
    """Import one plugin and collect what its hooks register, in isolation (see the module's
    docstring); None when it is broken."""
    dist = ep.dist
    rec = PluginRecord(ep.name, dist_label(dist), dist_field(dist, "Version") or "?")
    # A plugin name two distributions declare is neither's: which one Python finds first is an
    # accident of the path (as for a method name two plugins register). The first-party plugin
    # keeps its own name (it loads first: the other finds it taken).
    clash = None if len(claimants) < 2 or sum(map(is_first_party, claimants)) == 1 else claimants
    if ep.name in reg.plugins or clash:
        rec.status = (f"broken: plugin name '{ep.name}' is declared by {' and '.join(map(dist_label, clash))}; "
                      f"neither is loaded (uninstall one)" if clash else
                      f"broken: plugin name '{ep.name}' is already taken by {reg.plugins[ep.name].distribution}")
        reg.plugins[f"{ep.name} ({rec.distribution})"] = rec
        if strict:
            raise PluginError(f"plugin '{ep.name}' ({rec.distribution}) is {rec.status}")
        return None
    reg.plugins[ep.name] = rec
    unmet = unmet_core_requirement(dist, core_version) if dist is not None else None
    if unmet is not None:  # not imported: its code was written for another restorekit
        reg.drop_plugin(ep.name, unmet)
        if strict:
            raise PluginError(f"plugin '{ep.name}' ({rec.distribution}) is broken: {unmet}")
        return None

    def changed_state(what: str) -> None:
        reg.state_changes[ep.name] = what
        _warn(state_change_line(f"plugin '{ep.name}'", "while it was imported and registered", what))

    with user_interrupts() as pressed:
        t0 = time.perf_counter()
        try:
            # stdout is the commands' (--json); the global state is everyone's
            with output_to_stderr(), kept_global_state(f"plugin '{ep.name}'", "while it was imported and "
                                                       "registered", changed_state):
                problem = _entry_point_problem(ep)
                if problem is not None:
                    raise PluginError(problem)
                module = ep.load()
                pm.register(module, name=ep.name)
                pm.check_pending()  # a @hookimpl no spec knows: a misspelt hook registers nothing
                return _collect_plugin(reg, module, rec)
        except BaseException as exc:  # isolation: one broken plugin must not take the rest down
            if isinstance(exc, KeyboardInterrupt) and pressed():
                raise
            reason = failure_reason(exc)
            if isinstance(exc, KeyboardInterrupt):
                reason += " (raised by the plugin, not by the user)"
            if pm.has_plugin(ep.name):
                pm.unregister(name=ep.name)
            reg.drop_plugin(ep.name, reason)
            if strict:
                raise PluginError(f"plugin '{ep.name}' ({rec.distribution}) is broken: {reason}") from None
            return None
        finally:
            rec.load_seconds = time.perf_counter() - t0


def _merge(reg: Registry, pm: pluggy.PluginManager, collected: list[_Collected], strict: bool) -> None:
    """Add what each plugin in ``collected`` registered; a name two of them register is neither's,
    whichever loaded first: those plugins are broken and register nothing."""
    clashes = _clashes(collected, reg.clashed)
    for c in collected:
        name, rec = c.record.name, c.record
        if name not in clashes:
            _add_collected(reg, c)
            continue
        if pm.has_plugin(name):
            pm.unregister(name=name)
        reason = f"PluginError: {clashes[name]}"
        reg.note_lost(name, c.entries)
        reg.drop_plugin(name, reason)
        if strict:
            raise PluginError(f"plugin '{name}' ({rec.distribution}) is broken: {reason}")


# click group -> {command name: the plugin whose hook added it}; a command no plugin added is the
# core's. Kept across CLIs, so a plugin may add its own commands again (a second CLI in one process)
# but never replace anyone else's.
_OWNERS: weakref.WeakKeyDictionary[Any, dict[str, str]] = weakref.WeakKeyDictionary()


def command_owner(group: Any, name: str) -> str:
    """The plugin that added ``group``'s command ``name`` (``restorekit``: the core's own)."""
    return _OWNERS.get(group, {}).get(name, BUILTIN)


@dataclass
class _Node:
    """A click group of the CLI, where it sits (``''``: the root, ``'bench'``) and a copy of its commands."""

    group: Any
    path: str
    commands: dict[str, Any]


def _command_tree(root: Any) -> dict[int, _Node]:
    """Every click group under ``root`` with a copy of its commands (to compare and restore)."""
    import click

    seen: dict[int, _Node] = {}

    def walk(g: Any, path: str) -> None:
        if id(g) in seen:
            return
        seen[id(g)] = _Node(g, path, dict(g.commands))
        for name, c in list(g.commands.items()):
            if isinstance(c, click.Group):
                walk(c, f"{path} {name}".strip())

    walk(root, "")
    return seen


def _public(obj: Any) -> dict[str, Any]:
    return {k: v for k, v in vars(obj).items() if not k.startswith("_") and k != "commands"}


def _same(a: Any, b: Any) -> bool:
    return a is b or (type(a) is type(b) and isinstance(a, (str, int, float, bool, tuple, frozenset)) and a == b)


@dataclass
class _Snapshot:
    """One existing command as it was before a plugin's hook: its attributes, parameters and theirs."""

    cmd: Any
    path: str
    owner: str
    attrs: dict[str, Any]
    params: list[Any]
    param_attrs: list[dict[str, Any]]

    @classmethod
    def of(cls, cmd: Any, path: str, owner: str) -> _Snapshot:
        params = list(getattr(cmd, "params", []))
        return cls(cmd, path, owner, _public(cmd), params, [_public(p) for p in params])

    def changes(self) -> list[str]:
        """What the hook changed: attribute names (``params`` for options added, removed or altered)."""
        now = _public(self.cmd)
        out = sorted(k for k in set(now) | set(self.attrs) if k != "params"
                     and (k not in now or k not in self.attrs or not _same(now[k], self.attrs[k])))
        params = list(getattr(self.cmd, "params", []))
        if len(params) != len(self.params) or any(a is not b for a, b in zip(params, self.params)) or any(
                set(_public(p)) != set(saved) or not all(_same(_public(p)[k], v) for k, v in saved.items())
                for p, saved in zip(params, self.param_attrs)):
            out.append("params")
        return out

    def restore(self) -> None:
        for k in [k for k in _public(self.cmd) if k not in self.attrs]:
            delattr(self.cmd, k)
        for k, v in self.attrs.items():
            setattr(self.cmd, k, v)
        if isinstance(getattr(self.cmd, "params", None), list):
            self.cmd.params[:] = self.params
        for p, saved in zip(self.params, self.param_attrs):
            for k in [k for k in _public(p) if k not in saved]:
                delattr(p, k)
            for k, v in saved.items():
                setattr(p, k, v)


def _snapshots(root: Any, tree: dict[int, _Node]) -> list[_Snapshot]:
    out = {id(root): _Snapshot.of(root, BUILTIN, BUILTIN)}  # the main command: its options and help
    for node in tree.values():
        for name, cmd in node.commands.items():
            if id(cmd) not in out:
                out[id(cmd)] = _Snapshot.of(cmd, f"{node.path} {name}".strip(), command_owner(node.group, name))
    return list(out.values())


def _command_clash(path: str, plugins: list[str]) -> str:
    """The line for a command two or more hooks add (the core first, then plugins by name)."""
    quoted = (["the core ('restorekit')"] if BUILTIN in plugins else []) + [
        f"'{p}'" for p in sorted(set(plugins) - {BUILTIN})]
    both = f"both {quoted[0]} and {quoted[1]}" if len(quoted) == 2 else f"{', '.join(quoted[:-1])} and {quoted[-1]}"
    return f"command '{path}' is added by {both}"


def _remove_owned(root: Any, plugin: str) -> None:
    """Take every command ``plugin`` added out of the CLI under ``root``."""
    for node in _command_tree(root).values():
        owners = _OWNERS.get(node.group, {})
        for name in [n for n, o in owners.items() if o == plugin]:
            node.group.commands.pop(name, None)
            del owners[name]


def add_commands(reg: Registry, cli: Any, *, strict: bool | None = None) -> None:
    """Let each plugin add its subcommands to ``cli``, isolated like loading.

    A plugin's hook may add commands and sub-commands. One that raises (anything but the user's
    Ctrl-C), removes or changes a command it did not add (its options, help or callback), or adds a
    command the core or a first-party plugin has, is undone, listed as broken and loses all its
    registrations. A command two other plugins add is neither's, whichever runs first: both are
    broken with one line naming both (as for a method name). What each plugin adds is recorded (``reg.added_commands``,
    and ``commands`` in what ``restorekit plugins`` lists).
    """

    strict = _strict_from_env() if strict is None else strict
    reg.commands_checked = True
    # (id of group, name) -> (path, the plugins that added it): a command two plugins add stays
    # contested after both are broken, so a third one adding it is broken too.
    contested: dict[tuple[int, str], tuple[str, list[str]]] = {}
    for entry in list(reg.commands):
        plugin = entry.plugin
        rec = reg.plugins.get(plugin)
        if rec is not None and rec.status != "ok":
            continue  # broken meanwhile: another plugin's hook added one of its commands
        tree = _command_tree(cli)
        snaps = _snapshots(cli, tree)
        reasons: list[str] = []
        partners: dict[str, str] = {}  # other plugin -> the line that breaks it too
        with user_interrupts() as pressed:
            try:
                with contextlib.redirect_stdout(sys.stderr):
                    entry(cli=cli)
            except BaseException as exc:
                if isinstance(exc, KeyboardInterrupt) and pressed():
                    raise
                reasons.append(failure_reason(exc))
        added: list[tuple[Any, str, str]] = []  # (group, name, path) new or replaced in groups that were there
        if not reasons:
            removed: list[str] = []
            for node in tree.values():
                for name, cmd in node.commands.items():
                    now = node.group.commands.get(name)
                    owner = command_owner(node.group, name)
                    if now is cmd or owner == plugin:
                        continue
                    path = f"{node.path} {name}".strip()
                    if now is None:
                        removed.append(f"'{path}'")
                    else:
                        message = _command_clash(path, [owner, plugin])
                        reasons.append(message)
                        if owner != BUILTIN and not reg.first_party(owner):  # the core's and ours stay
                            partners[owner] = message
                            contested[(id(node.group), name)] = (path, sorted([owner, plugin]))
            if removed:
                reasons.append(f"its commands replace or remove existing commands {', '.join(removed)}")
            changed = [f"'{s.path}' ({', '.join(what)})" for s in snaps if s.owner != plugin
                       for what in [s.changes()] if what]
            if changed:
                reasons.append(f"it changes existing commands it did not add: {', '.join(changed)}")
            after = _command_tree(cli)
            for key, node in after.items():
                old = tree.get(key)
                if old is None:
                    continue  # a group it attached: listed by the path it is attached at
                for name, cmd in node.group.commands.items():
                    if old.commands.get(name) is not cmd:
                        added.append((node.group, name, f"{node.path} {name}".strip()))
                        claim = contested.get((id(node.group), name))
                        if claim is not None and plugin not in claim[1]:
                            claimants = sorted([*claim[1], plugin])
                            contested[(id(node.group), name)] = (claim[0], claimants)
                            message = _command_clash(claim[0], claimants)
                            reasons.append(message)
                            partners.update({p: message for p in claimants if p != plugin})
            own = {f"{node.path} {name}".strip() for node in after.values() if id(node.group) in tree
                   for name in node.group.commands if command_owner(node.group, name) == plugin}
            if not reasons:
                for g, name, _ in added:
                    _OWNERS.setdefault(g, {})[name] = plugin
                for key, node in after.items():
                    if key not in tree:  # a group it attached may hold others' commands already
                        for name in node.group.commands:
                            _OWNERS.setdefault(node.group, {}).setdefault(name, plugin)
                paths = sorted({path for _, _, path in added} | own)
                reg.added_commands[plugin] = [(path, _resolve(cli, path)) for path in paths]
                if rec is not None:
                    rec.registers.pop("commands", None)
                    if paths:
                        rec.registers["commands"] = paths
                continue
        for node in tree.values():  # undo whatever the hook did
            node.group.commands.clear()
            node.group.commands.update(node.commands)
        for snap in snaps:
            if snap.changes():
                snap.restore()
        reason = "; ".join(dict.fromkeys(reasons))
        reg.note_lost(plugin, [("commands", path) for _, _, path in added])
        for other, message in sorted(partners.items()):
            _remove_owned(cli, other)
            reg.drop_plugin(other, f"register_commands: {message}")
        reg.drop_plugin(plugin, f"register_commands: {reason}")
        if strict:
            raise PluginError(f"plugin '{plugin}' ({rec.distribution if rec else '?'}) is broken: "
                              f"register_commands: {reason}")


def _resolve(root: Any, path: str) -> Any:
    cmd = root
    for part in path.split():
        cmd = cmd.commands.get(part) if hasattr(cmd, "commands") else None
    return cmd


def core_cli() -> Any:
    """A new ``restorekit`` command holding copies of the core's commands and none of the plugins':
    what the conformance cases run the command hooks against, so that neither touches the other."""
    import copy
    import importlib

    import click

    from . import cli as cli_module

    scratch = click.Group("restorekit")
    for mod in cli_module.CORE_COMMAND_MODULES:
        importlib.import_module(f"restorekit.commands.{mod}").attach(scratch)

    def clone(cmd: Any) -> Any:
        c = copy.copy(cmd)
        c.params = list(cmd.params)
        if isinstance(cmd, click.Group):  # a core group a plugin added to in this process: without that
            c.commands = {name: clone(sub) for name, sub in cmd.commands.items()
                          if command_owner(cmd, name) == BUILTIN}
        return c

    root = clone(cli_module.cli)
    root.commands = {name: clone(sub) for name, sub in scratch.commands.items()}
    return root


_REGISTRY: Registry | None = None


_REGISTRY_LOCK = threading.RLock()


def registry(strict: bool | None = None) -> Registry:
    """The process-wide registry, loaded on first use (once: threads asking at once wait for the
    first load rather than each loading the plugins, warning twice and holding two registries)."""
    global _REGISTRY
    reg = _REGISTRY
    if reg is None:
        with _REGISTRY_LOCK:
            if _REGISTRY is None:
                _REGISTRY = load_registry(strict)
            reg = _REGISTRY
    return reg


def reset() -> None:
    """Forget the loaded registry (tests, or after installing a plugin)."""
    global _REGISTRY
    _REGISTRY = None
    importlib.invalidate_caches()
