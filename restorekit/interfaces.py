"""The typed contracts every restorekit component implements.

One image convention holds everywhere (see ``restorekit.images``): an image batch is a
``torch.float32`` tensor ``N×3×H×W``, RGB, values in ``[0, 1]``. Components that need another
range (StyleGAN's and LPIPS' ``[-1, 1]``) convert inside themselves, never at call sites.
"""

from __future__ import annotations

import contextlib
import functools
import math
import operator
import threading
import weakref
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal, TypeAlias, cast

import torch
from pydantic import BaseModel, ConfigDict
from torch import Tensor, nn


class Options(BaseModel):
    """Base for every user-configurable option model: unknown keys are errors, and defaults are
    held to the same constraints as given values (a default outside its own bounds is an error
    where the model is made, not a value the method quietly runs with)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, validate_default=True)

    #: Fields that change how a method runs (progress and notes, memory use, kernels, inference
    #: optimisations) but not what it returns beyond float rounding. ``run`` leaves them out of
    #: the settings it records in its outputs and checks on a rerun (:func:`result_options`), so
    #: that a rerun with ``-q`` or another kernel resumes a folder instead of being refused.
    result_neutral: ClassVar[frozenset[str]] = frozenset()


def result_options(options: Options) -> dict[str, Any]:
    """``options`` as JSON values, without its :attr:`~Options.result_neutral` fields: what of
    them decides a method's results."""
    return {k: v for k, v in options.model_dump(mode="json").items() if k not in type(options).result_neutral}


#: The :class:`Options` base class under a second name, for annotations inside classes whose
#: ``Options`` attribute (the class's own options model) hides the module-level name.
OptionsModel: TypeAlias = Options


class NoOptions(Options):
    """A method or component with nothing to configure."""


#: Values outside [0, 1] by more than this are taken for another convention ([0, 255], [-1, 1]).
INPUT_RANGE_SLACK = 0.5


def refuse_nan(x: object, what: str = "input") -> None:
    """Raise ``ValueError`` (one line, starting with ``what``) when ``x`` is a floating-point tensor
    holding NaN: a method would return it as a NaN image (or a plausible one made of it). Anything
    else passes (:func:`check_image_batch` says what is wrong with it)."""
    if (isinstance(x, torch.Tensor) and x.is_floating_point() and x.device.type != "meta" and x.numel()
            and bool(torch.isnan(x.detach()).any())):
        bad = int(torch.isnan(x.detach()).sum())
        raise ValueError(f"{what} holds {bad} NaN value(s) of {x.numel()}; images are finite values in [0, 1]")


