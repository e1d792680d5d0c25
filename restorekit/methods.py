"""Building methods from names and user options, and running them on one image."""

from __future__ import annotations

from typing import Any

import torch
from pydantic import ValidationError

from .errors import RestorekitError
from .interfaces import Method, Options
from .plugins import registry


class OptionError(RestorekitError):
    """A method option is unknown or has a value of the wrong type."""


def resolve_device(device: str) -> torch.device:
    """``auto`` picks CUDA when present; ``cuda`` without a GPU is an error."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RestorekitError("--device cuda: no CUDA device is available (use --device cpu or auto)")
    return dev


def parse_opts(pairs: list[str] | tuple[str, ...]) -> dict[str, str]:
    """``["k=v", …]`` to a dict; a pair without ``=`` is an error."""
    out: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise OptionError(f"--opt '{pair}': expected key=value")
        out[key.strip().replace("-", "_")] = value
    return out


def validate_options(cls: type[Method], values: dict[str, Any]) -> Options:
    """Validate user option values against a method's ``Options`` model, one-line errors."""
    try:
        return cls.Options.model_validate(values)
    except ValidationError as exc:
        err = exc.errors()[0]
        key = ".".join(str(p) for p in err["loc"]) or "?"
        known = ", ".join(cls.Options.model_fields) or "none"
        if err["type"] == "extra_forbidden":
            from .plugins import suggest

            raise OptionError(f"{cls.info.name}: unknown option '{key}'"
                              f"{suggest(key, list(cls.Options.model_fields))}; known: {known}") from None
        raise OptionError(f"{cls.info.name}: option '{key}': {err['msg']} (got {err.get('input')!r})") from None


def method_class(name: str) -> type[Method]:
    """The registered ``Method`` class called ``name`` (did-you-mean on typos)."""
    cls: type[Method] = registry().method(name)
    return cls


def build_method(name: str, options: dict[str, Any] | None = None, device: str = "cpu") -> Method:
    """Instantiate and load a method by name with validated options."""
    cls = method_class(name)
    opts = validate_options(cls, options or {})
    method = cls(opts, device=resolve_device(device))
    method.load()
    return method
