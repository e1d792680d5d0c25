"""Built-in degradations and the spec-string language that chains them.

Spec grammar: ``name[:value]`` steps joined by ``+``, applied left to right, e.g.
``bicubic:8`` or ``blur:1.5+bicubic:4+noise:5+jpeg:60``.

- ``bicubic:K``: antialiased bicubic downscale by the integer K, in PIL's convention
  (Keys kernel a = −0.5, widened by K when downscaling, weights renormalised at the borders;
  ``torch.nn.functional.interpolate(..., antialias=True)`` implements exactly that). Sizes are
  ``floor(H/K)×floor(W/K)``; callers that need exact multiples crop first (``crop_to_multiple``).
- ``blur:S``: Gaussian blur, standard deviation S pixels, kernel radius ceil(3S), reflect padding.
- ``noise:S``: additive Gaussian noise with standard deviation S in 8-bit levels (S/255), clipped.
- ``jpeg:Q``: JPEG round trip at quality Q (pillow, 4:2:0 chroma subsampling).

Randomness (noise) draws only from the ``torch.Generator`` passed in, so a seed fixes it.
"""

from __future__ import annotations

import io
import math
import re
from typing import ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from pydantic import Field, ValidationError
from torch import Tensor

from .errors import RestorekitError
from .interfaces import Degradation, Options


