"""What a plugin may register, checked at registration so a bad entry breaks only its plugin.

Each check raises :class:`~restorekit.errors.PluginError` with one line naming the entry and
the problem. The rules are what the rest of restorekit relies on without looking again:
listings read a method's ``info`` and ``Options``, ``compare`` builds metrics and reads their
``name`` and ``higher_is_better``, degradation specs are parsed by name, weight specs must agree
with the public registry.
"""

from __future__ import annotations

import inspect
import re
from typing import Any

from pydantic import BaseModel

from .errors import PluginError

# Names travel through comma lists (--methods a,b), specs (blur:1+bicubic:4), METHOD.KEY options
# and file names: letters, digits, '_', '-' and (except methods) '.'. Matched whole (fullmatch: a
# '$' would also match before a trailing newline, letting 'bicubic\n' through).
_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")
_METHOD_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_-]*")
INPUT_KINDS = ("any", "aligned_face")


def _label(kind: str) -> str:
    return kind[:-1].replace("_", " ")


def _qualname(obj: Any) -> str:
    return getattr(obj, "__qualname__", None) or type(obj).__name__


def check_name(kind: str, name: Any) -> str:
    """A registered name: a non-empty string of the allowed characters (returned)."""
    pattern = _METHOD_NAME if kind == "methods" else _NAME
    if not isinstance(name, str) or not pattern.fullmatch(name):
        allowed = "letters, digits, '_' and '-'" + ("" if kind == "methods" else " and '.'")
        raise PluginError(f"{_label(kind)} name {name!r} is not valid (use {allowed})")
    return name


def _subclass(kind: str, obj: Any, base: type) -> None:
    if not (isinstance(obj, type) and issubclass(obj, base)):
        raise PluginError(f"register_{kind}: {obj!r} is not a subclass of restorekit.interfaces.{base.__name__}")
    if inspect.isabstract(obj):
        missing = ", ".join(sorted(getattr(obj, "__abstractmethods__", ()))) or "?"
        raise PluginError(f"{_label(kind)} class {_qualname(obj)} does not implement {missing}")


def _str_tuple(value: Any) -> bool:
    return isinstance(value, (tuple, list)) and all(isinstance(v, str) for v in value)


def check_method(obj: Any) -> None:
    """A ``Method`` subclass with a valid ``info`` (``MethodInfo``) and a pydantic ``Options`` model."""
    from .interfaces import Method, MethodInfo

    _subclass("methods", obj, Method)
    info = getattr(obj, "info", None)
    if not isinstance(info, MethodInfo):
        raise PluginError(f"method class {_qualname(obj)} has no `info` (a restorekit.interfaces.MethodInfo); "
                          f"it has {type(info).__name__}")
    check_name("methods", info.name)
    problems = []
    for field in ("summary", "task", "license", "paper"):
        if not isinstance(getattr(info, field), str):
            problems.append(f"{field} must be a string")
    for field in ("deterministic", "single_sample_deterministic"):
        if not isinstance(getattr(info, field), bool):
            problems.append(f"{field} must be true or false")
    if info.scales is not None and not (isinstance(info.scales, (tuple, list)) and info.scales and all(
            isinstance(s, int) and not isinstance(s, bool) and s >= 1 for s in info.scales)):
        problems.append(f"scales must be None or positive integers, not {info.scales!r}")
    if info.input_kind not in INPUT_KINDS:
        problems.append(f"input_kind must be one of {', '.join(INPUT_KINDS)}, not {info.input_kind!r}")
    if not _str_tuple(info.requires_weights):
        problems.append("requires_weights must be a tuple of weight names")
    options = getattr(obj, "Options", None)
    if not (isinstance(options, type) and issubclass(options, BaseModel)):
        problems.append(f"Options must be a pydantic model class (restorekit.interfaces.Options), not {options!r}")
    else:
        problems += _json_problems(options)
    if problems:
        raise PluginError(f"method '{info.name}' ({_qualname(obj)}): " + "; ".join(problems))


