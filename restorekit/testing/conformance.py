"""The checks every registered component must pass, whoever wrote it.

One ``check_<kind>`` function per component kind a plugin can register. Each builds the
component with the arguments it is given, runs it on small synthetic inputs (no files, no
downloads) and raises :class:`ConformanceError` naming the broken contract. Components that
need weights raise :class:`restorekit.errors.WeightsMissing` from their build or ``load``; the
checks let that propagate so the parametrized cases (:mod:`restorekit.testing.cases`) can skip.
"""

from __future__ import annotations

import contextlib
import contextvars
import math
import re
from typing import Any, Callable, Iterator

import torch
from torch import Tensor

from ..devices import TF32_SUFFIX, precision_label
from ..errors import DependencyMissing, WeightsMissing, exception_line
from ..global_state import describe as _describe, is_precision_key as _is_precision_key, put_back as _put_back
from ..global_state import precision_objects as _precision_objects, read as _read  # noqa: F401 (tests use them)
from ..global_state import snapshot as _global_state
from ..interfaces import (Degradation, Encoder, Face, FaceDetector, FaceEmbedder, Generator, Loss, LossContext,
                          Method, MethodInfo, Metric, Options)
from .data import sample_batch, smooth_batch

# Names end up in `--methods a,b`, `--opt METHOD.KEY=V` and spec strings `name:V+name:V`.
METHOD_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*$")
COMPONENT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
DEGRADATION_NAME = re.compile(r"^[a-z][a-z0-9_]*$")
LICENSE = re.compile(r"^[A-Za-z0-9.+()\- ]+$")
INPUT_KINDS = ("any", "aligned_face")


class ConformanceError(AssertionError):
    """A component breaks a restorekit contract; the message names the contract."""


def _require(cond: bool, msg: str) -> None:
    if not cond:
        raise ConformanceError(msg)


def _close(a: Tensor, b: Tensor, atol: float) -> bool:
    return a.shape == b.shape and bool(torch.allclose(a.float(), b.float(), atol=atol, rtol=0))


def _check_options_model(label: str, model: Any, what: str = "Options") -> None:
    """An option model: subclass of ``Options``, strict, JSON-describable, every field documented."""
    _require(isinstance(model, type) and issubclass(model, Options),
             f"{label}: {what} must subclass restorekit.interfaces.Options")
    try:
        model.model_validate({"__definitely_not_an_option__": 1})
    except Exception:
        pass
    else:
        raise ConformanceError(f"{label}: {what} must reject unknown keys (extra='forbid')")
    try:
        model.model_json_schema()
    except Exception as exc:
        raise ConformanceError(f"{label}: {what} has no JSON schema ({exc}); "
                               "`methods show --json` needs one") from exc
    for name, field in model.model_fields.items():
        _require(bool(field.description), f"{label}: {what} field '{name}' needs a description "
                 "(Field(..., description=...)); `methods show` prints it")
    unknown = sorted(set(model.result_neutral) - set(model.model_fields))
    _require(not unknown, f"{label}: {what}.result_neutral names no field of it: {', '.join(unknown)}")
    if not any(f.is_required() for f in model.model_fields.values()):
        try:  # every default within its own field's constraints (Options validates defaults)
            model()
        except Exception as exc:
            raise ConformanceError(f"{label}: {what} defaults are not valid values: "
                                   f"{exception_line(exc)}") from None


def _unchanged(label: str, before: Tensor, after: Tensor, what: str) -> None:
    _require(bool(torch.equal(before, after)), f"{label}: {what} modified its input in place")


# -- global state a component must leave as it found it ---------------------------------------

# What is read, compared and put back: restorekit.global_state (imported above).

_RNG_FIX = ("draw randomness from a local torch.Generator / np.random.default_rng(seed), never the global RNG; "
            "building an nn.Module draws from the global torch RNG (its parameter init): build it in load(), on "
            "torch.device('meta') (then load_state_dict(..., assign=True)), or inside "
            "torch.random.fork_rng(devices=[]); a library that must use the global RNG: save and restore it "
            "around the call (torch.random.fork_rng(), np.random.get_state()/set_state(), "
            "random.getstate()/setstate())")


_SETTING_FIX = "set it back before returning: try/finally, or a context manager such as torch.no_grad()"
_THREADS_FIX = ("don't call torch.set_num_threads in the component (the user and the commands choose the thread "
                "count), or set the old count back in a finally block")
_PRECISION_FIX = ("save the old value and restore it in a finally block through the same API that set it "
                  "(torch.backends.cudnn.flags(allow_tf32=...) is a context manager); "
                  "torch.set_float32_matmul_precision and the legacy allow_tf32 flags also set the per-operator "
                  "torch.backends.*.fp32_precision values, so restoring through the other API may leave one changed")


def _fix_kind(key: str) -> str:
    if "RNG" in key:
        return "RNG"
    if key == "torch.get_num_threads()":
        return "thread count"
    if _is_precision_key(key):
        return "float32 precision"
    return "setting"


_FIXES = {"RNG": _RNG_FIX, "thread count": _THREADS_FIX, "float32 precision": _PRECISION_FIX,
          "setting": _SETTING_FIX}


@contextlib.contextmanager
def _keeps_global_state(label: str, what: str, *, rng_once: bool = False) -> Iterator[None]:
    """Fail when the calls inside leave global state changed (thread count, grad mode, default
    dtype, cuDNN/determinism flags, the effective float32 precision of each operator, the
    torch/numpy/Python RNGs), naming what changed; the state, and every raw precision setting of
    both TF32 APIs, is put back either way, so one failure does not leak into later tests.

    ``rng_once``: a warm-up call, where one-time lazy initialisation (building a network) may draw
    from the global RNGs: those are put back, not failed; a changed setting still fails."""
    before = _global_state()
    ok = False
    try:
        yield
        ok = True
    finally:
        after = _global_state()
        changed = _put_back(before, after)  # the raw precision settings too, also when only their spelling changed
        if rng_once:
            changed = [k for k in changed if "RNG" not in k]
        if changed and ok:
            parts = _describe(before, after, changed)
            kinds = list(dict.fromkeys(_fix_kind(k) for k in changed))
            fixes = [f"for the {kind}, {_FIXES[kind]}" if len(kinds) > 1 else _FIXES[kind] for kind in kinds]
            raise ConformanceError(f"{label}: {what} left global state changed: {'; '.join(parts)}. "
                                   f"Fix: {'. '.join(fixes)}")


# -- methods ---------------------------------------------------------------------------------

