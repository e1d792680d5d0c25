"""Built-in degradations and the spec-string language that chains them.

Spec grammar: ``name[:value]`` steps joined by ``+``, applied left to right, e.g.
``bicubic:8`` or ``blur:1.5+bicubic:4+noise:5+jpeg:60``. A spec is one line (no control
characters) of at most :data:`MAX_SPEC_LENGTH` characters and :data:`MAX_STEPS` steps; spaces
around names, ``:`` and ``+`` are ignored. A value is a finite decimal number (``4``, ``1.5``,
``.5``, ``2e-1``, ``1e06``) with no ``+`` anywhere: ``+`` joins steps, so ``1e+6`` and ``+4`` are
refused (write ``1e6``, ``4``); :func:`spec_number` writes exponents without it. An integer
value may be written in any form that is a whole number (``4``, ``4.0``, ``1e0``).

- ``bicubic:K`` (integer 1 ≤ K ≤ 64): antialiased bicubic downscale by K, in PIL's convention
  (Keys kernel a = −0.5, widened by K when downscaling, weights renormalised at the borders;
  ``torch.nn.functional.interpolate(..., antialias=True)`` implements exactly that). Sizes are
  ``floor(H/K)×floor(W/K)``; callers that need exact multiples crop first (``crop_to_multiple``).
  ``bicubic:1`` leaves the image as it is (clamped to [0, 1], as every ``bicubic:K``).
- ``blur:S`` (0 < S ≤ 50): separable Gaussian blur, standard deviation S pixels, kernel radius
  ``max(1, ceil(3S))``, normalised to sum 1. Borders are padded by torch's ``reflect`` (the edge
  pixel not repeated: scipy.ndimage's ``mirror``); an image whose shorter side is not longer than
  the radius is padded by ``replicate`` instead (scipy's ``nearest``). Computed in the input's dtype.
- ``noise:S`` (0 < S ≤ 50): additive Gaussian noise with standard deviation S in 8-bit levels
  (S/255), clipped to [0, 1]. Drawn per channel, except on a black-and-white image (all
  channels exactly equal): one plane is drawn and added to every channel, so it stays grey.
- ``jpeg:Q`` (integer 1 ≤ Q ≤ 100): JPEG round trip at quality Q (pillow, 4:2:0 chroma
  subsampling), through 8 bits (values rounded to the nearest level); the result has the input's dtype.

A chain's scale is the product of its ``bicubic`` factors, so a chain without one (``noise:15``,
``blur:1.5+jpeg:30``) makes inputs of the HR's own size: restoration at ×1 (denoising, deblurring,
JPEG-artefact removal), which ``compare --scale 1`` measures.

Randomness (noise) draws only from the ``torch.Generator`` passed in, so a seed fixes it; given
none (``generator=None``), it draws from torch's global generator (``torch.manual_seed``).
"""

from __future__ import annotations

import io
import math
import re
import unicodedata
from typing import Any, ClassVar

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
    """Antialiased bicubic downscale by an integer ``factor`` (PIL convention), clamped to [0,1]
    (``factor=1`` too: a new tensor, the input clamped)."""
    if factor == 1:
        return x.clamp(0, 1)
    h, w = x.shape[-2] // factor, x.shape[-1] // factor
    if h < 1 or w < 1:
        raise ValueError(f"a {x.shape[-2]}×{x.shape[-1]} image is too small to downscale by {factor}")
    return bicubic_resize(x, (h, w)).clamp(0, 1)


def upscale(x: Tensor, factor: int) -> Tensor:
    """Bicubic upscale by an integer ``factor`` (PIL convention), clamped to [0,1] (``factor=1`` too)."""
    if factor == 1:
        return x.clamp(0, 1)
    return bicubic_resize(x, (x.shape[-2] * factor, x.shape[-1] * factor)).clamp(0, 1)


