"""Building methods from names and user options, and running them on one image."""

from __future__ import annotations

from typing import Any, cast

import torch

from .devices import resolve_device  # the --device rules (re-exported: methods.resolve_device is public)
from .errors import RestorekitError
from .interfaces import RESTORATION_TASKS, Method, Options
from .options import OptionError, parse_pairs, validate, with_weights
from .plugins import kept_global_state, method_plugin, registry

__all__ = ["OptionError", "resolve_device", "parse_opts", "validate_options", "method_values", "method_class",
           "build_method", "check_restored", "check_output_size_contract", "OUTPUT_RANGE"]

# How far outside [0, 1] a restored image may reach before it is taken for another convention
# ([0, 255], [-1, 1]) rather than an unclipped interpolation's overshoot (bicubic's clamp=none).
OUTPUT_RANGE = (-0.5, 1.5)


def parse_opts(pairs: list[str] | tuple[str, ...]) -> dict[str, str]:
    """``["k=v", …]`` to a dict of strings; a pair without ``=`` is an error."""
    return parse_pairs(pairs)


def validate_options(cls: type[Method], values: dict[str, Any], *, label: str | None = None) -> Options:
    """Read user option values (strings by their field's type) into a method's ``Options`` model;
    errors begin with ``label`` (default: the method's name; compare's variant ``bicubic@a``)."""
    return cast(Options, validate(cls.Options, values, label=label or cls.info.name))


def check_output_size_contract(method: Method) -> None:
    """Refuse (:class:`OptionError`) a method set to return its native size, where outputs must be
    ``scale`` × the input (``run``, ``compare``, ``serve``)."""
    if method.keeps_native_size:
        raise OptionError(f"{method.info.name}: keep_native_size=true returns the network's own size, but this "
                          "command writes and scores scale × the input; call the method from Python for that")


def method_values(cls: type[Method], pairs: list[str] | tuple[str, ...], weights: str | None = None) -> dict[str, Any]:
    """``--opt`` pairs plus ``--weights`` as a method's raw option values (validated later)."""
    values: dict[str, Any] = dict(parse_pairs(pairs))
    if weights is not None:
        values = with_weights(cls.Options, values, weights, label=cls.info.name)
    return values


def method_class(name: str) -> type[Method]:
    """The registered ``Method`` class called ``name`` (did-you-mean on typos)."""
    cls: type[Method] = registry().method(name)
    return cls


def build_method(name: str, options: dict[str, Any] | None = None, device: str = "cpu") -> Method:
    """Instantiate and load a method by name with validated options.

    What its constructor and ``load()`` change of the process-wide state (default dtype, thread
    count, precision, RNGs…) is put back with a warning naming it
    (:func:`~restorekit.plugins.kept_global_state`): every command that builds a method (run,
    serve, demo, bench, export, the face pipeline) computes as it would without that plugin."""
    cls = method_class(name)
    opts = validate_options(cls, options or {})
    with kept_global_state(f"method '{name}' (plugin '{method_plugin(name)}')", "while it loaded"):
        method = cls(opts, device=resolve_device(device))
        method.load()
    return method


def check_restored(name: str, out: Any, lr: torch.Tensor, scale: int, n_samples: int = 1) -> torch.Tensor:
    """What ``restore(lr, scale, n_samples=n_samples)`` of method ``name`` returned, checked against the
    image convention: a floating-point ``(N·n_samples)×3×(h·scale)×(w·scale)`` tensor, finite, in [0, 1]
    (an overshoot of :data:`OUTPUT_RANGE` aside). Returns it as float32; a broken output raises
    :class:`RestorekitError` with one line naming the method and the problem."""
    if not isinstance(out, torch.Tensor):
        raise RestorekitError(f"{name}: restore returned a {type(out).__name__}, not a torch.Tensor")
    want = (lr.shape[0] * n_samples, 3, lr.shape[-2] * scale, lr.shape[-1] * scale)
    if tuple(out.shape) != want:
        raise RestorekitError(f"{name}: restore returned {tuple(out.shape)}, expected {want} "
                              f"({n_samples} sample(s) of {lr.shape[0]} image(s), {scale}× the "
                              f"{lr.shape[-1]}×{lr.shape[-2]} input)")
    return check_values(name, out)


def keep_black_and_white(method: Method, lr: torch.Tensor, out: torch.Tensor, n_samples: int = 1) -> torch.Tensor:
    """``out`` (checked, image-major) with the samples of each black-and-white input (channels
    within 1/255 of each other everywhere) replaced by their BT.601 luma, for a method whose
    ``task`` restores without changing colours (:data:`~restorekit.interfaces.RESTORATION_TASKS`:
    super-resolution, denoising, deblurring, artifact removal): a colour model tints grey faces,
    and an old black-and-white photo should come back black and white. ``run``, ``compare`` and
    ``serve`` apply it as the face pipeline does; a method of another ``task`` (colourisation)
    keeps its colours, and so does ``restore`` called from Python."""
    if method.info.task not in RESTORATION_TASKS:
        return out
    from .faces.compose import grey, is_grey

    rows = [i for i in range(lr.shape[0]) if is_grey(lr[i:i + 1])
            and not is_grey(out[i * n_samples:(i + 1) * n_samples], 0.0)]  # grey already: bit for bit
    if not rows:
        return out
    out = out.clone()
    for i in rows:
        out[i * n_samples:(i + 1) * n_samples] = grey(out[i * n_samples:(i + 1) * n_samples])
    return out


def check_values(name: str, out: Any) -> torch.Tensor:
    """The value part of :func:`check_restored`, for callers that accept other sizes (the face
    pipeline resizes a method's native-size crops): a floating-point tensor, finite, in [0, 1] (an
    overshoot of :data:`OUTPUT_RANGE` aside). Returns it detached, as float32."""
    if not isinstance(out, torch.Tensor):
        raise RestorekitError(f"{name}: restore returned a {type(out).__name__}, not a torch.Tensor")
    if not out.is_floating_point():
        raise RestorekitError(f"{name}: restore returned {out.dtype}, expected a floating-point image in [0, 1]")
    out = out.detach().float()
    if not bool(torch.isfinite(out).all()):
        raise RestorekitError(f"{name}: restore returned NaN or inf")
    lo, hi = float(out.min()), float(out.max())
    if lo < OUTPUT_RANGE[0] or hi > OUTPUT_RANGE[1]:
        raise RestorekitError(f"{name}: restore returned values from {lo:.3g} to {hi:.3g}; images are in [0, 1] "
                              "(a [0, 255] or [-1, 1] output must be converted inside the method)")
    return out