def check_method_info(cls: type[Method]) -> MethodInfo:
    """Metadata contract: a ``MethodInfo`` with a usable name, summary, task, license and scales."""
    info = getattr(cls, "info", None)
    _require(isinstance(info, MethodInfo), f"{cls.__name__}.info must be a MethodInfo")
    assert isinstance(info, MethodInfo)
    _require(bool(info.name) and bool(info.summary), f"{cls.__name__}: info.name and info.summary are required")
    _require(bool(METHOD_NAME.fullmatch(info.name)),
             f"{info.name!r}: method names use letters, digits, '_' and '-' only (they go into "
             "--methods a,b and --opt METHOD.KEY=VALUE)")
    _require(bool(info.task), f"{info.name}: info.task is required (e.g. 'super-resolution')")
    _require(bool(info.license) and bool(LICENSE.fullmatch(info.license)),
             f"{info.name}: info.license must be an SPDX id or LicenseRef-…, got {info.license!r}")
    _require(isinstance(info.deterministic, bool), f"{info.name}: info.deterministic must be a bool")
    _require(isinstance(info.single_sample_deterministic, bool),
             f"{info.name}: info.single_sample_deterministic must be a bool")
    _require(info.input_kind in INPUT_KINDS, f"{info.name}: info.input_kind must be one of {INPUT_KINDS}")
    if info.scales is not None:
        _require(isinstance(info.scales, tuple) and len(info.scales) > 0
                 and all(isinstance(s, int) and not isinstance(s, bool) and s >= 1 for s in info.scales),
                 f"{info.name}: info.scales must be None or a non-empty tuple of positive ints")
    _require(isinstance(info.requires_weights, tuple) and all(isinstance(w, str) for w in info.requires_weights),
             f"{info.name}: info.requires_weights must be a tuple of weight names")
    if info.requires_weights:
        from ..weights import all_specs

        known = all_specs()
        unknown = [w for w in info.requires_weights if w not in known]
        _require(not unknown, f"{info.name}: requires weights {unknown} that no registry entry or plugin "
                 "registers (register_weights)")
    return info


def _default_lr(info: MethodInfo) -> Tensor:
    if info.input_kind == "aligned_face":
        return smooth_batch(2, 16, 16)
    return sample_batch()


def _other_scales(info: MethodInfo, s: int, most: int = 4) -> list[int]:
    """The scales to try besides ``s``: every declared one (at most ``most``, evenly chosen, the
    largest included); with ``scales=None``, 3 (or 2) and 1."""
    if info.scales is None:
        return [t for t in (3 if s != 3 else 2, 1) if t != s]
    others = sorted(t for t in dict.fromkeys(info.scales) if t != s)
    if len(others) <= most:
        return others
    idx = sorted({round(i * (len(others) - 1) / (most - 1)) for i in range(most)})
    return [others[i] for i in idx]


def _with_examples(model: type[Options], values: dict[str, Any] | None) -> dict[str, Any]:
    """``values`` plus, for each required field they leave out that has ``examples``, its first example."""
    out = dict(values or {})
    for fname, field in model.model_fields.items():
        if field.is_required() and fname not in out and field.alias not in out and field.examples:
            out[fname] = field.examples[0]
    return out


def _options_or_fail(label: str, model: type[Options], values: dict[str, Any] | None, what: str,
                     how: Callable[[list[str]], str]) -> Any:
    """Validate ``values`` (a required field left out takes its first ``examples`` value, if it
    has one); a required field without a value or an invalid value is one line naming every such
    field and how to give them all (an invalid value taken from ``examples`` says so)."""
    from pydantic import ValidationError

    filled = _with_examples(model, values)
    try:
        return model.model_validate(filled)
    except ValidationError as exc:
        missing = [".".join(str(p) for p in e["loc"]) for e in exc.errors() if e.get("type") == "missing"]
        if missing:
            fields = ", ".join(f"'{m}'" for m in missing)
            keys = list(dict.fromkeys(m.split(".")[0] for m in missing))
            raise ConformanceError(f"{label}: {what} field(s) {fields} have no default (and no examples), so "
                                   f"the check needs a value: {how(keys)}, or give the field an example value: "
                                   "Field(..., examples=[...])") from None
        from_examples = {f for f in set(filled) - set(values or {}) if f in model.model_fields}
        problems = []
        for e in exc.errors():
            loc = ".".join(str(p) for p in e["loc"]) or "(the model)"
            top = str(e["loc"][0]) if e["loc"] else ""
            if top in from_examples:
                problems.append(f"'{loc}': its examples[0] {e.get('input')!r}, which the check used as the value, "
                                f"is not valid ({e['msg']}): fix the field's examples, or give a value: {how([top])}")
            else:
                problems.append(f"'{loc}': {e['msg']} (got {e.get('input')!r})")
        given = f" {dict(values)!r}" if values else ""
        raise ConformanceError(f"{label}: {what}{given} are not valid: {'; '.join(problems)}") from None


#: The plugin whose case is being checked (``ConformanceCase.check`` sets it), for the hints'
#: ``restorekit plugin check PLUGIN ...`` commands.
_CHECKED_PLUGIN: contextvars.ContextVar[str] = contextvars.ContextVar("restorekit_checked_plugin", default="PLUGIN")


def _dict_hint(keys: list[str]) -> str:
    return "{" + ", ".join(f"'{k}': ..." for k in keys) + "}"


def check_method(cls: type[Method], *, options: dict[str, Any] | None = None, scale: int | None = None,
                 lr: Tensor | None = None, device: str = "cpu", atol: float = 1e-5,
                 samples_batch_independent: bool = True) -> Method:
    """Run the method contract checks; returns the loaded method for further tests.

    Checks: metadata present and well-formed, options model valid and strict, output follows
    the image convention (float32, finite, in [0,1], ``scale`` × the input size, on the method's
    device) on every call: a batch, ``seed=None`` (what ``run`` passes by default), ``n_samples=2``,
    every declared scale (below) and, for ``input_kind="any"``, a single image with odd sizes; the input is untouched after every call; the same seed gives the same
    output; ``deterministic`` methods ignore the seed and the rest of the batch; ``n_samples``
    output is image-major: the samples of image 0 restored alone are the first rows of the
    batch's (``samples_batch_independent=False`` lifts that for a stochastic method that
    documents that its samples depend on the other images of the batch); bad scales are refused
    with ``ValueError``, and so are bad ``n_samples`` (0, -1, 2.5); an input that requires grad
    gives an output that does not (no graph kept alive). Also: every declared scale is tried (at most 4 besides ``scale``, evenly
    chosen; ``scales=None``: 3 and 1); a batch of constant images (0, 1, 0.5) gives finite output in
    range; the batch as channels_last, strided and float64 tensors gives the same float32 output
    (within ``max(atol, 1e-4)``; 1e-2 on CUDA with TF32 convolutions, whose cuDNN kernels for
    the two layouts round differently);
    a stochastic method gives image 1 another output than image 0 and depends on the seed or
    differs across ``n_samples``; the ``restore`` calls leave global state (threads, grad mode,
    default dtype, cuDNN/determinism flags, TF32/matmul precision, global RNGs) as they found it
    (``load`` may change it); a required option without a value takes its first ``examples``
    value, and one without examples either is a one-line error naming it.
    ``lr`` replaces the default input (2×3×12×10 random; 16×16 smooth for aligned faces).
    """
    info = check_method_info(cls)
    name = info.name
    _check_options_model(name, cls.Options)
    opts = _options_or_fail(name, cls.Options, options, "Options", lambda keys: (
        f"`restorekit plugin check {_CHECKED_PLUGIN.get()} " + " ".join(f"--opt {name}.{k}=VALUE" for k in keys)
        + "`, "
        f"conformance_cases(configs={{'{name}': {{'options': {_dict_hint(keys)}}}}}) "
        f"or check_method(options={_dict_hint(keys)})"))
    method = cls(opts, device=device)
    _require(method.device == torch.device(device), f"{name}: __init__ must pass device to Method.__init__")
    method.load()
    method.load()  # idempotent
    s = scale if scale is not None else (info.scales[0] if info.scales else 2)
    x = lr if lr is not None else _default_lr(info)

    def restore(inp: Tensor, sc: int, what: str, samples: int = 1, **kw: Any) -> Tensor:
        """One call, checked: it must not raise, must leave ``inp`` alone and must return
        ``(N·samples)×3×(h·sc)×(w·sc)`` float32 in [0,1] on the method's device."""
        copy = inp.clone()
        try:
            out = method.restore(inp, sc, n_samples=samples, **kw) if samples != 1 else method.restore(inp, sc, **kw)
        except (ConformanceError, WeightsMissing, DependencyMissing):
            raise
        except Exception as exc:
            raise ConformanceError(f"{name}: restore raised on {what}: {exception_line(exc)}") from exc
        _unchanged(name, copy, inp, f"restore() on {what}")
        _require(isinstance(out, Tensor), f"{name}: restore() on {what} returned {type(out).__name__}, not a tensor")
        _require(out.dtype == torch.float32, f"{name}: output must be float32, got {out.dtype} for {what}")
        want = (inp.shape[0] * samples, 3, inp.shape[-2] * sc, inp.shape[-1] * sc)
        _require(tuple(out.shape) == want, f"{name}: {what} gave output shape {tuple(out.shape)}, expected {want}"
                 + (f" (n_samples={samples} must give (N·{samples})×3×H×W)" if samples > 1 else ""))
        _require(out.device.type == method.device.type, f"{name}: output on {out.device}, method on {method.device}")
        _require(bool(torch.isfinite(out).all()), f"{name}: output has NaN/inf for {what}")
        lo, hi = float(out.detach().min()), float(out.detach().max())
        _require(lo >= 0 and hi <= 1, f"{name}: output leaves [0,1] for {what} (min {lo:.4g}, max {hi:.4g})")
        return out

    with _keeps_global_state(name, "restore()"):
        _method_calls(name, info, method, restore, x, s, lr is None, atol, samples_batch_independent)
    return method