def crop_to_multiple(x: Tensor, k: int) -> Tensor:
    """Crop bottom/right so both sides are multiples of ``k`` (the SR evaluation convention)."""
    h, w = x.shape[-2] - x.shape[-2] % k, x.shape[-1] - x.shape[-1] % k
    return x[..., :h, :w]


def spec_number(x: float) -> str:
    """A float as a spec value: the short ``%g`` form when it reads back as the same number,
    else the shortest exact one (``repr``), so that ``parse_spec(chain.spec())`` is the same chain.
    An exponent is written without ``+`` (``1e06``, not ``1e+06``): ``+`` joins steps."""
    short = f"{x:g}"
    text = short if float(short) == x else repr(float(x))
    return text.replace("e+", "e")


class _SpecIdentity:
    """Equality, hash and repr by :meth:`spec` (and class): two steps that write the same spec
    degrade alike. Mixed into the built-in steps (before :class:`Degradation`)."""

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and other.spec() == self.spec()  # type: ignore[attr-defined]

    def __hash__(self) -> int:
        return hash((type(self), self.spec()))  # type: ignore[attr-defined]

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.spec()!r})"  # type: ignore[attr-defined]


class ScaleParams(Options):
    scale: int = Field(ge=1, le=64, description="integer downscale factor")


class Bicubic(_SpecIdentity, Degradation):
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


def gaussian_kernel1d(sigma: float, dtype: torch.dtype = torch.float32) -> Tensor:
    """The normalised 1-D Gaussian of ``blur:sigma`` (radius ``max(1, ceil(3·sigma))``), worked
    out in float64 and given in ``dtype``."""
    radius = max(1, math.ceil(3 * sigma))
    t = torch.arange(-radius, radius + 1, dtype=torch.float64)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    return (k / k.sum()).to(dtype)


class Blur(_SpecIdentity, Degradation):
    """Separable Gaussian blur: torch ``reflect`` padding (scipy's ``mirror``), ``replicate`` on an
    image whose shorter side is not longer than the radius; in the input's dtype."""

    name: ClassVar[str] = "blur"
    Params = SigmaParams
    params: SigmaParams

    def __call__(self, hr: Tensor, *, generator: torch.Generator | None = None) -> Tensor:
        k = gaussian_kernel1d(self.params.sigma, hr.dtype).to(hr.device)
        r = (k.numel() - 1) // 2
        c = hr.shape[1]
        mode = "reflect" if min(hr.shape[-2:]) > r else "replicate"
        x = F.pad(hr, (r, r, r, r), mode=mode)
        x = F.conv2d(x, k.view(1, 1, 1, -1).repeat(c, 1, 1, 1), groups=c)
        x = F.conv2d(x, k.view(1, 1, -1, 1).repeat(c, 1, 1, 1), groups=c)
        return x

    def spec(self) -> str:
        return f"blur:{spec_number(self.params.sigma)}"


class Noise(_SpecIdentity, Degradation):
    """Additive Gaussian noise; sigma in 8-bit levels. A black-and-white image (every channel
    equal) gets one plane of noise on all its channels, so that it stays black and white."""

    name: ClassVar[str] = "noise"
    Params = SigmaParams
    params: SigmaParams

    def __call__(self, hr: Tensor, *, generator: torch.Generator | None = None) -> Tensor:
        # generator None: torch's global generator (the module's docstring).
        c, h, w = hr.shape[-3:]
        grey = [c > 1 and bool((img == img[:1]).all()) for img in hr]
        if not any(grey):  # (as one draw, so colour images get the noise they always got)
            n = torch.randn(hr.shape, generator=generator, dtype=hr.dtype, device="cpu")
        else:
            n = torch.cat([torch.randn((1, 1 if g else c, h, w), generator=generator, dtype=hr.dtype,
                                       device="cpu").expand(1, c, h, w) for g in grey])
        return (hr + n.to(hr.device) * (self.params.sigma / 255.0)).clamp(0, 1)

    def spec(self) -> str:
        return f"noise:{spec_number(self.params.sigma)}"


