"""The typed contracts every restorekit component implements.

One image convention holds everywhere (see ``restorekit.images``): an image batch is a
``torch.float32`` tensor ``N×3×H×W``, RGB, values in ``[0, 1]``. Components that need another
range (StyleGAN's and LPIPS' ``[-1, 1]``) convert inside themselves, never at call sites.
"""

from __future__ import annotations

import operator
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal, TypeAlias

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


def check_image_batch(x: object, what: str = "input") -> None:
    """Raise ``ValueError`` (one line, starting with ``what``) unless ``x`` is an image batch by the
    convention: a floating-point tensor ``N×3×H×W`` (N, H, W ≥ 1), values in ``[0, 1]``.

    Any floating dtype passes (float16, float64: the receiver converts). The range test is one
    ``aminmax`` and tolerates an overshoot of :data:`INPUT_RANGE_SLACK` (a resampled image rings past
    [0, 1]); it catches [0, 255] and [-1, 1] images, not every out-of-range value. NaN is not checked.
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
    lo, hi = (float(v) for v in torch.aminmax(x.detach()))
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


class Method(ABC):
    """A restoration method, as `run` and `compare` call it.

    Subclasses set ``info`` and ``Options`` as class attributes so they can be listed and
    validated without being built. Construction must be cheap; heavy work (weights, models)
    happens in :meth:`load`, which callers invoke once before the first :meth:`restore`.

    :meth:`restore` should begin with :meth:`check_input` and :meth:`check_scale`, so a batch in
    another convention (uint8, 0-255, H×W×3, a numpy array) is a one-line ``ValueError`` rather
    than a wrong result. (Annotate an options argument as :data:`OptionsModel`: inside the class,
    ``Options`` names the class attribute.)

    Threads: call :meth:`load` before sharing an instance. restorekit's own methods, once loaded,
    may then be called from several threads at once and give what each call gives alone; what a
    call leaves on the instance (``last_reports``, PULSE's ``last_w_plus``) is the last finished
    call's, so a caller reading it uses one instance per thread or a lock. ``serve`` calls one
    method at a time.
    """

    info: ClassVar[MethodInfo]
    Options: ClassVar[type[OptionsModel]] = NoOptions

    def __init__(self, options: OptionsModel | None = None, device: str | torch.device = "cpu") -> None:
        self.options = options if options is not None else self.Options()
        self.device = torch.device(device)
        # Per-image notes from the last restore() call (e.g. steps taken, eps reached).
        self.last_reports: list[dict[str, Any]] = []

    def load(self) -> None:
        """Build models and load weights; idempotent."""

    def check_input(self, lr: Tensor) -> None:
        """Raise ``ValueError`` (one line naming the fix) unless ``lr`` follows the image convention:
        a floating-point ``N×3×H×W`` tensor with values in [0, 1] (:func:`check_image_batch`).

        float16 and float64 pass; :meth:`restore` converts. Cheap: one ``aminmax`` over the batch."""
        check_image_batch(lr, f"{getattr(getattr(self, 'info', None), 'name', type(self).__name__)}: lr")

    def check_scale(self, scale: int) -> None:
        """Raise ``ValueError`` when ``scale`` is not one this method serves.

        Any integer passes (``int``, ``numpy.int64``, a 0-d integer tensor: whatever has
        ``__index__``); ``bool``, floats and non-positive values do not. Compute sizes from
        ``int(scale)`` after this check."""
        try:
            if isinstance(scale, bool) or (isinstance(scale, torch.Tensor) and (scale.dtype == torch.bool
                                                                                or scale.dim() > 0)):
                raise TypeError
            value = operator.index(scale)
        except (TypeError, RuntimeError):  # RuntimeError: a tensor of more than one element
            raise ValueError(f"scale must be a positive integer, got {scale!r}") from None
        if value < 1:
            raise ValueError(f"scale must be a positive integer, got {scale!r}")
        scales = self.info.scales
        if scales is not None and value not in scales:
            allowed = ", ".join(str(s) for s in scales)
            raise ValueError(f"{self.info.name} supports --scale {allowed}; got {value}")

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


class Metric(ABC):
    """An image-quality measure; the name states its conventions (``psnr_y_crop``)."""

    name: ClassVar[str]
    higher_is_better: ClassVar[bool]
    summary: ClassVar[str] = ""
    # Weight names that must be present before the metric can run.
    requires_weights: ClassVar[tuple[str, ...]] = ()
    # What a NaN value means ("faces not found"): a metric that returns NaN for an image it cannot
    # measure declares it (reports count NaNs under this label); "" (the default): never NaN.
    nan_label: ClassVar[str] = ""

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
    """Finds faces and landmarks (eye centres, nose, mouth corners where available)."""

    name: ClassVar[str]

    @abstractmethod
    def detect(self, image: Tensor) -> list[Face]:
        """Faces in one ``3×H×W`` image in [0,1]."""