def _method_calls(name: str, info: MethodInfo, method: Method, restore: Callable[..., Tensor], x: Tensor, s: int,
                  default_lr: bool, atol: float, samples_batch_independent: bool) -> None:
    """The restore() calls of :func:`check_method` and what is required of their outputs."""
    n = x.shape[0]
    batch = f"the {n}-image batch" if n > 1 else "the one-image input"
    loose = max(atol, 1e-4)  # the same image computed in batches of different sizes
    first = f"{batch} (scale {s}, seed 0)"
    out = restore(x, s, first, seed=0)
    _require(isinstance(method.last_reports, list), f"{name}: last_reports must stay a list")
    again = restore(x, s, f"{batch} again (scale {s}, seed 0)", seed=0)
    _require(_close(out, again, atol), f"{name}: same seed must give the same output")
    if info.one_sample_ignores_seed:
        other = restore(x, s, f"{batch} with seed 1", seed=1)
        what = "deterministic" if info.deterministic else "single_sample_deterministic"
        _require(_close(out, other, atol), f"{name}: declared {what} but one sample depends on seed")
        if n > 1:
            single = restore(x[1:2], s, "image 1 alone", seed=0)
            _require(_close(single, out[1:2], loose),
                     f"{name}: image 1 restored alone differs from the same image in a batch")
            one = ("image 1 alone", x[1:2], single)  # the reference of the layout checks below
    # `run` passes seed=None unless --seed is given, and the face pipeline passes no seed at all.
    unseeded = restore(x, s, f"{batch} with seed=None", seed=None)
    if info.one_sample_ignores_seed:
        _require(_close(unseeded, out, atol), f"{name}: declared "
                 f"{'deterministic' if info.deterministic else 'single_sample_deterministic'} but seed=None gives "
                 "another output than seed=0")
    restore(x[:1], s, "one image with seed=None and n_samples=2", 2, seed=None)
    multi = restore(x, s, f"{batch} with n_samples=2", 2, seed=0)
    if info.deterministic:
        image_major = _close(multi[0::2], out, atol) and _close(multi[1::2], out, atol)
        if not image_major:
            _require(not _close(multi, torch.cat([out, out]), atol),
                     f"{name}: n_samples must be image-major (samples of image 0 first), got sample-major rows")
            raise ConformanceError(f"{name}: declared deterministic but its n_samples=2 samples are not its one "
                                   f"output repeated (each sample must equal restore(x, n_samples=1))")
    elif n > 1 and samples_batch_independent:
        alone = restore(x[:1], s, "image 0 alone with n_samples=2", 2, seed=0)
        _require(_close(alone, multi[:2], loose),
                 f"{name}: image 0 restored alone with n_samples=2 (seed 0) differs from rows 0-1 of {batch}'s "
                 "n_samples=2 output: n_samples must be image-major (samples of image 0 first) and an image's "
                 "samples must not depend on the other images (check_method(samples_batch_independent=False) "
                 "for a method that documents that they do)")
    if not info.one_sample_ignores_seed:
        # Deterministic methods compare image 1 alone with the batch above; a stochastic one at least
        # must not hand image 0's result to every image.
        if n > 1 and not _close(x[0], x[1], 1e-3):
            _require(not _close(out[0], out[1], atol),
                     f"{name}: image 1's output equals image 0's though the inputs differ (seed 0): restore must "
                     "process every image of the batch, not only the first")
    if not (info.one_sample_ignores_seed and n > 1):  # with one image, that is the first call again
        one = ("image 0 alone", x[:1], out if n == 1 else restore(x[:1], s, "image 0 alone (seed 0)", seed=0))
    if not info.one_sample_ignores_seed:
        seed1 = restore(x[:1], s, "image 0 alone with seed 1", seed=1)
        _require(not (_close(one[2], seed1, atol) and _close(multi[0], multi[1], atol)),
                 f"{name}: declared deterministic=False but neither the seed (0 vs 1) nor n_samples=2 changes the "
                 "output: declare deterministic=True, or draw the randomness from `seed`")
    _same_for_layouts(name, restore, one[1], s, one[2], one[0], _layout_tolerance(method.device, loose))
    h, w = x.shape[-2:]  # flat backgrounds, black borders, blown-out highlights: no NaN, no range error
    flat = torch.cat([torch.full((1, 3, h, w), v) for v in (0.0, 1.0, 0.5)]).requires_grad_(True)
    flat_out = restore(flat, s, f"a batch of constant images (all 0, all 1, all 0.5; {h}×{w}; requires grad)",
                       seed=0)
    # A notebook's tensor may require grad: the result must hold no graph (it would keep the
    # method's activations alive for as long as the caller keeps the output).
    _require(not flat_out.requires_grad, f"{name}: an input that requires grad gave an output that requires grad "
             "(an autograd graph kept alive): run restore under torch.no_grad(), or detach its result")
    if default_lr and info.input_kind == "any":
        odd = sample_batch(1, 11, 9, seed=3)
        restore(odd, s, "an 11×9 input", seed=0)
    for s2 in _other_scales(info, s):
        restore(x[:1], s2, f"one image at scale {s2}", seed=0)
    for bad in (0, -2, 2.5):
        _refused(name, lambda: method.restore(x, bad), f"scale {bad!r}", "self.check_scale")  # type: ignore[arg-type]
    if info.scales is not None:
        unsupported = max(info.scales) + 1
        try:
            method.restore(x, unsupported)
        except ValueError:
            pass
        else:
            raise ConformanceError(f"{name}: unsupported scale {unsupported} must raise ValueError")
    for bad_n in (0, -1, 2.5):
        _refused(name, lambda: method.restore(x[:1], s, n_samples=bad_n),  # type: ignore[arg-type]
                 f"n_samples={bad_n!r}", "self.check_sampling")


def _refused(name: str, call: Callable[[], object], what: str, check: str) -> None:
    """``call()`` must raise ``ValueError`` (a bad argument ``what``, refused by ``check``)."""
    try:
        call()
    except ValueError:
        return
    except Exception as exc:
        raise ConformanceError(f"{name}: {what} must raise ValueError (call {check}), "
                               f"it raised {exception_line(exc)}") from exc
    raise ConformanceError(f"{name}: {what} must raise ValueError (call {check})")