def _json_problems(options: type[BaseModel]) -> list[str]:
    """Why ``options`` cannot be described or recorded as JSON (``methods show``, the settings that
    ``run`` and ``compare`` record): its JSON schema, or its defaults written as JSON, fail."""
    import json

    try:
        options.model_json_schema()
    except Exception as exc:
        return [f"Options {options.__qualname__} has no JSON schema ({_first_line(exc)}): give every field a "
                "JSON type (str, int, float, bool, a list or Literal of them)"]
    try:
        json.dumps(options.model_construct().model_dump(mode="json"))
    except Exception as exc:
        return [f"the defaults of Options {options.__qualname__} cannot be written as JSON ({_first_line(exc)})"]
    return []


def _first_line(exc: Exception) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def check_metric(obj: Any) -> None:
    """A ``Metric`` subclass with a valid ``name`` (that no fixed report column has) and a boolean
    ``higher_is_better``."""
    from .harness.report_columns import metric_name_clash
    from .interfaces import Metric

    _subclass("metrics", obj, Metric)
    name = check_name("metrics", getattr(obj, "name", None))
    clash = metric_name_clash(name)
    if clash is not None:
        raise PluginError(f"metric name '{name}' ({_qualname(obj)}) is taken by compare's reports ({clash}): "
                          "choose another name")
    if not isinstance(getattr(obj, "higher_is_better", None), bool):
        raise PluginError(f"metric '{name}' ({_qualname(obj)}): higher_is_better must be true or false")
    if not isinstance(getattr(obj, "summary", ""), str) or not _str_tuple(getattr(obj, "requires_weights", ())):
        raise PluginError(f"metric '{name}' ({_qualname(obj)}): summary must be a string and requires_weights "
                          "a tuple of weight names")


def check_degradation(obj: Any) -> None:
    """A ``Degradation`` subclass with a valid ``name`` and a pydantic ``Params`` model."""
    from .interfaces import Degradation

    _subclass("degradations", obj, Degradation)
    check_name("degradations", getattr(obj, "name", None))
    params = getattr(obj, "Params", None)
    if not (isinstance(params, type) and issubclass(params, BaseModel)):
        raise PluginError(f"degradation '{obj.name}' ({_qualname(obj)}): Params must be a pydantic model class")


def check_loss(obj: Any) -> None:
    """A ``Loss`` subclass with a valid ``name``."""
    from .interfaces import Loss

    _subclass("losses", obj, Loss)
    check_name("losses", getattr(obj, "name", None))


def check_factory(kind: str, obj: Any) -> None:
    """A factory entry: a valid name, a callable and a string summary."""
    check_name(kind, getattr(obj, "name", None))
    if not callable(getattr(obj, "build", None)):
        raise PluginError(f"{_label(kind)} '{obj.name}': the factory {obj.build!r} is not callable")
    if not isinstance(getattr(obj, "summary", ""), str):
        raise PluginError(f"{_label(kind)} '{obj.name}': summary must be a string")


def check_weights(obj: Any, registry_specs: dict[str, Any] | None) -> None:
    """A ``WeightSpec``; one the public registry also defines must be identical to it."""
    from .weights.spec import WeightSpec, changed_fields

    if not isinstance(obj, WeightSpec):
        raise PluginError(f"register_weights: {obj!r} is a {type(obj).__name__}, not a restorekit.weights.WeightSpec")
    known = (registry_specs or {}).get(obj.name)
    if known is not None:
        spec, path = known
        if spec != obj:
            raise PluginError(f"weights '{obj.name}' differ from the registry entry {path} "
                              f"(fields: {', '.join(changed_fields(spec, obj))})")


def check_registration(kind: str, obj: Any, registry_specs: dict[str, Any] | None = None) -> None:
    """Dispatch to the check of ``kind``; factory kinds get a ``Factory``."""
    from .plugins import FACTORY_KINDS

    if kind in FACTORY_KINDS:
        check_factory(kind, obj)
    elif kind == "methods":
        check_method(obj)
    elif kind == "metrics":
        check_metric(obj)
    elif kind == "degradations":
        check_degradation(obj)
    elif kind == "losses":
        check_loss(obj)
    elif kind == "weights":
        check_weights(obj, registry_specs)
