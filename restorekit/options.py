"""Typed ``key=value`` options: every string from the command line is read by the receiving model.

``--opt``, ``--compare-opt``, ``compare --opt METHOD.KEY=VALUE``, ``generate --opt``, ``weights
import --opt`` and ``train --set`` all come here. A value is converted according to the type of
the field it is for, never by guessing from the string: a boolean accepts only
``true/false/1/0/yes/no`` (any case), so ``allow_unsafe=false`` is ``False`` and
``allow_unsafe=maybe`` is a usage error naming the key and the accepted words; numbers, strings
and ``Literal`` choices are left to pydantic; lists, tuples, dicts and nested models take a JSON
(or TOML) literal. A number field takes finite numbers only: ``nan``, ``inf`` and ``1e400`` are
usage errors naming the key (bounds alone let ``inf`` through ``gt=0``, and NaN through no bound at
all). Then the component's pydantic model validates the whole set.

Components without a hand-written model get one from their signature
(:func:`model_from_signature`), so no factory receives raw strings.
"""

from __future__ import annotations

import collections.abc
import inspect
import json
import math
import os
import tomllib
import types
import typing
from collections.abc import Callable, Mapping
from typing import Annotated, Any, Literal, Union

import click
from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, ValidationError, create_model

from .errors import RestorekitError

__all__ = ["OptionError", "TRUE_WORDS", "FALSE_WORDS", "parse_pairs", "parse_bool", "coerce", "coerce_values",
           "validate", "annotation_at", "model_from_signature", "weights_option", "with_weights", "WeightsRef",
           "FiniteFloatRange",
           "takes_number", "structure_hint", "holds_non_finite", "bool_for_number", "FLOAT32_MAX", "Float32"]

#: The largest float32: a number an option hands to a float32 tensor (a learning rate, a loss weight)
#: must stay within it, or every image fails mid-run (RuntimeError: value cannot be converted).
FLOAT32_MAX = 3.4028234663852886e38


def _within_float32(value: float) -> float:
    if abs(value) > FLOAT32_MAX:
        raise ValueError(f"{value:g} is beyond float32's range (±{FLOAT32_MAX:.4g}), which the tensors it scales hold")
    return value


#: A float option that reaches a float32 tensor: refused beyond :data:`FLOAT32_MAX` when validated.
Float32 = Annotated[float, AfterValidator(_within_float32)]

TRUE_WORDS = ("true", "1", "yes")
FALSE_WORDS = ("false", "0", "no")
_BOOL_HELP = "/".join(w for pair in zip(TRUE_WORDS, FALSE_WORDS) for w in pair)


def _fspath(value: Any) -> Any:
    """A path object (``pathlib.Path``, any ``os.PathLike``) as its string; other values unchanged."""
    if isinstance(value, os.PathLike):
        path = os.fspath(value)
        return path if isinstance(path, str) else os.fsdecode(path)
    return value


#: The type of a weights option: ``None`` (the method's default), a registered weights name or a
#: file, given as a string or as a ``pathlib.Path`` (any ``os.PathLike``), held as a string:
#: ``weights: WeightsRef = Field(None, description=…)``. (Optional itself, so the field's type reads
#: ``str | None`` to the command line's option parsing and to ``methods show``.)
WeightsRef = Annotated[str | None, BeforeValidator(_fspath)]


class OptionError(RestorekitError):
    """An option is unknown, malformed, or has a value its model does not accept (a usage error)."""


def parse_pairs(pairs: list[str] | tuple[str, ...], flag: str = "--opt") -> dict[str, str]:
    """``["k=v", …]`` to ``{"k": "v"}`` (dashes in keys become underscores; the value is what follows
    the first ``=``, so it may hold ``=``); no ``=`` is an error. A key given twice takes its last
    value, as a later ``--set`` overrides an earlier one."""
    out: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise OptionError(f"{flag} '{pair}': expected key=value")
        out[key.strip().replace("-", "_")] = value
    return out


def parse_targeted_pairs(pairs: list[str] | tuple[str, ...], what: str = "METHOD",
                         flag: str = "--opt") -> dict[str, dict[str, str]]:
    """``["psp_sr.mix_layers=[8,9]", …]`` to ``{"psp_sr": {"mix_layers": "[8,9]"}}``: options for one of
    several components (dashes in keys become underscores); ``WHAT.KEY=VALUE`` is the form a
    malformed pair is told to take."""
    out: dict[str, dict[str, str]] = {}
    for pair in pairs:
        target, sep, value = pair.partition("=")
        name, dot, key = target.partition(".")
        if not sep or not dot or not name.strip() or not key.strip():
            raise OptionError(f"{flag} '{pair}': expected {what}.KEY=VALUE")
        out.setdefault(name.strip(), {})[key.strip().replace("-", "_")] = value
    return out