def _layout_tolerance(device: torch.device, tol: float) -> float:
    """The tolerance of the layout comparison: ``tol``, but at least 1e-2 on a CUDA device whose
    float32 convolutions run in TF32 (channels_last and contiguous inputs take different cuDNN
    kernels, which round TF32's 10-bit mantissa differently: about 1e-3 apart for a correct net)."""
    if device.type == "cuda" and precision_label(device).endswith(TF32_SUFFIX):
        return max(tol, 1e-2)
    return tol


def _same_for_layouts(name: str, restore: Callable[..., Tensor], x: Tensor, s: int, out: Tensor, label: str,
                      tol: float) -> None:
    """channels_last, strided (non-contiguous) and float64 inputs hold the same image as ``x``:
    they must give the same output ``out`` (``restore`` checks it is float32). Two calls: a
    channels_last view sliced out of a wider tensor, and a float64 transposed view (dense, so
    ``.float()`` keeps its strides); when one differs or fails, its layouts run apart to name the
    one at fault."""
    w = x.shape[-1]
    wide = torch.cat([x, x.flip(-1)], dim=-1)
    transposed = x.transpose(-1, -2).contiguous().transpose(-1, -2)
    calls = [
        ("non-contiguous channels_last (sliced view)", wide.contiguous(memory_format=torch.channels_last)[..., :w],
         [("channels_last", x.contiguous(memory_format=torch.channels_last)),
          ("non-contiguous (sliced view)", wide[..., :w])]),
        ("float64 non-contiguous (transposed view)", transposed.double(),
         [("non-contiguous (transposed view)", transposed), ("float64", x.double())]),
    ]

    def differs(what: str, inp: Tensor) -> str:
        res = restore(inp, s, f"{label} as a {what} tensor (seed 0)", seed=0)
        diff = float((res - out.float()).abs().max())
        if diff <= tol:
            return ""
        return (f"{name}: {label} as a {what} tensor gives another output than as a contiguous float32 tensor "
                f"(max diff {diff:.3g}): read the input through its strides and convert it (.contiguous(), "
                ".float()) before any raw memory access")

    for what, inp, apart in calls:
        try:
            problem = differs(what, inp)
        except ConformanceError as exc:
            problem = str(exc)
        if problem:
            for one_what, one in apart:  # which layout is at fault; a call that raises says so itself
                one_problem = differs(one_what, one)
                _require(not one_problem, one_problem)
        _require(not problem, problem)


# -- metrics ---------------------------------------------------------------------------------

def check_metric(cls: type[Metric], *, scale: int = 2, size: int = 32, allow_nan: bool | None = None,
                 pred: Tensor | None = None, target: Tensor | None = None, face_image: Tensor | None = None,
                 require_face: bool = True) -> Metric:
    """Metric contract; returns the set-up metric.

    Checks: name and direction declared, ``setup`` works, one float64 value per image,
    no NaN, per-image values do not depend on the rest of the batch, a perfect prediction scores
    at least as well as a perturbed one, inputs untouched. ``target`` (HR, default 2 smooth
    ``size``² images) and ``pred`` replace the synthetic pair; LR is the bicubic downscale of the
    target. A metric that declares ``nan_label`` (what its NaN means, e.g. "faces not found") may
    give NaN on those images; it must instead give no NaN (+inf is a score), a perfect prediction
    scoring at least as well, on a face photo (``face_image``, by default scikit-image's astronaut
    when it is installed; ``require_face=False`` skips that). One without ``nan_label`` must also
    give no NaN on a batch of constant images (all 0, all 1, all 0.5), perfect and perturbed.
    ``allow_nan`` overrides the declaration for the synthetic and constant images. The calls leave
    global state alone; a first (warm-up) call may draw from the global RNGs (lazy
    initialisation), which the check puts back. ``setup`` (like a method's ``load``) runs before
    the checked calls: what it changes is not checked.
    """
    from ..degradations import downscale

    name = getattr(cls, "name", None)
    _require(isinstance(name, str) and bool(name), f"{cls.__name__}.name is required")
    _require(bool(COMPONENT_NAME.fullmatch(str(name))), f"metric name {name!r}: letters, digits, '_', '.', '-' only")
    _require(isinstance(getattr(cls, "higher_is_better", None), bool), f"{name}: higher_is_better is required")
    _require(isinstance(cls.requires_weights, tuple), f"{name}: requires_weights must be a tuple")
    nan_label = getattr(cls, "nan_label", "")
    _require(isinstance(nan_label, str), f"{name}: nan_label must be a str (what a NaN value means), "
             f"got {type(nan_label).__name__}")
    m = cls()
    m.setup(torch.device("cpu"))
    hr = target if target is not None else smooth_batch(2, size, size)
    noisy = pred if pred is not None else (
        hr + 0.05 * (sample_batch(hr.shape[0], hr.shape[-2], hr.shape[-1], seed=1) - 0.5)).clamp(0, 1)
    lr = downscale(hr, scale)
    face = None
    if nan_label and require_face:
        img = face_image if face_image is not None else default_face_image()
        if img is not None:
            face_hr = (img if img.dim() == 4 else img[None]).float()
            face_pred = (face_hr + 0.05 * (sample_batch(face_hr.shape[0], face_hr.shape[-2], face_hr.shape[-1], seed=2) - 0.5)
                         ).clamp(0, 1)
            face = (face_hr, face_pred, downscale(face_hr, scale))
    with _keeps_global_state(str(name), "the first __call__ (warm-up)", rng_once=True):  # lazy init may draw
        m(noisy.clone(), hr.clone(), lr=lr.clone(), scale=scale)
        if face is not None:
            m(face[1].clone(), face[0].clone(), lr=face[2].clone(), scale=scale)
    with _keeps_global_state(str(name), "__call__"):
        nan_ok = bool(nan_label) if allow_nan is None else allow_nan
        _metric_calls(cls, m, str(name), hr, noisy, lr, scale, nan_ok)
        if not nan_ok:
            _metric_on_flat(m, str(name), hr.shape[-2], hr.shape[-1], scale)
        if face is not None:
            _metric_on_face(cls, m, str(name), face, scale, nan_label)
    return m


def _metric_on_flat(m: Metric, name: str, h: int, w: int, scale: int) -> None:
    """A metric without ``nan_label`` scores a batch of constant images (all 0, all 1, all 0.5:
    black borders, blown-out highlights, flat backgrounds), perfect and perturbed, without NaN."""
    from ..degradations import downscale

    flat = torch.cat([torch.full((1, 3, h, w), v) for v in (0.0, 1.0, 0.5)])
    bumped = (flat + 0.05 * (sample_batch(3, h, w, seed=4) - 0.5)).clamp(0, 1)
    lr = downscale(flat, scale)
    for what, pred in (("a perfect", flat), ("a perturbed", bumped)):
        vals = m(pred.clone(), flat.clone(), lr=lr.clone(), scale=scale)
        _require(isinstance(vals, Tensor) and not bool(torch.isnan(vals).any()),
                 f"{name}: {what} prediction of a batch of constant images (all 0, all 1, all 0.5; {h}×{w}) scores "
                 f"{getattr(vals, 'tolist', lambda: vals)()}: flat backgrounds, black borders and blown-out "
                 "highlights are ordinary images: guard the 0/0 (an epsilon in a denominator), or, for an image "
                 "the metric cannot score, declare what its NaN means: nan_label = 'faces not found'")