def check_image_batch(x: object, what: str = "input") -> None:
    """Raise ``ValueError`` (one line, starting with ``what``) unless ``x`` is an image batch by the
    convention: a floating-point tensor ``N×3×H×W`` (N, H, W ≥ 1), values in ``[0, 1]``.

    Any floating dtype passes (float16, float64: the receiver converts). The range test is one
    ``aminmax`` and tolerates an overshoot of :data:`INPUT_RANGE_SLACK` (a resampled image rings past
    [0, 1]); it catches [0, 255] and [-1, 1] images, not every out-of-range value. Infinite values
    are refused; NaN is not (a metric scores an image holding one as NaN, and :meth:`Method.restore`
    refuses it where its caller hands it over: :func:`refuse_nan`). A tensor on the meta device (no
    values) is refused.
    """
    if not isinstance(x, torch.Tensor):
        module = type(x).__module__ or ""
        kind = type(x).__qualname__ if module == "builtins" else f"{module.split('.')[0]}.{type(x).__qualname__}"
        pil = "restorekit.images.from_pil(img) for a PIL image"
        arr = "torch.from_numpy(a).permute(2, 0, 1)[None].float() / 255 for an H×W×3 uint8 array"
        hint = pil if module.startswith("PIL") else arr if module.startswith("numpy") else f"{pil}, {arr}"
        raise ValueError(f"{what} must be a torch.Tensor N×3×H×W float in [0, 1], got {kind}: use {hint}")
    shape = tuple(x.shape)
    if x.dim() != 4 or shape[1] != 3:
        if x.dim() == 3 and shape[0] == 3:
            hint = "one image 3×H×W: add the batch dimension with x[None]"
        elif x.dim() == 3 and shape[-1] == 3:
            hint = "one image H×W×3 (channels last): use x.permute(2, 0, 1)[None]"
        elif x.dim() == 4 and shape[-1] == 3:
            hint = "channels last N×H×W×3: use x.permute(0, 3, 1, 2)"
        elif x.dim() == 4 and shape[1] == 1:
            hint = "one channel: for grey images use x.expand(-1, 3, -1, -1)"
        elif x.dim() == 4 and shape[1] == 4:
            hint = "four channels: drop (or composite) the alpha channel, x[:, :3]"
        elif x.dim() == 2:
            hint = "one grey H×W image: use x.expand(3, -1, -1)[None]"
        else:
            hint = "images are N×3×H×W, RGB"
        raise ValueError(f"{what} must be N×3×H×W (RGB), got shape {shape}: {hint}")
    if x.numel() == 0:
        raise ValueError(f"{what} is empty (shape {shape}): a batch needs at least one image of at least 1×1 px")
    if not x.is_floating_point():
        raise ValueError(f"{what} must be a floating-point tensor in [0, 1], got {x.dtype}: for 8-bit values "
                         f"use x.float() / 255")
    if x.device.type == "meta":
        raise ValueError(f"{what} is on the meta device, which holds shapes but no values: make it on the cpu or "
                         f"a GPU")
    lo, hi = (float(v) for v in torch.aminmax(x.detach()))
    if lo != lo:  # aminmax propagates NaN: a batch holding one has NaN bounds (left to refuse_nan)
        return
    if math.isinf(lo) or math.isinf(hi):
        bad = int(torch.isinf(x.detach()).sum())
        raise ValueError(f"{what} holds {bad} infinite value(s) of {x.numel()}; images are finite values in [0, 1]")
    if hi > 1 + INPUT_RANGE_SLACK or lo < -INPUT_RANGE_SLACK:
        if lo < -INPUT_RANGE_SLACK and hi <= 1 + INPUT_RANGE_SLACK:
            hint = "a [-1, 1] image? use (x + 1) / 2"
        else:
            hint = "not 0-255: divide by 255"
        raise ValueError(f"{what} has values from {lo:.4g} to {hi:.4g}; images are in [0, 1], {hint}")


@dataclass(frozen=True)
class MethodInfo:
    """What a user sees about a method before building it."""

    name: str
    summary: str
    # What the method does. Restoration at the input's own size declares it here and in ``scales``
    # (``task="denoising", scales=(1,)``): "denoising", "deblurring", "artifact-removal" (JPEG) or
    # "restoration" are kept black and white like "super-resolution" (:data:`RESTORATION_TASKS`);
    # another task ("colorization") keeps the colours it makes.
    task: str = "super-resolution"
    license: str = "Apache-2.0"
    paper: str = ""
    deterministic: bool = True
    # A method that is not deterministic only because n_samples > 1 draws from the seed (its one
    # sample ignores it, e.g. pSp's style mixing): the harness then runs it once, not per seed.
    single_sample_deterministic: bool = False
    requires_weights: tuple[str, ...] = ()
    # Weights name loaded when the user gives none (a model shipped in the package, for one); may
    # be unregistered while that model is not shipped. `restorekit methods` shows its state.
    default_weights: str | None = None
    # None: any positive integer scale.
    scales: tuple[int, ...] | None = None
    # "any": any image; "aligned_face": an aligned face crop (FFHQ framing).
    input_kind: Literal["any", "aligned_face"] = "any"

    @property
    def one_sample_ignores_seed(self) -> bool:
        """Whether ``restore(..., n_samples=1)`` gives the same result for every seed."""
        return self.deterministic or self.single_sample_deterministic


#: Tasks that restore an image without changing its colours: ``run``, ``compare`` and ``serve``
#: return a black-and-white input's outputs black and white for these
#: (:func:`restorekit.methods.keep_black_and_white`).
RESTORATION_TASKS: frozenset[str] = frozenset({
    "super-resolution", "denoising", "deblurring", "artifact-removal", "restoration"})


#: The device types whose autocast :func:`float32_compute` turns off.
AUTOCAST_DEVICE_TYPES = ("cpu", "cuda")

# The blocks inside float32_default_dtype() now running, in any thread, and the default dtype the
# first of them found (set back when the last one ends).
_DTYPE_GUARD = threading.Lock()
_dtype_blocks = 0
_dtype_outside: torch.dtype = torch.float32