class QualityParams(Options):
    quality: int = Field(ge=1, le=100, description="JPEG quality")


class Jpeg(_SpecIdentity, Degradation):
    """JPEG compression round trip through pillow (8 bits); the result has the input's dtype."""

    name: ClassVar[str] = "jpeg"
    Params = QualityParams
    params: QualityParams

    def __call__(self, hr: Tensor, *, generator: torch.Generator | None = None) -> Tensor:
        work = np.float64 if hr.dtype == torch.float64 else np.float32  # levels / 255 in that precision
        out = []
        for img in hr:
            arr = (img.detach().clamp(0, 1).cpu().numpy().transpose(1, 2, 0) * 255).round().astype(np.uint8)
            buf = io.BytesIO()
            Image.fromarray(arr, "RGB").save(buf, "JPEG", quality=self.params.quality)
            back = np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"), dtype=work) / 255
            out.append(torch.from_numpy(back.transpose(2, 0, 1).copy()))
        return torch.stack(out).to(hr.device, hr.dtype)

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

    def __eq__(self, other: object) -> bool:
        """The same steps (classes) writing the same spec."""
        return isinstance(other, Chain) and [type(s) for s in other.steps] == [type(s) for s in self.steps] \
            and other.spec() == self.spec()

    def __hash__(self) -> int:
        return hash(self.spec())

    def __repr__(self) -> str:
        return f"Chain({self.spec()!r})"


#: The most steps a spec may chain: more than any realistic degradation (a two-pass
#: blur/resize/noise/JPEG model has 8), and a bound on the work a spec from a web page can ask for.
MAX_STEPS = 12
#: The longest spec (characters): twelve steps of long names and exact values fit many times over.
MAX_SPEC_LENGTH = 1000

# A number in a spec: decimal, optional minus sign, fraction and exponent — not nan/inf, not
# Python's '1_5' (which float() reads as 15) or other forms pydantic would take. No '+': it joins steps.
_NUMBER = re.compile(r"-?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE]-?[0-9]+)?")
_INTEGER = re.compile(r"-?[0-9]+")
# An exponent written with '+' (1e+6): split at the '+' it would read as two steps.
_PLUS_EXPONENT = re.compile(r"[0-9.]*[0-9.][eE]\+[0-9]+")
# Shown when a built-in step is given without its value.
_EXAMPLE_VALUES = {"bicubic": "4", "blur": "1.5", "noise": "5", "jpeg": "75"}
# How much of a spec (or of one step) an error message repeats.
_SHOWN, _SHOWN_STEP = 60, 40


def _control(c: str) -> bool:
    """A character that has no place in a one-line spec (a tab is a space)."""
    return c != "\t" and unicodedata.category(c) in ("Cc", "Cf", "Zl", "Zp")


def _shown(text: str, limit: int = _SHOWN) -> str:
    """``text`` as an error message repeats it: cut to ``limit`` characters, control characters escaped."""
    cut = text if len(text) <= limit else text[:limit] + "…"
    return "".join(c.encode("unicode_escape").decode("ascii") if _control(c) else c for c in cut)


def _number(where: str, part: str, name: str, value: str, integer: bool) -> Any:
    """``value`` checked as a spec number, for the field to validate: a whole number (``4.0``,
    ``1e0``) as an ``int`` where the field is one; errors name the step, in one line."""
    step = _shown(part, _SHOWN_STEP)
    if not _NUMBER.fullmatch(value):
        raise RestorekitError(f"{where}: step '{step}': '{_shown(value, _SHOWN_STEP)}' is not a number "
                              f"(a finite decimal, e.g. '{name}:{_EXAMPLE_VALUES.get(name, '2')}')")
    number = float(value)
    if not math.isfinite(number):
        raise RestorekitError(f"{where}: step '{step}': '{_shown(value, _SHOWN_STEP)}' is out of range")
    if not integer or _INTEGER.fullmatch(value):
        return value  # (pydantic reads it: exactly, for a long integer)
    if not number.is_integer():
        raise RestorekitError(f"{where}: step '{step}': '{value}' is not a whole number")
    return int(number)


