"""The checks every registered component must pass, whoever wrote it."""

from __future__ import annotations

from typing import Any

import torch

from ..interfaces import Method, MethodInfo, Metric, Options
from .data import sample_batch


class ConformanceError(AssertionError):
    """A component breaks a restorekit contract; the message names the contract."""


def _require(cond: bool, msg: str) -> None:
    if not cond:
        raise ConformanceError(msg)


def check_method(cls: type[Method], *, options: dict[str, Any] | None = None, scale: int | None = None,
                 lr: torch.Tensor | None = None, device: str = "cpu") -> Method:
    """Run the method contract checks; returns the loaded method for further tests.

    Checks: metadata present, options model valid and strict, output follows the image
    convention at the right size for a batch with odd sizes, ``n_samples`` layout,
    determinism under a seed (and seed-independence when ``deterministic``), bad scales refused.
    """
    info = getattr(cls, "info", None)
    _require(isinstance(info, MethodInfo), f"{cls.__name__}.info must be a MethodInfo")
    _require(bool(info.name) and bool(info.summary), f"{cls.__name__}: info.name and info.summary are required")
    _require(bool(info.license), f"{info.name}: info.license is required (SPDX id or LicenseRef-…)")
    _require(issubclass(cls.Options, Options), f"{info.name}: Options must subclass restorekit.interfaces.Options")
    try:
        cls.Options.model_validate({"__definitely_not_an_option__": 1})
        raise ConformanceError(f"{info.name}: Options must reject unknown keys (extra='forbid')")
    except ConformanceError:
        raise
    except Exception:
        pass
    opts = cls.Options.model_validate(options or {})
    method = cls(opts, device=device)
    method.load()
    s = scale if scale is not None else (info.scales[0] if info.scales else 2)
    x = lr if lr is not None else sample_batch()
    out = method.restore(x, s, seed=0)
    _require(isinstance(out, torch.Tensor) and out.dtype == torch.float32, f"{info.name}: output must be float32")
    want = (x.shape[0], 3, x.shape[-2] * s, x.shape[-1] * s)
    _require(tuple(out.shape) == want, f"{info.name}: output shape {tuple(out.shape)}, expected {want}")
    _require(bool(torch.isfinite(out).all()), f"{info.name}: output has NaN/inf")
    _require(out.min() >= 0 and out.max() <= 1, f"{info.name}: output leaves [0,1]")
    again = method.restore(x, s, seed=0)
    _require(torch.allclose(out, again, atol=1e-5), f"{info.name}: same seed must give the same output")
    if info.deterministic:
        other = method.restore(x, s, seed=1)
        _require(torch.allclose(out, other, atol=1e-5), f"{info.name}: declared deterministic but depends on seed")
    multi = method.restore(x, s, seed=0, n_samples=2)
    _require(tuple(multi.shape) == (x.shape[0] * 2, *want[1:]),
             f"{info.name}: n_samples=2 must give (N·2)×3×H×W, got {tuple(multi.shape)}")
    for bad in (0, -2):
        try:
            method.restore(x, bad)
        except ValueError:
            continue
        raise ConformanceError(f"{info.name}: scale {bad} must raise ValueError")
    if info.scales is not None:
        unsupported = max(info.scales) + 1
        try:
            method.restore(x, unsupported)
            raise ConformanceError(f"{info.name}: unsupported scale {unsupported} must raise ValueError")
        except ValueError:
            pass
    return method


def check_metric(cls: type[Metric], *, scale: int = 2) -> None:
    """Metric contract: name and direction declared, per-image float64 values, finite on random input."""
    _require(isinstance(getattr(cls, "name", None), str), f"{cls.__name__}.name is required")
    _require(isinstance(getattr(cls, "higher_is_better", None), bool), f"{cls.name}: higher_is_better is required")
    m = cls()
    m.setup(torch.device("cpu"))
    hr = sample_batch(2, 16, 16)
    pred = (hr + 0.05 * sample_batch(2, 16, 16, seed=1)).clamp(0, 1)
    lr = torch.nn.functional.avg_pool2d(hr, scale)
    v = m(pred, hr, lr=lr, scale=scale)
    _require(tuple(v.shape) == (2,), f"{cls.name}: expected one value per image, got {tuple(v.shape)}")
    _require(v.dtype == torch.float64, f"{cls.name}: values must be float64")