@contextlib.contextmanager
def float32_default_dtype() -> Iterator[None]:
    """Inside, torch's default dtype is float32: a caller's ``torch.set_default_dtype(torch.float64)``
    (common in notebooks) would otherwise build a method's networks in float64 and fail on its
    float32 input ("Input type (float) and bias type (double)"), or make its random draws float64.

    The default dtype is the process's, not a thread's: while any thread is inside (loading,
    restoring, scoring), it is float32 for every thread, and the caller's is set back when the last
    block ends, error or not. So under another default, a thread that makes tensors meanwhile without
    naming a dtype gets float32; one that sets the default meanwhile has it undone then; and a method
    built meanwhile (``build_method``) would see it changed. So under another default the block holds
    :data:`restorekit.global_state.LOCK`, as code that changes a process-wide setting for a while
    does: builds (which hold it) and other such blocks wait, and the caller's default is never lost
    nor a plugin blamed for it. Under a float32 default (the common case) nothing is set or held,
    and threads see nothing."""
    global _dtype_blocks, _dtype_outside
    from .global_state import LOCK

    with _DTYPE_GUARD:
        switching = (_dtype_outside if _dtype_blocks else torch.get_default_dtype()) != torch.float32
    held = LOCK.acquire() if switching else False  # (re-entrant: a build's load takes it again)
    try:
        with _DTYPE_GUARD:
            if _dtype_blocks == 0:
                _dtype_outside = torch.get_default_dtype()
                if _dtype_outside != torch.float32:
                    torch.set_default_dtype(torch.float32)
            _dtype_blocks += 1
        try:
            yield
        finally:
            with _DTYPE_GUARD:
                _dtype_blocks -= 1
                if _dtype_blocks == 0 and _dtype_outside != torch.float32:
                    torch.set_default_dtype(_dtype_outside)
    finally:
        if held:
            LOCK.release()


@contextlib.contextmanager
def float32_compute(device: str | torch.device = "cpu") -> Iterator[None]:
    """Inside, torch's autocast is off on the CPU and on ``device``'s type, and torch's default
    dtype is float32 (:func:`float32_default_dtype`): the image convention is float32, and a
    caller's mixed precision (a training loop's ``torch.autocast``) or float64 default would
    otherwise change a method's results or fail in a kernel without bfloat16 or on a dtype
    mismatch. Every :meth:`Method.restore` and every :class:`Metric`'s call runs inside it."""
    on = [kind for kind in dict.fromkeys(("cpu", torch.device(device).type))
          if kind in AUTOCAST_DEVICE_TYPES and torch.is_autocast_enabled(kind)]
    with float32_default_dtype():
        if not on:  # (the common case, per call: nothing to turn off)
            yield
            return
        with contextlib.ExitStack() as stack:
            for kind in on:
                stack.enter_context(torch.autocast(device_type=kind, enabled=False))
            yield


# One lock per Method instance for its load() (weakly keyed: it goes with the instance, and an
# instance stays picklable); an instance that cannot be weakly referenced shares the coarse one.
_LOAD_LOCKS: weakref.WeakKeyDictionary[Any, threading.RLock] = weakref.WeakKeyDictionary()
_LOAD_LOCKS_GUARD = threading.Lock()
_COARSE_LOAD_LOCK = threading.RLock()


def load_lock(method: object) -> threading.RLock:
    """The re-entrant lock that ``method``'s :meth:`Method.load` holds while it runs."""
    with _LOAD_LOCKS_GUARD:
        try:
            lock = _LOAD_LOCKS.get(method)
            if lock is None:
                lock = _LOAD_LOCKS[method] = threading.RLock()
        except TypeError:  # not hashable or not weakly referenceable
            lock = _COARSE_LOAD_LOCK
    return lock


def _wrap_own(cls: type, wraps: dict[str, Callable[[Callable[..., Any]], Callable[..., Any]]]) -> None:
    """Wrap each method of ``cls``'s own named in ``wraps`` (defined on it, not abstract, not wrapped
    already): what the base classes guarantee for every subclass, where the class is made."""
    for name, wrap in wraps.items():
        fn = cls.__dict__.get(name)
        if callable(fn) and getattr(fn, "__code__", None) is not None and not getattr(
                fn, "__isabstractmethod__", False) and not getattr(fn, "_restorekit_wrapped", False):
            setattr(cls, name, wrap(fn))