def _metric_on_face(cls: type[Metric], m: Metric, name: str, face: tuple[Tensor, Tensor, Tensor], scale: int,
                    nan_label: str) -> None:
    hr, noisy, lr = face
    v = m(noisy, hr, lr=lr, scale=scale)
    same = m(hr, hr, lr=lr, scale=scale)
    for what, vals in (("a perturbed", v), ("a perfect", same)):
        # NaN only: +inf is a valid score (psnr_rgb gives it for a perfect prediction)
        _require(isinstance(vals, Tensor) and tuple(vals.shape) == (hr.shape[0],) and not bool(torch.isnan(vals).any()),
                 f"{name}: {what} prediction of a face photo ({hr.shape[-1]}×{hr.shape[-2]}) scores "
                 f"{getattr(vals, 'tolist', lambda: vals)()}: a metric whose NaN means '{nan_label}' must measure "
                 "an image where a face is plainly there (check_metric(face_image=...) for another photo, "
                 "require_face=False for a metric that is not about faces)")
    for a, b in zip(same.tolist(), v.tolist()):
        better_or_equal = a >= b - 1e-9 if cls.higher_is_better else a <= b + 1e-9
        _require(better_or_equal, f"{name}: on a face photo a perfect prediction scores {a} but a perturbed one {b} "
                 f"(higher_is_better={cls.higher_is_better})")


def _metric_calls(cls: type[Metric], m: Metric, name: str, hr: Tensor, noisy: Tensor, lr: Tensor, scale: int,
                  allow_nan: bool) -> Metric:
    copies = (hr.clone(), noisy.clone(), lr.clone())
    v = m(noisy, hr, lr=lr, scale=scale)
    _unchanged(name, copies[0], hr, "__call__ (target)")
    _unchanged(name, copies[1], noisy, "__call__ (pred)")
    _unchanged(name, copies[2], lr, "__call__ (lr)")
    n = hr.shape[0]
    _require(isinstance(v, Tensor) and tuple(v.shape) == (n,),
             f"{name}: expected one value per image, got {tuple(getattr(v, 'shape', ()))}")
    _require(v.dtype == torch.float64, f"{name}: values must be float64")
    if not allow_nan:
        _require(not bool(torch.isnan(v).any()), f"{name}: NaN on ordinary images (a metric whose NaN means "
                 "'not measurable here' declares what it means: nan_label = 'faces not found')")
    same = m(hr, hr, lr=lr, scale=scale)
    for i in range(n):
        a, b = float(same[i]), float(v[i])
        if math.isnan(a) or math.isnan(b):
            continue
        better_or_equal = a >= b - 1e-9 if cls.higher_is_better else a <= b + 1e-9
        _require(better_or_equal, f"{name}: a perfect prediction scores {a} but a perturbed one {b} "
                 f"(higher_is_better={cls.higher_is_better})")
    if n > 1:
        alone = m(noisy[1:2], hr[1:2], lr=lr[1:2], scale=scale)
        a, b = float(alone[0]), float(v[1])
        _require((math.isnan(a) and math.isnan(b)) or a == b or abs(a - b) <= 1e-6 * max(1.0, abs(b)),
                 f"{name}: image 1 scores {a} alone but {b} in a batch (values must be per image)")
    return m


# -- degradations ----------------------------------------------------------------------------

def _field_bounds(field: Any, ann: Any) -> tuple[float, float]:
    """The closed range a number field's ``ge``/``gt``/``le``/``lt`` allow (open bounds moved in by
    1 for ints, 1e-3 for floats); unbounded sides are infinite."""
    lo, hi = -math.inf, math.inf
    for meta in field.metadata:
        for attr in ("ge", "gt", "le", "lt"):
            val = getattr(meta, attr, None)
            if val is None:
                continue
            step = (1 if ann is int else 1e-3) if attr in ("gt", "lt") else 0
            if attr in ("ge", "gt"):
                lo = max(lo, val + step)
            else:
                hi = min(hi, val - step)
    return lo, hi


def example_params(model: type[Options]) -> Options:
    """Option values for a check: defaults, and a small valid value for required numbers.

    Required fields with ``examples`` get the first; other required ints get 2 and floats 1.0
    (moved inside the field's bounds); anything else required has no guessable value and must be
    given.
    """
    values: dict[str, Any] = {}
    for name, field in model.model_fields.items():
        if not field.is_required():
            continue
        if field.examples:
            values[name] = field.examples[0]
            continue
        ann = field.annotation
        if ann not in (int, float):
            raise ConformanceError(f"{model.__name__}: field '{name}' is required and not a number; "
                                   "pass params={...} for the check")
        lo, hi = _field_bounds(field, ann)
        guess: float = 2 if ann is int else 1.0
        guess = min(max(guess, lo), hi)
        values[name] = int(guess) if ann is int else float(guess)
    return model.model_validate(values)


def _guessed_params(model: type[Options]) -> dict[str, Any]:
    """A small valid value for each required number without ``examples`` (as :func:`example_params`
    guesses it); other required fields are left out (the check names them)."""
    values: dict[str, Any] = {}
    for name, field in model.model_fields.items():
        if field.is_required() and not field.examples and field.annotation in (int, float):
            lo, hi = _field_bounds(field, field.annotation)
            guess = min(max(2 if field.annotation is int else 1.0, lo), hi)
            values[name] = int(guess) if field.annotation is int else float(guess)
    return values


def check_degradation(cls: type[Degradation], *, params: dict[str, Any] | None = None,
                      hr: Tensor | None = None) -> Degradation:
    """Degradation contract; returns the built degradation.

    Checks: a spec-safe name, a strict documented ``Params`` model, float32 ``N×3×h×w`` output in
    [0,1] no larger than the input (exactly ``floor(H/scale)`` when params have ``scale``),
    input untouched, randomness only from the given ``torch.Generator`` (same seed, same
    output), and ``spec()`` rebuilding an equal degradation through the spec parser.
    """
    name = getattr(cls, "name", None)
    _require(isinstance(name, str) and bool(DEGRADATION_NAME.fullmatch(name)),
             f"{cls.__name__}.name must be lower-case letters, digits and '_' (it appears in spec strings)")
    _check_options_model(str(name), getattr(cls, "Params", None), "Params")
    p = _options_or_fail(str(name), cls.Params, params if params is not None else _guessed_params(cls.Params),
                         "Params", lambda keys: (
        f"`restorekit plugin check {_CHECKED_PLUGIN.get()} " + " ".join(f"--opt {name}.{k}=VALUE" for k in keys)
        + f"`, check_degradation(params={_dict_hint(keys)}) or conformance_cases(configs={{'{name}': "
        f"{{'params': {_dict_hint(keys)}}}}})"))
    d = cls(p)
    scale = getattr(p, "scale", None)
    s = int(scale) if isinstance(scale, int) else 1
    x = hr if hr is not None else smooth_batch(2, 12 * s, 10 * s)
    with _keeps_global_state(str(name), "__call__"):
        _degradation_calls(cls, d, str(name), x, scale)
    _spec_round_trips(cls, d, str(name))
    for field, value in _non_default_values(cls.Params, p):
        try:
            other = cls.Params.model_validate({**p.model_dump(), field: value})
        except Exception:
            continue  # a value another validator refuses: nothing to learn from it
        _spec_round_trips(cls, cls(other), str(name), f" (at the non-default {field}={value!r})")
    return d