def parse_spec(spec: str, available: dict[str, type[Degradation]] | None = None) -> Chain:
    """Build a :class:`Chain` from a spec string; errors name the bad step, in one line.

    Spaces around names, ``:`` and ``+`` are ignored. A numeric value must be a finite decimal
    number (``4``, ``1.5``, ``2e-1``, ``1e06``; a whole number for an integer: ``4``, ``4.0``,
    ``1e0``), with no ``+`` (it joins steps). Grammar and limits: the module's docstring.
    """
    from .plugins import registry, suggest

    kinds = available if available is not None else registry().items["degradations"]
    steps: list[Degradation] = []
    if not spec.strip():
        raise RestorekitError("empty degradation spec")
    where = f"degradation spec '{_shown(spec)}'"
    bad = next((i for i, c in enumerate(spec) if _control(c)), None)
    if bad is not None:
        raise RestorekitError(f"{where}: control character U+{ord(spec[bad]):04X} at position {bad}: a spec is "
                              "one line")
    if len(spec) > MAX_SPEC_LENGTH:
        raise RestorekitError(f"{where} is {len(spec)} characters long; at most {MAX_SPEC_LENGTH}")
    if spec.count("+") >= MAX_STEPS:
        raise RestorekitError(f"{where} has {spec.count('+') + 1} steps; at most {MAX_STEPS}")
    plus = _PLUS_EXPONENT.search(spec)
    if plus is not None:
        raise RestorekitError(f"{where}: '{plus.group()}': '+' joins steps, so an exponent takes none: write "
                              f"'{plus.group().replace('+', '')}'")
    parts = spec.split("+")
    for i, part in enumerate(parts):
        part = part.strip()
        if not part:
            raise RestorekitError(f"{where}: empty step (a '+' with no step on one side)")
        name, _, value = part.partition(":")
        name, value = name.strip(), value.strip()
        cls = kinds.get(name)
        if cls is None:
            folded = {k.casefold(): k for k in kinds}
            hint = f" (did you mean '{folded[name.casefold()]}'?)" if name.casefold() in folded \
                else suggest(name, sorted(kinds))
            raise RestorekitError(f"{where}: unknown step '{_shown(name, _SHOWN_STEP)}'{hint}; "
                                  f"known: {', '.join(sorted(kinds))}")
        fields = list(cls.Params.model_fields)
        if not fields:
            if value:
                raise RestorekitError(f"{where}: step '{name}' takes no value (write '{name}')")
            steps.append(cls(cls.Params()))
            continue
        field = cls.Params.model_fields[fields[0]]
        if not value and field.is_required():
            following = parts[i + 1].strip() if i + 1 < len(parts) else ""
            if part.endswith(":") and following[:1] and following[0] in "0123456789.":
                raise RestorekitError(f"{where}: step '{part}+{_shown(following, _SHOWN_STEP)}': a value takes "
                                      f"no '+' sign ('+' joins steps): write '{name}:{_shown(following, _SHOWN_STEP)}'")
            example = _EXAMPLE_VALUES.get(name, fields[0].upper())
            raise RestorekitError(f"{where}: step '{part}' needs a value, e.g. '{name}:{example}'")
        given: Any = value
        if value and field.annotation in (int, float):
            given = _number(where, part, name, value, field.annotation is int)
        try:
            params = cls.Params(**({fields[0]: given} if value else {}))
        except ValidationError as exc:
            err = exc.errors()[0]
            raise RestorekitError(f"{where}: step '{_shown(part, _SHOWN_STEP)}': {err['msg']}") from None
        steps.append(cls(params))
    return Chain(steps)
