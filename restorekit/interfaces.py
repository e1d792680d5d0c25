"""The typed contracts every restorekit component implements.

One image convention holds everywhere (see ``restorekit.images``): an image batch is a
``torch.float32`` tensor ``N×3×H×W``, RGB, values in ``[0, 1]``. Components that need another
range (StyleGAN's and LPIPS' ``[-1, 1]``) convert inside themselves, never at call sites.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import torch
from pydantic import BaseModel, ConfigDict
from torch import Tensor, nn


class Options(BaseModel):
    """Base for every user-configurable option model: unknown keys are errors, and defaults are
    held to the same constraints as given values (a default outside its own bounds is an error
    where the model is made, not a value the method quietly runs with)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, validate_default=True)


class NoOptions(Options):
    """A method or component with nothing to configure."""


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
    """

    info: ClassVar[MethodInfo]
    Options: ClassVar[type[Options]] = NoOptions

    def __init__(self, options: Options | None = None, device: str | torch.device = "cpu") -> None:
        self.options = options if options is not None else self.Options()
        self.device = torch.device(device)
        # Per-image notes from the last restore() call (e.g. steps taken, eps reached).
        self.last_reports: list[dict[str, Any]] = []

    def load(self) -> None:
        """Build models and load weights; idempotent."""

    def check_scale(self, scale: int) -> None:
        """Raise ``ValueError`` when ``scale`` is not one this method serves."""
        if not isinstance(scale, int) or isinstance(scale, bool) or scale < 1:
            raise ValueError(f"scale must be a positive integer, got {scale!r}")
        scales = self.info.scales
        if scales is not None and scale not in scales:
            allowed = ", ".join(str(s) for s in scales)
            raise ValueError(f"{self.info.name} supports --scale {allowed}; got {scale}")

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


class Loss(ABC):
    """A training objective term; composed into a weighted sum by the trainer."""

    name: ClassVar[str]

    def __init__(self, weight: float = 1.0) -> None:
        self.weight = weight

    @abstractmethod
    def __call__(self, pred: Tensor, target: Tensor, **context: Any) -> Tensor:
        """Scalar loss for ``pred`` against ``target`` (both in [0,1]); context carries extras."""


class Metric(ABC):
    """An image-quality measure; the name states its conventions (``psnr_y_crop``)."""

    name: ClassVar[str]
    higher_is_better: ClassVar[bool]
    summary: ClassVar[str] = ""
    # Weight names that must be present before the metric can run.
    requires_weights: ClassVar[tuple[str, ...]] = ()

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