def parse_bool(key: str, raw: str) -> bool:
    """``true/1/yes`` → True, ``false/0/no`` → False (any case); anything else is an error."""
    word = raw.strip().lower()
    if word in TRUE_WORDS:
        return True
    if word in FALSE_WORDS:
        return False
    raise OptionError(f"option '{key}' takes {_BOOL_HELP} (any case); got {raw!r}")


def _strip_optional(annotation: Any) -> tuple[Any, bool]:
    """``X | None`` → ``(X, True)``; a union of several types stays a union."""
    origin = typing.get_origin(annotation)
    if origin is Union or origin is types.UnionType:
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        nullable = len(args) < len(typing.get_args(annotation))
        if len(args) == 1:
            return args[0], nullable
        return Union[tuple(args)], nullable  # type: ignore[return-value]
    return annotation, False


def _is_structured(annotation: Any) -> bool:
    origin = typing.get_origin(annotation) or annotation
    if isinstance(origin, type) and issubclass(origin, BaseModel):
        return True
    return origin in (list, tuple, dict, set, frozenset) or (
        isinstance(origin, type) and issubclass(origin, (list, tuple, dict, set, frozenset)))


def _literal(text: str) -> Any:
    """A JSON literal, else a TOML literal, else the text itself (the model reports the problem)."""
    try:
        return json.loads(text)
    except ValueError:
        pass
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def coerce(key: str, annotation: Any, raw: Any) -> Any:
    """Convert one command-line string for a field of type ``annotation`` (other values pass
    through, but a NaN or infinite float for a number field is refused as a string would be).

    ``none`` (or ``null``, any case) clears an optional field, ``str | None`` ones included: a
    weights name or file literally called ``none`` is written as a path (``./none``)."""
    inner, nullable = _strip_optional(annotation)
    if not isinstance(raw, str):
        if isinstance(raw, float) and not math.isfinite(raw) and _takes_float(inner):
            raise OptionError(f"option '{key}' takes a finite number; got {raw}")
        return raw
    if nullable and raw.strip().lower() in ("none", "null"):
        return None
    if inner is bool:
        return parse_bool(key, raw)
    if typing.get_origin(inner) is Literal:  # Literal[32, 64]: the choice whose text is the value
        choices = typing.get_args(inner)
        if raw not in choices:
            for choice in choices:
                if not isinstance(choice, str) and str(choice) == raw.strip():
                    return choice
        return raw
    if _is_structured(inner):
        value = _literal(raw.strip())
        if holds_non_finite(value):
            raise OptionError(f"option '{key}' takes finite numbers; got {raw.strip()!r} (nan and inf are refused)")
        if bool_for_number(inner, value):
            raise OptionError(f"option '{key}' takes numbers; got {raw.strip()!r} (true and false are no numbers)")
        return value
    if _takes_float(inner) and _non_finite_text(raw):
        raise OptionError(f"option '{key}' takes a finite number; got {raw!r}")
    return raw  # str, int, float, Literal, Path…: pydantic converts and checks


def _takes_float(annotation: Any) -> bool:
    """Whether a field of this type holds a float: ``float``, or a union of it with other non-string
    types (``int | float``); ``float | str`` may mean the word ``inf``."""
    if typing.get_origin(annotation) is Annotated:
        annotation = typing.get_args(annotation)[0]
    if annotation is float:
        return True
    if typing.get_origin(annotation) in (Union, types.UnionType):
        args = typing.get_args(annotation)
        return float in args and str not in args
    return False


def takes_number(annotation: Any) -> bool:
    """Whether a field of this type holds a number and nothing else (``int``, ``float``, optional
    or a union of the two), where ``true``/``false`` are no value but pydantic reads them as 1/0."""
    inner, _ = _strip_optional(annotation)
    if typing.get_origin(inner) is Annotated:
        inner = typing.get_args(inner)[0]
    if inner in (int, float):
        return True
    return typing.get_origin(inner) in (Union, types.UnionType) and set(typing.get_args(inner)) <= {int, float}


def bool_for_number(annotation: Any, value: Any) -> bool:
    """Whether ``value`` (a parsed literal) holds ``true``/``false`` where ``annotation`` takes a
    number: pydantic reads them as 1/0 (``mix_layers=[true]`` ran as ``[1]``), though a number
    option given ``true`` alone is refused."""
    inner, _ = _strip_optional(annotation)
    if typing.get_origin(inner) is Annotated:
        inner = typing.get_args(inner)[0]
    if takes_number(inner):
        return isinstance(value, bool)
    origin, args = typing.get_origin(inner), typing.get_args(inner)
    if isinstance(value, (list, tuple)):
        if origin is tuple and args and args[-1] is not Ellipsis:
            return any(bool_for_number(a, v) for a, v in zip(args, value))
        if origin in (list, tuple, set, frozenset, collections.abc.Sequence) and args:
            return any(bool_for_number(args[0], v) for v in value)
    if isinstance(value, dict) and origin in (dict, collections.abc.Mapping) and len(args) == 2:
        return any(bool_for_number(args[1], v) for v in value.values())
    return False