def _non_default_values(model: type[Options], p: Options) -> list[tuple[str, Any]]:
    """One other valid value per int/float field (the default moved by 1 or 0.25 inside its bounds)."""
    out: list[tuple[str, Any]] = []
    for fname, field in model.model_fields.items():
        ann = field.annotation
        cur = getattr(p, fname, None)
        if ann not in (int, float) or isinstance(cur, bool) or not isinstance(cur, (int, float)):
            continue
        lo, hi = _field_bounds(field, ann)
        delta = 1 if ann is int else 0.25
        for cand in (cur + delta, cur - delta, (cur + lo) / 2 if ann is float and math.isfinite(lo) else None):
            if cand is not None and lo <= cand <= hi and cand != cur:
                out.append((fname, int(cand) if ann is int else float(cand)))
                break
    return out


def _spec_round_trips(cls: type[Degradation], d: Degradation, name: str, where: str = "") -> None:
    from ..degradations import parse_spec

    spec = d.spec()
    _require(isinstance(spec, str) and spec.split(":")[0] == name, f"{name}: spec() must start with the name, got {spec!r}")
    rebuilt = parse_spec(spec, {name: cls}).steps[0]
    _require(rebuilt.params == d.params, f"{name}: spec {spec!r} rebuilds params {rebuilt.params!r}, not "
             f"{d.params!r}{where}: spec() must write every value exactly")
    _require(rebuilt.spec() == spec, f"{name}: spec() does not round-trip ({spec!r} → {rebuilt.spec()!r}){where}")


