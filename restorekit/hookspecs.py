"""pluggy hook specifications: every hook hands the plugin a ``register`` callback."""

from __future__ import annotations

from typing import Any, Callable

import pluggy

hookspec = pluggy.HookspecMarker("restorekit")
hookimpl = pluggy.HookimplMarker("restorekit")

Register = Callable[..., None]


@hookspec
def register_methods(register: Register) -> None:
    """Register ``Method`` subclasses: ``register(MethodClass)``."""


@hookspec
def register_generators(register: Register) -> None:
    """Register generator factories: ``register(name, factory, summary=..., options=Model)`` (no model: one from the signature)."""


@hookspec
def register_encoders(register: Register) -> None:
    """Register encoder factories: ``register(name, factory, summary=..., options=Model)`` (no model: one from the signature)."""


@hookspec
def register_losses(register: Register) -> None:
    """Register ``Loss`` subclasses: ``register(LossClass)``."""


@hookspec
def register_degradations(register: Register) -> None:
    """Register ``Degradation`` subclasses: ``register(DegradationClass)``."""


@hookspec
def register_metrics(register: Register) -> None:
    """Register ``Metric`` subclasses: ``register(MetricClass)``."""


@hookspec
def register_weights(register: Register) -> None:
    """Register weight specs: ``register(WeightSpec(...))``."""


@hookspec
def register_face_embedders(register: Register) -> None:
    """Register face identity networks: ``register(name, factory, summary=...)``."""


@hookspec
def register_face_detectors(register: Register) -> None:
    """Register face detectors: ``register(name, factory, summary=...)``."""


@hookspec
def register_commands(cli: Any) -> None:
    """Add subcommands to the ``restorekit`` click group ``cli``."""