def _serialised_load(load: Callable[..., None]) -> Callable[..., None]:
    @functools.wraps(load)
    def wrapper(self: Any, *args: Any, **kwargs: Any) -> None:
        # The float32 block first: under another default it takes global_state.LOCK, which a restore
        # (whose lazy load takes this lock after) holds first too: one order, no deadlock.
        with float32_default_dtype(), load_lock(self):
            return load(self, *args, **kwargs)

    setattr(wrapper, "_restorekit_wrapped", True)
    return wrapper


# How deep this thread is in Method.restore calls: a method's input is checked for NaN where the
# caller hands it over (depth 0), not where a subclass passes its own intermediate to its parent.
_RESTORING = threading.local()


def _checked_restore(restore: Callable[..., Tensor]) -> Callable[..., Tensor]:
    @functools.wraps(restore)
    def wrapper(self: Any, *args: Any, **kwargs: Any) -> Tensor:
        depth = getattr(_RESTORING, "depth", 0)
        if depth == 0:
            lr = args[0] if args else kwargs.get("lr")
            refuse_nan(lr, f"{getattr(getattr(self, 'info', None), 'name', type(self).__name__)}: lr")
            if isinstance(self, Method):  # seed and n_samples are keyword-only: a bad one is refused here
                self.check_sampling(kwargs.get("seed"), kwargs.get("n_samples", 1))
        _RESTORING.depth = depth + 1
        try:
            with float32_compute(getattr(self, "device", "cpu")):
                out = restore(self, *args, **kwargs)
        finally:
            _RESTORING.depth = depth
        # The caller gets no autograd graph (an input that requires grad would keep the method's
        # activations alive as long as the output lives), whether or not the subclass ran under no_grad.
        return out.detach() if depth == 0 and isinstance(out, Tensor) and out.requires_grad else out

    setattr(wrapper, "_restorekit_wrapped", True)
    return wrapper


def _integer(value: object) -> int | None:
    """``value`` as an int when it is an integer (``int``, ``numpy.int64``, a 0-d integer tensor:
    whatever has ``__index__``), else None; ``bool`` is not one."""
    if isinstance(value, bool) or (isinstance(value, torch.Tensor) and (value.dtype == torch.bool or value.dim() > 0)):
        return None
    try:
        return operator.index(cast(Any, value))
    except (TypeError, RuntimeError):  # RuntimeError: a tensor of more than one element
        return None


#: Outputs needing less than this are not checked against the memory left (reading it costs more).
_SMALL_OUTPUT_BYTES = 64 * 2**20