def _degradation_calls(cls: type[Degradation], d: Degradation, name: str, x: Tensor, scale: Any) -> None:
    x_copy = x.clone()
    out = d(x, generator=torch.Generator().manual_seed(0))
    _unchanged(str(name), x_copy, x, "__call__")
    _require(isinstance(out, Tensor) and out.dtype == torch.float32, f"{name}: output must be float32")
    _require(out.dim() == 4 and out.shape[:2] == x.shape[:2], f"{name}: output must be N×3×h×w, got {tuple(out.shape)}")
    if isinstance(scale, int):
        want = (x.shape[-2] // scale, x.shape[-1] // scale)
        _require(tuple(out.shape[-2:]) == want, f"{name}: scale {scale} gave {tuple(out.shape[-2:])}, expected {want}")
    else:
        _require(out.shape[-2] <= x.shape[-2] and out.shape[-1] <= x.shape[-1] and min(out.shape[-2:]) >= 1,
                 f"{name}: output {tuple(out.shape[-2:])} must not be larger than the input")
    _require(bool(torch.isfinite(out).all()), f"{name}: output has NaN/inf")
    _require(bool(out.min() >= -1e-5) and bool(out.max() <= 1 + 1e-5), f"{name}: output leaves [0,1]")
    again = d(x, generator=torch.Generator().manual_seed(0))
    _require(bool(torch.equal(out, again)), f"{name}: same generator seed must give the same output")


# -- losses ----------------------------------------------------------------------------------

def check_loss(cls: type[Loss], *, kwargs: dict[str, Any] | None = None,
               context: dict[str, Any] | None = None, size: int = 32) -> Loss:
    """Loss contract; returns the built loss.

    Checks: a name, ``weight`` accepted and stored, a finite 0-dim float tensor, a perfect
    prediction no worse than a wrong one, differentiable (finite gradients reaching ``pred``
    or a context tensor), inputs untouched, global state left alone (a first, warm-up call may
    draw from the global RNGs — lazy initialisation — which are put back). ``kwargs`` go to the constructor,
    ``context`` to every call (tensors in it are cloned and made to require gradients); each
    entry the loss declares in ``context_inputs`` and ``context`` leaves out is a random float32
    tensor of the declared shape (``N×shape`` per image, ``N`` = 2). The loss is also called once
    without the entries it declares ``required=False``, and must then still return a finite 0-dim
    float tensor. A ``KeyError`` on a context entry names what the loss declares. The constructor
    runs before the checked calls: what it changes is not checked.
    """
    name = getattr(cls, "name", None)
    _require(isinstance(name, str) and bool(COMPONENT_NAME.fullmatch(name)), f"{cls.__name__}.name is required")
    declared = getattr(cls, "context_inputs", ())
    _require(isinstance(declared, tuple) and all(isinstance(d, LossContext) for d in declared),
             f"{name}: context_inputs must be a tuple of restorekit.interfaces.LossContext")
    loss = cls(weight=0.5, **(kwargs or {}))
    _require(getattr(loss, "weight", None) == 0.5, f"{name}: the constructor must store weight (Loss.__init__)")
    n = 2
    target = smooth_batch(n, size, size)
    wrong = smooth_batch(n, size, size, seed=7)
    given = dict(context or {})
    gen = torch.Generator().manual_seed(3)
    for d in declared:  # what the loss declares it reads and the check was not given: random, of its shape
        if d.name not in given:
            given[d.name] = torch.randn((n, *d.shape) if d.per_image else tuple(d.shape), generator=gen)

    def ctx() -> dict[str, Any]:
        out: dict[str, Any] = {}
        for k, v in given.items():
            out[k] = v.detach().clone().requires_grad_(v.is_floating_point()) if isinstance(v, Tensor) else v
        return out

    with _keeps_global_state(str(name), "the first __call__ (warm-up)", rng_once=True):  # lazy init may draw
        try:
            loss(wrong.clone().requires_grad_(True), target.clone(), **ctx())
        except (ConformanceError, WeightsMissing, DependencyMissing):
            raise
        except Exception as exc:
            raise ConformanceError(f"{name}: __call__ raised: {exception_line(exc)}"
                                   f"{_context_hint(exc, declared, given)}") from exc
    with _keeps_global_state(str(name), "__call__ (and backward)"):
        _loss_calls(loss, str(name), target, wrong, ctx)
        optional = [d.name for d in declared if not d.required]
        if optional:
            _loss_without(loss, str(name), target, wrong, {k: v for k, v in ctx().items() if k not in optional},
                          optional)
    return loss


def _context_hint(exc: Exception, declared: tuple[LossContext, ...], given: dict[str, Any]) -> str:
    """What a loss's KeyError on a context entry it did not get most likely means."""
    if not declared and not given:
        return ("; a loss that reads context entries declares them: context_inputs = (LossContext(...),), "
                "or give them with check_loss(context=...) / conformance_cases(configs={'NAME': {'context': {...}}})")
    if not isinstance(exc, KeyError) or not exc.args or exc.args[0] in given:
        return ""
    key = exc.args[0]
    names = [d.name for d in declared] or list(given)
    from ..plugins import suggest

    return (f"; it reads context entry {key!r} but {'context_inputs declares' if declared else 'the check got'} only "
            f"{', '.join(repr(n) for n in names)}{suggest(str(key), names)}: declare every entry it reads "
            f"(context_inputs = (LossContext({key!r}, ...),)) or give it with check_loss(context=...)")


def _loss_without(loss: Loss, name: str, target: Tensor, wrong: Tensor, c: dict[str, Any],
                  optional: list[str]) -> None:
    """The loss called without the context entries it declares ``required=False``: it must work."""
    what = ", ".join(repr(o) for o in optional)
    try:
        value = loss(wrong.clone().requires_grad_(True), target.clone(), **c)
    except (ConformanceError, WeightsMissing, DependencyMissing):
        raise
    except Exception as exc:
        raise ConformanceError(f"{name}: __call__ without the context entries declared required=False ({what}) "
                               f"raised: {exception_line(exc)}: a loss that can do without an entry reads it with "
                               "context.get(...); one it needs is declared required=True (the default)") from exc
    _require(isinstance(value, Tensor) and value.dim() == 0 and value.is_floating_point()
             and bool(torch.isfinite(value.detach())),
             f"{name}: without the context entries declared required=False ({what}) it must still return a "
             f"finite 0-dim float tensor, got {value!r}"[:400])


def _loss_calls(loss: Loss, name: str, target: Tensor, wrong: Tensor, ctx: Callable[[], dict[str, Any]]) -> None:
    pred = wrong.clone().requires_grad_(True)
    c = ctx()
    t_copy = target.clone()
    value = loss(pred, target, **c)
    _unchanged(name, t_copy, target, "__call__ (target)")
    _unchanged(name, wrong, pred.detach(), "__call__ (pred)")
    _require(isinstance(value, Tensor) and value.dim() == 0 and value.is_floating_point(),
             f"{name}: must return a 0-dim float tensor, got {getattr(value, 'shape', type(value))}")
    _require(bool(torch.isfinite(value.detach())), f"{name}: loss is {float(value.detach())}")
    _require(value.requires_grad, f"{name}: the loss is not differentiable (no graph to pred or context)")
    value.backward()
    grads = [t.grad for t in [pred, *[v for v in c.values() if isinstance(v, Tensor) and v.requires_grad]]]
    _require(all(g is None or bool(torch.isfinite(g).all()) for g in grads), f"{name}: gradients have NaN/inf")
    _require(any(g is not None and bool(g.abs().sum() > 0) for g in grads),
             f"{name}: gradients are zero everywhere for a wrong prediction")
    with torch.no_grad():
        perfect = float(loss(target.clone(), target, **ctx()))
        worse = float(loss(wrong, target, **ctx()))
    _require(perfect <= worse + 1e-6, f"{name}: a perfect prediction costs {perfect}, a wrong one {worse}")


# -- factories: generators, encoders, face embedders, face detectors ------------------------

def _build(factory: Callable[..., Any], kwargs: dict[str, Any] | None) -> Any:
    build = getattr(factory, "build", factory)  # a registry Factory or a plain callable
    return build(**(kwargs or {}))


def check_generator(factory: Callable[..., Any], *, kwargs: dict[str, Any] | None = None, batch: int = 2,
                    trained: bool = False) -> Generator:
    """Generator contract; returns the built generator (in eval mode).

    Checks: a :class:`Generator` with positive ``z_dim``, ``style_dim``, ``n_styles`` and
    ``resolution``; ``map`` gives ``N×style_dim``; ``synthesize`` gives finite float32
    ``N×3×R×R``, the same twice with constant noise, independent of the rest of the batch, with
    gradients reaching W+ (pSp and PULSE need them); ``mean_latent`` is ``style_dim``.
    ``trained=True`` (real weights) also checks the [0,1] convention: pixels mostly within
    [-0.25, 1.25] and the mean inside [0.1, 0.9] — a generator left in [-1,1] fails that.
    """
    g = _build(factory, kwargs)
    label = type(g).__name__
    _require(isinstance(g, Generator), f"{label} must subclass restorekit.interfaces.Generator")
    for attr in ("z_dim", "style_dim", "n_styles", "resolution"):
        v = getattr(g, attr, None)
        _require(isinstance(v, int) and v > 0, f"{label}.{attr} must be a positive int, got {v!r}")
    g.eval()
    gen = torch.Generator().manual_seed(0)
    z = torch.randn(batch, g.z_dim, generator=gen)
    with torch.no_grad():
        w = g.map(z)
    _require(tuple(w.shape) == (batch, g.style_dim), f"{label}.map: expected {(batch, g.style_dim)}, got {tuple(w.shape)}")
    _require(bool(torch.isfinite(w).all()), f"{label}.map: NaN/inf")
    w_plus = w[:, None].repeat(1, g.n_styles, 1).requires_grad_(True)
    img = g.synthesize(w_plus, noise_mode="const")
    want = (batch, 3, g.resolution, g.resolution)
    _require(tuple(img.shape) == want, f"{label}.synthesize: expected {want}, got {tuple(img.shape)}")
    _require(img.dtype == torch.float32 and bool(torch.isfinite(img).all()), f"{label}.synthesize: float32 and finite")
    img.float().mean().backward()
    _require(w_plus.grad is not None and bool(torch.isfinite(w_plus.grad).all()) and bool(w_plus.grad.abs().sum() > 0),
             f"{label}.synthesize: no finite gradient reaches w_plus")
    with torch.no_grad():
        again = g.synthesize(w_plus.detach(), noise_mode="const")
        _require(_close(img.detach(), again, 1e-5), f"{label}.synthesize: noise_mode='const' must be deterministic")
        if batch > 1:
            alone = g.synthesize(w_plus.detach()[1:2], noise_mode="const")
            _require(_close(alone, again[1:2], 1e-4), f"{label}.synthesize: image 1 depends on the rest of the batch")
        mean = g.mean_latent(64)
    _require(tuple(mean.shape) == (g.style_dim,), f"{label}.mean_latent: expected ({g.style_dim},), got {tuple(mean.shape)}")
    noise = g.noise_buffers()
    _require(isinstance(noise, list) and all(isinstance(t, Tensor) for t in noise),
             f"{label}.noise_buffers must return a list of tensors")
    if trained:
        with torch.no_grad():
            out = g.synthesize(mean[None, None].repeat(1, g.n_styles, 1), noise_mode="const")
        inside = float(((out >= -0.25) & (out <= 1.25)).float().mean())
        centre = float(out.mean())
        _require(inside >= 0.99 and 0.1 <= centre <= 0.9,
                 f"{label}: the mean-latent image has {inside:.1%} of pixels in [-0.25,1.25] and mean "
                 f"{centre:.3f}; synthesize must return the [0,1] convention")
    return g


def check_encoder(factory: Callable[..., Any], *, kwargs: dict[str, Any] | None = None,
                  size: int | None = None, batch: int = 2) -> Encoder:
    """Encoder contract; returns the built encoder (in eval mode).

    Checks: an :class:`Encoder` with positive ``n_styles``/``style_dim``; ``encode`` of a
    ``N×3×S×S`` [0,1] batch (``S`` = ``size``, the encoder's ``input_size``, or 64) gives finite
    ``N×n_styles×style_dim``, deterministic in eval mode, independent of the rest of the batch,
    with gradients reaching the parameters and the image (training and inversion need both).
    """
    enc = _build(factory, kwargs)
    label = type(enc).__name__
    _require(isinstance(enc, Encoder), f"{label} must subclass restorekit.interfaces.Encoder")
    for attr in ("n_styles", "style_dim"):
        v = getattr(enc, attr, None)
        _require(isinstance(v, int) and v > 0, f"{label}.{attr} must be a positive int, got {v!r}")
    enc.eval()
    s = size or int(getattr(enc, "input_size", 0) or 64)
    x = smooth_batch(batch, s, s).requires_grad_(True)
    out = enc.encode(x)
    want = (batch, enc.n_styles, enc.style_dim)
    _require(tuple(out.shape) == want, f"{label}.encode: expected {want}, got {tuple(out.shape)}")
    _require(out.is_floating_point() and bool(torch.isfinite(out).all()), f"{label}.encode: NaN/inf or not float")
    out.float().pow(2).mean().backward()
    _require(x.grad is not None and bool(torch.isfinite(x.grad).all()) and bool(x.grad.abs().sum() > 0),
             f"{label}.encode: no finite gradient reaches the image")
    params = [p for p in enc.parameters() if p.requires_grad]
    _require(any(p.grad is not None and bool(p.grad.abs().sum() > 0) for p in params) or not params,
             f"{label}.encode: no gradient reaches the parameters")
    with torch.no_grad():
        again = enc.encode(x.detach())
        _require(_close(out.detach(), again, 1e-5), f"{label}.encode: not deterministic in eval mode")
        if batch > 1:
            alone = enc.encode(x.detach()[1:2])
            _require(_close(alone, again[1:2], 1e-4), f"{label}.encode: image 1 depends on the rest of the batch")
    return enc


def check_face_embedder(factory: Callable[..., Any], *, kwargs: dict[str, Any] | None = None,
                        size: int | None = None, faces: Tensor | None = None) -> FaceEmbedder:
    """Face embedder contract; returns the built embedder.

    Checks: a :class:`FaceEmbedder` with a name, a ``framing`` and a ``differentiable`` flag;
    ``embed`` gives finite ``N×D`` unit vectors, deterministic and independent of the rest of
    the batch; when ``differentiable``, finite non-zero gradients reach the faces (the identity
    loss trains through them). ``faces`` replaces the default 2 smooth ``size``² images
    (``size``: the embedder's ``input_size`` or 112).
    """
    emb = _build(factory, kwargs)
    label = getattr(emb, "name", type(emb).__name__)
    _require(isinstance(emb, FaceEmbedder), f"{label} must subclass restorekit.interfaces.FaceEmbedder")
    _require(isinstance(getattr(emb, "name", None), str), f"{type(emb).__name__}.name is required")
    _require(isinstance(emb.differentiable, bool), f"{label}: differentiable must be a bool")
    _require(emb.framing in ("ffhq", "chip"), f"{label}: framing must be 'ffhq' or 'chip'")
    if isinstance(emb, torch.nn.Module):
        emb.eval()
    s = size or int(getattr(emb, "input_size", 0) or 112)
    x = faces if faces is not None else smooth_batch(2, s, s)
    x = x.clone().requires_grad_(emb.differentiable)
    e = emb.embed(x)
    n = x.shape[0]
    _require(isinstance(e, Tensor) and e.dim() == 2 and e.shape[0] == n and e.shape[1] >= 1,
             f"{label}.embed: expected N×D, got {tuple(getattr(e, 'shape', ()))}")
    _require(e.is_floating_point() and bool(torch.isfinite(e).all()), f"{label}.embed: NaN/inf or not float")
    norms = e.detach().double().norm(dim=1)
    _require(bool(torch.allclose(norms, torch.ones_like(norms), atol=1e-4)),
             f"{label}.embed: embeddings must have unit norm, got norms {norms.tolist()}")
    if emb.differentiable:
        (e[:, 0].sum() + e.sum()).backward()
        _require(x.grad is not None and bool(torch.isfinite(x.grad).all()) and bool(x.grad.abs().sum() > 0),
                 f"{label}: declared differentiable but no finite gradient reaches the faces")
    with torch.no_grad():
        again = emb.embed(x.detach())
        _require(_close(e.detach(), again, 1e-5), f"{label}.embed: not deterministic")
        if n > 1:
            alone = emb.embed(x.detach()[1:2])
            _require(_close(alone, again[1:2], 1e-4), f"{label}.embed: face 1 depends on the rest of the batch")
    return emb


def default_face_image(size: int = 256) -> Tensor | None:
    """scikit-image's public-domain astronaut portrait as ``3×size×size``, or None without skimage."""
    try:
        from skimage import data as skdata
    except ImportError:
        return None
    arr = torch.from_numpy(skdata.astronaut().copy()).permute(2, 0, 1).float()[None] / 255.0
    return torch.nn.functional.interpolate(arr, size=(size, size), mode="area")[0].contiguous()


def _check_face(label: str, f: Any, h: int, w: int, slack: float) -> None:
    _require(isinstance(f, Face), f"{label}.detect must return Face objects, got {type(f).__name__}")
    x0, y0, x1, y1 = f.box
    _require(all(math.isfinite(v) for v in f.box) and x0 < x1 and y0 < y1,
             f"{label}: box {f.box} must be finite x0<x1, y0<y1")
    _require(-slack <= x0 and -slack <= y0 and x1 <= w + slack and y1 <= h + slack,
             f"{label}: box {f.box} lies outside the {w}×{h} image")
    _require(isinstance(f.score, float) and math.isfinite(f.score), f"{label}: score must be a finite float")
    bw, bh = x1 - x0, y1 - y0
    for pt in f.landmarks:
        _require(len(pt) == 2 and all(math.isfinite(v) for v in pt), f"{label}: landmark {pt} must be a finite (x, y)")
        _require(x0 - bw / 2 <= pt[0] <= x1 + bw / 2 and y0 - bh / 2 <= pt[1] <= y1 + bh / 2,
                 f"{label}: landmark {pt} lies far outside its box {f.box}")


def check_face_detector(factory: Callable[..., Any], *, kwargs: dict[str, Any] | None = None,
                        face_image: Tensor | None = None, require_face: bool = True) -> FaceDetector:
    """Face detector contract; returns the built detector.

    Checks: a :class:`FaceDetector` with a name; ``detect`` of one ``3×H×W`` image returns a
    list of :class:`Face`; a flat grey image has no face; on a face photo (``face_image``, by
    default scikit-image's astronaut at 256 px when installed) it finds at least one face with a
    finite box inside the image, a finite float score and landmarks near the box, and inputs are
    left untouched.
    """
    det = _build(factory, kwargs)
    label = getattr(det, "name", type(det).__name__)
    _require(isinstance(det, FaceDetector), f"{label} must subclass restorekit.interfaces.FaceDetector")
    _require(isinstance(getattr(det, "name", None), str), f"{type(det).__name__}.name is required")
    grey = torch.full((3, 96, 96), 0.5)
    faces = det.detect(grey)
    _require(isinstance(faces, list), f"{label}.detect must return a list, got {type(faces).__name__}")
    _require(faces == [], f"{label}: found {len(faces)} face(s) in a flat grey image")
    img = face_image if face_image is not None else default_face_image()
    if img is None:
        return det
    copy = img.clone()
    faces = det.detect(img)
    _unchanged(label, copy, img, "detect()")
    _require(isinstance(faces, list), f"{label}.detect must return a list")
    if require_face:
        _require(len(faces) >= 1, f"{label}: no face found in the test portrait")
    h, w = img.shape[-2:]
    for f in faces:
        _check_face(label, f, h, w, slack=0.25 * max(h, w))
    return det


# -- weights ---------------------------------------------------------------------------------

def check_weight_spec(spec: Any, *, name: str | None = None, plugin: str | None = None) -> None:
    """A registered weight spec: a :class:`WeightSpec` under its own name (and, given ``plugin``,
    naming the plugin that registers it) that round-trips."""
    from ..weights import WeightSpec

    _require(isinstance(spec, WeightSpec), f"weights {name or spec!r}: register a restorekit.weights.WeightSpec, "
             f"not {type(spec).__name__}")
    if name is not None:
        _require(spec.name == name, f"weights registered as '{name}' but named '{spec.name}'")
    _require(WeightSpec.model_validate(spec.model_dump()) == spec, f"weights '{spec.name}': spec does not round-trip")
    if plugin is not None:
        _require(spec.plugin == plugin, f"weights '{spec.name}' say plugin '{spec.plugin}' but '{plugin}' registers them")