def bicubic_resize(x: Tensor, size: tuple[int, int]) -> Tensor:
    """Resize ``N×C×H×W`` to ``size`` with antialiased bicubic (PIL convention), not clamped."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    if size[1] == 1 and size[0] > 1:
        # torch's antialiased bicubic is wrong for outputs one pixel wide (every row came out the
        # same); one pixel tall is right, and the filter is separable: resize the transpose.
        t = F.interpolate(x.transpose(-2, -1), size=(size[1], size[0]), mode="bicubic", align_corners=False,
                          antialias=True)
        return t.transpose(-2, -1).contiguous()
    return F.interpolate(x, size=size, mode="bicubic", align_corners=False, antialias=True)


def downscale(x: Tensor, factor: int) -> Tensor:
    """Antialiased bicubic downscale by an integer ``factor`` (PIL convention), clamped to [0,1]."""
    if factor == 1:
        return x
    h, w = x.shape[-2] // factor, x.shape[-1] // factor
    if h < 1 or w < 1:
        raise ValueError(f"a {x.shape[-2]}×{x.shape[-1]} image is too small to downscale by {factor}")
    return bicubic_resize(x, (h, w)).clamp(0, 1)


def upscale(x: Tensor, factor: int) -> Tensor:
    """Bicubic upscale by an integer ``factor`` (PIL convention), clamped to [0,1]."""
    if factor == 1:
        return x
    return bicubic_resize(x, (x.shape[-2] * factor, x.shape[-1] * factor)).clamp(0, 1)


def crop_to_multiple(x: Tensor, k: int) -> Tensor:
    """Crop bottom/right so both sides are multiples of ``k`` (the SR evaluation convention)."""
    h, w = x.shape[-2] - x.shape[-2] % k, x.shape[-1] - x.shape[-1] % k
    return x[..., :h, :w]


def spec_number(x: float) -> str:
    """A float as a spec value: the short ``%g`` form when it reads back as the same number,
    else the shortest exact one (``repr``), so that ``parse_spec(chain.spec())`` is the same chain."""
    short = f"{x:g}"
    return short if float(short) == x else repr(float(x))


class ScaleParams(Options):
    scale: int = Field(ge=1, le=64, description="integer downscale factor")


class Bicubic(Degradation):
    """Antialiased bicubic downscale (PIL convention)."""

    name: ClassVar[str] = "bicubic"
    Params = ScaleParams
    params: ScaleParams

    def __call__(self, hr: Tensor, *, generator: torch.Generator | None = None) -> Tensor:
        return downscale(hr, self.params.scale)

    def spec(self) -> str:
        return f"bicubic:{self.params.scale}"


class SigmaParams(Options):
    sigma: float = Field(gt=0, le=50, description="Gaussian standard deviation")


def gaussian_kernel1d(sigma: float) -> Tensor:
    radius = max(1, math.ceil(3 * sigma))
    t = torch.arange(-radius, radius + 1, dtype=torch.float64)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    return (k / k.sum()).float()


class Blur(Degradation):
    """Separable Gaussian blur, reflect padding."""

    name: ClassVar[str] = "blur"
    Params = SigmaParams
    params: SigmaParams

    def __call__(self, hr: Tensor, *, generator: torch.Generator | None = None) -> Tensor:
        k = gaussian_kernel1d(self.params.sigma).to(hr.device)
        r = (k.numel() - 1) // 2
        c = hr.shape[1]
        mode = "reflect" if min(hr.shape[-2:]) > r else "replicate"
        x = F.pad(hr, (r, r, r, r), mode=mode)
        x = F.conv2d(x, k.view(1, 1, 1, -1).repeat(c, 1, 1, 1), groups=c)
        x = F.conv2d(x, k.view(1, 1, -1, 1).repeat(c, 1, 1, 1), groups=c)
        return x

    def spec(self) -> str:
        return f"blur:{spec_number(self.params.sigma)}"


class Noise(Degradation):
    """Additive Gaussian noise; sigma in 8-bit levels."""

    name: ClassVar[str] = "noise"
    Params = SigmaParams
    params: SigmaParams

    def __call__(self, hr: Tensor, *, generator: torch.Generator | None = None) -> Tensor:
        n = torch.randn(hr.shape, generator=generator, dtype=hr.dtype, device="cpu").to(hr.device)
        return (hr + n * (self.params.sigma / 255.0)).clamp(0, 1)

    def spec(self) -> str:
        return f"noise:{spec_number(self.params.sigma)}"


class QualityParams(Options):
    quality: int = Field(ge=1, le=100, description="JPEG quality")


class Jpeg(Degradation):
    """JPEG compression round trip through pillow."""

    name: ClassVar[str] = "jpeg"
    Params = QualityParams
    params: QualityParams

    def __call__(self, hr: Tensor, *, generator: torch.Generator | None = None) -> Tensor:
        out = []
        for img in hr:
            arr = (img.detach().clamp(0, 1).cpu().numpy().transpose(1, 2, 0) * 255).round().astype(np.uint8)
            buf = io.BytesIO()
            Image.fromarray(arr, "RGB").save(buf, "JPEG", quality=self.params.quality)
            back = np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"), dtype=np.float32) / 255
            out.append(torch.from_numpy(back.transpose(2, 0, 1).copy()))
        return torch.stack(out).to(hr.device)

    def spec(self) -> str:
        return f"jpeg:{self.params.quality}"


BUILTIN_DEGRADATIONS: tuple[type[Degradation], ...] = (Bicubic, Blur, Noise, Jpeg)


class Chain:
    """Degradations applied in order; the spec string round-trips."""

    def __init__(self, steps: list[Degradation]) -> None:
        self.steps = steps

    def __call__(self, hr: Tensor, *, generator: torch.Generator | None = None) -> Tensor:
        from .progress import report

        x = hr
        for i, step in enumerate(self.steps):
            report("degrading the input", i, len(self.steps))  # a caller following the work may stop it here
            x = step(x, generator=generator)
        return x

    @property
    def scale(self) -> int:
        """The product of all resize factors in the chain."""
        s = 1
        for step in self.steps:
            s *= int(getattr(step.params, "scale", 1))
        return s

    def spec(self) -> str:
        return "+".join(s.spec() for s in self.steps)


#: The most steps a spec may chain: more than any realistic degradation (a two-pass
#: blur/resize/noise/JPEG model has 8), and a bound on the work a spec from a web page can ask for.
MAX_STEPS = 12

# A number in a spec: decimal, optional sign, fraction and exponent — not nan/inf, not Python's
# '1_5' (which float() reads as 15) or other forms pydantic would take.
_NUMBER = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
# Shown when a built-in step is given without its value.
_EXAMPLE_VALUES = {"bicubic": "4", "blur": "1.5", "noise": "5", "jpeg": "75"}


def parse_spec(spec: str, available: dict[str, type[Degradation]] | None = None) -> Chain:
    """Build a :class:`Chain` from a spec string; errors name the bad step, in one line.

    Spaces around names, ``:`` and ``+`` are ignored. A numeric value must be a finite decimal
    number (``4``, ``1.5``, ``2e-1``).
    """
    from .plugins import registry, suggest

    kinds = available if available is not None else registry().items["degradations"]
    steps: list[Degradation] = []
    if not spec.strip():
        raise RestorekitError("empty degradation spec")
    if spec.count("+") >= MAX_STEPS:
        raise RestorekitError(f"degradation spec '{spec[:60]}…' has {spec.count('+') + 1} steps; at most {MAX_STEPS}")
    for part in spec.split("+"):
        part = part.strip()
        if not part:
            raise RestorekitError(f"degradation spec '{spec}': empty step (a '+' with no step on one side)")
        name, _, value = part.partition(":")
        name, value = name.strip(), value.strip()
        cls = kinds.get(name)
        if cls is None:
            raise RestorekitError(f"degradation spec '{spec}': unknown step '{name}'"
                                  f"{suggest(name, sorted(kinds))}; known: {', '.join(sorted(kinds))}")
        fields = list(cls.Params.model_fields)
        if fields and not value and cls.Params.model_fields[fields[0]].is_required():
            example = _EXAMPLE_VALUES.get(name, fields[0].upper())
            raise RestorekitError(f"degradation spec '{spec}': step '{part}' needs a value, e.g. '{name}:{example}'")
        if fields and value and cls.Params.model_fields[fields[0]].annotation in (int, float) \
                and not _NUMBER.fullmatch(value):
            raise RestorekitError(f"degradation spec '{spec}': step '{part}': '{value}' is not a number "
                                  f"(a finite decimal, e.g. '{name}:{_EXAMPLE_VALUES.get(name, '2')}')")
        try:
            params = cls.Params(**({fields[0]: value} if value else {}))
        except ValidationError as exc:
            err = exc.errors()[0]
            raise RestorekitError(f"degradation spec '{spec}': step '{part}': {err['msg']}") from None
        steps.append(cls(params))
    return Chain(steps)