class Method(ABC):
    """A restoration method, as `run` and `compare` call it.

    Subclasses set ``info`` and ``Options`` as class attributes so they can be listed and
    validated without being built. Construction must be cheap; heavy work (weights, models)
    happens in :meth:`load`, which callers invoke once before the first :meth:`restore`.

    :meth:`restore` should begin with :meth:`check_input` and :meth:`check_scale`, so a batch in
    another convention (uint8, 0-255, H×W×3, a numpy array) is a one-line ``ValueError`` rather
    than a wrong result. (Annotate an options argument as :data:`OptionsModel`: inside the class,
    ``Options`` names the class attribute.)

    :meth:`check_sampling` checks ``seed`` and ``n_samples`` alike, and
    :meth:`check_output_memory` refuses an output that would not fit the memory left.

    Every subclass's :meth:`load` and :meth:`restore` are wrapped where the class is made:
    ``load`` holds the instance's lock (:func:`load_lock`) while it runs, so two threads whose
    first ``restore`` loads the method at once load it once, and neither computes with a model the
    other is still setting up; ``restore`` refuses a caller's batch holding NaN (:func:`refuse_nan`;
    a subclass handing its own intermediate to its parent's ``restore`` is not checked again) and
    runs with torch's autocast off (:func:`float32_compute`), so a caller's mixed precision does
    not change what it returns. Both run under a float32 default dtype
    (:func:`float32_default_dtype`): a caller's ``torch.set_default_dtype(torch.float64)`` neither
    builds float64 networks nor changes a result, which stays float32.

    Threads: restorekit's own methods may be called from several threads at once and give what
    each call gives alone; what a call leaves on the instance (``last_reports``, PULSE's
    ``last_w_plus``) is the last finished call's, so a caller reading it uses one instance per
    thread or a lock. Loading draws from torch's global RNG inside ``torch.random.fork_rng``, which
    puts that RNG back for every thread: call :meth:`load` before sharing an instance with threads
    that draw from it. ``serve`` calls one method at a time.
    """

    info: ClassVar[MethodInfo]
    Options: ClassVar[type[OptionsModel]] = NoOptions

    def __init__(self, options: OptionsModel | None = None, device: str | torch.device = "cpu") -> None:
        self.options = options if options is not None else self.Options()
        self.device = torch.device(device)
        # Per-image notes from the last restore() call (e.g. steps taken, eps reached).
        self.last_reports: list[dict[str, Any]] = []

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        _wrap_own(cls, {"load": _serialised_load, "restore": _checked_restore})

    def load(self) -> None:
        """Build models and load weights; idempotent."""

    def check_input(self, lr: Tensor) -> None:
        """Raise ``ValueError`` (one line naming the fix) unless ``lr`` follows the image convention:
        a floating-point ``N×3×H×W`` tensor with values in [0, 1] (:func:`check_image_batch`; a NaN
        in the caller's batch is refused before ``restore`` runs, see :class:`Method`).

        float16 and float64 pass; :meth:`restore` converts. Cheap: one ``aminmax`` over the batch."""
        check_image_batch(lr, f"{getattr(getattr(self, 'info', None), 'name', type(self).__name__)}: lr")

    def check_scale(self, scale: int) -> None:
        """Raise ``ValueError`` when ``scale`` is not one this method serves.

        Any integer passes (``int``, ``numpy.int64``, a 0-d integer tensor: whatever has
        ``__index__``); ``bool``, floats and non-positive values do not. Compute sizes from
        ``int(scale)`` after this check."""
        value = _integer(scale)
        if value is None or value < 1:
            name = getattr(getattr(self, "info", None), "name", type(self).__name__)
            raise ValueError(f"{name}: scale must be a positive integer, got {scale!r}")
        scales = self.info.scales
        if scales is not None and value not in scales:
            allowed = ", ".join(str(s) for s in scales)
            raise ValueError(f"{self.info.name} supports --scale {allowed}; got {value}")

    def check_sampling(self, seed: int | None, n_samples: int) -> None:
        """Raise ``ValueError`` (one line naming the method) unless ``n_samples`` is a positive
        integer and ``seed`` is None or an integer from 0 to 2**64 − 1 (what
        ``torch.Generator.manual_seed`` takes, and ``run --seed``'s range). Integer-likes pass as
        in :meth:`check_scale`; compute with ``int(...)`` after this check. A deterministic method
        checks them too: a seed it ignores is still no string."""
        from .seeds import SEED_MAX

        name = getattr(getattr(self, "info", None), "name", type(self).__name__)
        count = _integer(n_samples)
        if count is None or count < 1:
            raise ValueError(f"{name}: n_samples must be a positive integer, got {n_samples!r}")
        if seed is not None:
            value = _integer(seed)
            if value is None or not 0 <= value <= SEED_MAX:
                raise ValueError(f"{name}: seed must be None or an integer from 0 to 2**64 - 1, got {seed!r}")

    def check_output_memory(self, lr: Tensor, scale: int, n_samples: int = 1, *, copies: float = 2.0,
                            device: torch.device | None = None) -> None:
        """Raise :class:`~restorekit.errors.InsufficientMemory` (one line) before any work when
        ``copies`` float32 copies of the output (``N·n_samples×3×(h·scale)×(w·scale)``; 2: a resize
        to the output size and its clamp, at their peak) would not fit the memory ``device``
        (default: the method's) has left. On the CPU, Linux does not fail such an allocation: it kills
        the process once the pages are touched, and a service with it. Call after the checks above."""
        from .device_memory import check_working_memory

        k = int(scale)
        h, w = int(lr.shape[-2]) * k, int(lr.shape[-1]) * k
        rows = int(lr.shape[0]) * int(n_samples)
        need = int(copies * rows * 3 * h * w * 4)
        if need < _SMALL_OUTPUT_BYTES:
            return
        name = getattr(getattr(self, "info", None), "name", type(self).__name__)
        images = f" × {rows} outputs" if rows > 1 else ""
        check_working_memory(need, device if device is not None else self.device, f"{name} at ×{k} ({w}×{h}{images})",
                             "lower the scale, or restore fewer images or samples at once")

    @property
    def keeps_native_size(self) -> bool:
        """Whether this method's options ask it to return its network's own size instead of
        ``scale`` × the input (by the convention of an option named ``keep_native_size``): for
        Python callers; ``run``, ``compare`` and ``serve`` write and score ``scale`` × the input,
        so they refuse it before any work."""
        return bool(getattr(self.options, "keep_native_size", False))

    @abstractmethod
    def restore(self, lr: Tensor, scale: int, *, seed: int | None = None, n_samples: int = 1) -> Tensor:
        """Restore ``lr`` (N×3×h×w in [0,1]) to ``scale`` times its size.

        Returns ``(N·n_samples)×3×(h·scale)×(w·scale)`` in [0,1], image-major: the samples of
        image 0 come first. Methods with ``deterministic=True`` ignore ``seed``.
        """