def _non_finite_text(text: str) -> bool:
    """Whether ``text`` reads as a float that is NaN or infinite (``nan``, ``-inf``, ``1e400``)."""
    try:
        return not math.isfinite(float(text.strip()))
    except ValueError:
        return False


def holds_non_finite(value: Any) -> bool:
    """Whether a parsed literal holds a NaN or infinite float anywhere (JSON's ``NaN``, TOML's ``inf``)."""
    if isinstance(value, float):
        return not math.isfinite(value)
    if isinstance(value, dict):
        return any(holds_non_finite(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return any(holds_non_finite(v) for v in value)
    return False


def coerce_values(model: type[BaseModel], values: Mapping[str, Any]) -> dict[str, Any]:
    """Coerce every string of ``values`` by the type of ``model``'s field of that name.

    Keys the model does not know are passed on unchanged (validation reports them).
    """
    out: dict[str, Any] = {}
    for key, raw in values.items():
        field = _field(model, key)
        out[key] = coerce(key, field.annotation, raw) if field is not None else raw
    return out


def _field(model: type[BaseModel], key: str) -> Any:
    """The field named ``key`` or validated under the alias ``key``."""
    fields = model.model_fields
    if key in fields:
        return fields[key]
    for f in fields.values():
        if key in _aliases(f):
            return f
    return None


def _aliases(field: Any) -> list[str]:
    alias = field.validation_alias
    if alias is None:
        return [field.alias] if field.alias else []
    if isinstance(alias, str):
        return [alias]
    choices = getattr(alias, "choices", ())
    return [c for c in choices if isinstance(c, str)]


def annotation_at(model: type[BaseModel], path: list[str]) -> Any:
    """The type a dotted key (``["data", "factors"]``) has in ``model``, or None when unknown."""
    annotation: Any = model
    for part in path:
        inner, _ = _strip_optional(annotation)
        origin = typing.get_origin(inner) or inner
        if isinstance(origin, type) and issubclass(origin, BaseModel):
            field = _field(origin, part)
            if field is None:
                return None
            annotation = field.annotation
        elif origin is dict or (isinstance(origin, type) and issubclass(origin, dict)):
            args = typing.get_args(inner)
            annotation = args[1] if len(args) == 2 else Any
        else:
            return None
    return annotation


def validate(model: type[BaseModel], values: Mapping[str, Any], *, label: str) -> BaseModel:
    """Coerce ``values`` by ``model``'s field types and validate; one-line :class:`OptionError`.

    A key that names no field is refused also when the model would ignore it (a plugin's plain
    ``BaseModel``), so a typo never runs with the default; only ``extra="allow"`` models take extras.
    """
    if model.model_config.get("extra") != "allow":
        unknown = [k for k in values if _field(model, k) is None]
        if unknown:
            from .plugins import suggest

            known = list(model.model_fields)
            raise OptionError(f"{label}: unknown option '{unknown[0]}'{suggest(unknown[0], known)}; "
                              f"known: {', '.join(known) or 'none'}")
    same: dict[str, list[str]] = {}  # field -> the keys given for it (its name and an alias: pydantic
    for k in values:                 # called the second one an unknown option)
        f = _field(model, k)
        if f is not None:
            same.setdefault(next(n for n, g in model.model_fields.items() if g is f), []).append(k)
    twice = next(((n, keys) for n, keys in same.items() if len(keys) > 1), None)
    if twice is not None:
        raise OptionError(f"{label}: {' and '.join(repr(k) for k in twice[1])} both set option '{twice[0]}'; "
                          "give one")
    try:
        data = coerce_values(model, values)
    except OptionError as exc:
        raise OptionError(f"{label}: {exc}") from None
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise OptionError(format_error(model, exc, label)) from None


def format_error(model: type[BaseModel], exc: ValidationError, label: str) -> str:
    """The first validation error as ``LABEL: option 'KEY': problem (got VALUE)``; options left out
    that have no default are named all at once, with how to give them (``--opt KEY=VALUE`` on one
    component's command, ``--opt LABEL.KEY=VALUE`` where several are named: compare, serve) and the
    field's first example value when it has one."""
    missing = [e for e in exc.errors() if e["type"] == "missing" and e["loc"]]
    if missing:
        keys = list(dict.fromkeys(".".join(str(p) for p in e["loc"]) for e in missing))

        def example(key: str) -> str:
            field = model.model_fields.get(key)
            examples = getattr(field, "examples", None) if field is not None else None
            return f" (e.g. {examples[0]!r})" if examples else ""

        one = " ".join(f"--opt {k}=VALUE{example(k)}" for k in keys)
        several = " ".join(f"--opt {label}.{k}=VALUE" for k in keys)
        names = ", ".join(f"'{k}'" for k in keys)
        return (f"{label}: required option{'s' if len(keys) > 1 else ''} {names} not given: pass {one} "
                f"(commands that name the method in --opt, compare and serve: {several})")
    err = exc.errors()[0]
    key = ".".join(str(p) for p in err["loc"]) or "?"
    known = list(model.model_fields)
    if err["type"] == "extra_forbidden":
        from .plugins import suggest

        return (f"{label}: unknown option '{key}'{suggest(key, known)}; known: {', '.join(known) or 'none'}")
    return f"{label}: option '{key}': {err['msg']} (got {err.get('input')!r}){structure_hint(err)}"


#: Pydantic's error types for a value that is no list, tuple, set or table: given a bare ``8,9``,
#: the user is told how such values are written.
_STRUCTURED_ERRORS = ("list_type", "tuple_type", "set_type", "frozen_set_type", "dict_type", "model_type")
_LITERAL_HINT = "; write a list as [8, 9] and a table as {\"key\": 1} or {key = 1} (JSON or TOML)"


def structure_hint(err: Mapping[str, Any]) -> str:
    """How lists and tables are written, for a pydantic error that a bare value (``8,9``) got where
    one was wanted; '' for any other error."""
    return _LITERAL_HINT if err["type"] in _STRUCTURED_ERRORS and not isinstance(err.get("input"), (list, dict)) else ""


def weights_option(model: type[BaseModel]) -> str | None:
    """The field that ``--weights`` sets: one named ``weights``, else one accepting the alias ``weights``."""
    if "weights" in model.model_fields:
        return "weights"
    for name, f in model.model_fields.items():
        if "weights" in _aliases(f):
            return name
    return None


def with_weights(model: type[BaseModel], values: Mapping[str, Any], weights: str, *, label: str) -> dict[str, Any]:
    """``values`` with ``--weights`` set as ``model``'s weights option (:func:`weights_option`); an
    :class:`OptionError` where the model has none, or where an ``--opt`` names other weights for it
    (by its name or an alias): that one was dropped without a word, and the run recorded only one."""
    key = weights_option(model)
    if key is None:
        raise OptionError(f"{label} takes no --weights")
    given = [k for k in values if _field(model, k) is model.model_fields[key]]
    other = next((k for k in given if values[k] != weights), None)
    if other is not None:
        raise OptionError(f"{label}: --weights {weights} and --opt {other}={values[other]} name different "
                          "weights; give one")
    return {**{k: v for k, v in values.items() if k not in given}, key: weights}


class FiniteFloatRange(click.FloatRange):
    """``click.FloatRange`` that also refuses ``nan`` and ``inf``: click's lets NaN through any
    bounds (every comparison with it is false), and ``inf`` through a lower bound alone."""

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        number = super().convert(value, param, ctx)
        if isinstance(number, float) and not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number", param, ctx)
        return number


# -- options models derived from a factory's signature -------------------------------------------


class DerivedOptions(BaseModel):
    """Options of a component registered without a model: its keyword parameters, typed."""

    model_config = ConfigDict(extra="forbid", arbitrary_types_allowed=True)


def model_from_signature(fn: Callable[..., Any], name: str) -> type[BaseModel]:
    """A pydantic model with one field per keyword parameter of ``fn``.

    The field's type is the parameter's annotation; an unannotated parameter takes the type of
    its default (``bool``, ``int``, ``float``, ``str``), else any value. ``*args``/``**kwargs``
    are left out, so unknown keys are errors rather than strings passed through unchecked.
    """
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return create_model(f"{_model_name(name)}Options", __base__=DerivedOptions)
    try:
        hints = typing.get_type_hints(fn)
    except Exception:  # an annotation that does not resolve: fall back to the defaults' types
        hints = {}
    fields: dict[str, Any] = {}
    for pname, p in sig.parameters.items():
        if p.kind in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD,
                      inspect.Parameter.POSITIONAL_ONLY):
            continue
        default = ... if p.default is inspect.Parameter.empty else p.default
        annotation = hints.get(pname)
        if annotation is None:
            annotation = type(default) if isinstance(default, (bool, int, float, str)) else Any
        fields[pname] = (annotation, default)
    return create_model(f"{_model_name(name)}Options", __base__=DerivedOptions, **fields)


def _model_name(name: str) -> str:
    return "".join(part.capitalize() for part in name.replace("-", "_").split("_") if part) or "Factory"