class Degradation(ABC):
    """Makes a low-quality image from a high-quality one (``hr -> lr``)."""

    name: ClassVar[str]
    Params: ClassVar[type[Options]]

    def __init__(self, params: Options) -> None:
        self.params = params

    @abstractmethod
    def __call__(self, hr: Tensor, *, generator: torch.Generator | None = None) -> Tensor:
        """Degrade a batch; random parts draw from ``generator`` only."""

    def spec(self) -> str:
        """The spec string that rebuilds this degradation (``bicubic:8``)."""
        return self.name


class Generator(nn.Module, ABC):
    """A style-based image generator with an extended latent space W+."""

    z_dim: int
    style_dim: int
    n_styles: int
    resolution: int

    @abstractmethod
    def map(self, z: Tensor) -> Tensor:
        """Map ``N×z_dim`` noise to ``N×style_dim`` latents in W."""

    @abstractmethod
    def synthesize(self, w_plus: Tensor, *, noise_mode: Literal["const", "random"] = "const",
                   noise: list[Tensor] | None = None) -> Tensor:
        """Decode ``N×n_styles×style_dim`` latents to ``N×3×R×R`` images in the [0,1] convention.

        The result is not clamped, so gradients reach every pixel; callers clamp for output.
        """

    @torch.no_grad()
    def mean_latent(self, n: int = 4096, seed: int = 0) -> Tensor:
        """Mean of ``map(z)`` over ``n`` normal samples (``style_dim``), the truncation centre."""
        g = torch.Generator().manual_seed(seed)
        device = next(self.parameters()).device
        z = torch.randn(n, self.z_dim, generator=g).to(device)
        return self.map(z).mean(0)

    def noise_buffers(self) -> list[Tensor]:
        """The fixed per-layer noise tensors used by ``noise_mode="const"`` (may be empty)."""
        return []


class Encoder(nn.Module, ABC):
    """Maps an image to a generator's extended latent space."""

    n_styles: int
    style_dim: int

    @abstractmethod
    def encode(self, image: Tensor) -> Tensor:
        """``N×3×H×W`` in [0,1] to ``N×n_styles×style_dim``."""


@dataclass(frozen=True)
class LossContext:
    """One ``context`` entry a :class:`Loss` reads: a float tensor named ``name``.

    ``shape`` is an example shape of one image's entry (``per_image=True``: the tensor is
    ``N×shape``) or of the whole entry (``per_image=False``, e.g. a latent average broadcast over
    the batch). The conformance kit builds a random float32 tensor of this shape for each declared
    entry the check is not given; ``required=False`` marks an entry the loss can do without.
    """

    name: str
    shape: tuple[int, ...]
    per_image: bool = True
    required: bool = True
    description: str = ""


class Loss(ABC):
    """A training objective term; composed into a weighted sum by the trainer.

    ``context_inputs`` declares the ``context`` entries the loss reads (``w_norm``: ``latents``,
    ``latent_avg``); a loss that reads only ``pred`` and ``target`` declares none.
    """

    name: ClassVar[str]
    context_inputs: ClassVar[tuple[LossContext, ...]] = ()

    def __init__(self, weight: float = 1.0) -> None:
        self.weight = weight

    @abstractmethod
    def __call__(self, pred: Tensor, target: Tensor, **context: Any) -> Tensor:
        """Scalar loss for ``pred`` against ``target`` (both in [0,1]); context carries the extras
        ``context_inputs`` declares."""


def _float32_everywhere(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``fn`` (a metric's ``__call__`` or ``setup``, a detector's ``detect`` or ``load``) run inside
    :func:`float32_compute` with the CPU's and CUDA's autocast both off: a metric computes where its
    inputs are, which it may move, and a detector need have no torch ``device`` (an onnxruntime one
    has none)."""
    @functools.wraps(fn)
    def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
        with float32_compute("cuda"):
            return fn(self, *args, **kwargs)

    setattr(wrapper, "_restorekit_wrapped", True)
    return wrapper


class Metric(ABC):
    """An image-quality measure; the name states its conventions (``psnr_y_crop``).

    Every subclass's ``__call__`` and :meth:`setup` are wrapped where the class is made to run
    inside :func:`float32_compute`, as :meth:`Method.restore` does: a caller's ``torch.autocast`` or
    float64 default dtype does not change a score (LPIPS moved in its fourth digit under bfloat16).
    """

    name: ClassVar[str]
    higher_is_better: ClassVar[bool]
    summary: ClassVar[str] = ""
    # Weight names that must be present before the metric can run.
    requires_weights: ClassVar[tuple[str, ...]] = ()
    # What a NaN value means ("faces not found"): a metric that returns NaN for an image it cannot
    # measure declares it (reports count NaNs under this label); "" (the default): never NaN.
    nan_label: ClassVar[str] = ""
    # True for a metric that scores the output against the LR input through a downscale (PULSE's
    # criterion): at ×1 that is the distance to the degraded input itself, which a method that
    # changes nothing wins, so ``compare --scale 1`` leaves it out unless ``--metrics`` names it.
    sr_only: ClassVar[bool] = False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        _wrap_own(cls, {"__call__": _float32_everywhere, "setup": _float32_everywhere})

    @classmethod
    def dependencies(cls) -> list[str]:
        """What its values depend on beyond its package's code and ``requires_weights``: strings
        naming a model file's content or a library's version (identity_dlib: dlib's version and its
        model files' sha256). ``compare`` scores stored outputs again when they change."""
        return []

    def setup(self, device: torch.device) -> None:
        """Load networks or weights; raise ``restorekit.errors.WeightsMissing`` when absent."""

    @abstractmethod
    def __call__(self, pred: Tensor, target: Tensor, *, lr: Tensor, scale: int) -> Tensor:
        """Per-image values (``N``, float64) of ``pred`` against ``target`` (HR) and ``lr``."""


class FaceEmbedder(ABC):
    """A face identity network: aligned-or-not faces to unit-norm embeddings.

    ``embed`` is differentiable when ``differentiable`` is true, so the identity loss can
    train through it; metrics use the same object.
    """

    name: ClassVar[str]
    differentiable: ClassVar[bool] = True
    # Input framing the embedder expects: "ffhq" crops are cropped to the face inside embed().
    framing: ClassVar[Literal["ffhq", "chip"]] = "ffhq"

    @abstractmethod
    def embed(self, faces: Tensor) -> Tensor:
        """``N×3×H×W`` faces in [0,1] to ``N×D`` unit vectors."""


@dataclass
class Face:
    """A detected face: box ``x0,y0,x1,y1``, score and ``K×2`` landmarks in pixels."""

    box: tuple[float, float, float, float]
    score: float
    landmarks: list[tuple[float, float]] = field(default_factory=list)


class FaceDetector(ABC):
    """Finds faces and landmarks (eye centres, nose, mouth corners where available).

    Every subclass's ``detect`` (and ``load``, where it has one) is wrapped where the class is made
    to run inside :func:`float32_compute`, as :meth:`Method.restore` is: under a caller's float64
    default dtype a network detector (MTCNN) failed on a dtype mismatch."""

    name: ClassVar[str]

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        _wrap_own(cls, {"detect": _float32_everywhere, "load": _float32_everywhere})

    @abstractmethod
    def detect(self, image: Tensor) -> list[Face]:
        """Faces in one ``3×H×W`` image in [0,1]."""
